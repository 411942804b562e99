"""Configuration loading and validation.

The workflow's ``config.yaml`` is validated against ``workflow/schemas/config.schema.yaml`` (JSON Schema, draft 7)
before any rule runs. Errors are one line each and name the offending key by its dotted path, e.g.::

    config.yaml: extract.workers: 'two' is not of type 'integer'
    config.yaml: mrm.epoch: unknown key (allowed: accum_iter, batch_size, blr, ...)

:func:`check_paths` then names every configured input path that does not exist, also before any work starts.

CLI: ``alta config [config.yaml] [--check-paths]`` validates a file and prints ``OK`` or the errors.
"""

from __future__ import annotations

import argparse
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


def _describe(err: jsonschema.ValidationError) -> str:
    if err.validator == "additionalProperties":
        allowed = sorted(err.schema.get("properties", {}))
        extra = sorted(set(err.instance) - set(allowed))
        prefix = _key_path(err)
        keys = ", ".join(f"{prefix}.{k}" if prefix != "<top level>" else k for k in extra)
        return f"{keys}: unknown key (allowed: {', '.join(allowed)})"
    if err.validator == "required":
        return f"{_key_path(err)}: {err.message}"
    return f"{_key_path(err)}: {err.message}"


def validate(cfg: dict, source: str = "config", schema: dict | None = None) -> None:
    """Raise :class:`ConfigError` listing every schema violation, one line each, naming the key."""
    schema = schema or load_schema()
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(cfg), key=lambda e: (list(map(str, e.absolute_path)), e.message))
    if errors:
        raise ConfigError("\n".join(f"{source}: {_describe(e)}" for e in errors))


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
    if missing:
        raise ConfigError("\n".join(missing))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="alta config", description="Validate an alta config file against the schema.")
    ap.add_argument("config", nargs="?", default="config.yaml", help="config file (default: config.yaml)")
    ap.add_argument("--check-paths", action="store_true", help="also check that configured input paths exist")
    args = ap.parse_args(argv)
    try:
        cfg = load(args.config)
        if args.check_paths:
            check_paths(cfg)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
