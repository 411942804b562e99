"""Shared helpers of the bench sections: repeated timing with medians, machine and version records, table rows.

Every section returns ``{"rows": [Row...], "details": {...}}``. A row is a dict ``{section, metric, value, unit,
note}`` (value a float or int, or None when not measured); :mod:`bench.run` prints them and writes them to JSON
and Markdown. Times are wall-clock (``time.perf_counter``); a measurement is the median of ``repeats`` runs after
``warmup`` unrecorded ones, so that one slow run (page cache, another process on a shared machine) does not set
the result. Ratios are always computed from medians measured in the same process and run.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]


def timed(fn: Callable[[], object], repeats: int, warmup: int = 1) -> dict:
    """Run ``fn`` ``warmup + repeats`` times; return median/min/max seconds of the recorded runs and all of them."""
    for _ in range(warmup):
        fn()
    runs = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(runs), "min_s": min(runs), "max_s": max(runs),
            "runs_s": [round(r, 6) for r in runs]}


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, dict]:
    """Time several functions round-robin (a, b, c, a, b, c, ...) so that a burst of load from other processes
    hits all of them alike and their ratios stay meaningful; per function the result of :func:`timed`."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    runs: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(max(1, repeats)):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            runs[k].append(time.perf_counter() - t0)
    return {k: {"median_s": statistics.median(v), "min_s": min(v), "max_s": max(v),
                "runs_s": [round(r, 6) for r in v]} for k, v in runs.items()}


def row(section: str, metric: str, value, unit: str, note: str = "") -> dict:
    if isinstance(value, float):
        value = float(f"{value:.4g}")
    return {"section": section, "metric": metric, "value": value, "unit": unit, "note": note}


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either is missing or b is zero."""
    if a is None or b is None or b == 0:
        return None
    return a / b


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def machine_info() -> dict:
    """What the numbers were measured on (the load average tells whether others shared the machine)."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {"platform": platform.platform(),
            "cpu_model": _cpu_model(), "logical_cpus": os.cpu_count(), "usable_cpus": usable,
            "mem_total_gib": _mem_total_gib(), "loadavg_at_start": load, "python": platform.python_version()}


PACKAGES = ("torch", "torchvision", "timm", "transformers", "tokenizers", "numpy", "pandas", "pyarrow", "pydicom",
            "pylibjpeg", "pylibjpeg-libjpeg", "pylibjpeg-openjpeg", "pillow", "scikit-image", "scipy")


def versions() -> dict:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    try:
        r = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        out["alta_git_commit"] = r.stdout.strip() or "unknown"
        d = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, timeout=5)
        out["alta_git_dirty"] = bool(d.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        out["alta_git_commit"] = "unknown"
    return out


def fmt_value(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,d}"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 100:
        return f"{v:.1f}"
    if abs(v) >= 1:
        return f"{v:.2f}"
    return f"{v:.3g}"


def text_table(rows: list[dict]) -> str:
    cells = [(r["section"], r["metric"], fmt_value(r["value"]), r["unit"], r["note"]) for r in rows]
    head = ("section", "metric", "value", "unit", "note")
    widths = [max(len(c[i]) for c in [head, *cells]) for i in range(4)]
    lines = []
    for c in [head, *cells]:
        lines.append("  ".join([c[0].ljust(widths[0]), c[1].ljust(widths[1]), c[2].rjust(widths[2]),
                                c[3].ljust(widths[3]), c[4]]).rstrip())
        if c is head:
            lines.append("-" * len(lines[0]))
    return "\n".join(lines)


def markdown_table(rows: list[dict]) -> str:
    lines = ["| section | metric | value | unit | note |", "|---|---|---:|---|---|"]
    for r in rows:
        cells = [r["section"], r["metric"], fmt_value(r["value"]), r["unit"], r["note"]]
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)
