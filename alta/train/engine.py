"""The training engine shared by the `mrm` and `align` stages (docs/method.md §1.5, §2.9; docs/architecture.md Models).

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

from alta import io
from alta.train import distributed as D
from alta.train import loader
from alta.train.monitor import IntervalMeter, plot_history, progress_line, system_metrics

log = logging.getLogger("alta.train.engine")

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
    input_files: dict = field(default_factory=dict)  # name -> path read besides the stage's inputs (image stores)


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


def fit(task: Task, cfg: TrainConfig, config: dict, out_dir: str | Path, info: D.DistInfo, run=None,
        input_digest: str | None = None) -> dict:
    """Train ``task.model`` to the final step; return a summary. ``config``: the run's full settings (saved in the
    checkpoints, hashed for resume); ``run``: rank 0's tracking.StageRun (or None); ``input_digest``: a hash of the
    input files' contents (``stage.input_digest``), hashed for resume with the settings."""
    loop = _Loop(task, cfg, config, Path(out_dir), info, run, input_digest)
    loop.resume()
    return loop.run()


class _Loop:
    """One training run: its optimiser state and position. ``resume`` (from last.pt), then ``run``: per optimiser
    step ``step`` (forward/backward of the micro-batches, one all_reduce of the non-finite and stop flags, the
    optimiser update) and ``end_of_step`` (logging, preemption, checkpoints, validation)."""

    def __init__(self, task: Task, cfg: TrainConfig, config: dict, out: Path, info: D.DistInfo, run,
                 input_digest: str | None = None) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.task, self.cfg, self.config, self.out, self.info, self.tracker = task, cfg, config, out, info, run
        self.device = torch.device(info.device)
        world = info.world_size
        if cfg.batch_size % (world * cfg.accum_steps):
            raise ValueError(f"batch_size {cfg.batch_size} is not divisible by world size {world} x accum_steps "
                             f"{cfg.accum_steps}")
        self.micro = cfg.batch_size // (world * cfg.accum_steps)
        self.sampler = loader.StudyBatchSampler(task.groups, self.micro, world, info.rank, cfg.seed,
                                                cfg.batch_unique_study, cfg.accum_steps)
        self.spe = self.sampler.num_batches // cfg.accum_steps
        self.total = int(cfg.max_steps) if cfg.max_steps else int(round(cfg.max_epochs * self.spe))
        self.peak = cfg.blr * cfg.batch_size / 256
        self.chash = result_hash({**config, "input_digest": input_digest} if input_digest else config)

        torch.manual_seed(cfg.seed + info.rank)
        task.generator.manual_seed(cfg.seed * 1000 + info.rank + 1)
        self.model = task.model.to(self.device)
        self.opt = torch.optim.AdamW(task.param_groups(self.model), lr=self.peak, betas=(0.9, 0.95),
                                     fused=self.device.type == "cuda")
        self.scaler = torch.amp.GradScaler(self.device.type,
                                           enabled=cfg.precision == "fp16" and self.device.type == "cuda")
        self.step, self.history, self.best = 0, [], None
        self.last = out / "last.pt"
        self.meter = IntervalMeter()
        self.signum = 0  # set by the signal handler; honoured at the next step boundary

    # -- resume ----------------------------------------------------------------------------------------------------
    def resume(self) -> None:
        """Continue from ``last.pt`` when it was written under the same result-relevant config and inputs."""
        if not self.last.exists():
            return
        from alta.models.checkpoints import read_checkpoint

        ck = read_checkpoint(self.last)
        if ck.get("config_hash") != self.chash:
            log.warning("%s was written with other settings or inputs (hash %s != %s); starting afresh", self.last,
                        ck.get("config_hash"), self.chash)
            return
        self.model.load_state_dict(ck["model"])
        self.opt.load_state_dict(ck["optimizer"])
        self.scaler.load_state_dict(ck["scaler"])
        self.step, self.history, self.best = int(ck["step"]), ck.get("history", []), ck.get("best")
        rngs = ck.get("rng") or []
        if len(rngs) == self.info.world_size:
            _set_rng_state(rngs[self.info.rank], self.task, self.device)
        else:
            log.warning("resuming with world size %d (checkpoint: %d); RNG streams are re-seeded",
                        self.info.world_size, len(rngs))
            torch.manual_seed(self.cfg.seed + self.info.rank + 7919 * self.step)
        log.info("resumed from %s at step %d of %d", self.last, self.step, self.total)

    # -- the loop --------------------------------------------------------------------------------------------------
    def run(self) -> dict:
        cfg, info = self.cfg, self.info
        self.ddp = self.model
        if info.distributed:
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=cfg.find_unused_parameters)

        def handler(signum, _frame):
            self.signum = signum

        # SIGINT too: Ctrl-C on Snakemake (or torchrun passing it on) stops training at the next step, last.pt saved
        old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)}
        self.model.train()
        self.started, self.start_step = time.perf_counter(), self.step
        if info.is_main:
            log.info("training %d steps (%d per epoch, global batch %d = %d per rank x %d ranks x %d accumulation), "
                     "peak lr %.3g, from step %d", self.total, self.spe, cfg.batch_size, self.micro,
                     info.world_size, cfg.accum_steps, self.peak, self.step)
        try:
            while self.step < self.total:
                epoch = self.step // self.spe
                self.sampler.set_epoch(epoch, (self.step % self.spe) * cfg.accum_steps)
                batches = iter(loader.make_loader(self.task.dataset, self.sampler, self.task.collate,
                                                  cfg.num_workers, self.device.type == "cuda", cfg.seed + epoch))
                for _ in range(self.spe - self.step % self.spe):
                    signum = self.train_step(batches, epoch)
                    self.end_of_step(epoch, signum)
                    if self.step >= self.total:
                        break
                del batches
            self.finish()
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            if info.is_main:  # also with no log point yet: the workflow declares the curve as an output
                plot_history(self.history, self.out / "loss_curve.png")
        return self.summary()

    # -- one optimiser step ----------------------------------------------------------------------------------------
    def train_step(self, batches, epoch: int) -> int:
        """Forward and backward of ``accum_steps`` micro-batches, then the update; returns the stop signal (0: none).

        The loss terms stay on the device (the meter sums them); the only host sync is the one all_reduce of the
        non-finite and stop flags, before the update, so a non-finite loss never reaches the weights."""
        cfg, info, device = self.cfg, self.info, self.device
        lr = lr_at(self.step, self.spe, self.peak, cfg.warmup_epochs, cfg.schedule_epochs)
        for g in self.opt.param_groups:
            g["lr"] = lr
        self.lr = lr
        micro_terms = []
        for k in range(cfg.accum_steps):
            batch = next(batches)
            sync = contextlib.nullcontext() if (k == cfg.accum_steps - 1 or not info.distributed) \
                else self.ddp.no_sync()
            with sync:
                with _autocast(device, cfg.precision):
                    outs = self.task.forward(self.ddp, batch, device)
                terms = {n: v.detach() for n, v in outs.items() if torch.is_tensor(v) and v.ndim == 0}
                self.scaler.scale(outs["loss"] / cfg.accum_steps).backward()
            micro_terms.append(terms)
            self.meter.add(terms, len(batch["index"]) * info.world_size)
        finite = torch.stack([torch.isfinite(t["loss"]) for t in micro_terms]).all()
        flags = torch.stack([(~finite).to(torch.float64), torch.tensor(float(self.signum), dtype=torch.float64,
                                                                        device=device)])
        bad, signum = D.all_reduce_max(flags)
        if bad:
            terms = next((t for t in micro_terms if not torch.isfinite(t["loss"])), micro_terms[-1])
            raise NonFiniteLoss(f"non-finite loss at step {self.step} (epoch {epoch}): " + ", ".join(
                f"{n}={float(v)}" for n, v in terms.items()) + f"; the last good checkpoint is {self.last}")
        self.scaler.step(self.opt)
        self.scaler.update()
        self.opt.zero_grad(set_to_none=True)
        if self.task.after_step is not None:
            self.task.after_step(self.model)
        self.step += 1
        return int(signum)

    # -- after each step -------------------------------------------------------------------------------------------
    def end_of_step(self, epoch: int, signum: int) -> None:
        """Log every ``log_every`` steps; on a stop signal save ``last.pt`` and raise :class:`Preempted`; then the
        periodic checkpoints and, at the end of an epoch (every ``eval_every_epochs``) or of training, validation."""
        cfg, step, spe = self.cfg, self.step, self.spe
        if step % cfg.log_every == 0 or step == self.total:
            rec = self.meter.flush(step, self.lr, epoch)
            self.history.append(rec)
            if self.info.is_main:
                log.info("%s", progress_line(rec, self.total, spe, time.perf_counter() - self.started,
                                             step - self.start_step))
            if self.tracker is not None:
                self.tracker.log_metrics({**{k: v for k, v in rec.items() if k != "step"},
                                       **system_metrics(self.device)}, step=step)
        if signum:
            self.checkpoint(self.last, epoch)
            raise Preempted(signum)
        end_of_epoch = step % spe == 0
        if (cfg.ckpt_every and step % cfg.ckpt_every == 0) or (not cfg.ckpt_every and end_of_epoch):
            self.checkpoint(self.last, epoch)
        if end_of_epoch and cfg.save_every_epochs and (step // spe) % cfg.save_every_epochs == 0:
            self.checkpoint(self.out / f"epoch{step // spe:02d}.pt", epoch)
        if (end_of_epoch and (step // spe) % max(cfg.eval_every_epochs, 1) == 0) or step == self.total:
            self.validate(epoch)

    def checkpoint(self, path: Path, epoch: int) -> None:
        rngs = D.gather_object(_rng_state(self.task, self.device))
        if self.info.is_main:
            _save(path, {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                         "scaler": self.scaler.state_dict(), "epoch": epoch, "step": self.step, "args": self.config,
                         "config_hash": self.chash, "rng": rngs, "history": self.history, "best": self.best,
                         "world_size": self.info.world_size, **self.task.meta})
        D.barrier()

    def validate(self, epoch: int) -> None:
        """Rank 0 scores ``task.validate``; a new best is saved as ``best.pt`` (and logged)."""
        if self.task.validate is None:
            return
        res = None
        if self.info.is_main:
            self.model.eval()
            # validation must not move the training RNG streams (resume equivalence)
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []), \
                    torch.no_grad(), _autocast(self.device, self.cfg.precision):
                res = self.task.validate(self.model)
            self.model.train()
        res = D.broadcast_object(res)
        if res is None:
            return
        if self.tracker is not None:
            self.tracker.log_metrics({f"val_{res['metric']}": res["value"]}, step=self.step)
        if self.best is None or res["value"] > self.best["value"]:
            self.best = {**res, "step": self.step, "epoch": epoch}
            if self.info.is_main:
                _save(self.out / "best.pt", {"model": self.model.state_dict(), "epoch": epoch, "step": self.step,
                                             "args": self.config, "best": self.best, **self.task.meta})
            D.barrier()

    # -- the end ---------------------------------------------------------------------------------------------------
    def finish(self) -> None:
        """The final ``last.pt``, ``checkpoint.pt`` (the same weights) and, without any validation, ``best.pt``."""
        self.checkpoint(self.last, max(self.step - 1, 0) // self.spe)
        if self.info.is_main:
            import shutil

            with io.atomic_path(self.out / "checkpoint.pt") as tmp:
                shutil.copyfile(self.last, tmp)
            if not (self.out / "best.pt").exists() and self.task.validate is not None:
                log.warning("no validation metric was computed; best.pt = final weights")
                with io.atomic_path(self.out / "best.pt") as tmp:
                    shutil.copyfile(self.last, tmp)
        D.barrier()

    def summary(self) -> dict:
        out, run = self.out, self.tracker
        summary = {"step": self.step, "total_steps": self.total, "steps_per_epoch": self.spe, "peak_lr": self.peak,
                   "best": self.best, "micro_batch_per_rank": self.micro, "world_size": self.info.world_size}
        if run is not None:
            run.log_metrics({"final_step": self.step, "steps_per_epoch": self.spe, "peak_lr": self.peak},
                            step=self.step)
            run.set_tags({"alta.checkpoint": str(out / "checkpoint.pt"), "alta.preset": self.task.meta.get("preset"),
                          "alta.mode": self.task.meta.get("mode")})
            if (out / "loss_curve.png").exists():
                run.log_artifact(out / "loss_curve.png")
        return summary


def trainable_count(model: torch.nn.Module) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in model.parameters() if p.requires_grad), total
