"""The DICOM header whitelist: the only header values that leave extraction (docs/data.md §2.3; images.parquet).

This module is the privacy boundary. :func:`header_row` reads each kept attribute by keyword from explicit tuples,
each with the reason it is kept; it never iterates over a dataset, so names, birth dates, accession numbers,
institutions, operators, free-text comments, private tags and study/patient-identifying UIDs cannot leak into
outputs or logs. Values longer than 100 characters and LUT sequences are skipped, as the official MIMIC exporter
does (only the presence of VOI/Modality LUT sequences is recorded, as booleans).
"""

from __future__ import annotations


def transfer_syntax(ds) -> str | None:
    """The file's TransferSyntaxUID (kept: which decoder ran; per-syntax statistics), or None."""
    meta = getattr(ds, "file_meta", None)
    uid = meta.get("TransferSyntaxUID") if meta is not None else None
    return str(uid) if uid else None


# Every header value that leaves extraction is listed here, with why it is kept. Nothing else is ever copied:
# no names, birth dates, accession numbers, institutions, UIDs that identify a study or patient.
HEADER_STRINGS = (
    "SOPClassUID",                    # tells For-Presentation from For-Processing and secondary captures
    "Modality",                       # CR/DX/...: the radiograph filter
    "PhotometricInterpretation",      # MONOCHROME1 inversion, colour handling
    "ViewPosition",                   # PA/AP/LATERAL: view sets for pairing (docs/data.md §4.1)
    "PerformedProcedureStepDescription",  # e.g. "CHEST (PA AND LAT)": study type
    "StudyDate",                      # shifted date: temporal ordering of studies (docs/data.md §4.2)
    "StudyTime",                      # time of day: ordering studies on the same date
    "PresentationLUTShape",           # INVERSE/IDENTITY: audit of the inversion rule
)
HEADER_INTS = (
    "BitsAllocated", "BitsStored", "PixelRepresentation",  # decoding and masking audit
    "Rows", "Columns",                                      # original size (the stored copy is resized)
)
HEADER_CODE_SEQUENCES = (
    "ViewCodeSequence",                   # CodeMeaning fallback for a blank ViewPosition
    "ProcedureCodeSequence",              # procedure name, as in the MIMIC metadata
    "PatientOrientationCodeSequence",     # Erect / Recumbent
)
HEADER_WINDOW = ("WindowCenter", "WindowWidth")  # first value: voi rendering audit
MAX_VALUE_CHARS = 100  # the official MIMIC exporter skips longer values
HEADER_COLUMNS = ("SOPClassUID", "TransferSyntaxUID", "Modality", "PhotometricInterpretation", *HEADER_INTS,
                  "ViewPosition", *(f"{s}_CodeMeaning" for s in HEADER_CODE_SEQUENCES),
                  "PerformedProcedureStepDescription", "StudyDate", "StudyTime", *HEADER_WINDOW,
                  "has_voi_lut_sequence", "has_modality_lut_sequence", "PresentationLUTShape", "pixel_spacing_mm")


def _text(value) -> str | None:
    if value is None:
        return None
    s = str(value).strip()
    return s if s and len(s) <= MAX_VALUE_CHARS else None


def _first(value):
    if value is None or isinstance(value, (str, bytes)):
        return value
    try:
        return value[0] if len(value) else None
    except TypeError:
        return value


def _number(value, kind):
    try:
        v = _first(value)
        return None if v is None or v == "" else kind(v)
    except (TypeError, ValueError):
        return None


def header_row(ds) -> dict:
    """The whitelisted header fields of one dataset as the images.parquet columns (missing/blank -> None)."""
    def get(kw):
        try:
            return ds.get(kw)
        except Exception:  # noqa: BLE001 - a malformed value is dropped, never propagated
            return None

    row: dict = {kw: _text(get(kw)) for kw in HEADER_STRINGS}
    row["TransferSyntaxUID"] = transfer_syntax(ds)
    row.update({kw: _number(get(kw), int) for kw in HEADER_INTS})
    for seq_kw in HEADER_CODE_SEQUENCES:
        seq, meaning = get(seq_kw), None
        try:
            if seq is not None and len(seq) and "CodeMeaning" in seq[0]:
                meaning = _text(seq[0].CodeMeaning)
        except Exception:  # noqa: BLE001
            meaning = None
        row[f"{seq_kw}_CodeMeaning"] = meaning
    row.update({kw: _number(get(kw), float) for kw in HEADER_WINDOW})
    # LUT sequences themselves are not copied (large, and skipped by the MIMIC exporter); their presence is.
    row["has_voi_lut_sequence"] = bool(get("VOILUTSequence"))
    row["has_modality_lut_sequence"] = bool(get("ModalityLUTSequence"))
    # physical pixel size (mm): recorded because the stored copy is resized
    spacing = _number(get("PixelSpacing"), float)
    if spacing is None or not spacing > 0:  # some exports write 0\0 for "unknown"
        spacing = _number(get("ImagerPixelSpacing"), float)
    row["pixel_spacing_mm"] = spacing if spacing is not None and spacing > 0 else None
    return {k: row[k] for k in HEADER_COLUMNS}
