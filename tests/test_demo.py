"""Tests of the synthetic demo dataset generator (alta.demo.dataset): layout, ids, determinism, DICOM variety,
report/image consistency, benchmark formats, planted PHI confinement."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from alta.demo import dataset as demo
from alta.demo.findings import CHEXPERT_LABELS_ALPHA, CHEXPERT_LABELS_ORDER

SMALL = dict(chexpert_per_class=3, image_queries=2, rsna_test=10, rsna_val=6, rsna_size=256)


@pytest.fixture(scope="module")
def ds(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "a"
    demo.generate(out, n_patients=12, seed=3, **SMALL)
    return out


@pytest.fixture(scope="module")
def truth(ds) -> pd.DataFrame:
    return pd.read_parquet(ds / "demo_truth.parquet")


@pytest.fixture(scope="module")
def summary(ds) -> dict:
    return json.loads((ds / "demo_truth.json").read_text())


def _csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def test_layout_and_ids(ds, truth):
    meta = _csv(ds / "mimic-cxr-2.0.0-metadata.csv.gz")
    assert list(meta.columns) == demo.METADATA_COLUMNS
    assert len(meta) == len(truth)
    for r in meta.itertuples():
        assert re.fullmatch(r"1\d{7}", r.subject_id) and re.fullmatch(r"5\d{7}", r.study_id)
        assert re.fullmatch(r"[0-9a-f]{8}(-[0-9a-f]{8}){4}", r.dicom_id)
        d = ds / "files" / f"p{r.subject_id[:2]}" / f"p{r.subject_id}" / f"s{r.study_id}"
        assert (d / f"{r.dicom_id}.dcm").is_file() and d.with_suffix(".txt").is_file()
    assert not list((ds / "files").rglob("*.json")) and not list((ds / "files").rglob("*.parquet"))
    # ids must not encode time order: within a patient, study_id order differs from time order somewhere
    studies = truth.drop_duplicates("study_id")
    multi = [g for _, g in studies.groupby("subject_id") if len(g) > 2]
    assert multi and any(list(g.sort_values("study_datetime").study_id) != sorted(g.study_id) for g in multi)


def test_study_time_format(ds, truth):
    meta = _csv(ds / "mimic-cxr-2.0.0-metadata.csv.gz")
    hdr = dict(zip(truth.dicom_id, truth.study_time))
    assert all(re.fullmatch(r"\d{6}\.\d{6}", t) for t in hdr.values())
    for r in meta.itertuples():
        h = hdr[r.dicom_id]
        assert float(r.StudyTime) == pytest.approx(float(h[:10]))
        if h.startswith("0"):
            assert not r.StudyTime.startswith("0") and len(r.StudyTime.split(".")[0]) < 6


def test_split_patient_disjoint(ds, truth):
    sp = _csv(ds / "mimic-cxr-2.0.0-split.csv.gz")
    assert list(sp.columns) == ["dicom_id", "study_id", "subject_id", "split"]
    assert sp.groupby("subject_id").split.nunique().max() == 1
    assert set(sp.split) == {"train", "validate", "test"}
    chex = _csv(ds / "mimic-cxr-2.0.0-chexpert.csv.gz")
    assert list(chex.columns) == ["subject_id", "study_id", *CHEXPERT_LABELS_ALPHA]
    assert set(chex[list(CHEXPERT_LABELS_ALPHA)].to_numpy().ravel()) <= {"1.0", "0.0", "-1.0", ""}


def test_dicoms_decode_as_recorded(ds, truth, summary):
    assert sum(summary["transfer_syntax_counts"].values()) == len(truth)
    assert len(summary["transfer_syntax_counts"]) == 6 and set(truth.photometric) == {"MONOCHROME1", "MONOCHROME2"}
    sample = truth.groupby(["codec", "photometric"]).head(2)
    for r in sample.itertuples():
        d = pydicom.dcmread(ds / r.path)
        assert d.file_meta.TransferSyntaxUID == r.transfer_syntax
        assert d.PhotometricInterpretation == r.photometric and d.BitsStored == r.bits_stored
        assert d.SOPClassUID in ("1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.5.1.4.1.1.1")
        assert d.StudyTime == r.study_time and d.ViewPosition == r.view_position
        a = d.pixel_array
        assert a.shape == (r.rows, r.columns) and a.max() < 2 ** r.bits_stored and a.std() > 0
    assert ((truth.view_position == "") & (truth.view_meaning != "")).any()


def test_cardiomegaly_in_report_and_image(ds, truth):
    fr = truth[(truth.view == "PA") & (truth.codec != "j2k_lossy")]
    big = fr[fr.cardiomegaly & (fr.eff_left == 0) & (fr.eff_right == 0)]
    small = fr[~fr.cardiomegaly & (fr.eff_left == 0) & (fr.eff_right == 0) & (fr.edema == 0)]
    if big.empty or small.empty:
        pytest.skip("seed produced no clean cardiomegaly/normal PA pair")

    def heart_box_mean(r) -> float:
        d = pydicom.dcmread(ds / r.path)
        a = d.pixel_array.astype(np.float64)
        a = (a - a.min()) / (a.max() - a.min())
        if d.PhotometricInterpretation == "MONOCHROME1":
            a = 1 - a
        h, w = a.shape  # box lateral to a normal heart, inside an enlarged one (patient's left, image right)
        return float(a[int(0.62 * h):int(0.72 * h), int(0.70 * w):int(0.78 * w)].mean())

    r = big.iloc[0]
    report = (ds / Path(r.path).parent.with_suffix(".txt")).read_text().lower()
    assert "cardiomegaly" in report or "enlarged" in report
    assert heart_box_mean(r) > heart_box_mean(small.iloc[0]) + 0.1


def test_deterministic(ds, truth, tmp_path):
    out = tmp_path / "b"
    demo.generate(out, n_patients=12, seed=3, workers=3, **SMALL)  # the same bytes from several worker processes
    names = ["mimic-cxr-2.0.0-metadata.csv.gz", "mimic-cxr-2.0.0-split.csv.gz", "mimic-cxr-2.0.0-chexpert.csv.gz",
             "demo_truth.parquet", "benchmarks/chexpert_5x200.csv", "benchmarks/rsna/test_list.txt"]
    names += list(truth.path)
    names += [str(p.relative_to(ds)) for p in sorted((ds / "files").rglob("*.txt"))[:5]]
    for n in names:
        assert (ds / n).read_bytes() == (out / n).read_bytes(), n
    other = tmp_path / "c"
    demo.generate(other, n_patients=12, seed=4, **SMALL)
    assert (other / names[0]).read_bytes() != (ds / names[0]).read_bytes()


def test_benchmark_formats(ds, summary):
    b = ds / "benchmarks"
    cx = pd.read_csv(b / "chexpert_5x200.csv")
    assert list(cx.columns) == ["Unnamed: 0", "Path", "Sex", "Age", "Frontal/Lateral", "AP/PA",
                                *CHEXPERT_LABELS_ORDER, "Report Impression"]
    five = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"]
    assert (cx[list(CHEXPERT_LABELS_ORDER)].sum(axis=1) == 1).all() and (cx[five].sum(axis=1) == 1).all()
    assert list(cx[five].to_numpy().argmax(1)) == [i // 3 for i in range(15)]
    assert cx["Report Impression"].str.contains("\n").all()
    assert all((b / "chexpert" / p).is_file() for p in cx.Path)
    ir, tr = b / "convirt" / "image-retrieval", b / "convirt" / "text-retrieval"
    assert (ir / "candidate.csv").read_bytes() == (tr / "candidate.csv").read_bytes()
    cand = pd.read_csv(ir / "candidate.csv")
    assert list(cand.columns) == ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_LABELS_ORDER]
    assert len(cand) == 24 and (cand[list(CHEXPERT_LABELS_ORDER)].sum(axis=1) == 1).all()
    iq, tq = pd.read_csv(ir / "query.csv"), pd.read_csv(tr / "query.csv")
    assert list(iq.columns) == ["Variable", "Path"] and list(tq.columns) == ["Variable", "Text"]
    assert len(tq) == 40 and not set(iq.Path) & set(cand.Path)
    for name, folder, n in (("test", "stage_2_test_images", 10), ("val", "stage_2_train_images", 6)):
        lines = (b / "rsna" / f"{name}_list.txt").read_text().split("\n")
        assert lines[-1] == "" and len(lines) == n + 1
        for ln in lines[:-1]:
            assert re.fullmatch(folder + r"/[0-9a-f-]{36}\.dcm [01] ", ln)
        d = pydicom.dcmread(b / "rsna" / lines[0].split()[0])
        assert d.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50" and d.BitsStored == 8
        assert d.PhotometricInterpretation == "MONOCHROME2" and d.pixel_array.shape == (256, 256)


def test_planted_phi_confined(ds, truth, summary):
    phi = summary["planted_phi"]
    assert len(phi) > 20
    d = pydicom.dcmread(ds / truth.path.iloc[0])
    raw = (ds / truth.path.iloc[0]).read_bytes()
    assert str(d.PatientName) in phi and d.PatientBirthDate in phi and d.AccessionNumber in phi
    assert d.InstitutionName.encode() in raw and any(p.encode() in raw for p in phi if p.startswith("PHIPRIVATE"))
    texts = [gzip.decompress(p.read_bytes()).decode() for p in ds.glob("*.csv.gz")]
    texts += [p.read_text() for p in (ds / "files").rglob("*.txt")]
    texts += [p.read_text() for p in (ds / "benchmarks").rglob("*.csv")]
    texts += [(ds / "demo_truth.parquet").read_bytes().decode("latin-1")]
    blob = "\n".join(texts)
    leaked = [p for p in phi if p in blob]
    assert not leaked, leaked[:5]


def test_pairing_coverage_consistent(summary, truth):
    pc = summary["pairing"]
    assert pc["images"] == len(truth) and pc["studies"] == truth.study_id.nunique()
    assert pc["frontal_rows_with_prior"] <= pc["frontal_rows"]
    assert pc["frontal_rows_all_four"] <= min(pc["frontal_rows_with_lateral"], pc["frontal_rows_with_prior_lateral"])
    eff = truth.view_position.where(truth.view_position != "", truth.view_meaning.map(
        {"postero-anterior": "PA", "antero-posterior": "AP"}).fillna(""))
    fr = truth[eff.isin(["PA", "AP"])]
    assert pc["frontal_rows"] == len(fr)
    has_prior = [((fr.subject_id == r.subject_id) & (fr.study_datetime < r.study_datetime)).any()
                 for r in fr.itertuples()]
    assert pc["frontal_rows_with_prior"] == sum(has_prior)


def test_large(tmp_path):
    paths = demo.write_large(tmp_path, 2, seed=0, shape=(300, 240))
    assert len(paths) == 2 and paths[0].startswith("files/p1")
    d = pydicom.dcmread(tmp_path / paths[0])
    assert d.pixel_array.shape == (300, 240) and d.BitsAllocated == 16


def test_cli_help():
    with pytest.raises(SystemExit) as e:
        demo.main(["--help"])
    assert e.value.code == 0
