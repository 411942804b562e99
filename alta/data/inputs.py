"""Input discovery for the ``extract`` stage: which files belong to which shard, with their identifiers.

Sources (``--source``):

* ``mimic``: a MIMIC-CXR tree ``ROOT/files/pXX/pSUBJECT/sSTUDY/<dicom_id>.dcm|.dcm.gz`` (docs/data.md §1.2); the shard is
  ``pXX``. Reports (``sSTUDY.txt``) and other files are not images and are not listed. An optional metadata CSV
  (``mimic-cxr-2.0.0-metadata.csv(.gz)``) fills header fields that are blank in a DICOM.
* ``mimic_jpg``: the MIMIC-CXR-JPG tree (same layout, ``<dicom_id>.jpg``); header fields come from the metadata CSV
  (``--metadata``, else ``ROOT/mimic-cxr-2.0.0-metadata.csv.gz`` or ``.csv``), read with ``dtype=str``.
* ``manifest``: the generic manifest CSV (:mod:`alta.data.manifest`: one contract and reader for every stage).
  ``path`` is relative to the manifest's folder unless absolute; the file may be
  a DICOM (``.dcm``/``.dcm.gz``/``.dicom`` or the ``DICM`` magic) or a JPEG/PNG. The shard is
  ``m%02d % (crc32(subject_id) mod n_shards)``. Non-blank manifest ``view_position``/``study_date``/``study_time``
  take precedence over DICOM header values. Duplicate ``image_id`` rows after the first (manifest order) are
  rejected as ``duplicate_image_id``; rows whose file does not exist as ``missing_file``.

The helpers :func:`list_shards` and :func:`shard_files` are pure (no output) and are what the Snakefile's input
functions call.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

SOURCES = ("mimic", "mimic_jpg", "manifest")
MANIFEST_TO_HEADER = {"view_position": "ViewPosition", "study_date": "StudyDate", "study_time": "StudyTime"}
METADATA_NAMES = ("mimic-cxr-2.0.0-metadata.csv.gz", "mimic-cxr-2.0.0-metadata.csv")
METADATA_FIELDS = ("PerformedProcedureStepDescription", "ViewPosition", "StudyDate", "StudyTime",
                   "ProcedureCodeSequence_CodeMeaning", "ViewCodeSequence_CodeMeaning",
                   "PatientOrientationCodeSequence_CodeMeaning")
_SHARD_DIR = re.compile(r"^p\d\d$")
_DICOM_SUFFIXES = (".dcm.gz", ".dcm", ".dicom", ".gz")


class InputError(ValueError):
    """A problem with the stage's inputs as a whole (not one file): the stage fails with this one-line message."""


@dataclass(frozen=True)
class Task:
    """One input file of a shard, in output order."""

    path: str            # absolute (or cwd-relative) path to open
    source_path: str     # relative to the input root; a manifest's path as given
    image_id: str
    subject_id: str
    study_id: str
    shard: str
    kind: str            # dicom | raster
    header: dict = field(default_factory=dict, hash=False, compare=False)  # from metadata CSV / manifest
    header_overrides: bool = False  # True: header values replace DICOM values; False: fill blanks only
    reject: tuple[str, str] | None = None  # (reason, detail) known before reading the file


def manifest_shard(subject_id: str, n_shards: int = 10) -> str:
    """Stable shard of a manifest subject (crc32 does not depend on PYTHONHASHSEED)."""
    return "m%02d" % (zlib.crc32(str(subject_id).encode("utf-8")) % n_shards)


def _files_dir(root: str | Path) -> Path:
    root = Path(root)
    return root / "files" if (root / "files").is_dir() else root


def _mimic_suffixes(source: str) -> tuple[str, ...]:
    return (".dcm", ".dcm.gz") if source == "mimic" else (".jpg",)


def _strip_suffix(name: str, suffixes) -> str | None:
    for s in sorted(suffixes, key=len, reverse=True):
        if name.endswith(s):
            return name[: -len(s)]
    return None


def _read_csv(path: Path, what: str) -> pd.DataFrame:
    """A CSV as strings (blank -> ''); an unreadable file is an :class:`InputError` naming it."""
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        # UnicodeDecodeError is a ValueError: binary or non-UTF-8 content
        raise InputError(f"{path}: cannot read the {what} CSV ({' '.join(str(exc).split())})") from exc


def read_manifest(manifest: str | Path) -> pd.DataFrame:
    """The manifest as strings (blank -> ''), :func:`alta.data.manifest.read`; :class:`InputError` names the file and
    the problem."""
    from alta.data import manifest as M

    try:
        return M.read(manifest)
    except M.ManifestError as exc:
        raise InputError(str(exc)) from None


def list_shards(source: str, root: str | Path, manifest: str | Path | None = None, n_shards: int = 10) -> list[str]:
    """The shards present in the input, sorted (``p10``..``p19`` or ``m00``..)."""
    if source == "manifest":
        if manifest is None:
            raise InputError("--source manifest needs --manifest")
        df = read_manifest(manifest)
        return sorted({manifest_shard(s, n_shards) for s in df["subject_id"]})
    if source not in SOURCES:
        raise InputError(f"unknown source {source!r}; expected one of {SOURCES}")
    files = _files_dir(root)
    if not files.is_dir():
        raise InputError(f"{root}: input root not found")
    return sorted(p.name for p in files.iterdir() if p.is_dir() and _SHARD_DIR.match(p.name))


def _mimic_tasks(source: str, root: Path, shard: str) -> list[Task]:
    base = _files_dir(root) / shard
    suffixes = _mimic_suffixes(source)
    tasks = []
    for subj in sorted(base.glob("p*")) if base.is_dir() else []:
        for study in sorted(subj.glob("s*")):
            if not study.is_dir():
                continue
            for f in sorted(study.iterdir()):
                image_id = _strip_suffix(f.name, suffixes)
                if image_id is None or not f.is_file():
                    continue
                tasks.append(Task(path=str(f), source_path=f.relative_to(root).as_posix(), image_id=image_id,
                                  subject_id=subj.name[1:], study_id=study.name[1:], shard=shard,
                                  kind="dicom" if source == "mimic" else "raster"))
    # output order is by identifiers, which can differ from file-name order ("a-b.dcm" < "a.dcm" but "a" < "a-b")
    tasks.sort(key=lambda t: (t.subject_id, t.study_id, t.image_id, t.source_path))
    return tasks


def _is_dicom_path(path: Path) -> bool:
    if path.name.lower().endswith(_DICOM_SUFFIXES):
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
        return head[128:132] == b"DICM"
    except OSError:
        return False


def _manifest_tasks(manifest: Path, shard: str, n_shards: int) -> list[Task]:
    df = read_manifest(manifest)
    base = manifest.resolve().parent
    seen: set[str] = set()
    tasks = []
    for row in df.to_dict("records"):
        image_id = row["image_id"]
        duplicate = image_id in seen
        seen.add(image_id)
        if manifest_shard(row["subject_id"], n_shards) != shard:
            continue
        path = Path(row["path"]) if Path(row["path"]).is_absolute() else base / row["path"]
        header = {MANIFEST_TO_HEADER[k]: row[k] for k in MANIFEST_TO_HEADER if row[k]}
        reject = None
        if not (row["subject_id"] and row["study_id"] and image_id):
            reject = ("missing_id", "blank subject_id, study_id or image_id in the manifest")
        elif "/" in image_id or "\\" in image_id or image_id in (".", ".."):
            reject = ("bad_image_id", f"image_id {image_id!r} cannot name a file")
        elif duplicate:
            reject = ("duplicate_image_id", f"image_id {image_id} already used by an earlier manifest row")
        elif not row["path"] or not path.is_file():
            reject = ("missing_file", f"{row['path'] or '(blank path)'} does not exist")
        kind = "dicom" if reject is None and _is_dicom_path(path) else "raster"
        tasks.append(Task(path=str(path), source_path=row["path"], image_id=image_id, subject_id=row["subject_id"],
                          study_id=row["study_id"], shard=shard, kind=kind, header=header, header_overrides=True,
                          reject=reject))
    tasks.sort(key=lambda t: (t.subject_id, t.study_id, t.image_id, t.reject is not None, t.source_path))
    return tasks


def find_metadata(root: str | Path, metadata: str | Path | None) -> Path | None:
    if metadata:
        if not Path(metadata).is_file():
            raise InputError(f"{metadata}: metadata CSV not found")
        return Path(metadata)
    for name in METADATA_NAMES:
        if (Path(root) / name).is_file():
            return Path(root) / name
    return None


def read_metadata(path: Path, image_ids: set[str]) -> dict[str, dict]:
    """Header fields by dicom_id from ``mimic-cxr-2.0.0-metadata.csv(.gz)`` (strings; blanks dropped)."""
    df = _read_csv(path, "metadata")
    if "dicom_id" not in df.columns:
        raise InputError(f"{path}: missing required column 'dicom_id'")
    cols = [c for c in METADATA_FIELDS if c in df.columns]
    df = df[df["dicom_id"].isin(image_ids)]
    return {r["dicom_id"]: {c: r[c].strip() for c in cols if r[c].strip()} for r in df.to_dict("records")}


def shard_tasks(source: str, root: str | Path, shard: str, manifest: str | Path | None = None,
                n_shards: int = 10, metadata: str | Path | None = None) -> list[Task]:
    """All inputs of one shard in output order, with header fields from the metadata CSV / manifest and
    duplicates marked; rows sorted by (subject_id, study_id, image_id)."""
    if source == "manifest":
        if manifest is None:
            raise InputError("--source manifest needs --manifest")
        tasks = _manifest_tasks(Path(manifest), shard, n_shards)
    elif source in ("mimic", "mimic_jpg"):
        root = Path(root)
        if not _files_dir(root).is_dir():
            raise InputError(f"{root}: input root not found")
        tasks = _mimic_tasks(source, root, shard)
        meta_path = find_metadata(root, metadata)
        if meta_path is None and source == "mimic_jpg":
            raise InputError(f"{root}: --source mimic_jpg needs the metadata CSV (--metadata or "
                             f"{METADATA_NAMES[0]} in the root); JPGs carry no header")
        if meta_path is not None:
            meta = read_metadata(meta_path, {t.image_id for t in tasks})
            tasks = [Task(**{**t.__dict__, "header": meta.get(t.image_id, {})}) for t in tasks]
        seen: set[str] = set()
        marked = []
        for t in tasks:  # e.g. both x.dcm and x.dcm.gz in one study folder: keep the first in path order
            if t.image_id in seen:
                t = Task(**{**t.__dict__, "reject": ("duplicate_image_id",
                                                     f"image_id {t.image_id} already used in this shard")})
            seen.add(t.image_id)
            marked.append(t)
        tasks = marked
    else:
        raise InputError(f"unknown source {source!r}; expected one of {SOURCES}")
    return tasks


def shard_files(source: str, root: str | Path, shard: str, manifest: str | Path | None = None,
                n_shards: int = 10) -> list[str]:
    """The existing input files of one shard, sorted (Snakemake input function; missing files are not listed,
    they become ``missing_file`` rejects)."""
    tasks = shard_tasks(source, root, shard, manifest=manifest, n_shards=n_shards) if source == "manifest" \
        else _mimic_tasks(source, Path(root), shard)
    return sorted({t.path for t in tasks if t.reject is None or t.reject[0] != "missing_file"})


def manifest_shard_digest(manifest: str | Path, shard: str, n_shards: int = 10) -> str:
    """sha256 of the image columns (``alta.data.manifest.IMAGE_COLUMNS``) of one shard's manifest rows, in manifest
    order: the Snakemake param that reruns a shard when, and only when, what it extracts changes (an edited report
    text reruns sections onward, not extraction)."""
    import hashlib

    from alta.data import manifest as M

    df = read_manifest(manifest)
    rows = df[[manifest_shard(s, n_shards) == shard for s in df["subject_id"]]]
    return hashlib.sha256(rows[list(M.IMAGE_COLUMNS)].to_csv(index=False).encode()).hexdigest()
