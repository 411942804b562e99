"""The training engine shared by the `mrm` and `align` stages (method.md §1.5, §2.9; architecture.md Models).

One loop: DDP (gloo on CPU, nccl on GPU) when launched by torchrun or srun, bf16 autocast on CUDA (fp16 + GradScaler
optional), AdamW(β 0.9, 0.95) on the model's parameter groups, lr = blr · global_batch / 256 with per-iteration
linear warmup and a half-cycle cosine laid out over ``schedule_epochs`` but stopped at ``max_epochs`` (or
``max_steps``), gradient accumulation (MRM only), and after every optimiser step the task's ``after_step`` hook
(ALTA: ``clamp_logit_scales``).

Checkpoints in ``out_dir`` (rank 0 writes, atomically):

* ``last.pt`` every ``ckpt_every`` steps (0: once per epoch), at the end, and at the next step boundary after
  SIGTERM or SIGUSR1 (Slurm preemption / time limit). After that save the process exits with 128+signal (143 for
  SIGTERM, 138 for SIGUSR1): non-zero on purpose, so that Snakemake (``--retries``) or a Slurm requeue starts the job
  again, and the new run resumes from ``last.pt``.
* ``epochNN.pt`` every ``save_every_epochs`` epochs; ``best.pt`` whenever the validation callback improves.
* ``checkpoint.pt``: the final weights (same content as the final ``last.pt``).

Content: ``{'model', 'optimizer', 'scaler', 'epoch', 'step', 'args', 'preset', 'mode', 'tokenizer_dir', 'rng',
'history', 'best', 'config_hash'}``; ``rng`` holds each rank's torch/CUDA/augmentation generator states, so a run
that is stopped and restarted with the same out dir and config reaches the same final step with the same weights as
an uninterrupted one. A ``last.pt`` written under a different config (hash of the result-relevant keys) is not
resumed: training starts afresh and says so.

A non-finite loss stops training with :class:`NonFiniteLoss` naming the step and the loss terms; the last good
checkpoint is left untouched (the stage exits with code 3).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from alta import data as altadata
from alta import distributed as D
from alta import io
from alta.trainlog import IntervalMeter, plot_history, system_metrics

log = logging.getLogger("alta.train")

# Keys that do not change what is computed; everything else must match for a resume.
# max_steps / max_epochs only say where to stop (the schedule depends on schedule_epochs), so a rerun with a larger
# value continues the same run.
NON_RESULT_KEYS = {"num_workers", "log_every", "ckpt_every", "save_every_epochs", "eval_every_epochs",
                   "val_max_rows", "max_steps", "max_epochs"}


@dataclass
class TrainConfig:
    """The engine's settings. No defaults here: they live in ``alta.recipes`` (one place); stages build this from
    their merged config with ``from_dict``."""

    batch_size: int  # global samples per optimiser step, whatever the device count
    accum_steps: int
    blr: float
    weight_decay: float
    warmup_epochs: float
    schedule_epochs: float
    max_epochs: float
    max_steps: int | None  # overrides max_epochs (demos, tests)
    ckpt_every: int
    save_every_epochs: int
    eval_every_epochs: int
    log_every: int
    seed: int
    precision: str  # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp16 | fp32
    num_workers: int
    batch_unique_study: bool
    find_unused_parameters: bool

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


class NonFiniteLoss(RuntimeError):
    pass


class Preempted(RuntimeError):
    def __init__(self, signum: int):
        super().__init__(f"stopped by signal {signal.Signals(signum).name}; checkpoint saved, resume by rerunning")
        self.exit_code = 128 + signum


@dataclass
class Task:
    """What a stage hands the engine. ``forward(model, batch, device) -> dict`` with at least ``loss``."""

    model: torch.nn.Module
    dataset: torch.utils.data.Dataset
    groups: Any  # per-row study ids (for batch_unique_study)
    collate: Callable
    forward: Callable[[torch.nn.Module, dict, torch.device], dict]
    param_groups: Callable[[torch.nn.Module], list[dict]]
    generator: torch.Generator  # augmentation randomness (checkpointed)
    after_step: Callable[[torch.nn.Module], None] | None = None
    validate: Callable[[torch.nn.Module], dict[str, float] | None] | None = None  # {"metric": name, "value": v}
    meta: dict = field(default_factory=dict)  # preset, mode, tokenizer_dir, args (saved in checkpoints)


def lr_at(step: int, steps_per_epoch: int, peak: float, warmup_epochs: float, schedule_epochs: float) -> float:
    """Per-iteration MAE schedule with fractional epoch e = step / steps_per_epoch."""
    e = step / steps_per_epoch
    if e < warmup_epochs:
        return peak * e / warmup_epochs
    return peak * 0.5 * (1.0 + math.cos(math.pi * (e - warmup_epochs) / (schedule_epochs - warmup_epochs)))


def _autocast(device: torch.device, precision: str):
    if device.type == "cuda" and precision in ("auto", "bf16"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if device.type == "cuda" and precision == "fp16":
        return torch.autocast("cuda", dtype=torch.float16)
    if device.type == "cpu" and precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _rng_state(task: Task, device: torch.device) -> dict:
    st = {"torch": torch.get_rng_state(), "aug": task.generator.get_state()}
    if device.type == "cuda":
        st["cuda"] = torch.cuda.get_rng_state(device)
    return st


def _set_rng_state(st: dict, task: Task, device: torch.device) -> None:
    torch.set_rng_state(st["torch"])
    task.generator.set_state(st["aug"])
    if device.type == "cuda" and "cuda" in st:
        torch.cuda.set_rng_state(st["cuda"], device)


def _save(path: Path, obj: dict) -> None:
    with io.atomic_path(path) as tmp:
        torch.save(obj, tmp)


def result_hash(config: dict) -> str:
    return io.config_hash({k: v for k, v in config.items() if k not in NON_RESULT_KEYS})


def fit(task: Task, cfg: TrainConfig, config: dict, out_dir: str | Path, info: D.DistInfo, run=None) -> dict:
    """Train ``task.model`` to the final step; return a summary. ``run``: rank 0's tracking.StageRun (or None)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(info.device)
    world = info.world_size
    if cfg.batch_size % (world * cfg.accum_steps):
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by world size {world} x accum_steps "
                         f"{cfg.accum_steps}")
    micro = cfg.batch_size // (world * cfg.accum_steps)
    sampler = altadata.StudyBatchSampler(task.groups, micro, world, info.rank, cfg.seed, cfg.batch_unique_study,
                                         cfg.accum_steps)
    spe = sampler.num_batches // cfg.accum_steps
    total = int(cfg.max_steps) if cfg.max_steps else int(round(cfg.max_epochs * spe))
    peak = cfg.blr * cfg.batch_size / 256
    chash = result_hash(config)

    torch.manual_seed(cfg.seed + info.rank)
    task.generator.manual_seed(cfg.seed * 1000 + info.rank + 1)
    model = task.model.to(device)
    groups = task.param_groups(model)
    opt = torch.optim.AdamW(groups, lr=peak, betas=(0.9, 0.95), fused=device.type == "cuda")
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16" and device.type == "cuda")
    step, history, best = 0, [], None

    last = out / "last.pt"
    if last.exists():
        from alta.models.checkpoints import read_checkpoint

        ck = read_checkpoint(last)
        if ck.get("config_hash") != chash:
            log.warning("%s was written with another config (hash %s != %s); starting afresh", last,
                        ck.get("config_hash"), chash)
        else:
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optimizer"])
            scaler.load_state_dict(ck["scaler"])
            step, history, best = int(ck["step"]), ck.get("history", []), ck.get("best")
            rngs = ck.get("rng") or []
            if len(rngs) == world:
                _set_rng_state(rngs[info.rank], task, device)
            else:
                log.warning("resuming with world size %d (checkpoint: %d); RNG streams are re-seeded", world,
                            len(rngs))
                torch.manual_seed(cfg.seed + info.rank + 7919 * step)
            log.info("resumed from %s at step %d of %d", last, step, total)
        del ck

    ddp = model
    if info.distributed:
        ddp = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=cfg.find_unused_parameters)

    stop = {"signum": 0}

    def _handler(signum, _frame):
        stop["signum"] = signum

    # SIGINT too: Ctrl-C on Snakemake (or torchrun passing it on) stops training at the next step with last.pt saved
    old = {s: signal.signal(s, _handler) for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)}

    def checkpoint(path: Path, epoch: int) -> None:
        rngs = D.gather_object(_rng_state(task, device))
        if info.is_main:
            _save(path, {"model": model.state_dict(), "optimizer": opt.state_dict(), "scaler": scaler.state_dict(),
                         "epoch": epoch, "step": step, "args": config, "config_hash": chash, "rng": rngs,
                         "history": history, "best": best, "world_size": world, **task.meta})
        D.barrier()

    def validate(epoch: int) -> None:
        nonlocal best
        if task.validate is None:
            return
        res = None
        if info.is_main:
            model.eval()
            # validation must not move the training RNG streams (resume equivalence)
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad(), \
                    _autocast(device, cfg.precision):
                res = task.validate(model)
            model.train()
        res = D.broadcast_object(res)
        if res is None:
            return
        if run is not None:
            run.log_metrics({f"val_{res['metric']}": res["value"]}, step=step)
        if best is None or res["value"] > best["value"]:
            best = {**res, "step": step, "epoch": epoch}
            if info.is_main:
                _save(out / "best.pt", {"model": model.state_dict(), "epoch": epoch, "step": step, "args": config,
                                        "best": best, **task.meta})
            D.barrier()

    model.train()
    meter = IntervalMeter()
    started, start_step = time.perf_counter(), step
    if info.is_main:
        log.info("training %d steps (%d per epoch, global batch %d = %d per rank x %d ranks x %d accumulation), "
                 "peak lr %.3g, from step %d", total, spe, cfg.batch_size, micro, world, cfg.accum_steps, peak, step)
    try:
        while step < total:
            epoch = step // spe
            sampler.set_epoch(epoch, (step % spe) * cfg.accum_steps)
            loader = altadata.make_loader(task.dataset, sampler, task.collate, cfg.num_workers,
                                          device.type == "cuda", cfg.seed + epoch)
            batches = iter(loader)
            for _ in range(spe - step % spe):
                lr = lr_at(step, spe, peak, cfg.warmup_epochs, cfg.schedule_epochs)
                for g in opt.param_groups:
                    g["lr"] = lr
                for k in range(cfg.accum_steps):
                    batch = next(batches)
                    sync = contextlib.nullcontext() if (k == cfg.accum_steps - 1 or not info.distributed) \
                        else ddp.no_sync()
                    with sync:
                        with _autocast(device, cfg.precision):
                            outs = task.forward(ddp, batch, device)
                        terms = {n: float(v.detach()) for n, v in outs.items() if torch.is_tensor(v) and v.ndim == 0}
                        bad, _ = D.all_reduce_max([0.0 if math.isfinite(terms["loss"]) else 1.0, 0.0], device)
                        if bad:
                            raise NonFiniteLoss(f"non-finite loss at step {step} (epoch {epoch}): " + ", ".join(
                                f"{n}={v}" for n, v in terms.items()) + f"; the last good checkpoint is {last}")
                        scaler.scale(outs["loss"] / cfg.accum_steps).backward()
                    meter.add(terms, len(batch["index"]) * world)
                scaler.step(opt)
                scaler.update()
                opt.zero_grad(set_to_none=True)
                if task.after_step is not None:
                    task.after_step(model)
                step += 1
                if step % cfg.log_every == 0 or step == total:
                    rec = meter.flush(device, step, lr, epoch)
                    history.append(rec)
                    if info.is_main:
                        log.info("%s", progress_line(rec, total, spe, time.perf_counter() - started, step - start_step))
                    if run is not None:
                        run.log_metrics({**{k: v for k, v in rec.items() if k != "step"}, **system_metrics(device)},
                                        step=step)
                signum = int(D.all_reduce_max([float(stop["signum"])], device)[0])
                if signum:
                    checkpoint(last, epoch)
                    raise Preempted(signum)
                end_of_epoch = step % spe == 0
                if (cfg.ckpt_every and step % cfg.ckpt_every == 0) or (not cfg.ckpt_every and end_of_epoch):
                    checkpoint(last, epoch)
                if end_of_epoch and cfg.save_every_epochs and (step // spe) % cfg.save_every_epochs == 0:
                    checkpoint(out / f"epoch{step // spe:02d}.pt", epoch)
                if (end_of_epoch and (step // spe) % max(cfg.eval_every_epochs, 1) == 0) or step == total:
                    validate(epoch)
                if step >= total:
                    break
            del batches, loader
        final_epoch = max(step - 1, 0) // spe
        checkpoint(last, final_epoch)
        if info.is_main:
            import shutil

            with io.atomic_path(out / "checkpoint.pt") as tmp:
                shutil.copyfile(last, tmp)
            if not (out / "best.pt").exists() and task.validate is not None:
                log.warning("no validation metric was computed; best.pt = final weights")
                with io.atomic_path(out / "best.pt") as tmp:
                    shutil.copyfile(last, tmp)
        D.barrier()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if info.is_main and history:
            plot_history(history, out / "loss_curve.png")
    summary = {"step": step, "total_steps": total, "steps_per_epoch": spe, "peak_lr": peak, "best": best,
               "micro_batch_per_rank": micro, "world_size": world}
    if run is not None:
        run.log_metrics({"final_step": step, "steps_per_epoch": spe, "peak_lr": peak}, step=step)
        run.set_tags({"alta.checkpoint": str(out / "checkpoint.pt"), "alta.preset": task.meta.get("preset"),
                      "alta.mode": task.meta.get("mode")})
        for name in ("loss_curve.png",):
            if (out / name).exists():
                run.log_artifact(out / name)
    return summary


def progress_line(rec: dict, total: int, spe: int, elapsed: float, done: int) -> str:
    """``step 120/600 (epoch 3.0/15) loss 1.234 loss_mim 0.81 ... | 52.1 samples/s | eta 0:04:10`` for the log."""
    eta = elapsed / done * (total - rec["step"]) if done else float("nan")
    eta_s = "?" if not math.isfinite(eta) else f"{int(eta // 3600)}:{int(eta % 3600 // 60):02d}:{int(eta % 60):02d}"
    terms = " ".join(f"{k} {v:.4g}" for k, v in rec.items() if k.startswith("loss"))
    return (f"step {rec['step']}/{total} (epoch {rec['step'] / spe:.1f}/{total / spe:.1f}) {terms} lr {rec['lr']:.3g} "
            f"| {rec['samples_per_s']:.1f} samples/s | eta {eta_s}")


def trainable_count(model: torch.nn.Module) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in model.parameters() if p.requires_grad), total
