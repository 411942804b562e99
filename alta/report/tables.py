"""Stage `report_tables`: the tables of the Snakemake report (``snakemake --report report.html``).

``python -m alta.report.tables --results results --logs logs --out results/report``

Writes CSV files the report shows as browsable tables (the rules mark them with ``report(...)``):

* ``pairing_coverage.csv``: measure, value, unit: the pairing stage's counts, view coverage (% of rows), prior-gap
  quantiles and rows per split (from ``pair/pairs_stats.json``);
* ``rejects_by_reason.csv``: stage, reason, count: the extract and sections rejects and the images the pairing
  stage dropped, from the three reject tables (counts in = counts out + these);
* ``stage_benchmarks.csv``: the ``benchmark:`` records of every job that ran before this one (rule, job, wall
  seconds, peak RSS MB, CPU seconds, ...), one row per ``logs/**/*.bench.tsv`` file, last run of each.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from alta import io

REJECT_TABLES = (("extract", "extract/rejects.parquet"), ("sections", "sections/rejects.parquet"),
                 ("pair", "pair/dropped.parquet"))


def pairing_coverage(stats: dict) -> pd.DataFrame:
    rows = [("images in", stats["counts"]["images_in"], "images"), ("rows", stats["counts"]["rows"], "rows"),
            ("dropped", stats["counts"]["dropped"], "images"),
            ("row studies", stats["counts"]["row_studies"], "studies"),
            ("row subjects", stats["counts"]["row_subjects"], "subjects")]
    rows += [(f"coverage: {k.replace('_', ' ')}", v, "% of rows") for k, v in stats["coverage_pct"].items()]
    gap = stats.get("prior_gap_days", {})
    rows += [(f"prior gap {k}", v, "days") for k, v in gap.items() if k.startswith("q") or k == "mean"]
    rows += [(f"split {sp}: rows", v["rows"], "rows") for sp, v in stats.get("splits", {}).items()]
    return pd.DataFrame(rows, columns=["measure", "value", "unit"])


def rejects_by_reason(results: Path) -> pd.DataFrame:
    parts = []
    for stage, rel in REJECT_TABLES:
        path = results / rel
        if not path.exists():
            raise FileNotFoundError(f"{path}: missing reject table of stage {stage}")
        df = io.read_parquet(path)
        counts = df["reason"].value_counts().sort_index() if len(df) else pd.Series(dtype=int)
        parts += [{"stage": stage, "reason": str(r), "count": int(c)} for r, c in counts.items()]
        if not len(df):
            parts.append({"stage": stage, "reason": "(none)", "count": 0})
    return pd.DataFrame(parts, columns=["stage", "reason", "count"])


def stage_benchmarks(logs: Path) -> pd.DataFrame:
    rows = []
    for path in sorted(logs.rglob("*.bench.tsv")):
        try:
            df = pd.read_csv(path, sep="\t")
        except (OSError, ValueError, pd.errors.ParserError) as exc:
            raise ValueError(f"{path}: unreadable benchmark file ({exc})") from exc
        if df.empty:
            continue
        rec = df.iloc[-1].to_dict()  # a rerun appends: the last line is this run's
        rows.append({"rule": path.parent.name, "job": path.name[: -len(".bench.tsv")],
                     **{k: rec[k] for k in df.columns if k != "h:m:s"}})
    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(columns=["rule", "job", "s"])
    return df.rename(columns={"s": "wall_s", "max_rss": "max_rss_mb", "max_vms": "max_vms_mb",
                              "cpu_time": "cpu_s"}).sort_values(["rule", "job"]).reset_index(drop=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="alta report_tables", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", required=True, help="the workflow's results folder")
    ap.add_argument("--logs", required=True, help="the workflow's logs folder (benchmark files)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    results, out = Path(args.results), Path(args.out)
    stats_path = results / "pair" / "pairs_stats.json"
    try:
        stats = json.loads(stats_path.read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"{stats_path}: cannot read the pairing statistics ({exc})")
    tables = {"pairing_coverage.csv": pairing_coverage(stats), "rejects_by_reason.csv": rejects_by_reason(results),
              "stage_benchmarks.csv": stage_benchmarks(Path(args.logs))}
    for name, df in tables.items():
        io.write_text(out / name, df.to_csv(index=False))
    print(", ".join(f"{name}: {len(df)} rows" for name, df in tables.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
