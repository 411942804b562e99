"""Launcher-agnostic distributed setup: torchrun, srun, or a plain single process.

Detection order (:func:`detect`):

1. torchrun / torch.distributed.launch: ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (+ ``MASTER_ADDR``/``MASTER_PORT``
   set by the launcher).
2. srun: ``SLURM_PROCID``, ``SLURM_STEP_NUM_TASKS`` (or ``SLURM_NTASKS`` inside a job step), ``SLURM_LOCALID``;
   ``MASTER_ADDR`` = first host of ``SLURM_STEP_NODELIST``/``SLURM_NODELIST`` unless already set; ``MASTER_PORT``
   derived from the job id unless set. A plain ``python`` in an sbatch script (no job step) is one process, even if
   the allocation has several tasks.
3. otherwise: one process, no process group.

Backend: ``nccl`` when CUDA is available (one GPU per local rank), else ``gloo`` on the CPU. The cross-rank feature
gather with gradient lives in ``alta.models.losses``; this module only sets up the group and small helpers.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launcher: str = "none"  # torchrun / srun / none
    device: str = "cpu"
    backend: str | None = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def first_host(nodelist: str) -> str:
    """First host of a Slurm node list: ``gpu[03-05,9],cpu1`` -> ``gpu03``; ``n1,n2`` -> ``n1``."""
    nodelist = nodelist.strip()
    m = re.match(r"^([^,\[]+)(\[([^\]]+)\])?", nodelist)
    if not m:
        raise ValueError(f"cannot parse Slurm node list {nodelist!r}")
    prefix, ranges = m.group(1), m.group(3)
    if not ranges:
        return prefix
    first = ranges.split(",")[0].split("-")[0]
    return prefix + first


def detect(env: dict[str, str] | None = None) -> DistInfo:
    """Rank/world/local rank from the environment (see module docstring); no process group is created."""
    env = dict(os.environ if env is None else env)
    cuda = torch.cuda.is_available()
    if "RANK" in env and "WORLD_SIZE" in env:
        rank, world, local = int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0))
        launcher = "torchrun"
    elif "SLURM_PROCID" in env and "SLURM_STEP_ID" in env:
        rank = int(env["SLURM_PROCID"])
        world = int(env.get("SLURM_STEP_NUM_TASKS", env.get("SLURM_NTASKS", "1")))
        local = int(env.get("SLURM_LOCALID", 0))
        launcher = "srun" if world > 1 else "none"
    else:
        rank, world, local, launcher = 0, 1, 0, "none"
    device = f"cuda:{local % max(torch.cuda.device_count(), 1)}" if cuda else "cpu"
    backend = ("nccl" if cuda else "gloo") if world > 1 else None
    return DistInfo(rank, world, local, launcher, device, backend)


def init(timeout_minutes: int = 30, env: dict[str, str] | None = None) -> DistInfo:
    """Detect, set the CUDA device and (for world > 1) create the default process group."""
    info = detect(env)
    if info.device.startswith("cuda"):
        torch.cuda.set_device(torch.device(info.device))
    if info.distributed and not dist.is_initialized():
        if info.launcher == "srun":
            nodes = os.environ.get("SLURM_STEP_NODELIST") or os.environ.get("SLURM_NODELIST") or "localhost"
            os.environ.setdefault("MASTER_ADDR", first_host(nodes))
            os.environ.setdefault("MASTER_PORT", str(12000 + int(os.environ.get("SLURM_JOB_ID", "0")) % 20000))
            os.environ["RANK"], os.environ["WORLD_SIZE"] = str(info.rank), str(info.world_size)
            os.environ["LOCAL_RANK"] = str(info.local_rank)
        kwargs = {"device_id": torch.device(info.device)} if info.backend == "nccl" else {}
        dist.init_process_group(info.backend, rank=info.rank, world_size=info.world_size,
                                timeout=datetime.timedelta(minutes=timeout_minutes), **kwargs)
    return info


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def barrier() -> None:
    if world() > 1:
        dist.barrier()


def all_reduce_max(values: torch.Tensor) -> list[float]:
    """Element-wise max over ranks of a float64 tensor on the training device (the engine's one per-step reduce:
    the non-finite-loss and stop flags); reading the result is the step's only host sync."""
    if world() > 1:
        dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return values.tolist()


def all_reduce_mean(values: torch.Tensor) -> list[float]:
    """Element-wise mean over ranks of a float64 tensor on the training device (the interval's loss means)."""
    if world() > 1:
        dist.all_reduce(values)
        values /= world()
    return values.tolist()


@contextlib.contextmanager
def session(timeout_minutes: int = 30):
    """``init()`` for the body of a stage, ``cleanup()`` after it, whatever happens in between."""
    info = init(timeout_minutes)
    try:
        yield info
    finally:
        cleanup()


def gather_object(obj):
    """List of ``obj`` from every rank (on every rank); ``[obj]`` in a single process."""
    if world() == 1:
        return [obj]
    out = [None] * world()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src: int = 0):
    if world() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
