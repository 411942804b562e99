"""Report readers for the ``sections`` stage: MIMIC-CXR ``.txt`` trees, IU X-ray (Open-i) XML, manifest text.

Every reader yields, in a deterministic order, one :class:`Report` per usable report or one :class:`Reject` per
input that cannot be used, so that ``inputs = reports + rejects`` always holds.

Inputs
- ``mimic``: a MIMIC-CXR tree (``files/pXX/pSUBJECT/sSTUDY.txt``; any folder above ``pXX`` may be given) or the
  ``mimic-cxr-reports.zip`` archive itself. ``study_id`` / ``subject_id`` come from the path without the ``s`` / ``p``
  prefix. A ``.txt`` file counts as a report when its name starts with ``s`` and its parent folder with ``p``.
- ``iu``: a folder of IU X-ray ``*.xml`` files (searched recursively) or a ``.tgz``/``.tar.gz`` archive of them
  (read directly with :mod:`tarfile`). ``study_id`` is the ``uId`` (``CXR<n>``); ``subject_id`` is null (IU has one
  study per patient and no patient id). The four labelled ``AbstractText`` sections are rendered as MIMIC-style text
  ``"\\n COMPARISON: ...\\n \\n INDICATION: ...\\n \\n FINDINGS: ...\\n \\n IMPRESSION: ..."`` so that the MIMIC
  parser runs unchanged (docs/data.md §6); ``XXXX`` placeholders are kept.
- ``manifest``: a CSV (read as strings) with ``study_id`` and ``report_text`` and/or ``report_path`` columns
  (optional ``subject_id``); one row per image, grouped by ``study_id``. Per study the distinct non-empty
  ``report_text`` values are used (joined by a newline when several, in row order); if there are none, the distinct
  ``report_path`` files are read and joined the same way. Relative ``report_path`` values are resolved against
  ``root`` when given, else against the manifest's folder.

Decoding (``decode_report``): UTF-8 (a UTF-8 BOM is dropped; UTF-16 with a BOM is honoured); text that is not valid
UTF-8 is decoded as cp1252, else Latin-1, with a logged warning naming the file (the ``encoding`` field records what
was used). NUL bytes are removed and counted. Line endings are normalised as Python's text mode does (``\\r\\n`` and
``\\r`` to ``\\n``), because the MIT-LCP override spans are offsets into text read that way.

Reject reasons: ``empty_report`` (empty or whitespace-only after decoding, or an IU report whose four sections are
all empty, or a manifest study without report text), ``unreadable_report`` (I/O error, corrupt archive member),
``undecodable_report`` (binary content: more than 5% control characters after decoding), ``malformed_report`` (IU
XML that does not parse or has no ``uId``), ``missing_file`` (manifest ``report_path`` that does not exist).
"""

from __future__ import annotations

import codecs
import logging
import os
import re
import tarfile
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pandas as pd

log = logging.getLogger("alta.data.report_readers")

SOURCES = ("mimic", "iu", "manifest")
_CONTROL = re.compile(r"[\x01-\x08\x0b\x0e-\x1f\x7f]")
_MIMIC_NAME = re.compile(r"(?:^|/)p([^/]+)/s([^/]+)\.txt$")
_IU_LABELS = re.compile(r"^[A-Z ()/,-]+$")


@dataclass(frozen=True)
class Report:
    """One decoded report. ``text`` is what the section parser sees and what ``full_text`` stores."""

    study_id: str
    subject_id: str | None
    report_path: str
    text: str
    encoding: str
    nul_bytes: int


@dataclass(frozen=True)
class Reject:
    """An input that yields no report: ``path`` (as in report_path), a short ``reason`` code, a sentence."""

    path: str
    reason: str
    detail: str


def decode_report(raw: bytes, path: str) -> tuple[str, str, int]:
    """Bytes -> (text, encoding, number of NUL characters removed). Never raises on content."""
    if raw.startswith(codecs.BOM_UTF16_LE) or raw.startswith(codecs.BOM_UTF16_BE):
        text, enc = raw.decode("utf-16", errors="replace"), "utf-16"
    else:
        try:
            text, enc = raw.decode("utf-8"), "utf-8"
            if text.startswith("\ufeff"):
                text, enc = text[1:], "utf-8-sig"
        except UnicodeDecodeError:
            try:
                text, enc = raw.decode("cp1252"), "cp1252"
            except UnicodeDecodeError:  # cp1252 leaves five bytes undefined; Latin-1 maps every byte
                text, enc = raw.decode("latin-1"), "latin-1"
            log.warning("%s: not valid UTF-8; decoded as %s", path, enc)
    nul = text.count("\x00")
    if nul:
        text = text.replace("\x00", "")
        log.warning("%s: removed %d NUL characters", path, nul)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text, enc, nul


def _report_or_reject(raw: bytes, path: str, study_id: str, subject_id: str | None) -> Report | Reject:
    text, enc, nul = decode_report(raw, path)
    if not text.strip():
        what = "only NUL bytes" if nul else ("only whitespace" if text else "no bytes")
        return Reject(path, "empty_report", f"the report contains {what}")
    n_ctrl = len(_CONTROL.findall(text))
    if n_ctrl > 0.05 * len(text):
        return Reject(path, "undecodable_report",
                      f"{n_ctrl} of {len(text)} characters are control characters: binary content, not a report")
    return Report(study_id, subject_id, path, text, enc, nul)


# -- MIMIC ---------------------------------------------------------------------------------------------------
def _is_archive(root: Path, exts: tuple[str, ...]) -> bool:
    return root.is_file() and root.name.lower().endswith(exts)


def _mimic_ids(root: Path, rel: str) -> tuple[str, str] | None:
    """(subject_id, study_id) of a report path relative to ``root``, or None when it is not a report."""
    m = _MIMIC_NAME.search(f"{root.name}/{rel}")  # the root itself may be a pSUBJECT folder
    return (m.group(1), m.group(2)) if m else None


def mimic_report_files(root: str | os.PathLike) -> list[str]:
    """Report paths relative to ``root`` (POSIX, sorted) of a MIMIC tree, or archive member names of a zip."""
    root = Path(root)
    if _is_archive(root, (".zip",)):
        with zipfile.ZipFile(root) as zf:
            return sorted(n for n in zf.namelist() if _mimic_ids(root, n))
    rels = (p.relative_to(root).as_posix() for p in root.rglob("*.txt") if p.is_file())
    return sorted(r for r in rels if _mimic_ids(root, r))


def read_mimic(root: str | os.PathLike) -> Iterator[Report | Reject]:
    """Yield the reports of a MIMIC tree or reports zip in sorted path order."""
    root = Path(root)
    names = mimic_report_files(root)
    zf = zipfile.ZipFile(root) if _is_archive(root, (".zip",)) else None
    try:
        for rel in names:
            subject_id, study_id = _mimic_ids(root, rel)
            try:
                raw = zf.read(rel) if zf is not None else (root / rel).read_bytes()
            except (OSError, zipfile.BadZipFile, EOFError) as exc:
                yield Reject(rel, "unreadable_report", f"cannot read the file: {exc}")
                continue
            yield _report_or_reject(raw, rel, study_id, subject_id)
    finally:
        if zf is not None:
            zf.close()


# -- IU X-ray ------------------------------------------------------------------------------------------------
def render_iu(sections: list[tuple[str, str]]) -> str:
    """Labelled (LABEL, text) pairs -> MIMIC-style report text: one space before each line, blank line between."""
    blocks = []
    for label, body in sections:
        lines = [ln.strip() for ln in body.strip().splitlines()] or [""]
        blocks.append(f" {label}: " + "\n ".join(lines))
    return "\n" + "\n \n".join(blocks) + "\n"


def parse_iu_xml(raw: bytes, path: str) -> tuple[str, list[tuple[str, str]]] | Reject:
    """IU XML bytes -> (uId, [(LABEL, text), ...] in document order), or a Reject."""
    try:
        root = ET.fromstring(raw)
    except ET.ParseError as exc:
        return Reject(path, "malformed_report", f"XML does not parse: {exc}")
    uid = root.find("uId")
    if uid is None or not (uid.get("id") or "").strip():
        return Reject(path, "malformed_report", "no <uId id=...> element: the report id is unknown")
    sections = []
    for el in root.iter("AbstractText"):
        label = (el.get("Label") or "").strip().upper()
        if _IU_LABELS.match(label):
            sections.append((label, " ".join("".join(el.itertext()).split())))
    return uid.get("id").strip(), sections


def iu_report_files(root: str | os.PathLike) -> list[str]:
    """XML member names of an IU archive, or XML paths relative to an IU folder (sorted)."""
    root = Path(root)
    if root.is_file():
        with tarfile.open(root, "r:*") as tf:
            return sorted(m.name for m in tf.getmembers() if m.isfile() and m.name.endswith(".xml"))
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.xml") if p.is_file())


def _iu_raw(root: Path) -> Iterator[tuple[str, bytes | Reject]]:
    """(relative name, bytes or Reject) of every IU XML, sorted by name."""
    if not root.is_file():
        for rel in iu_report_files(root):
            try:
                yield rel, (root / rel).read_bytes()
            except OSError as exc:
                yield rel, Reject(rel, "unreadable_report", f"cannot read the file: {exc}")
        return
    # a gzip stream cannot seek backwards cheaply: read members in archive order, then sort
    found: list[tuple[str, bytes | Reject]] = []
    with tarfile.open(root, "r:*") as tf:
        try:
            for m in tf:
                if m.isfile() and m.name.endswith(".xml"):
                    try:
                        found.append((m.name, tf.extractfile(m).read()))
                    except (OSError, tarfile.TarError, EOFError) as exc:
                        found.append((m.name, Reject(m.name, "unreadable_report", f"cannot read the member: {exc}")))
        except (OSError, tarfile.TarError, EOFError) as exc:
            raise ValueError(f"{root}: corrupt or truncated archive after {len(found)} members ({exc})") from exc
    yield from sorted(found, key=lambda kv: kv[0])


def read_iu(root: str | os.PathLike) -> Iterator[Report | Reject]:
    """Yield the IU reports rendered as MIMIC-style text, in sorted member / path order."""
    for rel, raw in _iu_raw(Path(root)):
        if isinstance(raw, Reject):
            yield raw
            continue
        parsed = parse_iu_xml(raw, rel)
        if isinstance(parsed, Reject):
            yield parsed
            continue
        uid, sections = parsed
        if not any(body for _, body in sections):
            yield Reject(rel, "empty_report", "all labelled AbstractText sections are empty")
            continue
        yield Report(uid, None, rel, render_iu(sections), "utf-8", 0)


# -- manifest ------------------------------------------------------------------------------------------------
def load_manifest(manifest: str | os.PathLike) -> pd.DataFrame:
    """The manifest's report columns (:func:`alta.data.manifest.read`: the one contract); ValueError names the file."""
    from alta.data import manifest as M

    df = M.read(manifest, need_reports=True, required=("study_id",))
    if (df["study_id"].str.strip() == "").any():
        rows = (df.index[df["study_id"].str.strip() == ""] + 2).tolist()[:5]
        raise ValueError(f"{manifest}: column 'study_id' is empty on line(s) {rows}")
    return df


def _distinct(values) -> list[str]:
    return list(dict.fromkeys(v for v in values if v.strip()))


def _resolve(p: str, base: Path) -> Path:
    return Path(p) if Path(p).is_absolute() else base / p


def manifest_report_files(manifest: str | os.PathLike, root: str | os.PathLike | None = None) -> list[str]:
    """Existing files named in the manifest's ``report_path`` column (sorted), for workflow inputs."""
    df = load_manifest(manifest)
    base = Path(root) if root else Path(manifest).parent
    if "report_path" not in df.columns:
        return []
    return sorted({str(_resolve(p, base)) for p in _distinct(df["report_path"]) if _resolve(p, base).is_file()})


def read_manifest(manifest: str | os.PathLike, root: str | os.PathLike | None = None) -> Iterator[Report | Reject]:
    """Yield one report per manifest study, in first-appearance order of ``study_id``."""
    df = load_manifest(manifest)
    base = Path(root) if root else Path(manifest).parent
    name = Path(manifest).name
    for study_id, g in df.groupby("study_id", sort=False):
        subj = _distinct(g["subject_id"]) if "subject_id" in g.columns else []
        subject_id = subj[0] if subj else None
        texts = _distinct(g["report_text"]) if "report_text" in g.columns else []
        paths = _distinct(g["report_path"]) if "report_path" in g.columns else []
        if texts:
            raw, where = "\n".join(texts).encode("utf-8"), f"{name}#study_id={study_id}"
        elif paths:
            where, chunks = paths[0] if len(paths) == 1 else ";".join(paths), []
            for p in paths:
                full = _resolve(p, base)
                if not full.is_file():
                    chunks = None
                    yield Reject(p, "missing_file", f"report_path of study {study_id} does not exist ({full})")
                    break
                try:
                    chunks.append(full.read_bytes())
                except OSError as exc:
                    chunks = None
                    yield Reject(p, "unreadable_report", f"cannot read the file: {exc}")
                    break
            if chunks is None:
                continue
            raw = b"\n".join(chunks)
        else:
            yield Reject(f"{name}#study_id={study_id}", "empty_report", "the study has no report_text or report_path")
            continue
        yield _report_or_reject(raw, where, str(study_id), subject_id)


# -- dispatch ------------------------------------------------------------------------------------------------
def read_reports(source: str, root: str | os.PathLike | None = None,
                 manifest: str | os.PathLike | None = None) -> Iterator[Report | Reject]:
    """Yield Reports / Rejects of ``source`` (mimic, iu: ``root``; manifest: ``manifest`` [+ ``root``])."""
    if source == "mimic":
        return read_mimic(root)
    if source == "iu":
        return read_iu(root)
    if source == "manifest":
        return read_manifest(manifest, root)
    raise ValueError(f"unknown report source {source!r}; expected one of {', '.join(SOURCES)}")


def list_report_files(source: str, root: str | os.PathLike | None, manifest: str | os.PathLike | None = None
                      ) -> list[str]:
    """The files the stage reads (sorted strings), for Snakemake inputs.

    mimic: every report ``.txt`` under ``root`` (or the zip itself); iu: every XML under ``root`` (or the archive
    itself); manifest: the manifest plus the existing ``report_path`` files it names.
    """
    if source == "manifest":
        return sorted({str(manifest), *manifest_report_files(manifest, root)})
    root_p = Path(root)
    if root_p.is_file():
        return [str(root_p)]
    rels = mimic_report_files(root_p) if source == "mimic" else iu_report_files(root_p) if source == "iu" else None
    if rels is None:
        raise ValueError(f"unknown report source {source!r}; expected one of {', '.join(SOURCES)}")
    return [str(root_p / r) for r in rels]
