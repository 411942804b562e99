"""Benchmark files of the demo dataset, built from held-out synthetic patients (never in the MIMIC tree).

Writes under ``<out>/benchmarks/`` in the exact formats of docs/evaluation.md §7:

- ``chexpert_5x200.csv``: unnamed index, Path, Sex, Age, Frontal/Lateral, AP/PA, the 14 labels (§7.2 order,
  1.0/0.0, exactly one positive among Atelectasis/Cardiomegaly/Consolidation/Edema/Pleural Effusion), and a quoted
  multi-line ``Report Impression``; rows in class blocks of ``per_class``.
- ``convirt/image-retrieval/{query,candidate}.csv`` and ``convirt/text-retrieval/{query,candidate}.csv`` (the two
  candidate files are identical): 8 classes x ``per_class`` candidates, ``image_queries`` image queries per class
  (not among the candidates), 5 text queries per class.
- ``multilabel_list.csv``: the generic labelled image list of multi-label zero-shot AUROC (``path`` + one 0/1
  column per finding of :data:`MULTILABEL_FINDINGS`), the ConVIRT candidate images labelled from the state each was
  rendered from (a Pneumonia candidate is consolidation, so it is positive for both); no extra image is rendered.
- JPGs for all three under ``chexpert/CheXpert-v1.0-small/train/patientNNNNN/study1/view1_frontal.jpg``.
- ``rsna/test_list.txt`` / ``val_list.txt`` (``<path> <label> \\n``, trailing space) and the DICOMs
  ``rsna/stage_2_{test,train}_images/<uuid>.dcm``: CR, 8-bit MONOCHROME2, JPEG baseline; pneumonia = consolidation.
"""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import pandas as pd
from PIL import Image

from alta import io as aio
from alta.demo.dicom import ImageSpec, dicom_bytes, uid_from
from alta.demo.findings import (
    CHEXPERT_LABELS_ALPHA,
    CHEXPERT_LABELS_ORDER,
    LOBES,
    SIDES,
    State,
    chexpert_labels,
    class_state,
    normal_ctr,
)
from alta.demo.layout import unique_ints
from alta.demo.phantom import render
from alta.demo.reports import TEXT_QUERIES, impression_text

CHEXPERT5 = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
CONVIRT8 = ("Atelectasis", "Cardiomegaly", "Edema", "Fracture", "No Finding", "Pleural Effusion", "Pneumonia",
            "Pneumothorax")
META_COLS = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA"]
MULTILABEL_FINDINGS = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Fracture", "No Finding",
                       "Pleural Effusion", "Pneumothorax")


def _jpg(img01: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.rint(img01 * 255).astype(np.uint8), mode="L").save(buf, format="JPEG", quality=90)
    return buf.getvalue()


class _Patients:
    """Unique CheXpert-style patient numbers shared by all CheXpert-root benchmarks."""

    def __init__(self, rng: np.random.Generator, n: int):
        self.ids = iter(unique_ints(rng, n, 1, 64541))

    def path(self) -> str:
        return f"CheXpert-v1.0-small/train/patient{next(self.ids):05d}/study1/view1_frontal.jpg"


def _chexpert_image(root, path: str, state: State, view: str, rng: np.random.Generator) -> None:
    h, w = int(rng.integers(320, 400)), 320  # the "small" release: width 320
    aio.write_bytes(root / path, _jpg(render(state, view, h, w, rng)))


def _row(path: str, cls: str, view: str, rng: np.random.Generator) -> dict:
    row = {"Path": path, "Sex": str(rng.choice(["Male", "Female"])), "Age": int(rng.integers(18, 91)),
           "Frontal/Lateral": "Frontal", "AP/PA": view}
    row.update({lab: (1.0 if lab == cls else 0.0) for lab in CHEXPERT_LABELS_ORDER})
    return row


def write_benchmarks(out, rng: np.random.Generator, per_class: int = 20, image_queries: int = 3,
                     rsna_test: int = 120, rsna_val: int = 60, rsna_pos: float = 0.35,
                     rsna_size: int = 1024) -> dict:
    """Write all benchmark files under ``out/benchmarks``; returns their sizes for demo_truth.json."""
    bench = out / "benchmarks"
    root = bench / "chexpert"
    n_img = 5 * per_class + 8 * (per_class + image_queries)
    pats = _Patients(rng, n_img)

    rows = []
    for cls in CHEXPERT5:
        for _ in range(per_class):
            st = class_state(cls, rng)
            view = "AP" if rng.random() < 0.75 else "PA"
            path = pats.path()
            _chexpert_image(root, path, st, view, rng)
            rows.append({**_row(path, cls, view, rng), "Report Impression": impression_text(st, rng)})
    df = pd.DataFrame(rows)
    aio.write_text(bench / "chexpert_5x200.csv", df.to_csv(index=True))

    cand, iq, multi = [], [], []
    for cls in CONVIRT8:
        for i in range(per_class + image_queries):
            st = class_state(cls, rng)
            view = "AP" if rng.random() < 0.7 else "PA"
            path = pats.path()
            _chexpert_image(root, path, st, view, rng)
            if i < per_class:
                cand.append(_row(path, cls, view, rng))
                truth = chexpert_labels(st, set(CHEXPERT_LABELS_ALPHA))  # every label decided: 1.0 or 0.0
                multi.append({"path": path, **{f: int(truth[f]) for f in MULTILABEL_FINDINGS}})
            else:
                iq.append({"Variable": cls, "Path": path})
    cand_csv = pd.DataFrame(cand).to_csv(index=False)
    conv = bench / "convirt"
    aio.write_text(conv / "image-retrieval" / "candidate.csv", cand_csv)
    aio.write_text(conv / "text-retrieval" / "candidate.csv", cand_csv)
    aio.write_text(conv / "image-retrieval" / "query.csv", pd.DataFrame(iq).to_csv(index=False))
    aio.write_text(bench / "multilabel_list.csv", pd.DataFrame(multi).to_csv(index=False))
    tq = [{"Variable": c, "Text": t} for c in CONVIRT8 for t in TEXT_QUERIES[c]]
    aio.write_text(conv / "text-retrieval" / "query.csv", pd.DataFrame(tq).to_csv(index=False))

    rsna = {}
    for name, folder, n in (("test", "stage_2_test_images", rsna_test), ("val", "stage_2_train_images", rsna_val)):
        labels = np.zeros(n, dtype=int)
        labels[rng.permutation(n)[: int(round(n * rsna_pos))]] = 1
        lines = []
        for lab in labels:
            pid = _uuid(rng)
            st = _rsna_state(int(lab), rng)
            view = "AP" if rng.random() < 0.5 else "PA"
            img = render(st, view, rsna_size, rsna_size, rng)
            spec = ImageSpec(codec="jpeg_baseline", photometric="MONOCHROME2", bits_stored=8, modality="CR",
                             study_uid=uid_from("rsna-study", pid), series_uid=uid_from("rsna-series", pid),
                             sop_uid=uid_from("rsna-sop", pid), study_date="19010101", study_time="000000.00",
                             view_position=view, pixel_spacing=0.168 * 1024 / rsna_size,
                             extra={"PatientName": pid, "PatientID": pid, "PatientSex": str(rng.choice(["M", "F"])),
                                    "PatientAge": f"{int(rng.integers(18, 91)):03d}Y",
                                    "SeriesDescription": f"view: {view}"})
            rel = f"{folder}/{pid}.dcm"
            aio.write_bytes(bench / "rsna" / rel, dicom_bytes(img, spec))
            lines.append(f"{rel} {int(lab)} \n")
        aio.write_text(bench / "rsna" / f"{name}_list.txt", "".join(lines))
        rsna[name] = {"n": int(n), "positive": int(labels.sum())}
    return {"chexpert_5x200": {"rows": len(rows), "per_class": per_class},
            "convirt": {"candidates": len(cand), "image_queries": len(iq), "text_queries": len(tq)},
            "multilabel": {"images": len(multi), "findings": list(MULTILABEL_FINDINGS)},
            "rsna": rsna}


def _uuid(rng: np.random.Generator) -> str:
    b = bytearray(rng.bytes(16))
    b[6] = (b[6] & 0x0F) | 0x40  # version 4 layout, like Kaggle patientIds
    b[8] = (b[8] & 0x3F) | 0x80
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _rsna_state(label: int, rng: np.random.Generator) -> State:
    """Positives: consolidation (sometimes with an effusion); negatives: normal or a non-pneumonia finding."""
    if label:
        st = State(ctr=normal_ctr(rng), consolidation=str(rng.choice(LOBES)))
        return replace(st, eff_right=1) if rng.random() < 0.2 else st
    if rng.random() < 0.6:
        return State(ctr=normal_ctr(rng))
    return class_state(str(rng.choice(["Cardiomegaly", "Atelectasis", "Pleural Effusion", "Edema"])), rng) \
        if rng.random() < 0.8 else State(ctr=normal_ctr(rng), fracture=str(rng.choice(SIDES)))
