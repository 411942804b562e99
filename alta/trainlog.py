"""Training-side logging helpers for alta.train: interval meters, system metrics, the loss-curve PNG, and the
stage config loader shared by ``alta mrm`` / ``alta align``.

Config precedence (lowest to highest): the settings of the chosen recipe (``alta.recipes``; ``recipe: published``
unless the config names another), ``--config FILE --section NAME`` (a YAML or JSON file; the section is a mapping),
``--config-json '{...}'``. Unknown keys are an error naming them. Every stage logs at start which recipe it runs and
each setting that differs from the published method, tags its MLflow run with the same (``alta.recipe``,
``alta.recipe_differences``) and stores both in its checkpoints (``recipe``, ``recipe_differences``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from alta import distributed as D
from alta import io
from alta import recipes


class IntervalMeter:
    """Sums loss terms and samples between log points; ``flush`` averages over the interval and the ranks."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.count = 0
        self.samples = 0
        self.t0 = time.perf_counter()

    def add(self, terms: dict[str, float], global_samples: int) -> None:
        for k, v in terms.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.count += 1
        self.samples += global_samples

    def flush(self, device, step: int, lr: float, epoch: int) -> dict:
        names = sorted(self.sums)
        means = D.all_reduce_mean([self.sums[n] / max(self.count, 1) for n in names], device) if names else []
        dt = time.perf_counter() - self.t0
        rec = {"step": step, "epoch": epoch, "lr": lr, "samples_per_s": self.samples / dt if dt > 0 else 0.0,
               **dict(zip(names, means))}
        self.__init__()
        return rec


def system_metrics(device) -> dict[str, float]:
    """Process CPU %, resident memory and system memory use (and peak GPU memory on CUDA)."""
    import psutil

    proc = psutil.Process()
    out = {"sys_cpu_percent": psutil.cpu_percent(interval=None), "proc_rss_gb": proc.memory_info().rss / 2**30,
           "sys_mem_percent": psutil.virtual_memory().percent}
    if getattr(device, "type", "cpu") == "cuda":
        import torch

        out["gpu_max_mem_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


def plot_history(history: list[dict], dest: Path) -> None:
    """Loss terms and lr against the optimiser step, written atomically as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    terms = sorted({k for h in history for k in h if k.startswith("loss")})
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(7, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    for t in terms:
        ax.plot(steps, [h.get(t, float("nan")) for h in history], label=t)
    ax.set_ylabel("loss")
    ax.legend(loc="upper right", fontsize=8)
    ax2.plot(steps, [h["lr"] for h in history], color="k")
    ax2.set_ylabel("lr")
    ax2.set_xlabel("optimiser step")
    fig.tight_layout()
    with io.atomic_path(dest, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def load_stage_config(defaults: dict, config_file: str | None, section: str | None, config_json: str | None,
                      stage: str | None = None) -> dict:
    """Merge the stage defaults (the named recipe's settings for ``stage``) with a config file section and a JSON
    string (see module docstring)."""
    cfg = dict(defaults)
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


def call_with_supported(fn, **kwargs):
    """Call a model builder with the keyword arguments it declares (the rest are dropped, None ones too)."""
    import inspect

    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return fn(**{k: v for k, v in kwargs.items() if v is not None})
    return fn(**{k: v for k, v in kwargs.items() if k in params and v is not None})


def model_sizes(model) -> tuple[int, int]:
    """(S, 2S): the encoder input size and the reconstruction-target size of an MRM/ALTA model."""
    cfg = getattr(model, "cfg", None)
    s = getattr(model, "img_size", None) or getattr(cfg, "img_size", None)
    t = getattr(model, "target_size", None) or getattr(cfg, "target_size", None) or (2 * s if s else None)
    if not s:
        raise ValueError(f"{type(model).__name__} exposes neither img_size nor cfg.img_size")
    return int(s), int(t)


def save_tokenizer(tok, dest: Path) -> None:
    """Save a tokenizer directory atomically (``io.atomic_dir``)."""
    with io.atomic_dir(dest) as tmp:
        tok.save_pretrained(str(tmp))


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


def run_stage(stage: str, config: dict, out_dir: Path, build_task) -> int:
    """Shared stage driver: distributed init, tracking on rank 0, the engine, exit codes.

    ``build_task(info) -> alta.train.Task``. Exit codes: 0 done; 3 non-finite loss; 128+signal after a
    checkpoint on SIGTERM/SIGUSR1 (so the workflow manager retries and the rerun resumes).
    """
    import contextlib
    import logging

    from alta import tracking
    from alta import train as T

    log = logging.getLogger(f"alta.{stage}")
    info = D.init()
    log.info("%s: rank %d/%d (%s) on %s", stage, info.rank, info.world_size, info.launcher, info.device)
    cfg = T.TrainConfig.from_dict(config)
    recipe = recipe_record(stage, config)
    if info.is_main:
        (log.info if not recipe["differences"] else log.warning)("%s: %s", stage, recipe["summary"])
    try:
        task = build_task(info)
        task.meta.update(recipe=recipe["name"], recipe_differences=recipe["differences"])
        ctx = tracking.stage_run(stage, params=config, out_dir=out_dir) if info.is_main else contextlib.nullcontext()
        with ctx as run:
            if run is not None:
                n_train, n_all = T.trainable_count(task.model)
                run.log_params({"world_size": info.world_size, "launcher": info.launcher, "device": info.device,
                                "trainable_params": n_train, "total_params": n_all})
                run.set_tags({"alta.recipe": recipe["name"], "alta.recipe_differences": recipe["tag"]})
                if task.meta.get("inputs"):
                    run.log_params(task.meta["inputs"])
                effective = effective_model_settings(task.model)
                if effective:
                    run.log_params({"effective": effective})
                    io.write_json(Path(out_dir) / "effective_model.json", effective)
                    run.log_artifact(Path(out_dir) / "effective_model.json")
            summary = T.fit(task, cfg, config, out_dir, info, run)
            if run is not None:
                io.write_json(Path(out_dir) / "train_summary.json", summary)
                for name in ("train_summary.json", "tokenizer"):
                    if (Path(out_dir) / name).exists():
                        run.log_artifact(Path(out_dir) / name)
        log.info("%s done: %s", stage, summary)
        return 0
    except T.NonFiniteLoss as exc:
        log.error("%s", exc)
        return 3
    except T.Preempted as exc:
        log.warning("%s", exc)
        return exc.exit_code
    finally:
        D.cleanup()


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


def recipe_record(stage: str, config: dict) -> dict:
    """The recipe a stage runs and its differences from the published method (``alta.recipes``)."""
    name = config.get("recipe", "published")
    diff = recipes.differences(stage, config)
    summary = recipes.describe(name, diff)
    if stage == "text_pretrain":
        summary = "a stand-in for CXR-BERT-specialized, which the published method starts from; " + summary
    tag = "none" if not diff else "; ".join(f"{k}={d['value']!r}" for k, d in diff.items())
    return {"name": name, "differences": diff, "summary": summary, "tag": tag[:4900]}


def stage_parser(stage: str, doc: str, images: bool = True) -> argparse.ArgumentParser:
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


def stage_main(stage: str, defaults: dict, parser: argparse.ArgumentParser, argv, build_task, inputs) -> int:
    """Parse ``argv``, merge the config over ``defaults`` and run the stage; ``inputs(args)`` names the input
    paths recorded with the run's parameters."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--print-defaults" in argv:
        print(json.dumps(defaults, indent=2))
        return 0
    args = parser.parse_args(argv)
    cfg = load_stage_config(defaults, args.config, args.section, args.config_json, stage=stage)
    if args.seed is not None:
        cfg["seed"] = args.seed
    config = {**cfg, "pairs": str(args.pairs), "tokenizer": str(args.tokenizer), **inputs(args)}
    if getattr(args, "images", None) is not None:
        config["images"] = str(args.images)
    return run_stage(stage, config, Path(args.out), lambda info: build_task(args, cfg, info))
