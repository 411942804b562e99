"""Stage ``pair``: images + report texts -> temporal multi-view training rows (docs/data.md §4).

Inputs (one of three modes):

* ``--images images.parquet --sections sections.parquet`` (docs/architecture.md schemas; the normal pipeline);
* ``--manifest CSV`` (subject_id, study_id, image_id, path, view_position, [study_date, study_time, report_text,
  report_path, split]): coverage before extraction, no pixels needed (:mod:`alta.data.frames`);
* ``--metadata mimic-cxr-2.0.0-metadata.csv.gz`` with ``--assume-reports`` (or ``--sections``): coverage over all
  MIMIC-CXR-JPG studies; with ``--assume-reports`` only the statistics and dropped table are written.

Splits: ``--split-csv`` (official ``mimic-cxr-2.0.0-split.csv(.gz)``, subject -> split, must be patient-disjoint),
else a manifest ``split`` column, else a stable hash of subject_id (``--val-frac``, ``--test-frac``, ``--seed``).

Outputs in ``--out``:

* ``pairs.parquet`` — one row per current frontal image with usable text; columns (docs/architecture.md / docs/data.md §4.5)
  subject_id, study_id, dicom_id, view_position, split, study_time (timestamp[us]), time_known, cf_path, cl_path,
  pf_path, pl_path, cl_dicom_id, prior_study_id, pf_dicom_id, pl_dicom_id, prior_gap_days, prior_tie, text,
  text_source, n_words, plus cl_candidates (list<str>: every lateral of the study, for ``lateral_sampling``).
  Absent views are null. Sorted by (subject_id, study_time, study_id, dicom_id).
* ``dropped.parquet`` — image_id, subject_id, study_id, reason, detail for every image that is not a row
  (images in = rows + dropped); reasons in :mod:`alta.data.pairing`.
* ``pairs_stats.json`` — docs/data.md §4.4 (:mod:`alta.data.coverage`).
* ``train.csv`` (and ``<split>.csv`` for each of ``--export-splits``) — ALTA-reference export: image_path,
  auxview_image_path, last_image_path, last_auxview_image_path, report; ``-1`` for absent views.

Every output is written atomically and is byte-identical for identical inputs and options.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pandas as pd

from alta import io, tracking
from alta.cli import SECTION_HELP, parse_args
from alta.data.coverage import (
    DROPPED_SCHEMA,
    PAIRS_SCHEMA,
    compute_stats,
    coverage_warnings,
    flat_metrics,
    reference_csv,
)
from alta.data.frames import frames_from_manifest, frames_from_metadata
from alta.data.pairing import PairOptions, PairResult, build_pairs
from alta.data.studies import DEFAULT_VIEW_ALIASES, FRONTAL, LATERAL, SPLITS, read_split_csv, subject_split_map

log = logging.getLogger("alta.data.pair")


def write_outputs(result: PairResult, stats: dict, out_dir: str | Path, export_splits=("train",),
                  csv_prefix: str = "", write_pairs: bool = True) -> list[Path]:
    """Write pairs.parquet, dropped.parquet, pairs_stats.json and the CSV exports; return the written paths."""
    out = Path(out_dir)
    written = [out / "dropped.parquet", out / "pairs_stats.json"]
    io.write_parquet(written[0], result.dropped, schema=DROPPED_SCHEMA)
    io.write_json(written[1], stats)
    if write_pairs:
        io.write_parquet(out / "pairs.parquet", result.pairs, schema=PAIRS_SCHEMA)
        written.append(out / "pairs.parquet")
        no_png = int(result.pairs.loc[result.pairs["split"].isin(list(export_splits)), "cf_path"].isna().sum())
        if no_png:  # extract --png none/sample: the store has every image, the inspection PNGs do not
            log.warning("%d exported rows have no image file (cf_path null: extracted without --png all); their "
                        "image_path is -1 in the reference CSV, which needs extract.png: all", no_png)
        for split in export_splits:
            dest = out / f"{split}.csv"
            io.write_text(dest, reference_csv(result.pairs, (split,), csv_prefix))
            written.append(dest)
    return written


def summary(stats: dict) -> str:
    """A few human lines: counts, coverage, drops."""
    c, cov, gap = stats["counts"], stats["coverage_pct"], stats["prior_gap_days"]
    lines = [f"images {c['images_in']}  rows {c['rows']}  dropped {c['dropped']}  "
             f"studies {c['row_studies']}/{c['studies_in']}  subjects {c['row_subjects']}/{c['subjects_in']}",
             "coverage %: " + "  ".join(f"{k} {v}" for k, v in cov.items()),
             f"prior gap days: median {gap['q50']}  (q05 {gap['q05']}, q95 {gap['q95']})",
             "dropped: " + ("  ".join(f"{k} {v}" for k, v in stats["dropped_by_reason"].items()) or "none"),
             "splits (subjects): " + "  ".join(f"{k} {v['subjects']}" for k, v in stats["splits"].items())]
    if stats["excluded_views"]:
        lines.append("excluded views: " + "  ".join(f"{k!r} {v}" for k, v in stats["excluded_views"].items()))
    return "\n".join(lines)


def _parse_aliases(items: list[str], defaults: bool) -> dict[str, str]:
    aliases = dict(DEFAULT_VIEW_ALIASES) if defaults else {}
    for item in items:
        value, sep, view = item.rpartition("=")
        if not sep or not value.strip() or view.strip().upper() not in FRONTAL + LATERAL:
            raise ValueError(f"--view-alias {item!r}: expected VALUE=VIEW with VIEW one of {FRONTAL + LATERAL}")
        aliases[value.strip().upper()] = view.strip().upper()
    return aliases


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="alta pair", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("inputs (choose --images/--sections, --manifest or --metadata)")
    src.add_argument("--images", help="images.parquet from alta extract")
    src.add_argument("--sections", help="sections.parquet from alta sections (text column)")
    src.add_argument("--manifest", help="manifest CSV; builds images/sections in memory (no pixels)")
    src.add_argument("--metadata", help="mimic-cxr-2.0.0-metadata.csv(.gz): coverage over every study")
    src.add_argument("--assume-reports", action="store_true",
                     help="with --metadata: treat every study as having a report (statistics only)")
    src.add_argument("--text-source", default="findings_impression",
                     choices=("findings_impression", "impression", "full_report", "auto"),
                     help="with --manifest: which report text trains (docs/data.md §5; auto or full_report for free-text "
                          "notes without section headers)")
    src.add_argument("--split-csv", help="official mimic-cxr-2.0.0-split.csv(.gz) (subject_id, split)")
    p.add_argument("--out", required=True, help="output folder (pairs.parquet, dropped.parquet, pairs_stats.json, "
                                                "train.csv)")
    p.add_argument("--max-prior-gap-days", type=float, default=None, help="no prior beyond this gap (default none)")
    p.add_argument("--val-frac", type=float, default=0.1, help="hashed split: validate fraction (default 0.1)")
    p.add_argument("--test-frac", type=float, default=0.1, help="hashed split: test fraction (default 0.1)")
    p.add_argument("--seed", type=int, default=0, help="hashed split seed (default 0)")
    p.add_argument("--config-json", help=SECTION_HELP)
    p.add_argument("--view-alias", action="append", default=[], metavar="VALUE=VIEW",
                   help="extra ViewPosition spelling, e.g. 'AP Supine=AP' (defaults: AP Supine=AP, L=LATERAL)")
    p.add_argument("--no-default-aliases", action="store_true", help="drop the default view aliases")
    p.add_argument("--export-splits", default="train",
                   help="comma-separated splits exported as <split>.csv in the ALTA reference format "
                        "(default train; empty for none)")
    p.add_argument("--csv-path-prefix", default="", help="prefix for paths in the CSV exports (e.g. the extract "
                                                         "folder) so the reference code can open them")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parse_args(_parser(), argv)
    try:
        return _run(args)
    except PairInputError:
        raise
    except (ValueError, OSError) as exc:  # unreadable or malformed input tables: one line naming the file
        raise PairInputError(f"alta pair: error: {' '.join(str(exc).split())}") from exc


class PairInputError(SystemExit, ValueError):
    """Bad input tables. As a SystemExit the command ends with this one line on stderr and status 1, no
    traceback; as a ValueError, in-process callers catch it like the error it wraps."""


def _read_table(path: str, what: str):
    if not Path(path).is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        return io.read_parquet(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises its own types for damaged files
        raise ValueError(f"{what} {path}: not a readable Parquet table ({exc})") from exc


def _run(args) -> int:
    modes = [bool(args.images), bool(args.manifest), bool(args.metadata)]
    if sum(modes) != 1:
        raise SystemExit("alta pair: give exactly one of --images (with --sections), --manifest or --metadata")
    if args.images and not args.sections:
        raise SystemExit("alta pair: --images needs --sections")
    if args.metadata and not (args.sections or args.assume_reports):
        raise SystemExit("alta pair: --metadata has no report texts; add --sections or --assume-reports")
    export = tuple(s.strip() for s in args.export_splits.split(",") if s.strip())
    if bad := [s for s in export if s not in SPLITS]:
        raise SystemExit(f"alta pair: --export-splits {bad} not in {SPLITS}")
    options = PairOptions(max_prior_gap_days=args.max_prior_gap_days,
                          view_aliases=_parse_aliases(args.view_alias, not args.no_default_aliases),
                          val_frac=args.val_frac, test_frac=args.test_frac, seed=args.seed)

    split_map, where, duplicates = None, "images", None
    if args.manifest:
        images, sections, split_table = frames_from_manifest(args.manifest, args.text_source)
        where = f"manifest {args.manifest}"
        # as extract does: the first row of an image_id wins, later ones are listed as dropped and the stage goes on
        dup = images["image_id"].duplicated()
        duplicates, images = images[dup], images[~dup].reset_index(drop=True)
        if split_table is not None and not args.split_csv:
            split_map = subject_split_map(split_table, where)
    elif args.metadata:
        images, sections = frames_from_metadata(args.metadata, args.assume_reports)
        where = f"metadata CSV {args.metadata}"
    else:
        images, where = _read_table(args.images, "images"), f"images {args.images}"
    sections_where = "sections"
    if args.sections:
        sections, sections_where = _read_table(args.sections, "sections"), f"sections {args.sections}"
    if args.split_csv:
        split_map = read_split_csv(args.split_csv)
    write_pairs = not (args.metadata and args.assume_reports)

    params = {"mode": "manifest" if args.manifest else "metadata" if args.metadata else "images",
              "images": args.images or args.manifest or args.metadata, "sections": args.sections,
              "split_csv": args.split_csv, "split_source": "csv" if args.split_csv else
              "manifest" if split_map is not None else "hash", "assume_reports": args.assume_reports,
              "max_prior_gap_days": options.max_prior_gap_days, "val_frac": options.val_frac,
              "test_frac": options.test_frac, "seed": options.seed, "view_aliases": options.view_aliases,
              "export_splits": ",".join(export),
              "text_source": args.text_source if args.manifest else None}
    with tracking.stage_run("pair", params, args.out) as run:
        result = build_pairs(images, sections, split_map, options, where=where, sections_where=sections_where)
        if duplicates is not None and len(duplicates):
            result.dropped = pd.concat([result.dropped, pd.DataFrame({
                "image_id": duplicates["image_id"], "subject_id": duplicates["subject_id"],
                "study_id": duplicates["study_id"], "reason": "duplicate_image_id",
                "detail": "image_id already used by an earlier manifest row"})], ignore_index=True)
        stats = compute_stats(result, len(images) + (0 if duplicates is None else len(duplicates)), options)
        stats["warnings"] = coverage_warnings(stats)
        written = write_outputs(result, stats, args.out, export, args.csv_path_prefix, write_pairs)
        run.log_metrics(flat_metrics(stats))
        run.log_artifact(Path(args.out) / "pairs_stats.json")
    print(summary(stats))
    for line in stats["warnings"]:
        log.warning("pair: %s", line)
    log.info("wrote %s", ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
