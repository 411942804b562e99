"""Alternative inputs of ``alta pair``: build the images / sections frames without running extract or sections.

* :func:`frames_from_manifest` — a generic manifest CSV (columns ``subject_id, study_id, image_id, path,
  view_position`` and optionally ``study_date, study_time, report_text, report_path, split``), so a user sees the
  pairing coverage before any pixels are rendered. ``png_path`` is the manifest ``path``.
* :func:`frames_from_metadata` — MIMIC-CXR-JPG ``mimic-cxr-2.0.0-metadata.csv.gz`` (every study, no text).
* :func:`training_text` — the docs/data.md §5 training text of a raw report via ``alta.data.sections`` (parse_report +
  training_text); only if that module is missing, whitespace cleaning of the whole report
  (``text_source = full_report``) with the same ≥ 3-word minimum.

All ids are read as strings (``dtype=str``).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pandas as pd

log = logging.getLogger("alta.data.pair")

METADATA_REQUIRED = ("dicom_id", "subject_id", "study_id", "ViewPosition", "StudyDate", "StudyTime")
_WORD = re.compile(r"\w+")


def _n_words(text: str) -> int:
    """``\\w+`` tokens that are not underscore-only (de-identification ``___`` does not count; docs/data.md §5)."""
    return sum(1 for w in _WORD.findall(text) if w.strip("_"))


def _fallback_text(report: str) -> tuple[str | None, str | None, int]:
    text = " ".join(report.split())
    n = _n_words(text)
    return (text, "full_report", n) if n >= 3 else (None, None, n)


def training_text(study_id: str, report: str, source: str = "findings_impression"
                  ) -> tuple[str | None, str | None, int]:
    """``(text, text_source, n_words)`` of a raw report; text None when the report gives no usable text.

    Uses the sections stage's own rule (``alta.data.sections.parse_report`` + ``training_text``) so that manifest
    coverage counts the same studies as the pipeline. ``source`` is the sections stage's ``text_source`` option
    (findings_impression / impression / full_report; free-text notes without headers need full_report).
    Falls back to whole-report cleaning if that module is missing.
    """
    try:
        from alta.data.sections import parse_report
        from alta.data.sections import training_text as sections_text
    except ImportError:
        log.warning("alta.data.sections.training_text unavailable: using the whole cleaned report as training text")
        return _fallback_text(report)
    text, label, _status, n = sections_text(parse_report(study_id, report), report, source=source)
    return text, label, int(n)


def _read_csv(path: str | Path, what: str, required: tuple[str, ...]) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except (ValueError, OSError) as exc:
        raise ValueError(f"{what} {path}: unreadable ({exc})") from exc
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise ValueError(f"{what} {path}: missing column(s) {missing} (has {list(table.columns)})")
    return table


def _opt(table: pd.DataFrame, col: str) -> list:
    return [None if pd.isna(v) else v for v in table[col]] if col in table.columns else [None] * len(table)


def frames_from_manifest(path: str | Path, text_source: str = "findings_impression"
                         ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame | None]:
    """Manifest -> ``(images, sections, split_table or None)``; a study's text is its first non-blank report.

    ``report_path`` may be relative to the manifest's folder. A study whose rows carry different texts uses the
    one of its smallest image_id and logs the conflict.
    """
    from alta.data import manifest as M

    path = Path(path)
    m = M.read(path)
    m = m.where(m != "")  # the one manifest reader; blank cells as missing values here
    images = pd.DataFrame({
        "image_id": m["image_id"].astype(str).str.strip(), "subject_id": m["subject_id"].astype(str).str.strip(),
        "study_id": m["study_id"].astype(str).str.strip(), "png_path": m["path"],
        "ViewPosition": _opt(m, "view_position"), "ViewCodeSequence_CodeMeaning": None,
        "StudyDate": _opt(m, "study_date"), "StudyTime": _opt(m, "study_time"),
    })
    reports = _opt(m, "report_text")
    if "report_path" in m.columns:
        for i, rp in enumerate(_opt(m, "report_path")):
            if reports[i] is None and rp is not None:
                rpath = Path(rp) if Path(rp).is_absolute() else path.parent / rp
                try:
                    reports[i] = rpath.read_text(encoding="utf-8")
                except (OSError, UnicodeDecodeError) as exc:
                    log.warning("manifest %s: report %s unreadable (%s); its study has no text", path, rpath, exc)
    per_study: dict[str, list[tuple[str, str]]] = {}
    for sid, iid, rep in zip(images["study_id"], images["image_id"], reports):
        per_study.setdefault(sid, [])
        if rep is not None and str(rep).strip():
            per_study[sid].append((iid, str(rep)))
    conflicts, rows = 0, []
    subj = dict(zip(images["study_id"], images["subject_id"]))
    for sid in sorted(per_study):
        reps = sorted(per_study[sid])
        conflicts += len({r for _, r in reps}) > 1
        text, source, n = training_text(sid, reps[0][1], text_source) if reps else (None, None, 0)
        rows.append({"study_id": sid, "subject_id": subj[sid], "text": text, "text_source": source, "n_words": n})
    if conflicts:
        log.warning("manifest %s: %d stud(ies) whose rows carry different report texts; using the text of the "
                    "smallest image_id", path, conflicts)
    sections = pd.DataFrame(rows, columns=["study_id", "subject_id", "text", "text_source", "n_words"])
    split = m[["subject_id", "split"]] if "split" in m.columns and m["split"].notna().any() else None
    return images, sections, split


def frames_from_metadata(path: str | Path, assume_reports: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    """MIMIC-CXR-JPG metadata -> ``(images, sections)``; with ``assume_reports`` every study gets a placeholder text.

    ``png_path`` is the MIMIC-CXR-JPG path ``files/pXX/pSUBJECT/sSTUDY/DICOM.jpg``.
    """
    m = _read_csv(path, "metadata CSV", METADATA_REQUIRED)
    subj = m["subject_id"].astype(str).str.strip()
    study = m["study_id"].astype(str).str.strip()
    dicom = m["dicom_id"].astype(str).str.strip()
    images = pd.DataFrame({
        "image_id": dicom, "subject_id": subj, "study_id": study,
        "png_path": [f"files/p{s[:2]}/p{s}/s{st}/{d}.jpg" for s, st, d in zip(subj, study, dicom)],
        "ViewPosition": _opt(m, "ViewPosition"),
        "ViewCodeSequence_CodeMeaning": _opt(m, "ViewCodeSequence_CodeMeaning"),
        "StudyDate": _opt(m, "StudyDate"), "StudyTime": _opt(m, "StudyTime"),
    })
    studies = images.drop_duplicates("study_id")[["study_id", "subject_id"]].reset_index(drop=True)
    sections = studies.assign(text="(report assumed present)" if assume_reports else None,
                              text_source="assumed" if assume_reports else None, n_words=0)
    return images, sections
