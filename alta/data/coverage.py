"""Coverage statistics (docs/data.md §4.4), output schemas and the ALTA-reference CSV export of the pairing stage.

* :func:`compute_stats` -> the ``pairs_stats.json`` dict: counts, dropped by reason, excluded views per value,
  coverage percentages, prior-gap quantiles (5/25/50/75/95), frontals / laterals per study, anomaly counts,
  per-split subject / study / row counts and the §4.4 sanity bound.
* :func:`flat_metrics` -> the numeric subset logged to MLflow.
* :func:`reference_csv` -> ``image_path, auxview_image_path, last_image_path, last_auxview_image_path, report``
  with the string ``-1`` for absent views (the ALTA reference's convention; read it back with ``dtype=str``).
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pandas as pd
import pyarrow as pa

from alta.data.studies import SPLITS

PAIRS_SCHEMA = pa.schema([
    ("subject_id", pa.string()), ("study_id", pa.string()), ("dicom_id", pa.string()),
    ("view_position", pa.string()), ("split", pa.string()), ("study_time", pa.timestamp("us")),
    ("time_known", pa.bool_()), ("cf_path", pa.string()), ("cl_path", pa.string()), ("pf_path", pa.string()),
    ("pl_path", pa.string()), ("cl_dicom_id", pa.string()), ("prior_study_id", pa.string()),
    ("pf_dicom_id", pa.string()), ("pl_dicom_id", pa.string()), ("prior_gap_days", pa.float64()),
    ("prior_tie", pa.bool_()), ("text", pa.string()), ("text_source", pa.string()), ("n_words", pa.int64()),
    ("cl_candidates", pa.list_(pa.string())),
])
DROPPED_SCHEMA = pa.schema([("image_id", pa.string()), ("subject_id", pa.string()), ("study_id", pa.string()),
                            ("reason", pa.string()), ("detail", pa.string())])
CSV_COLUMNS = ["image_path", "auxview_image_path", "last_image_path", "last_auxview_image_path", "report"]
QUANTILES = (5, 25, 50, 75, 95)


def _pct(n: int, d: int) -> float | None:
    return round(100.0 * n / d, 4) if d else None


def _hist(values) -> dict[str, int]:
    c = Counter(int(v) for v in values)
    return {str(k): c[k] for k in sorted(c)}


def compute_stats(result, n_images: int, options=None) -> dict:
    """Everything docs/data.md §4.4 asks for, from a :class:`alta.data.pairing.PairResult`."""
    pairs, dropped, studies = result.pairs, result.dropped, result.studies
    n = len(pairs)
    reasons = Counter(dropped["reason"])
    excluded = {r.split(":", 1)[1]: c for r, c in sorted(reasons.items()) if r.startswith("excluded_view:")}
    by_reason = Counter()
    for r, c in reasons.items():
        by_reason["excluded_view" if r.startswith("excluded_view:") else r] += c

    has = {k: pairs[f"{k}_dicom_id"].notna() for k in ("cl", "pf", "pl")}
    has_prior = pairs["prior_study_id"].notna()
    pf_view = pairs["pf_dicom_id"].map(_view_lookup(studies))
    same_view = has_prior & (pf_view == pairs["view_position"])
    gaps = pairs.loc[has_prior, "prior_gap_days"].to_numpy(dtype=float)
    quant = {f"q{q:02d}": (round(float(np.percentile(gaps, q)), 6) if len(gaps) else None) for q in QUANTILES}

    all_subjects = sorted({s.subject_id for s in studies.values()})
    dated = [s for s in studies.values() if s.key.date is not None]
    split_subjects = Counter(result.subject_split.values())
    row_studies = pairs.drop_duplicates("study_id")
    stats = {
        "counts": {
            "images_in": int(n_images), "rows": n, "dropped": len(dropped),
            "studies_in": len(studies), "subjects_in": len(all_subjects),
            "studies_without_frontal": sum(not s.frontals for s in studies.values()),
            "row_studies": int(pairs["study_id"].nunique()), "row_subjects": int(pairs["subject_id"].nunique()),
        },
        "dropped_by_reason": dict(sorted(by_reason.items())),
        "excluded_views": excluded,
        "coverage_pct": {
            "current_lateral": _pct(int(has["cl"].sum()), n),
            "prior_study": _pct(int(has_prior.sum()), n),
            "prior_frontal": _pct(int(has["pf"].sum()), n),
            "prior_lateral": _pct(int(has["pl"].sum()), n),
            "all_four_views": _pct(int((has["cl"] & has["pf"] & has["pl"]).sum()), n),
            "prior_same_view_position": _pct(int(same_view.sum()), n),
            "time_known": _pct(int(pairs["time_known"].sum()), n),
        },
        "prior_gap_days": {**quant, "n": int(len(gaps)),
                           "mean": round(float(gaps.mean()), 6) if len(gaps) else None},
        "frontals_per_study": _hist(len(s.frontals) for s in studies.values()),
        "laterals_per_study": _hist(len(s.laterals) for s in studies.values()),
        "anomalies": {
            "prior_tie_rows": int(pairs["prior_tie"].sum()),
            "prior_tie_studies": int(pairs.loc[pairs["prior_tie"], "study_id"].nunique()),
            "skipped_frontalless_studies": int(result.counters["skipped_frontalless_studies"]),
            "studies_with_skipped_frontalless": int(result.counters["studies_with_skipped_frontalless"]),
            "studies_inconsistent_time": int(result.counters["studies_inconsistent_time"]),
            "studies_without_date": int(result.counters["studies_without_date"]),
            "unparsable_time_images": int(result.counters["unparsable_time_images"]),
            "priors_beyond_max_gap": int(result.counters["priors_beyond_max_gap"]),
        },
        "splits": {
            sp: {"subjects": int(split_subjects.get(sp, 0)),
                 "row_subjects": int(pairs.loc[pairs["split"] == sp, "subject_id"].nunique()),
                 "row_studies": int((row_studies["split"] == sp).sum()),
                 "rows": int((pairs["split"] == sp).sum())} for sp in SPLITS
        },
        "sanity": {
            # every subject's first study has no prior (docs/data.md §4.4)
            "max_studies_with_prior": len(dated) - len({s.subject_id for s in dated}),
            "max_studies_with_prior_pct": _pct(len(dated) - len({s.subject_id for s in dated}), len(studies)),
            "row_studies_with_prior": int(pairs.loc[has_prior, "study_id"].nunique()),
        },
    }
    if options is not None:
        stats["options"] = {"max_prior_gap_days": options.max_prior_gap_days,
                            "view_aliases": dict(sorted(options.view_aliases.items())),
                            "val_frac": options.val_frac, "test_frac": options.test_frac, "seed": options.seed}
    assert stats["sanity"]["row_studies_with_prior"] <= stats["sanity"]["max_studies_with_prior"]
    return stats


# What keeps the images each drop reason loses (named in the warning of a stage that keeps few or no rows).
KEEP_HINTS = {
    "no_report_text": "sections.text_source: auto (the whole report where it has no FINDINGS/IMPRESSION; "
                      "alta pair --text-source auto) or full_report; headerless free-text reports need one of them",
    "not_in_split": "a split table (data.split_csv or the manifest's split column) that lists these subjects",
    "blank_view": "a view_position column / ViewPosition header, or --view-alias for the site's view names",
    "unknown_view": "--view-alias NAME=PA|AP|LATERAL|LL for the site's view names",
    "excluded_view": "--view-alias for views that are frontal or lateral under another name",
    "unparsable_time": "StudyDate (YYYYMMDD) and StudyTime (HHMMSS) in the expected formats",
    "duplicate_image_id": "unique image_id values in the manifest",
}


def coverage_warnings(stats: dict, share: float = 0.5) -> list[str]:
    """One line for a stage that keeps no rows, or loses ``share`` or more of its images to one reason, naming the
    option that keeps them (``KEEP_HINTS``). Written into pairs_stats.json (``warnings``) and the log."""
    n_in, rows = stats["counts"]["images_in"], stats["counts"]["rows"]
    out = []
    for reason, count in sorted(stats["dropped_by_reason"].items(), key=lambda kv: -kv[1]):
        if reason == "lateral_view":  # laterals are never rows by design: they serve as cl / pl of a frontal
            continue
        if n_in and (count >= share * n_in or (rows == 0 and count)):
            hint = KEEP_HINTS.get(reason.split(":", 1)[0])
            out.append(f"{count} of {n_in} images dropped as {reason}" + (f"; to keep them: {hint}" if hint else ""))
    if rows == 0 and not out:
        out.append(f"no pair rows from {n_in} images")
    return out


def _view_lookup(studies) -> dict[str, str]:
    return {i: v for s in studies.values() for i, v in s.frontals}


def flat_metrics(stats: dict) -> dict[str, float]:
    """Numeric leaves of the stats as ``section.key`` metrics (MLflow keys), nulls left out."""
    out: dict[str, float] = {}
    for section in ("counts", "dropped_by_reason", "coverage_pct", "prior_gap_days", "anomalies"):
        for k, v in stats.get(section, {}).items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                out[f"{section}.{k}"] = float(v)
    for sp, d in stats.get("splits", {}).items():
        for k, v in d.items():
            out[f"splits.{sp}.{k}"] = float(v)
    return out


def reference_csv(pairs: pd.DataFrame, splits=("train",), prefix: str = "") -> str:
    """The ALTA-reference CSV text for rows of ``splits``; ``prefix`` is prepended to every present path."""
    sel = pairs[pairs["split"].isin(list(splits))]
    cols = {"image_path": "cf_path", "auxview_image_path": "cl_path", "last_image_path": "pf_path",
            "last_auxview_image_path": "pl_path"}
    out = pd.DataFrame({dst: [("-1" if p is None or p is pd.NA or (isinstance(p, float) and p != p)
                               else prefix + str(p)) for p in sel[src].tolist()] for dst, src in cols.items()})
    out["report"] = [str(t) for t in sel["text"].tolist()]
    return out[CSV_COLUMNS].to_csv(index=False, lineterminator="\n")
