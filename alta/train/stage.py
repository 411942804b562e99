"""What the three training stages share: their command line, their settings, and running the engine inside one
MLflow run with the stage's exit codes. Each stage module (``alta.train.mrm``, ``align``, ``text_pretrain``) reads
top to bottom::

    args, cfg = stage.parse("align", parser(), argv)        # parse: recipe, --config, --config-json, --seed
    with distributed.session() as info:
        tok = load_tokenizer(args.tokenizer)                  # build: tokenizer, seeded model, then the data
        model = build_alta(preset=cfg["preset"], ..., overrides=cfg["model_overrides"])
        task = build_task(args, cfg, tok, model, info)        #   dataset, the step's forward, validation
        return stage.train("align", cfg, inputs, task, args.out, info)   # train and write

Settings precedence (lowest to highest): the settings of the chosen recipe (``alta.recipes``; ``recipe: published``
unless the config names another), ``--config FILE --section NAME`` (a YAML or JSON file; the section is a mapping),
``--config-json '{...}'``, ``--seed``. Unknown keys are an error naming them. Every stage logs at start which recipe it
runs and each setting that differs from the published method, tags its MLflow run with the same (``alta.recipe``,
``alta.recipe_differences``) and stores both in its checkpoints (``recipe``, ``recipe_differences``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from alta import io, recipes
from alta.train import distributed as D


def defaults(stage: str) -> dict:
    """The published settings of ``stage`` plus ``recipe: published`` (what ``--print-defaults`` prints)."""
    return {**recipes.defaults(stage), "recipe": "published"}


def parser(stage: str, doc: str, images: bool = True) -> argparse.ArgumentParser:
    """The command line the training stages share; each stage adds its own model-input options. ``images=False``
    (text-only stages) leaves out ``--images`` / ``--extract-dir``."""
    p = argparse.ArgumentParser(prog=f"alta {stage}", description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", required=True, help="pairs.parquet (alta pair)")
    if images:
        p.add_argument("--images", required=True, help="images.parquet (alta extract)")
        p.add_argument("--extract-dir", required=True, help="extract output folder holding shards/<shard>/store.u8")
    p.add_argument("--tokenizer", required=True, help="tokenizer directory (alta tokenizer, or a local CXR-BERT)")
    p.add_argument("--out", required=True, help="output folder (checkpoint.pt, last.pt, tokenizer/, ...)")
    p.add_argument("--config", help="YAML/JSON config file")
    p.add_argument("--section", default=stage, help=f"section of --config to read (default: {stage})")
    p.add_argument("--config-json", help="JSON object overriding config keys, e.g. '{\"max_steps\": 4}'")
    p.add_argument("--seed", type=int, help="overrides the config's seed (the workflow runs one align job per "
                                            "seed of align.seeds)")
    p.add_argument("--print-defaults", action="store_true", help="print the default config and exit")
    return p


def parse(stage: str, parser: argparse.ArgumentParser, argv) -> tuple[argparse.Namespace, dict] | None:
    """The stage's arguments and settings (see module docstring): ``--config``/``--section``, ``--config-json``,
    ``--seed`` over the recipe's settings. None after ``--print-defaults`` printed the published settings (checked
    before the required arguments are parsed)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--print-defaults" in argv:
        print(json.dumps(defaults(stage), indent=2))
        return None
    args = parser.parse_args(argv)
    cfg = load_stage_config(defaults(stage), args.config, args.section, args.config_json, stage=stage)
    if args.seed is not None:
        cfg["seed"] = args.seed
    return args, cfg


def load_stage_config(base: dict, config_file: str | None, section: str | None, config_json: str | None,
                      stage: str | None = None) -> dict:
    """Merge the stage defaults (the named recipe's settings for ``stage``) with a config file section and a JSON
    string (see module docstring)."""
    cfg = dict(base)
    layers = []
    if config_file:
        text = Path(config_file).read_text()
        if config_file.endswith((".yaml", ".yml")):
            import yaml

            doc = yaml.safe_load(text) or {}
        else:
            doc = json.loads(text)
        sec = doc.get(section, None) if section else doc
        if not isinstance(sec, dict):
            raise ValueError(f"{config_file}: section {section!r} is missing or not a mapping")
        layers.append((sec, f"{config_file}:{section}"))
    if config_json:
        layers.append((json.loads(config_json), "--config-json"))
    name = next((layer["recipe"] for layer, _ in reversed(layers) if "recipe" in layer), cfg.get("recipe"))
    if stage is not None and name not in (None, "published"):
        cfg = {**recipes.settings(stage, name), "recipe": name}
    for layer, where in layers:
        _merge(cfg, layer, where)
    return cfg


def _merge(cfg: dict, new: dict, where: str) -> None:
    unknown = sorted(set(new) - set(cfg))
    if unknown:
        import difflib

        hints = [f"{k} (did you mean {m[0]}?)" if (m := difflib.get_close_matches(k, list(cfg), 1)) else k
                 for k in unknown]
        raise ValueError(f"{where}: unknown key(s) {', '.join(hints)}; known: {sorted(cfg)}")
    merged = recipes.merge(cfg, new)
    cfg.clear()
    cfg.update(merged)


def train(stage: str, cfg: dict, inputs: dict, task, out_dir: str | Path, info: D.DistInfo) -> int:
    """Run the engine on ``task`` inside the stage's MLflow run (rank 0) and write ``train_summary.json``.

    ``cfg``: the stage's settings; ``inputs``: the paths it read (``pairs``, ``tokenizer``, ...), logged and saved with
    the settings. Exit codes: 0 done; 3 non-finite loss; 128+signal after a checkpoint on SIGTERM/SIGUSR1/SIGINT
    (so the workflow manager retries and the rerun resumes)."""
    import contextlib

    from alta import tracking
    from alta.train import engine

    log = logging.getLogger(f"alta.train.{stage}")
    out = Path(out_dir)
    config = {**cfg, **inputs}
    recipe = recipe_record(stage, config)
    log.info("%s: rank %d/%d (%s) on %s", stage, info.rank, info.world_size, info.launcher, info.device)
    if info.is_main:
        (log.info if not recipe["differences"] else log.warning)("%s: %s", stage, recipe["summary"])
    task.meta.update(recipe=recipe["name"], recipe_differences=recipe["differences"])
    try:
        ctx = tracking.stage_run(stage, params=config, out_dir=out) if info.is_main else contextlib.nullcontext()
        with ctx as run:
            if run is not None:
                n_train, n_all = engine.trainable_count(task.model)
                run.log_params({"world_size": info.world_size, "launcher": info.launcher, "device": info.device,
                                "trainable_params": n_train, "total_params": n_all})
                run.set_tags({"alta.recipe": recipe["name"], "alta.recipe_differences": recipe["tag"]})
                if task.meta.get("inputs"):
                    run.log_params(task.meta["inputs"])
                effective = effective_model_settings(task.model)
                if effective:
                    run.log_params({"effective": effective})
                    io.write_json(out / "effective_model.json", effective)
                    run.log_artifact(out / "effective_model.json")
            # rank 0 reads the inputs once and every rank takes its digest, so that all ranks agree on resuming
            digest = D.broadcast_object(input_digest({**inputs, **task.input_files}) if info.is_main else None)
            summary = engine.fit(task, engine.TrainConfig.from_dict(cfg), config, out, info, run,
                                 input_digest=digest)
            if run is not None:
                io.write_json(out / "train_summary.json", summary)
                for name in ("train_summary.json", "tokenizer"):
                    if (out / name).exists():
                        run.log_artifact(out / name)
        log.info("%s done: %s", stage, summary)
        return 0
    except engine.NonFiniteLoss as exc:
        log.error("%s", exc)
        return 3
    except engine.Preempted as exc:
        log.warning("%s", exc)
        return exc.exit_code


def recipe_record(stage: str, config: dict) -> dict:
    """The recipe a stage runs and its differences from the published method (``alta.recipes``)."""
    name = config.get("recipe", "published")
    diff = recipes.differences(stage, config)
    summary = recipes.describe(name, diff)
    if stage == "text_pretrain":
        summary = "a stand-in for CXR-BERT-specialized, which the published method starts from; " + summary
    tag = "none" if not diff else "; ".join(f"{k}={d['value']!r}" for k, d in diff.items())
    return {"name": name, "differences": diff, "summary": summary, "tag": tag[:4900]}


def effective_model_settings(model) -> dict:
    """The model's resolved preset geometry (``cfg``) and ALTA options after mode defaults and overrides: what the
    run trained with, not only what the config named."""
    import dataclasses

    model = getattr(model, "module", model)
    out = {}
    for name in ("options", "cfg"):
        value = getattr(model, name, None)
        if dataclasses.is_dataclass(value):
            out["model_options" if name == "options" else "model_config"] = dataclasses.asdict(value)
    return out


def weight_files(**paths) -> dict:
    """sha256 and size of each weight file a stage starts from (a directory: each of its weight files), as MLflow
    params ``<name>_sha256`` / ``<name>_bytes`` (``<name>.<file>_...`` inside a directory); ``none`` paths skipped."""
    out: dict = {}
    for name, p in paths.items():
        if p in (None, "none"):
            continue
        p = Path(p)
        files = ([f for f in sorted(p.iterdir()) if f.suffix in (".safetensors", ".bin", ".pt", ".pth")]
                 if p.is_dir() else [p])
        for f in files:
            key = name if not p.is_dir() else f"{name}.{f.name}"
            out[f"{key}_sha256"] = io.sha256_file(f)
            out[f"{key}_bytes"] = f.stat().st_size
    return out


# Files up to this size are hashed by content; larger ones (the image store of a MIMIC shard is GBs, MRM.pth
# hundreds of MB) by size and modification time, so that a job start does not read every store.
CONTENT_DIGEST_MAX_BYTES = 64 << 20


def input_digest(inputs: dict) -> str:
    """One sha256 over every input file (directories: each file in them) that ``inputs`` names.

    A file of up to ``CONTENT_DIGEST_MAX_BYTES`` enters by its contents, a larger one by its size and modification
    time (any rewrite, re-extraction or copy without preserved times changes them). The engine resumes from
    ``last.pt`` only under the same settings *and* this digest: after an input changes (re-extracted images, a
    retrained text stand-in, another MRM.pth at the same path) the rerun starts afresh instead of continuing, or
    returning at once, from the weights trained on the old inputs."""
    import hashlib

    def fingerprint(f: Path) -> str:
        st = f.stat()
        if st.st_size <= CONTENT_DIGEST_MAX_BYTES:
            return io.sha256_file(f)
        return f"size={st.st_size},mtime_ns={st.st_mtime_ns}"

    h = hashlib.sha256()
    for name, p in sorted(inputs.items()):
        path = Path(str(p))
        if p in (None, "none") or not path.exists():
            continue
        files = sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]
        for f in files:
            h.update(f"{name}:{f.relative_to(path) if path.is_dir() else ''}:{fingerprint(f)}\n".encode())
    return h.hexdigest()


def save_tokenizer(tok, dest: Path) -> None:
    """Save a tokenizer directory atomically (``io.atomic_dir``)."""
    with io.atomic_dir(dest) as tmp:
        tok.save_pretrained(str(tmp))
