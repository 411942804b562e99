"""Configuration loading and validation.

The workflow's ``config.yaml`` is validated against ``workflow/schemas/config.schema.yaml`` (JSON Schema, draft 7)
before any rule runs. Errors are one line each and name the offending key by its dotted path, e.g.::

    config.yaml: extract.workers: 'two' is not of type 'integer'
    config.yaml: mrm.epoch: unknown key (did you mean mrm.epochs? allowed: accum_steps, batch_size, blr, ...)
    config.yaml: align.model_options.image_poolng: unknown key (did you mean image_pooling? ...)

Nested option sections (``model_options``: ``AltaOptions`` fields; ``model_overrides``: preset fields) are checked
key by key and their values by building the options and geometry each training stage will run with
(:func:`alta.recipes.effective_section`). :func:`check_paths` then names every configured input path that does not
exist and every column problem of a configured manifest (:mod:`alta.data.manifest`), also before any work starts.
:func:`resolve_recipe` (called by the Snakefile after validation) replaces each training section by the settings its
stage runs with, so the rules' params carry them.

CLI: ``alta config [config.yaml] [--check-paths] [--effective]`` validates a file and prints ``OK`` or the errors;
``--effective`` prints the recipe and every training stage's settings instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import sys
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "workflow" / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """A configuration problem; ``str(err)`` is one line per problem, each naming the key."""


def load_schema(path: Path = SCHEMA_PATH) -> dict:
    with open(path, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def _key_path(err: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in err.absolute_path) or "<top level>"


def _unknown(prefix: str, key: str, allowed) -> str:
    """``prefix.key: unknown key (did you mean prefix.near? allowed: ...)``."""
    allowed = sorted(allowed)
    name = f"{prefix}.{key}" if prefix else key
    near = difflib.get_close_matches(key, allowed, 1, 0.6)
    hint = f"did you mean {prefix + '.' if prefix else ''}{near[0]}? " if near else ""
    return f"{name}: unknown key ({hint}allowed: {', '.join(allowed)})"


def _describe(err: jsonschema.ValidationError) -> str:
    if err.validator == "additionalProperties":
        allowed = sorted(err.schema.get("properties", {}))
        extra = sorted(set(err.instance) - set(allowed))
        prefix = _key_path(err)
        return "; ".join(_unknown("" if prefix == "<top level>" else prefix, k, allowed) for k in extra)
    if err.validator == "required":
        return f"{_key_path(err)}: {err.message}"
    return f"{_key_path(err)}: {err.message}"


def validate(cfg: dict, source: str = "config", schema: dict | None = None) -> None:
    """Raise :class:`ConfigError` listing every schema violation, one line each, naming the key."""
    schema = schema or load_schema()
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(cfg), key=lambda e: (list(map(str, e.absolute_path)), e.message))
    lines = [_describe(e) for e in errors]
    lines += _option_key_errors(cfg)
    if not lines:
        lines = _option_value_errors(cfg)
    if lines:
        raise ConfigError("\n".join(f"{source}: {line}" for line in lines))


# sections whose nested option dicts are checked: (stage, key) -> the dataclass that defines their keys
_NESTED = {("mrm", "model_options"): "AltaOptions", ("align", "model_options"): "AltaOptions",
           ("mrm", "model_overrides"): "ModelConfig", ("align", "model_overrides"): "ModelConfig",
           ("text_pretrain", "model_overrides"): "ModelConfig"}


def _option_key_errors(cfg: dict) -> list[str]:
    """Unknown keys of the nested option sections (``_NESTED``), each with the nearest valid name."""
    from alta.models import presets  # plain dataclasses: no torch

    fields = {name: [f.name for f in dataclasses.fields(getattr(presets, name)) if f.name != "mode"]
              for name in ("AltaOptions", "ModelConfig")}
    out = []
    for (stage, key), cls in _NESTED.items():
        section = cfg.get(stage)
        options = section.get(key) if isinstance(section, dict) else None
        for k in sorted(options) if isinstance(options, dict) else []:
            if k not in fields[cls]:
                out.append(_unknown(f"{stage}.{key}", k, fields[cls]))
    return out


def _option_value_errors(cfg: dict) -> list[str]:
    """Invalid option values, found by building the options and geometry each training stage will run with."""
    from alta import recipes
    from alta.models import presets

    out = []
    for stage in ("mrm", "align"):
        eff = recipes.effective_section(cfg, stage)
        for key, build in (("model_options", lambda: presets.resolve_options(eff["mode"], eff["model_options"])),
                           ("model_overrides", lambda: presets.resolve_config(eff["preset"], eff["model_overrides"]))):
            try:
                build()
            except (ValueError, TypeError) as exc:
                first, _, rest = str(exc).partition(" ")
                named = first in (eff[key] or {})  # the dataclasses' messages start with the field's name
                out.append(f"{stage}.{key}.{first}: {rest}" if named else f"{stage}.{key}: {exc}")
    return out


def resolve_recipe(cfg: dict) -> dict:
    """In place: ``cfg['recipe']`` becomes ``published`` | ``demo`` and each training section the complete settings
    its stage runs with (alta/recipes.py); the section's workflow keys stay as they are."""
    from alta import recipes

    for stage in recipes.STAGES:
        cfg[stage] = recipes.effective_section(cfg, stage)
    cfg["recipe"] = recipes.resolve_name(cfg)
    return cfg


def load(path: str | Path) -> dict:
    """Read and validate a config file."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as fh:
            cfg = yaml.safe_load(fh)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from exc
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: the config must be a mapping of sections")
    validate(cfg, source=str(path))
    return cfg


def input_paths(cfg: dict) -> dict[str, str]:
    """Configured *input* paths that must exist before the workflow starts, by dotted key.

    Paths inside the demo dataset are produced by the workflow itself and are therefore not checked when
    ``demo.enabled`` is true and the path lies under ``data.root``.
    """
    out: dict[str, str] = {}
    demo = cfg.get("demo", {}).get("enabled", False)
    demo_root = str(Path(cfg["data"]["root"])) if demo and cfg["data"].get("root") else None

    def add(key: str, value: Any) -> None:
        if value in (None, ""):
            return
        if demo_root and (str(Path(value)) + "/").startswith(demo_root + "/"):
            return
        out[key] = str(value)

    data = cfg["data"]
    if data["source"] == "manifest":
        if not data.get("manifest"):
            raise ConfigError("config: data.manifest: required when data.source is 'manifest'")
        add("data.manifest", data["manifest"])
    else:
        add("data.root", data.get("root"))
    add("data.metadata_csv", data.get("metadata_csv"))
    add("data.split_csv", data.get("split_csv"))
    add("sections.overrides", cfg["sections"].get("overrides"))
    add("tokenizer.path", cfg["tokenizer"].get("path"))
    add("mrm.weights", cfg["mrm"].get("weights"))
    add("align.text_dir", cfg["align"].get("text_dir"))
    add("mlflow.credentials_file", cfg.get("mlflow", {}).get("credentials_file"))
    ev = cfg["evaluate"]
    for k in ("official_alta", "chexpert_5x200", "chexpert_root", "convirt_root", "rsna_root", "rsna_test_list",
              "rsna_val_list", "multilabel_list", "multilabel_root", "multilabel_split_list"):
        add(f"evaluate.{k}", ev.get(k))
    return out


def check_paths(cfg: dict, base: Path | None = None) -> None:
    """Raise :class:`ConfigError` naming every configured input path that does not exist."""
    base = base or Path.cwd()
    missing = [f"config: {key}: path does not exist: {p}" for key, p in input_paths(cfg).items()
               if not (base / p).exists()]
    if "official" in cfg["evaluate"].get("models", []) and not cfg["evaluate"].get("official_alta"):
        missing.append("config: evaluate.models: 'official' needs evaluate.official_alta (path to ALTA.pth)")
    manifest = cfg["data"].get("manifest")
    if cfg["data"]["source"] == "manifest" and manifest and (base / manifest).exists():
        from alta.data import manifest as M

        missing += [f"config: data.manifest: {line}" for line in M.problems(base / manifest, need_reports=True)]
    if not missing:
        from alta import tracking

        mlf = cfg.get("mlflow", {})
        try:
            tracking.check_uri(mlf.get("tracking_uri", ""))
            if mlf.get("credentials_file"):
                tracking.read_credentials(base / mlf["credentials_file"])
        except tracking.CredentialsError as exc:
            missing.append(f"config: {exc}")
    if missing:
        raise ConfigError("\n".join(missing))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="alta config", description="Validate an alta config file against the schema.")
    ap.add_argument("config", nargs="?", default="config.yaml", help="config file (default: config.yaml)")
    ap.add_argument("--check-paths", action="store_true", help="also check that configured input paths exist")
    ap.add_argument("--effective", action="store_true",
                    help="print the recipe and the settings every training stage runs with, as JSON")
    args = ap.parse_args(argv)
    try:
        cfg = load(args.config)
        if args.check_paths:
            check_paths(cfg)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    if args.effective:
        from alta import recipes

        resolve_recipe(cfg)
        out = {"recipe": cfg["recipe"]}
        for stage in recipes.STAGES:
            out[stage] = cfg[stage]
            out[f"{stage}_differs_from_published"] = recipes.differences(stage, cfg[stage])
        print(json.dumps(out, indent=2, sort_keys=True))
        return 0
    print("OK")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
