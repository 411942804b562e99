"""What a training run reports while it runs: interval means of the loss terms, system metrics, the progress line
and the loss-curve PNG (used by :mod:`alta.train.engine`)."""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from alta import io
from alta.train import distributed as D


class IntervalMeter:
    """Sums the loss terms and samples between log points on the training device (no host sync per step); ``flush``
    averages them over the interval and the ranks with one all_reduce, the interval's only sync."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0
        self.samples = 0
        self.t0 = time.perf_counter()

    def add(self, terms: dict[str, torch.Tensor], global_samples: int) -> None:
        for k, v in terms.items():
            v = v.detach().to(torch.float64)
            self.sums[k] = self.sums[k] + v if k in self.sums else v
        self.count += 1
        self.samples += global_samples

    def flush(self, step: int, lr: float, epoch: int) -> dict:
        names = sorted(self.sums)
        means = D.all_reduce_mean(torch.stack([self.sums[n] for n in names]) / max(self.count, 1)) if names else []
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
        out["gpu_max_mem_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


def progress_line(rec: dict, total: int, spe: int, elapsed: float, done: int) -> str:
    """``step 120/600 (epoch 3.0/15) loss 1.234 loss_mim 0.81 ... | 52.1 samples/s | eta 0:04:10`` for the log."""
    eta = elapsed / done * (total - rec["step"]) if done else float("nan")
    eta_s = "?" if not math.isfinite(eta) else f"{int(eta // 3600)}:{int(eta % 3600 // 60):02d}:{int(eta % 60):02d}"
    terms = " ".join(f"{k} {v:.4g}" for k, v in rec.items() if k.startswith("loss"))
    return (f"step {rec['step']}/{total} (epoch {rec['step'] / spe:.1f}/{total / spe:.1f}) {terms} lr {rec['lr']:.3g} "
            f"| {rec['samples_per_s']:.1f} samples/s | eta {eta_s}")


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
