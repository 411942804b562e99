"""The generic manifest: one CSV contract and one reader for every stage that takes ``data.source: manifest``.

A manifest lists one image per row (read as strings; blanks around values stripped, except in ``report_text``,
whose layout is part of its sectioning; a blank cell is ``''``):

| column | required | meaning |
|---|---|---|
| ``subject_id``, ``study_id``, ``image_id`` | yes | identifiers (``image_id`` unique; later duplicates are rejected) |
| ``path`` | yes | the image file (DICOM, JPEG or PNG), relative to the manifest's folder unless absolute |
| ``view_position`` | yes | PA / AP / LATERAL / LL ... (may be blank: the DICOM header's value is used) |
| ``study_date``, ``study_time`` | no | YYYYMMDD / HHMMSS[.ffffff]; blank = from the DICOM header |
| ``report_text`` / ``report_path`` | one of them for the pipeline | the study's report, inline or as a file |
| ``split`` | no | train / validate / test per subject (else a seeded split) |

Other columns are ignored, except one whose name is a near miss of a manifest column (``reprot_text``): that is
an error naming the file, the column and the name it resembles.

Contract:
- ``read(path, need_reports=False, required=REQUIRED) -> DataFrame``: every column above present (absent ones
  as ``''``); :class:`ManifestError` naming the file and the problem otherwise.
- ``problems(path, need_reports) -> list[str]``: the same checks as one line each, for ``alta config``.
- ``IMAGE_COLUMNS``: what extraction depends on (a change in another column does not re-extract).
"""

from __future__ import annotations

import difflib
from pathlib import Path

import pandas as pd

REQUIRED = ("subject_id", "study_id", "image_id", "path", "view_position")
OPTIONAL = ("study_date", "study_time", "report_text", "report_path", "split")
COLUMNS = REQUIRED + OPTIONAL
IMAGE_COLUMNS = ("subject_id", "study_id", "image_id", "path", "view_position", "study_date", "study_time")
REPORT_COLUMNS = ("report_text", "report_path")


class ManifestError(ValueError):
    """A manifest that breaks the contract; ``str(err)`` names the file and the problem, one line each."""


def _load(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        # UnicodeDecodeError is a ValueError: binary or non-UTF-8 content
        raise ManifestError(f"{path}: cannot read the manifest CSV ({' '.join(str(exc).split())})") from exc
    df.columns = [str(c).strip() for c in df.columns]
    return df


def _column_problems(path: Path, columns: list[str], need_reports: bool, required=REQUIRED) -> list[str]:
    out = []
    present = set(columns)
    for col in required:
        if col not in present:
            near = difflib.get_close_matches(col, [c for c in columns if c not in COLUMNS], 1, 0.45)
            hint = f" (found {near[0]!r}: rename it)" if near else ""
            out.append(f"{path}: missing required column {col!r}{hint}")
    for col in columns:
        if col in COLUMNS:
            continue
        near = difflib.get_close_matches(col, [c for c in COLUMNS if c not in present], 1, 0.8)
        if near:
            out.append(f"{path}: column {col!r} is not a manifest column (did you mean {near[0]!r}?)")
    if need_reports and not present & set(REPORT_COLUMNS):
        out.append(f"{path}: needs a 'report_text' or a 'report_path' column: the sections stage reads the "
                   "reports from it")
    return out


def problems(path: str | Path, need_reports: bool = False) -> list[str]:
    """Every contract violation of the manifest at ``path``, one line each (empty when it is valid)."""
    path = Path(path)
    try:
        df = _load(path)
    except ManifestError as exc:
        return [str(exc)]
    out = _column_problems(path, list(df.columns), need_reports)
    for col in ("subject_id", "study_id", "image_id"):
        if col in df.columns and (df[col].str.strip() == "").any():
            lines = (df.index[df[col].str.strip() == ""] + 2).tolist()[:5]
            out.append(f"{path}: column {col!r} is blank on line(s) {lines}")
    return out


def read(path: str | Path, need_reports: bool = False, required: tuple[str, ...] = REQUIRED) -> pd.DataFrame:
    """The manifest as stripped strings with every contract column present (see module docstring).

    ``required``: the columns the caller cannot do without (the report reader of ``sections`` needs only
    ``study_id``); the others of the contract are added blank when absent."""
    path = Path(path)
    df = _load(path)
    bad = _column_problems(path, list(df.columns), need_reports, required)
    if bad:  # one line: the first problem names the file, the others follow it
        raise ManifestError("; ".join([bad[0]] + [b.split(": ", 1)[1] for b in bad[1:]]))
    for col in df.columns:
        if col != "report_text":  # a report's own layout (leading newline before a header) is part of its parse
            df[col] = df[col].astype(str).str.strip()
    for col in COLUMNS:
        if col not in df.columns:
            df[col] = ""
    return df


def resolve(p: str, base: Path) -> Path:
    """A manifest path (``path`` or ``report_path``): absolute, or relative to ``base`` (the manifest's folder)."""
    return Path(p) if Path(p).is_absolute() else base / p
