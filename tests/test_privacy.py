"""Privacy (issue 6; docs/data.md §2.3): DICOM header values outside the whitelist never leave extraction.

DICOMs with distinctive planted values in every standard identifying attribute (and private tags, free-text
comments, identifying UIDs), in several transfer syntaxes, kept and rejected, go through extract -> sections ->
pair via the CLIs with MLflow tracking into a sqlite file under a parent run. Then every output file, every log,
the MLflow database bytes, the artifact store and every MLflow param/tag/metric name and value are searched for
the planted values. Report text is training text and flows on by design; for reports we check only that the
``___`` de-identification placeholders stay placeholders.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from alta import io, tracking
from alta.demo.dicom import ImageSpec, dicom_bytes, uid_from

pytestmark = pytest.mark.slow  # runs the data stages as subprocesses
SUBJECTS = {"10000001": ["50000001", "50000002"], "11000002": ["50000003"]}
CODECS = ["explicit", "implicit", "jpeg_baseline", "j2k", "rle"]


def planted(k: int) -> tuple[dict, dict]:
    """(phi for ImageSpec.phi, extra attributes) with distinctive values for image number ``k``."""
    phi = {"PatientName": f"ZQXNAME^PATIENT{k}", "PatientID": f"ZQXPID{k:03d}",
           "PatientBirthDate": f"1879031{k % 10}", "AccessionNumber": f"ZQXACC{k:04d}",
           "InstitutionName": f"ZQX GENERAL HOSPITAL {k}", "ReferringPhysicianName": f"ZQXREFDOC^{k}",
           "PatientAddress": f"{k} ZQX LANE SPRINGFIELD", "OtherPatientIDs": f"ZQXOTHER{k}",
           "ImageComments": f"ZQXCOMMENT seen by Dr ZQXCOMMENTDOC {k}", "private": f"ZQXPRIVATE{k}"}
    extra = {"InstitutionAddress": f"{k} ZQXINST AVENUE", "PerformingPhysicianName": f"ZQXPERFDOC^{k}",
             "OperatorsName": f"ZQXOPERATOR^{k}", "StudyDescription": f"CHEST for ZQXSTUDYDESC {k}",
             "SeriesDescription": f"ZQXSERIESDESC {k}", "StationName": f"ZQXSTATION{k}",
             "DeviceSerialNumber": f"ZQXSERIAL{k}", "StudyID": f"ZQXSTID{k}",
             "PatientTelephoneNumbers": f"555-ZQX-{k:04d}", "AdditionalPatientHistory": f"ZQXHISTORY {k}",
             "RequestingPhysician": f"ZQXREQDOC^{k}", "ProtocolName": f"ZQXPROTOCOL {k}"}
    return phi, extra


REPORT = ("                                 FINAL REPORT\n EXAMINATION:  CHEST (PA AND LAT)\n \n"
          " INDICATION:  ___ year old woman with cough, seen by Dr. ___.\n \n"
          " FINDINGS:  Heart size is normal. Dr. ___ was notified at ___ by phone 555-0199.\n \n"
          " IMPRESSION:  No acute cardiopulmonary process. Follow up with ___ in clinic.\n")


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    work = tmp_path_factory.mktemp("privacy")
    root = work / "data"
    values: set[str] = set()
    k = 0
    img01 = np.linspace(0, 1, 80)[None, :] * np.linspace(0.4, 1, 64)[:, None]
    for subject, studies in SUBJECTS.items():
        for i, study in enumerate(studies):
            d = root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}"
            d.mkdir(parents=True)
            (d.parent / f"s{study}.txt").write_text(REPORT)
            for view, modality in (("PA", "DX"), ("LATERAL", "CR"), ("AP", "CT")):  # the CT image is rejected
                k += 1
                phi, extra = planted(k)
                uids = [uid_from("privacy", kind, k) for kind in ("study", "series", "sop")]
                values.update(phi.values(), extra.values(), uids)
                spec = ImageSpec(codec=CODECS[k % len(CODECS)], photometric="MONOCHROME2", bits_stored=12,
                                 modality=modality, study_uid=uids[0], series_uid=uids[1], sop_uid=uids[2],
                                 study_date=f"2150010{i + 1}", study_time="101010.000000", view_position=view,
                                 view_code=view if view != "AP" else "", orientation="Erect",
                                 procedure="CHEST (PA AND LAT)", phi=phi, extra=extra)
                (d / f"img{k:03d}.dcm").write_bytes(dicom_bytes(img01, spec))
    # an undecodable image with PHI: its reject detail (an exception message) must not carry header values
    broken = (root / "files" / "p10" / "p10000001" / "s50000001" / "img001.dcm").read_bytes()
    cut = broken.index(b"\xe0\x7f\x10\x00")  # the PixelData tag; keep the header, break the pixels
    (root / "files" / "p10" / "p10000001" / "s50000001" / "broken.dcm").write_bytes(broken[:cut + 12] + b"\0" * 9)

    logs = work / "logs"
    logs.mkdir()
    ctx = work / "mlflow" / "context.json"
    db = work / "mlflow" / "mlflow.db"
    cwd = os.getcwd()
    os.chdir(work)  # MLflow puts the sqlite store's default artifact root under the working directory
    try:
        ctx_data = tracking.start_parent(ctx, f"sqlite:///{db}", "privacy", "privacy test",
                                         params={"data": {"root": str(root)}})
    finally:
        os.chdir(cwd)
    assert ctx_data["parent_run_id"]
    env = {**{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}, tracking.CONTEXT_ENV: str(ctx)}
    res = work / "results"
    steps = [("extract_p10", ["alta.data.extract", "shard", "--source", "mimic", "--root", root, "--shard", "p10",
                              "--out", res / "extract", "--size", "48", "--workers", "2"]),
             ("extract_p11", ["alta.data.extract", "shard", "--source", "mimic", "--root", root, "--shard", "p11",
                              "--out", res / "extract", "--size", "48", "--workers", "1"]),
             ("extract_merge", ["alta.data.extract", "merge", "--out", res / "extract"]),
             ("sections", ["alta.data.sections", "--source", "mimic", "--root", root, "--out", res / "sections"]),
             ("pair", ["alta.data.pair", "--images", res / "extract" / "images.parquet", "--sections",
                       res / "sections" / "sections.parquet", "--out", res / "pair"])]
    for name, args in steps:
        proc = subprocess.run([sys.executable, "-m", *map(str, args)], capture_output=True, text=True, cwd=work,
                              env=env, timeout=300)
        (logs / f"{name}.log").write_text(proc.stdout + proc.stderr)
        assert proc.returncode == 0, f"{name}: {proc.stderr[-3000:]}"
    tracking.end_parent(ctx)
    return work, root, values, ctx_data


def test_planted_values_really_are_in_the_inputs(pipeline):
    _, root, values, _ = pipeline
    blob = b"".join(p.read_bytes() for p in root.rglob("*.dcm"))
    missing = [v for v in values if v.encode() not in blob]
    assert not missing  # otherwise the search below would prove nothing


def test_pipeline_kept_and_rejected_what_it_should(pipeline):
    work, _, _, _ = pipeline
    images = io.read_parquet(work / "results" / "extract" / "images.parquet")
    rejects = io.read_parquet(work / "results" / "extract" / "rejects.parquet")
    assert len(images) == 6 and len(rejects) == 4
    assert sorted(rejects["reason"]) == ["non_radiograph_modality"] * 3 + ["truncated"]
    assert len(io.read_parquet(work / "results" / "pair" / "pairs.parquet")) == 3


def test_no_planted_value_in_any_output_log_or_mlflow_file(pipeline):
    work, root, values, _ = pipeline
    needles = sorted({v.encode() for v in values} | {v.replace("^", " ").encode() for v in values})
    files = [p for p in work.rglob("*") if p.is_file() and root not in p.parents]
    assert any(p.name == "mlflow.db" for p in files) and any(p.suffix == ".log" for p in files)
    assert any(p.name == "extract_stats.json" and "artifacts" in p.parts for p in files)  # artifact store
    for p in files:
        data = p.read_bytes()
        for v in needles:
            assert v not in data, f"planted DICOM value {v!r} found in {p}"
    assert len(files) > 20


def test_no_planted_value_in_mlflow_entities(pipeline):
    work, root, values, ctx = pipeline
    client = tracking._client(ctx["tracking_uri"])
    runs = client.search_runs([ctx["experiment_id"]], max_results=100)
    stages = {r.data.tags.get("alta.stage") for r in runs}
    assert {"extract", "sections", "pair"} <= stages and len(runs) >= 6
    seen: list[str] = []
    for r in runs:
        seen += [f"{k}={v}" for k, v in r.data.params.items()] + [f"{k}={v}" for k, v in r.data.tags.items()]
        seen += list(r.data.metrics)
        stack = [None]
        while stack:
            for art in client.list_artifacts(r.info.run_id, stack.pop()):
                seen.append(art.path)
                if art.is_dir:
                    stack.append(art.path)
    text = "\n".join(seen)
    for v in values:
        assert v not in text and v.replace("^", " ") not in text, v


def test_whitelist_columns_only(pipeline):
    work, _, _, _ = pipeline
    from alta.data.dicom_header import HEADER_COLUMNS

    images = io.read_parquet(work / "results" / "extract" / "images.parquet")
    assert set(HEADER_COLUMNS) <= set(images.columns)
    for forbidden in ("PatientName", "PatientID", "AccessionNumber", "StudyInstanceUID", "SOPInstanceUID",
                      "InstitutionName", "ImageComments"):
        assert forbidden not in images.columns


def test_report_placeholders_stay_placeholders(pipeline):
    work, _, _, _ = pipeline
    sections = io.read_parquet(work / "results" / "sections" / "sections.parquet")
    pairs = io.read_parquet(work / "results" / "pair" / "pairs.parquet")
    for full in sections["full_text"]:
        assert full == REPORT  # stored exactly as read
    for text in list(sections["text"]) + list(pairs["text"]):
        assert text.count("___") == 3  # the three placeholders of findings + impression, untouched
        assert "Dr. ___ was notified at ___" in text
    assert pd.Series(sections["n_words"]).eq(sections["n_words"].iloc[0]).all()
