"""DICOM writing for the demo dataset (pydicom 3): one codec per image, deterministic bytes, planted PHI.

``encode_pixels(img01, bits_stored, photometric, slope, intercept) -> ndarray`` maps a [0, 1] display image
(MONOCHROME2 convention) to stored values; MONOCHROME1 is stored inverted.
``dicom_bytes(img01, spec) -> bytes`` builds a complete Part-10 file (file meta, DX or CR SOP class) for an
:class:`ImageSpec`. Codecs (``CODECS``): ``explicit`` / ``implicit`` VR little endian, ``jpeg_baseline``
(8-bit, Pillow-encoded and encapsulated), ``j2k`` (lossless) and ``j2k_lossy`` (pylibjpeg-openjpeg via
``Dataset.compress``), ``rle`` (pylibjpeg-rle's encoder: lossless like pydicom's native one, whose pure-Python
loop took half of the demo dataset's generation time). UIDs are ``2.25.<int>`` derived from the seed and ids,
so identical inputs give identical files. Planted PHI (patient name, birth date, accession number, institution,
referring physician, patient id, address, other ids, image comments, a private tag) lets privacy tests elsewhere
prove that nothing from these fields leaves extraction.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import (
    JPEG2000,
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
)

DX_SOP = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
CR_SOP = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage
CODECS: dict[str, UID] = {
    "explicit": ExplicitVRLittleEndian,
    "implicit": ImplicitVRLittleEndian,
    "jpeg_baseline": JPEGBaseline8Bit,
    "j2k": JPEG2000Lossless,
    "j2k_lossy": JPEG2000,
    "rle": RLELossless,
}
VIEW_CODES = {"PA": ("R-10214", "postero-anterior"), "AP": ("R-10206", "antero-posterior"),
              "LATERAL": ("R-10232", "lateral"), "LL": ("R-10236", "left lateral")}
ORIENT_CODES = {"Erect": "F-10440", "Recumbent": "F-10450"}


def uid_from(*parts: object) -> str:
    """Deterministic DICOM UID under the UUID-derived root 2.25 (max 64 characters)."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:16]
    return "2.25." + str(int.from_bytes(digest, "big") >> 1)


@dataclass
class ImageSpec:
    """Everything written into one DICOM header besides the pixels."""

    codec: str
    photometric: str  # MONOCHROME1 / MONOCHROME2
    bits_stored: int  # 8, 12 or 16 (jpeg_baseline: 8)
    modality: str  # DX / CR
    study_uid: str
    series_uid: str
    sop_uid: str
    study_date: str = ""
    study_time: str = ""  # 'HHMMSS.ffffff'
    view_position: str = ""  # written as-is ('' = blank)
    view_code: str = ""  # PA/AP/LATERAL/LL for ViewCodeSequence ('' = no sequence)
    orientation: str = ""  # Erect / Recumbent / ''
    procedure: str = ""
    slope: float = 1.0
    intercept: float = 0.0
    pixel_spacing: float = 0.139
    phi: dict[str, str] = field(default_factory=dict)
    extra: dict[str, str] = field(default_factory=dict)  # plain string attributes (PatientSex, ...)


def encode_pixels(img01: np.ndarray, bits_stored: int, photometric: str) -> np.ndarray:
    """Stored values for a [0, 1] MONOCHROME2-convention image; MONOCHROME1 stores the inverted image."""
    maxv = (1 << bits_stored) - 1
    x = np.clip(img01, 0.0, 1.0)
    if photometric == "MONOCHROME1":
        x = 1.0 - x
    # Do not use the full range: real detectors rarely hit 0 or the maximum, and min-max must still work.
    v = np.rint((0.03 + 0.94 * x) * maxv)
    return v.astype(np.uint8 if bits_stored <= 8 else np.uint16)


def _code_item(value: str, meaning: str, scheme: str = "SRT") -> Dataset:
    it = Dataset()
    it.CodeValue, it.CodingSchemeDesignator, it.CodeMeaning = value, scheme, meaning
    return it


def _header(spec: ImageSpec, arr: np.ndarray) -> Dataset:
    ds = Dataset()
    sop_class = DX_SOP if spec.modality == "DX" else CR_SOP
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, spec.sop_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = spec.study_date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = spec.study_time
    ds.Modality = spec.modality
    ds.Manufacturer = "ALTA DEMO PHANTOM"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = spec.view_position
    if spec.view_code:
        ds.ViewCodeSequence = Sequence([_code_item(*VIEW_CODES[spec.view_code])])
    if spec.orientation:
        ds.PatientOrientationCodeSequence = Sequence([_code_item(ORIENT_CODES[spec.orientation], spec.orientation)])
    if spec.procedure:
        ds.ProcedureCodeSequence = Sequence([_code_item("DEMO-" + str(len(spec.procedure)), spec.procedure, "DEMO")])
        ds.PerformedProcedureStepDescription = spec.procedure
    ds.StudyInstanceUID, ds.SeriesInstanceUID = spec.study_uid, spec.series_uid
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    for k, v in spec.extra.items():
        setattr(ds, k, v)
    phi = spec.phi
    for kw in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "InstitutionName",
               "ReferringPhysicianName", "PatientAddress", "OtherPatientIDs", "ImageComments"):
        if kw in phi:
            setattr(ds, kw, phi[kw])
    if "private" in phi:
        block = ds.private_block(0x0011, "ALTA DEMO PHI", create=True)
        block.add_new(0x01, "LO", phi["private"])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = spec.photometric
    ds.Rows, ds.Columns = int(arr.shape[0]), int(arr.shape[1])
    ds.BitsAllocated = 8 if arr.dtype == np.uint8 else 16
    ds.BitsStored = spec.bits_stored
    ds.HighBit = spec.bits_stored - 1
    ds.PixelRepresentation = 0
    sp = f"{spec.pixel_spacing:.6f}".rstrip("0")
    if spec.modality == "DX":
        ds.ImagerPixelSpacing = [sp, sp]
    ds.PixelSpacing = [sp, sp]
    if spec.slope != 1.0 or spec.intercept != 0.0 or spec.modality == "DX":
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = f"{spec.slope:g}", f"{spec.intercept:g}", "US"
    # Window over the stored range, in rescaled units.
    lo, hi = float(arr.min()), float(arr.max())
    ds.WindowCenter = f"{spec.slope * (lo + hi) / 2 + spec.intercept:.1f}"
    ds.WindowWidth = f"{max(1.0, spec.slope * (hi - lo)):.1f}"
    ds.PresentationLUTShape = "INVERSE" if spec.photometric == "MONOCHROME1" else "IDENTITY"
    return ds


def dicom_bytes(img01: np.ndarray, spec: ImageSpec) -> bytes:
    """A complete DICOM Part-10 file for ``img01`` ([0, 1], MONOCHROME2 display convention)."""
    bits = 8 if spec.codec == "jpeg_baseline" else spec.bits_stored
    spec.bits_stored = bits
    arr = encode_pixels(img01, bits, spec.photometric)
    ds = _header(spec, arr)
    tsuid = CODECS[spec.codec]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.ImplementationClassUID = "1.2.826.0.1.3680043.10.1432.1"
    meta.ImplementationVersionName = "ALTA_DEMO_1"
    ds.file_meta = meta
    if spec.codec in ("explicit", "implicit"):
        meta.TransferSyntaxUID = tsuid
        ds.PixelData = arr.tobytes()
    elif spec.codec == "jpeg_baseline":
        meta.TransferSyntaxUID = tsuid
        buf = io.BytesIO()
        Image.fromarray(arr, mode="L").save(buf, format="JPEG", quality=92)
        ds.PixelData = encapsulate([buf.getvalue()])
        ds["PixelData"].VR = "OB"
        ds.LossyImageCompression = "01"
    elif spec.codec == "j2k_lossy":
        ds.compress(tsuid, arr, j2k_cr=[15], generate_instance_uid=False)
        ds.LossyImageCompression = "01"
    elif spec.codec == "rle":
        ds.compress(tsuid, arr, encoding_plugin="pylibjpeg", generate_instance_uid=False)
    else:
        ds.compress(tsuid, arr, generate_instance_uid=False)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()
