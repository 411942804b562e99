"""The one bench command: run the performance sections, print the table, write results.json and results.md.

Usage (from the repository root)::

    python -m bench.run [--quick] [--only extraction loader step_cost text_stand_in] [--out-dir bench] [--step-threads N]
    python bench/run.py --quick --only extraction --out-dir /tmp/b

Outputs in ``--out-dir`` (default ``bench/``): ``results.json`` ``{command, quick, started_utc, duration_s,
machine, versions, threads, rows: [{section, metric, value, unit, note}], targets: [{name, value, target, met}],
sections: {name: details}, errors: {name: message}}`` and ``results.md`` (the same table in Markdown, with the
command). Inputs: ``../shared/data/dicom`` when present (skipped otherwise); every other file is generated in a
temporary folder (``--workdir``) that is deleted afterwards unless ``--keep-workdir``.

Per-core numbers: the thread variables of OpenMP/BLAS are set to 1 before numpy or torch are imported and the
extraction, loader and text stand-in sections run with ``torch.set_num_threads(1)``; the step-cost section uses
``--step-threads`` (default 1) and records it. Measurements that are compared are interleaved round-robin,
so load from other processes on a shared machine hits both sides of a ratio alike. ``--quick`` (smoke test,
< 3 minutes) uses fewer and smaller files, fewer repeats, and one timed vit_base step; its numbers are noisier.
Exit status 0 when every section ran (targets missed are reported, not failed), 1 when a section raised.
"""

from __future__ import annotations

import os
import sys

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy/torch: per-core measurements
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402

if __package__ in (None, ""):  # run as a script: make `bench` and `alta` importable from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common  # noqa: E402

SECTIONS = ("extraction", "loader", "step_cost", "text_stand_in")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke-test sizes (< 3 minutes; noisier numbers)")
    p.add_argument("--only", nargs="+", choices=SECTIONS, help="run only these sections (default: all)")
    p.add_argument("--out-dir", type=Path, default=common.REPO / "bench",
                   help="where results.json and results.md are written (default: bench/)")
    p.add_argument("--workdir", type=Path, help="scratch folder for generated inputs (default: a temporary one)")
    p.add_argument("--keep-workdir", action="store_true", help="do not delete the scratch folder")
    p.add_argument("--step-threads", type=int, default=1,
                   help="torch threads for the step-cost section (default 1: per core, and stable on a shared "
                        "machine, where a descheduled OpenMP thread stalls every parallel region)")
    p.add_argument("--presets", nargs="+", default=["tiny", "vit_base"], choices=["tiny", "vit_base"],
                   help="model presets of the step-cost section")
    return p


def _run_section(name: str, args, work: Path) -> dict:
    import torch

    if name == "extraction":
        from bench import extraction

        torch.set_num_threads(1)
        return extraction.run(work, quick=args.quick)
    if name == "loader":
        from bench import loader

        torch.set_num_threads(1)
        return loader.run(work, quick=args.quick)
    if name == "text_stand_in":
        from bench import text_stand_in

        torch.set_num_threads(1)
        return text_stand_in.run(quick=args.quick)
    from bench import step_cost

    threads = max(1, args.step_threads)
    torch.set_num_threads(threads)
    return step_cost.run(presets=args.presets, quick=args.quick, threads=threads)


def write_outputs(out_dir: Path, result: dict) -> None:
    from alta import io

    out_dir.mkdir(parents=True, exist_ok=True)
    io.write_json(out_dir / "results.json", result)
    m = result["machine"]
    v = result["versions"]
    md = [
        "# alta bench results", "",
        f"Command: `{result['command']}`" + (" (quick mode: smoke-test sizes, noisy)" if result["quick"] else ""), "",
        f"Measured {result['started_utc']} in {result['duration_s']:.0f} s on {m['cpu_model']}, "
        f"{m['usable_cpus']} usable of {m['logical_cpus']} logical CPUs, {m['mem_total_gib']} GiB, "
        f"load average at start {m['loadavg_at_start']}, at end {m.get('loadavg_at_end')}; "
        f"Python {m['python']}, torch {v.get('torch')}, "
        f"pydicom {v.get('pydicom')}, Pillow {v.get('pillow')}, scikit-image {v.get('scikit-image')}; "
        f"alta commit {v.get('alta_git_commit', 'unknown')[:12]}"
        + (" + uncommitted changes" if v.get("alta_git_dirty") else "") + ".", "",
        "Values are medians of repeated runs; ratios come from medians of the same run, timed round-robin. "
        f"Extraction, loader and text stand-in run with one thread; step-cost torch threads: "
        f"{result['threads'].get('step_cost', 'n/a')}.", "",
        common.markdown_table(result["rows"]), "",
    ]
    if result["targets"]:
        md += ["## Targets (docs/architecture.md)", "", "| target | measured | goal | met |", "|---|---:|---|---|"]
        md += [f"| {t['name']} | {common.fmt_value(t['value'])} | {t['target']} | {'yes' if t['met'] else 'no'} |"
               for t in result["targets"]]
        md.append("")
    est = result["sections"].get("extraction", {}).get("mimic_estimate")
    if est:
        md += ["## MIMIC-CXR extraction estimate", "",
               f"{est['n_images']:,} DICOMs (3000x2500 16-bit, ~15 MB each) at {est['per_core_images_per_s']:.1f} "
               f"images/s per core (`large_16bit`, store only: the default `--png sample` writes 500 PNGs per shard) "
               f"x {est['efficiency']:.2f} worker efficiency (measured 1 -> 2 workers) x {est['cores_per_shard']} "
               f"cores per `extract_shard` job (`profiles/slurm/config.yaml`) = {est['shard_images_per_s']:,.0f} "
               f"images/s per shard; {est['shards']} shards (p10-p19) at once: {est['total_images_per_s']:,.0f} "
               f"images/s, **{est['hours']:.2f} h ({est['hours'] * 60:.0f} min)** of CPU-bound wall time "
               f"({est['shard_hours'] * 60:.0f} min per shard job; the worker efficiency was measured on this "
               f"shared machine, so it may be low). That rate reads {est['read_mb_per_s_per_shard']:,.0f} MB/s per shard "
               f"({est['read_mb_per_s_total']:,.0f} MB/s in all): where the filesystem delivers less, reading "
               f"sets the time (hours = 377,110 x 15 MB / bandwidth).", ""]
    if result["errors"]:
        md += ["## Errors", ""] + [f"- {k}: {v}" for k, v in result["errors"].items()] + [""]
    io.write_text(out_dir / "results.md", "\n".join(md))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    sections = [s for s in SECTIONS if not args.only or s in args.only]
    started = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    t0 = time.perf_counter()
    result = {"command": "python -m bench.run" + ("".join(" " + shlex.quote(a) for a in argv)),
              "quick": args.quick, "started_utc": started, "machine": common.machine_info(),
              "versions": common.versions(), "threads": {}, "rows": [], "targets": [], "sections": {}, "errors": {}}
    work = args.workdir or Path(tempfile.mkdtemp(prefix="alta-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        for name in sections:
            print(f"[bench] {name} ...", file=sys.stderr, flush=True)
            ts = time.perf_counter()
            try:
                out = _run_section(name, args, work)
            except Exception as exc:  # noqa: BLE001 - one failed section must not lose the others' numbers
                traceback.print_exc()
                result["errors"][name] = f"{type(exc).__name__}: {exc}"
                continue
            import torch

            result["threads"][name] = torch.get_num_threads()
            result["rows"] += out["rows"]
            result["targets"] += out.get("targets", [])
            result["sections"][name] = {**out["details"], "duration_s": round(time.perf_counter() - ts, 1)}
            print(f"[bench] {name} done in {time.perf_counter() - ts:.0f} s", file=sys.stderr, flush=True)
    finally:
        if not args.keep_workdir and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    result["duration_s"] = round(time.perf_counter() - t0, 1)
    result["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(common.text_table(result["rows"]))
    if result["targets"]:
        print()
        for t in result["targets"]:
            print(f"target {t['name']}: {common.fmt_value(t['value'])} (goal {t['target']}) "
                  f"{'met' if t['met'] else 'NOT met'}")
    write_outputs(args.out_dir, result)
    print(f"\nwrote {args.out_dir / 'results.json'} and {args.out_dir / 'results.md'}", file=sys.stderr)
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
