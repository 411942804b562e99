"""Readers and validators for the benchmark input files (docs/evaluation.md §7; docs/evaluation.md §10 #1, #2).

Contract: every reader returns a pandas DataFrame (or, for ConVIRT, a :class:`ConvirtSets` of three) whose
``.attrs["benchmark"]`` dict records the file fingerprint (path, sha256, bytes) and the facts measured while
validating (counts, class order, excluded rows, split name). A file that breaks the expected structure raises
:class:`BenchmarkError` naming the file and the offending row(s); ``strict=False`` lists and excludes bad rows instead
(recorded under ``excluded_rows`` and warned about). Nothing is silently dropped.

Schemas (all identifiers are strings):

* ``read_chexpert_5x200`` -> ``row`` (int, 0-based data row), ``path``, ``rel_path``, ``label`` (int 0..4 in
  :data:`CHEXPERT5_CLASSES` order, derived from the label columns), ``class_name``, ``text_clean`` (GLoRIA),
  ``text_raw``, ``patient_id`` (``patientNNNNN``), ``study_id`` (``patientNNNNN/studyN``).
* ``read_convirt`` -> candidates ``row, path, rel_path, label (0..13, §7.2 order), class_name, patient_id``;
  image queries ``row, path, rel_path, label, class_name, patient_id``; text queries ``row, text, label, class_name``.
* ``read_rsna_list`` -> ``line`` (1-based), ``path``, ``rel_path``, ``label`` (1 = pneumonia), ``patient_id``
  (file stem).
* ``read_labelled_list`` -> ``row``, ``path``, ``rel_path`` and one float column per finding (1.0 / 0.0 / NaN =
  unlabelled) from a generic CSV, ChestX-ray14's ``Data_Entry_2017.csv`` or a CheXpert labels CSV.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from alta import io
from alta.evaluate.prompts import CHEXPERT5_CLASSES
from alta.evaluate.textclean import gloria_clean

CHEXPERT_LABELS_14: tuple[str, ...] = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture",
    "Support Devices",
)
CONVIRT_QUERY_CLASSES = {name: CHEXPERT_LABELS_14.index(name) for name in (
    "No Finding", "Cardiomegaly", "Edema", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Fracture")}
REPORT_COLUMN = "Report Impression"
# sha256 of the GLoRIA 5x200 file as shipped by DopamineLcy/ALTA, so metric files can say which 5x200 was used.
KNOWN_5X200 = {"39c3d6dc2867e21df80390eb9a25fe6b7adf4e881a8b95379bcba01674c5d888": "gloria_5x200 (DopamineLcy/ALTA)"}
# Real MRM RSNA lists: rows -> (split name, positives, path prefix).
MRM_RSNA_LISTS = {
    3000: ("mrm_3000", 1094, "stage_2_test_images/"),
    1500: ("mrm_val_1500", 223, "stage_2_train_images/"),
}
_MAX_LISTED = 10


class BenchmarkError(ValueError):
    """A benchmark file does not have the expected structure."""


def file_fingerprint(path: str | Path) -> dict:
    """``{"path", "sha256", "bytes"}`` of a benchmark file, recorded with every metric (docs/evaluation.md §10 #1)."""
    p = Path(path)
    return {"path": str(p), "sha256": io.sha256_file(p), "bytes": p.stat().st_size}


def _fail_or_exclude(file: Path, problems: list[tuple[int, str]], strict: bool, unit: str = "row") -> list[dict]:
    """Raise on problems in strict mode, else warn and return them as ``excluded_rows`` records."""
    if not problems:
        return []
    listed = "; ".join(f"{unit} {r}: {why}" for r, why in problems[:_MAX_LISTED])
    more = f" (and {len(problems) - _MAX_LISTED} more)" if len(problems) > _MAX_LISTED else ""
    if strict:
        raise BenchmarkError(f"{file}: {len(problems)} bad {unit}(s): {listed}{more}")
    warnings.warn(f"{file}: excluding {len(problems)} bad {unit}(s): {listed}{more}", stacklevel=3)
    return [{unit: int(r), "reason": why} for r, why in problems]


def _read_csv(file: Path) -> pd.DataFrame:
    if not file.is_file():
        raise BenchmarkError(f"{file}: benchmark file not found")
    try:
        return pd.read_csv(file, dtype={"Path": str, REPORT_COLUMN: str, "Variable": str, "Text": str})
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise BenchmarkError(f"{file}: cannot parse as CSV: {exc}") from exc


def _require_columns(file: Path, df: pd.DataFrame, columns) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise BenchmarkError(f"{file}: missing column(s) {missing}; found {list(df.columns)}")


def _label_matrix(df: pd.DataFrame) -> np.ndarray:
    """(N, 14) float matrix of the CheXpert label columns; non-numeric cells become NaN."""
    return df[list(CHEXPERT_LABELS_14)].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)


def _ids(rel_paths: pd.Series) -> tuple[pd.Series, pd.Series]:
    patient = rel_paths.str.extract(r"(patient\d+)", expand=False)
    study = rel_paths.str.extract(r"(patient\d+/study\d+)", expand=False)
    return patient.fillna("").astype(str), study.fillna("").astype(str)


def _join_root(image_root, rel: pd.Series) -> pd.Series:
    if image_root is None:
        return rel.astype(str)
    root = Path(image_root)
    return rel.map(lambda r: str(root / r))


def _n_duplicated(values: pd.Series) -> int:
    """Number of distinct values that occur more than once."""
    counts = values.value_counts()
    return int((counts > 1).sum())


# ------------------------------------------------------------------------------------------------------ 5x200
def read_chexpert_5x200(csv: str | Path, image_root: str | Path | None = None, strict: bool = True) -> pd.DataFrame:
    """Read and validate ``chexpert_5x200.csv`` (§7.1); labels come from the five label columns, never row order.

    Checks: the ``Path``, 14 label and ``Report Impression`` columns exist (and, in strict mode, 21 columns in all);
    every row has exactly one 1.0 among the five classes, 0.0 in the other nine labels, a path and a report. Rows
    that are not in class blocks (non-decreasing label) trigger a warning and ``blocks_in_order: False``. A file of
    1,000 rows is the released benchmark and must then have 200 per class; other sizes (the demo) are accepted.
    """
    file = Path(csv)
    df = _read_csv(file)
    _require_columns(file, df, ["Path", *CHEXPERT_LABELS_14, REPORT_COLUMN])
    if strict and df.shape[1] != 21:
        raise BenchmarkError(f"{file}: expected 21 columns (§7.1), found {df.shape[1]}: {list(df.columns)}")
    labels = _label_matrix(df)
    five = labels[:, [CHEXPERT_LABELS_14.index(c) for c in CHEXPERT5_CLASSES]]
    others = np.delete(labels, [CHEXPERT_LABELS_14.index(c) for c in CHEXPERT5_CLASSES], axis=1)
    problems: list[tuple[int, str]] = []
    for i in range(len(df)):
        why = []
        if not np.isin(labels[i], (0.0, 1.0)).all():
            why.append("label values other than 0.0/1.0")
        n_pos = int((five[i] == 1.0).sum())
        if n_pos != 1:
            why.append(f"{n_pos} positives among the five classes (need exactly 1)")
        if (others[i] != 0.0).any():
            why.append("non-zero value in a label outside the five classes")
        if not isinstance(df["Path"].iat[i], str) or not df["Path"].iat[i].strip():
            why.append("empty Path")
        if not isinstance(df[REPORT_COLUMN].iat[i], str):
            why.append("missing Report Impression")
        if why:
            problems.append((i, ", ".join(why)))
    excluded = _fail_or_exclude(file, problems, strict)
    keep = np.setdiff1d(np.arange(len(df)), [r for r, _ in problems])
    sub = df.iloc[keep]
    label = five[keep].argmax(axis=1).astype(np.int64)
    rel = sub["Path"].astype(str).str.strip().reset_index(drop=True)
    raw = sub[REPORT_COLUMN].astype(str).reset_index(drop=True)
    patient, study = _ids(rel)
    out = pd.DataFrame({
        "row": keep.astype(np.int64), "path": _join_root(image_root, rel), "rel_path": rel, "label": label,
        "class_name": [CHEXPERT5_CLASSES[k] for k in label], "text_clean": raw.map(gloria_clean), "text_raw": raw,
        "patient_id": patient, "study_id": study,
    })
    counts = {c: int((label == k).sum()) for k, c in enumerate(CHEXPERT5_CLASSES)}
    blocks = bool(np.all(np.diff(label) >= 0))
    if not blocks:
        warnings.warn(f"{file}: rows are not in class blocks; labels are taken from the label columns", stacklevel=2)
    if strict and len(df) == 1000 and set(counts.values()) != {200}:
        raise BenchmarkError(f"{file}: 1,000-row 5x200 file must have 200 rows per class, found {counts}")
    per_patient_classes = out.groupby("patient_id")["label"].nunique()
    fp = file_fingerprint(file)
    out.attrs["benchmark"] = {
        "benchmark": "chexpert_5x200", **fp, "variant": KNOWN_5X200.get(fp["sha256"], "unrecognised file"),
        "n_rows_file": int(len(df)), "n_rows": int(len(out)), "class_counts": counts, "blocks_in_order": blocks,
        "excluded_rows": excluded, "n_patients": int(out["patient_id"].nunique()),
        "n_studies": int(out["study_id"].nunique()),
        "n_patients_in_two_or_more_classes": int((per_patient_classes > 1).sum()),
        "n_duplicated_raw_texts": _n_duplicated(out["text_raw"]),
        "n_duplicated_clean_texts": _n_duplicated(out["text_clean"]),
        "max_clean_words": int(out["text_clean"].str.split().str.len().max()) if len(out) else 0,
        "n_empty_clean_texts": int((out["text_clean"] == "").sum()),
    }
    return out


# ------------------------------------------------------------------------------------------------------ 8x200
@dataclass
class ConvirtSets:
    """The ConVIRT 8x200 retrieval sets: shared candidates, image queries, text queries, and validation facts."""

    candidates: pd.DataFrame
    image_queries: pd.DataFrame
    text_queries: pd.DataFrame
    info: dict = field(default_factory=dict)


def _query_labels(file: Path, df: pd.DataFrame, strict: bool) -> tuple[np.ndarray, list[dict]]:
    problems = []
    for i, v in enumerate(df["Variable"].tolist()):
        if not isinstance(v, str) or v.strip() not in CONVIRT_QUERY_CLASSES:
            problems.append((i, f"unknown Variable {v!r} (expected one of {sorted(CONVIRT_QUERY_CLASSES)})"))
    excluded = _fail_or_exclude(file, problems, strict)
    bad = {r for r, _ in problems}
    keep = np.array([i for i in range(len(df)) if i not in bad], dtype=np.int64)
    return keep, excluded


def read_convirt(root: str | Path, image_root: str | Path | None = None, strict: bool = True) -> ConvirtSets:
    """Read the ConVIRT files under ``root`` (``image-retrieval/``, ``text-retrieval/``; §7.2).

    Candidates: ``image-retrieval/candidate.csv`` (``text-retrieval/candidate.csv``, when present, must be
    byte-identical); each has exactly one 1.0 among the 14 labels, whose column index is the label. Queries map
    ``Variable`` through :data:`CONVIRT_QUERY_CLASSES`. Image queries must not be candidates (self-match).
    With 1,600 candidates (the released set), 200 per class, 10 image and 5 text queries per class are asserted.
    """
    root = Path(root)
    cand_file = root / "image-retrieval" / "candidate.csv"
    iq_file = root / "image-retrieval" / "query.csv"
    tq_file = root / "text-retrieval" / "query.csv"
    other_cand = root / "text-retrieval" / "candidate.csv"
    cand_df = _read_csv(cand_file)
    _require_columns(cand_file, cand_df, ["Path", *CHEXPERT_LABELS_14])
    if other_cand.is_file() and io.sha256_file(other_cand) != io.sha256_file(cand_file):
        raise BenchmarkError(f"{other_cand}: differs from {cand_file}; ConVIRT ships one candidate set for both tasks")
    labels = _label_matrix(cand_df)
    problems = []
    for i in range(len(cand_df)):
        n_pos = int((labels[i] == 1.0).sum())
        if n_pos != 1:
            problems.append((i, f"{n_pos} labels equal to 1.0 (need exactly 1)"))
        elif int(np.argmax(labels[i] == 1.0)) not in CONVIRT_QUERY_CLASSES.values():
            problems.append((i, f"positive label {CHEXPERT_LABELS_14[int(np.argmax(labels[i] == 1.0))]!r} "
                                "is not one of the eight query classes"))
    cand_excluded = _fail_or_exclude(cand_file, problems, strict)
    keep = np.setdiff1d(np.arange(len(cand_df)), [r for r, _ in problems])
    c_label = (labels[keep] == 1.0).argmax(axis=1).astype(np.int64)
    c_rel = cand_df["Path"].iloc[keep].astype(str).str.strip().reset_index(drop=True)
    candidates = pd.DataFrame({"row": keep.astype(np.int64), "path": _join_root(image_root, c_rel), "rel_path": c_rel,
                               "label": c_label, "class_name": [CHEXPERT_LABELS_14[k] for k in c_label],
                               "patient_id": _ids(c_rel)[0]})

    iq_df = _read_csv(iq_file)
    _require_columns(iq_file, iq_df, ["Variable", "Path"])
    iq_keep, iq_excluded = _query_labels(iq_file, iq_df, strict)
    iq_rel = iq_df["Path"].iloc[iq_keep].astype(str).str.strip().reset_index(drop=True)
    iq_names = iq_df["Variable"].iloc[iq_keep].str.strip().tolist()
    image_queries = pd.DataFrame({"row": iq_keep, "path": _join_root(image_root, iq_rel), "rel_path": iq_rel,
                                  "label": np.array([CONVIRT_QUERY_CLASSES[n] for n in iq_names], dtype=np.int64),
                                  "class_name": iq_names, "patient_id": _ids(iq_rel)[0]})
    in_pool = image_queries.index[image_queries["rel_path"].isin(set(candidates["rel_path"]))].tolist()
    if in_pool:
        raise BenchmarkError(f"{iq_file}: image queries at rows {[int(image_queries['row'][i]) for i in in_pool]} "
                             "are also candidates; the i2i protocol needs a query-free pool (§6.4)")

    tq_df = _read_csv(tq_file)
    _require_columns(tq_file, tq_df, ["Variable", "Text"])
    tq_keep, tq_excluded = _query_labels(tq_file, tq_df, strict)
    tq_names = tq_df["Variable"].iloc[tq_keep].str.strip().tolist()
    text_queries = pd.DataFrame({"row": tq_keep, "text": tq_df["Text"].iloc[tq_keep].astype(str).tolist(),
                                 "label": np.array([CONVIRT_QUERY_CLASSES[n] for n in tq_names], dtype=np.int64),
                                 "class_name": tq_names})

    def per_class(df: pd.DataFrame) -> dict[str, int]:
        return {k: int(v) for k, v in df["class_name"].value_counts().sort_index().items()}

    info = {
        "benchmark": "convirt_8x200", "candidates": file_fingerprint(cand_file),
        "image_queries": file_fingerprint(iq_file), "text_queries": file_fingerprint(tq_file),
        "n_candidates": int(len(candidates)), "n_image_queries": int(len(image_queries)),
        "n_text_queries": int(len(text_queries)), "candidate_class_counts": per_class(candidates),
        "image_query_class_counts": per_class(image_queries), "text_query_class_counts": per_class(text_queries),
        "excluded_rows": {"candidates": cand_excluded, "image_queries": iq_excluded, "text_queries": tq_excluded},
        "n_image_queries_sharing_patient_with_candidates":
            int(image_queries["patient_id"].isin(set(candidates["patient_id"]) - {""}).sum()),
    }
    if strict and len(cand_df) == 1600:
        expect = {"candidate_class_counts": 200, "image_query_class_counts": 10, "text_query_class_counts": 5}
        for key, n in expect.items():
            if set(info[key]) != set(CONVIRT_QUERY_CLASSES) or set(info[key].values()) != {n}:
                raise BenchmarkError(f"{root}: released 8x200 sets need {n} per class for {key}, found {info[key]}")
    for df in (candidates, image_queries, text_queries):
        df.attrs["benchmark"] = info
    return ConvirtSets(candidates, image_queries, text_queries, info)


# ------------------------------------------------------------------------------------------------------- RSNA
def read_rsna_list(path: str | Path, image_root: str | Path | None = None, strict: bool = True) -> pd.DataFrame:
    """Read an MRM-format RSNA list (``<relative path> <0|1> \\n`` per line, §7.3).

    Each line must hold exactly a path and a 0/1 label; paths must be unique. A 3,000-line file is taken to be the
    MRM test list and must have 1,094 positives under ``stage_2_test_images/``; a 1,500-line file the MRM val list
    with 223 positives under ``stage_2_train_images/``. ``rsna_split`` is recorded (``mrm_3000``,
    ``mrm_val_1500`` or ``custom``), as is the number of lines with the reference's trailing space.
    """
    file = Path(path)
    if not file.is_file():
        raise BenchmarkError(f"{file}: RSNA list not found")
    try:
        text = file.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BenchmarkError(f"{file}: not UTF-8 text: {exc}") from exc
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines = lines[:-1]  # the final LF
    problems, rows, trailing = [], [], 0
    for n, line in enumerate(lines, start=1):
        line = line.rstrip("\r")
        trailing += line.endswith(" ")
        tokens = line.split()
        if len(tokens) != 2 or tokens[1] not in ("0", "1"):
            problems.append((n, f"expected '<path> <0|1>', got {line!r}"))
            continue
        rows.append((n, tokens[0], int(tokens[1])))
    excluded = _fail_or_exclude(file, problems, strict, unit="line")
    df = pd.DataFrame(rows, columns=["line", "rel_path", "label"]).astype({"line": np.int64, "label": np.int64})
    df["rel_path"] = df["rel_path"].astype(str)
    dup = df.loc[df["rel_path"].duplicated(keep=False), "line"].tolist()
    if dup:
        raise BenchmarkError(f"{file}: duplicated image paths at lines {dup[:_MAX_LISTED]}")
    df["path"] = _join_root(image_root, df["rel_path"])
    df["patient_id"] = df["rel_path"].map(lambda r: Path(r).stem).astype(str)
    df = df[["line", "path", "rel_path", "label", "patient_id"]]
    split = "custom"
    if len(lines) in MRM_RSNA_LISTS:
        name, n_pos, prefix = MRM_RSNA_LISTS[len(lines)]
        wrong_prefix = df.loc[~df["rel_path"].str.startswith(prefix), "line"].tolist()
        if strict and (int(df["label"].sum()) != n_pos or wrong_prefix):
            raise BenchmarkError(
                f"{file}: a {len(lines)}-line list must be the MRM {name} list ({n_pos} positives, paths under "
                f"{prefix}); found {int(df['label'].sum())} positives, {len(wrong_prefix)} other paths "
                f"(first lines {wrong_prefix[:_MAX_LISTED]})")
        if trailing != len(lines):
            warnings.warn(f"{file}: {len(lines) - trailing} lines lack the MRM trailing space", stacklevel=2)
        split = name
    df.attrs["benchmark"] = {
        "benchmark": "rsna_pneumonia", **file_fingerprint(file), "rsna_split": split, "n_lines": len(lines),
        "n": int(len(df)), "n_pos": int(df["label"].sum()), "n_neg": int((df["label"] == 0).sum()),
        "lines_with_trailing_space": int(trailing), "excluded_rows": excluded,
    }
    return df


# ---------------------------------------------------------------------------------------- multi-label lists
CHESTXRAY14_FINDINGS: tuple[str, ...] = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia", "Pneumothorax",
    "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
)
LABELLED_FORMATS = ("generic", "chestxray14", "chexpert_test")
UNCERTAIN_POLICIES = ("ignore", "positive", "negative")
CHEXPERT_META_COLUMNS = ("Sex", "Age", "Frontal/Lateral", "AP/PA")


def _cell_labels(df: pd.DataFrame, columns: list[str], allowed: tuple[float, ...]):
    """(N, F) float matrix of label cells (blank -> NaN) and the rows holding anything else."""
    raw = df[columns]
    num = raw.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64, copy=True)
    blank = raw.isna().to_numpy() | raw.astype(str).apply(lambda c: c.str.strip() == "").to_numpy()
    bad = (~blank & ~np.isin(num, allowed)) | (~blank & np.isnan(num))
    num[blank] = np.nan
    problems = []
    for i in np.flatnonzero(bad.any(axis=1)):
        cols = [columns[j] for j in np.flatnonzero(bad[i])]
        vals = [raw.iat[i, j] for j in np.flatnonzero(bad[i])]
        problems.append((int(i), f"label value(s) {vals!r} in {cols} (allowed: {list(allowed)} or blank)"))
    return num, problems


def _chestxray14_dirs(root: Path | None) -> list[Path]:
    """Folders an NIH ChestX-ray14 image may sit in: the root, ``images/``, ``images_NNN/images/`` (the download)."""
    if root is None:
        return []
    return [root, root / "images", *sorted(root.glob("images_*/images"))]


def read_labelled_list(path: str | Path, fmt: str = "generic", image_root: str | Path | None = None,
                       split_list: str | Path | None = None, findings=None, uncertain: str = "ignore",
                       strict: bool = True) -> pd.DataFrame:
    """Read a multi-label image list for zero-shot AUROC; returns ``row, path, rel_path`` and one float column per
    finding (1.0 present, 0.0 absent, NaN unlabelled: that image does not count for that finding).

    Formats (``fmt``):

    * ``generic``: CSV with a ``path`` (or ``Path``) column and one column per finding holding 0, 1 or blank.
    * ``chestxray14``: NIH ``Data_Entry_2017.csv`` (``Image Index``, ``Finding Labels`` = ``|``-joined names of
      :data:`CHESTXRAY14_FINDINGS`, or ``No Finding``); every image is labelled for all 14 findings.
      ``split_list`` (``test_list.txt``, one image name a line) selects the images; names are looked up under
      ``image_root``, ``image_root/images`` and ``image_root/images_NNN/images`` (the NIH download layout).
    * ``chexpert_test``: the CheXpert test (or valid) labels CSV: ``Path`` + the 14 CheXpert label columns, values
      1, 0, -1 (uncertain) or blank; the metadata columns Sex/Age/Frontal/Lateral/AP/PA are allowed and ignored.
      ``uncertain`` decides -1: ``ignore`` (default, U-Ignore: unlabelled for that finding), ``positive``
      (U-Ones) or ``negative`` (U-Zeros). Blank is unlabelled. The generic format has no -1.

    ``findings`` (optional) selects and orders the evaluated findings; each must be a column of the format.
    Malformed rows raise :class:`BenchmarkError` naming the file and rows (``strict=False`` excludes them).
    """
    file = Path(path)
    if fmt not in LABELLED_FORMATS:
        raise BenchmarkError(f"{file}: unknown labelled-list format {fmt!r}; choose from {list(LABELLED_FORMATS)}")
    if uncertain not in UNCERTAIN_POLICIES:
        raise BenchmarkError(f"{file}: unknown uncertain-label policy {uncertain!r}; choose from "
                             f"{list(UNCERTAIN_POLICIES)}")
    if not file.is_file():
        raise BenchmarkError(f"{file}: labelled image list not found")
    try:
        df = pd.read_csv(file, dtype=str, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise BenchmarkError(f"{file}: cannot parse as CSV: {exc}") from exc
    df = df.loc[:, [c for c in df.columns if not str(c).startswith("Unnamed:")]]  # NIH's trailing comma
    n_uncertain: dict[str, int] = {}
    if fmt == "chestxray14":
        _require_columns(file, df, ["Image Index", "Finding Labels"])
        all_findings = list(CHESTXRAY14_FINDINGS)
        rel = df["Image Index"].fillna("").astype(str).str.strip()
        labels = np.zeros((len(df), len(all_findings)))
        problems = []
        for i, cell in enumerate(df["Finding Labels"].fillna("").astype(str)):
            names = [n.strip() for n in cell.split("|") if n.strip()]
            unknown = [n for n in names if n not in all_findings and n != "No Finding"]
            if not names or unknown or ("No Finding" in names and len(names) > 1):
                problems.append((i, f"Finding Labels {cell!r}: expected '|'-joined names of {all_findings} "
                                    "or 'No Finding'"))
                continue
            for n in names:
                if n != "No Finding":
                    labels[i, all_findings.index(n)] = 1.0
    else:
        path_col = "path" if "path" in df.columns else "Path"
        _require_columns(file, df, [path_col])
        if fmt == "chexpert_test":
            _require_columns(file, df, list(CHEXPERT_LABELS_14))
            extra = [c for c in df.columns if c not in (path_col, *CHEXPERT_LABELS_14, *CHEXPERT_META_COLUMNS)]
            if extra:
                raise BenchmarkError(f"{file}: unexpected column(s) {extra} for a CheXpert labels CSV")
            all_findings = list(CHEXPERT_LABELS_14)
            labels, problems = _cell_labels(df, all_findings, (0.0, 1.0, -1.0))
            n_uncertain = {f: int((labels[:, j] == -1).sum()) for j, f in enumerate(all_findings)}
            labels[labels == -1] = {"ignore": np.nan, "positive": 1.0, "negative": 0.0}[uncertain]
        else:
            all_findings = [c for c in df.columns if c != path_col]
            if not all_findings:
                raise BenchmarkError(f"{file}: no finding columns next to {path_col!r}")
            labels, problems = _cell_labels(df, all_findings, (0.0, 1.0))
        rel = df[path_col].fillna("").astype(str).str.strip()
    problems += [(i, "empty path") for i in np.flatnonzero((rel == "").to_numpy())]
    problems.sort()
    excluded = _fail_or_exclude(file, problems, strict)
    keep = np.setdiff1d(np.arange(len(df)), [r for r, _ in problems])
    rel = rel.iloc[keep].reset_index(drop=True)
    labels = labels[keep]
    dup = rel[rel.duplicated(keep=False)].unique().tolist()
    if dup:
        raise BenchmarkError(f"{file}: duplicated image paths {dup[:_MAX_LISTED]}")
    split_info = None
    if split_list is not None:
        sfile = Path(split_list)
        if not sfile.is_file():
            raise BenchmarkError(f"{sfile}: split list not found")
        names = [ln.strip() for ln in sfile.read_text(encoding="utf-8").splitlines() if ln.strip()]
        missing = sorted(set(names) - set(rel))
        if missing:
            raise BenchmarkError(f"{sfile}: {len(missing)} image(s) not in {file.name} (first: {missing[:3]})")
        sel = rel.isin(set(names)).to_numpy()
        rel, labels, keep = rel[sel].reset_index(drop=True), labels[sel], keep[sel]
        split_info = {**file_fingerprint(sfile), "n_lines": len(names)}
    chosen = list(all_findings) if findings is None else list(findings)
    unknown = [f for f in chosen if f not in all_findings]
    if unknown or not chosen:
        raise BenchmarkError(f"{file}: finding(s) {unknown or chosen} not in the {fmt} list (has {all_findings})")
    labels = labels[:, [all_findings.index(f) for f in chosen]]
    if fmt == "chestxray14":
        dirs = _chestxray14_dirs(None if image_root is None else Path(image_root))
        paths = [next((str(d / r) for d in dirs if (d / r).is_file()), str(dirs[0] / r) if dirs else r) for r in rel]
    else:
        paths = _join_root(image_root, rel).tolist()
    out = pd.DataFrame({"row": keep.astype(np.int64), "path": paths, "rel_path": rel})
    for j, f in enumerate(chosen):
        out[f] = labels[:, j]
    out.attrs["benchmark"] = {
        "benchmark": "labelled_list", "format": fmt, **file_fingerprint(file), "split_list": split_info,
        "findings": chosen, "n_rows_file": int(len(df)), "n": int(len(out)), "excluded_rows": excluded,
        "uncertain_policy": uncertain if fmt == "chexpert_test" else None,
        "n_uncertain": {f: n_uncertain[f] for f in chosen} if n_uncertain else None,
    }
    return out
