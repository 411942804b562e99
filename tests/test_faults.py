"""Bad inputs per data stage, mixed with good files, through the real CLIs in subprocesses (issue 6).

Every good file must be processed, every bad one must land in a rejects table with its specific reason, and a
stage may fail only on a structural error (a table missing a required column, an unreadable table or a missing
input root), with stderr ending in one sentence that names the file and no Python traceback.
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import make_dataset, ramp_image, write_dicom
from conftest import study_dir as _study
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.uid import UID, JPEGBaseline8Bit

from alta import io
from alta.data.inputs import manifest_shard

pytestmark = pytest.mark.slow  # every case runs a stage CLI as a subprocess
SIZE = 48  # small stored size keeps the suite fast; the rules do not depend on it
PRIVATE_SYNTAX = "1.2.826.0.1.3680043.2.9999.1"  # a transfer syntax no decoder knows


def cli(module: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("ALTA_TRACKING_CONTEXT", "MLFLOW_TRACKING_URI")}
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True,
                          timeout=180, cwd=cwd, env=env)


def assert_clean_stderr(proc: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]


def assert_one_line_failure(proc: subprocess.CompletedProcess, *must_name: str) -> str:
    """Non-zero exit; stderr has no traceback and its last line is a sentence naming ``must_name``."""
    assert proc.returncode != 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    for word in must_name:
        assert word in last, f"{word!r} not named in {last!r}"
    assert len(last.split()) >= 4, last
    return last


def _ramp(shape=(64, 80), bits=12, seed=0) -> np.ndarray:
    return ramp_image(shape, bits, seed, lo=0.4, noise=0.03)


def _good(path: Path, seed: int, **header) -> None:
    write_dicom(path, make_dataset(_ramp(seed=seed), bits_stored=12, **header))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A MIMIC tree: good DICOMs mixed with every kind of bad file; returns (root, expected outcome per file)."""
    root = tmp_path_factory.mktemp("faults")
    a = _study(root, "10000001", "50000001")
    b = _study(root, "10000001", "50000002")
    c = _study(root, "11000002", "50000003")
    expect: dict[str, str] = {}

    _good(a / "good1.dcm", 1, ViewPosition="PA", StudyDate="21500101", StudyTime="101010")
    _good(a / "tmp.dcm", 2, ViewPosition="LATERAL", StudyDate="21500101", StudyTime="101010")
    (a / "good2.dcm.gz").write_bytes(gzip.compress((a / "tmp.dcm").read_bytes(), mtime=0))
    (a / "tmp.dcm").unlink()
    expect.update({"good1.dcm": "kept", "good2.dcm.gz": "kept"})

    (a / "zero.dcm").write_bytes(b"")
    (a / "text.dcm").write_text("this is a text file with a .dcm name\n" * 30)
    _good(a / "trunc.dcm", 3)
    (a / "trunc.dcm").write_bytes((a / "trunc.dcm").read_bytes()[:-3000])
    ds = make_dataset(_ramp(seed=4), bits_stored=12)
    del ds.PixelData
    write_dicom(a / "nopix.dcm", ds)
    write_dicom(a / "multi.dcm", make_dataset(np.stack([_ramp(seed=5), _ramp(seed=6)]), frames=2))
    write_dicom(a / "ct.dcm", make_dataset(_ramp(seed=7), modality="CT"))
    ds = make_dataset(_ramp(seed=8), bits_stored=12)
    ds.file_meta.TransferSyntaxUID = UID(PRIVATE_SYNTAX)
    ds.save_as(a / "privsyntax.dcm", enforce_file_format=True, implicit_vr=False, little_endian=True)
    ds = make_dataset(_ramp(seed=9, bits=8).astype(np.uint8))
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([b"\xff\xd8 this is not JPEG entropy-coded data \xff\xd9"])
    ds["PixelData"].VR = "OB"
    write_dicom(a / "badjpeg.dcm", ds)
    ds = make_dataset(_ramp(seed=10), bits_stored=12)
    ds.Rows, ds.Columns = 65535, 65535
    write_dicom(a / "huge.dcm", ds)
    write_dicom(a / "sliver.dcm", make_dataset(_ramp((4, 80), seed=11), bits_stored=12))
    _good(a / "notgz.dcm.gz", 12)  # plain DICOM bytes behind a .gz name
    expect.update({"zero.dcm": "not_dicom", "text.dcm": "not_dicom", "trunc.dcm": "truncated",
                   "nopix.dcm": "no_pixel_data", "multi.dcm": "multi_frame", "ct.dcm": "non_radiograph_modality",
                   "privsyntax.dcm": "unsupported_syntax", "badjpeg.dcm": "unreadable_image",
                   "huge.dcm": "bad_dimensions", "sliver.dcm": "bad_dimensions", "notgz.dcm.gz": "not_gzip"})

    rgb = np.stack([_ramp(seed=s, bits=8) for s in (13, 14, 15)], -1).astype(np.uint8)
    write_dicom(b / "rgb.dcm", make_dataset(rgb, modality="OT", ViewPosition="PA"))
    _good(b / "dup.dcm", 16, ViewPosition="PA")
    (b / "dup.dcm.gz").write_bytes(gzip.compress((b / "dup.dcm").read_bytes(), mtime=0))
    expect.update({"rgb.dcm": "kept", "dup.dcm": "kept", "dup.dcm.gz": "duplicate_image_id"})

    # shard p11: a good file with blank date/time (filled from the metadata CSV with an unparsable date) and a
    # copy of good1's dicom_id, which the merge must reject as a duplicate across shards
    _good(c / "good3.dcm", 17, ViewPosition="PA")
    _good(c / "good1.dcm", 18, ViewPosition="PA")
    expect.update({"good3.dcm": "kept", "p11/good1.dcm": "duplicate_image_id"})
    pd.DataFrame({"dicom_id": ["good3"], "subject_id": ["11000002"], "study_id": ["50000003"],
                  "StudyDate": ["2150-13-45"], "StudyTime": ["25:61"], "ViewPosition": ["PA"]}
                 ).to_csv(root / "mimic-cxr-2.0.0-metadata.csv", index=False)

    # reports: good, Latin-1 with NUL bytes, empty, no section headers, binary
    reports = root / "files" / "p10" / "p10000001"
    (reports / "s50000001.txt").write_text(
        "                                 FINAL REPORT\n EXAMINATION:  CHEST (PA AND LAT)\n \n"
        " FINDINGS: The lungs are clear. No effusion.\n \n IMPRESSION: No acute process.\n")
    (reports / "s50000002.txt").write_bytes(
        "  FINAL REPORT\n FINDINGS: Caf\xe9 au lait opacity\x00 in the right lung.\n \n IMPRESSION: Pneumonia, na\xefve.\n"
        .encode("latin-1"))
    (root / "files" / "p11" / "p11000002" / "s50000003.txt").write_text("")
    (reports / "s50000009.txt").write_text("Portable chest radiograph obtained without comparison\n")
    (reports / "s50000010.txt").write_bytes(bytes(range(1, 32)) * 20)
    return root, expect


def _extract_all(root: Path, out: Path, *extra: str) -> list[subprocess.CompletedProcess]:
    procs = [cli("alta.data.extract", "shard", "--source", "mimic", "--root", root, "--shard", s, "--out", out,
                 "--size", SIZE, "--workers", "1", *extra) for s in ("p10", "p11")]
    procs.append(cli("alta.data.extract", "merge", "--out", out))
    return procs


@pytest.fixture(scope="module")
def extracted(corpus, tmp_path_factory):
    root, _ = corpus
    out = tmp_path_factory.mktemp("faults_out")
    procs = _extract_all(root, out)
    for p in procs:
        assert p.returncode == 0, p.stderr[-3000:]
        assert_clean_stderr(p)
    return out, procs


def _outcomes(out: Path) -> dict[str, str]:
    images = io.read_parquet(out / "images.parquet")
    rejects = io.read_parquet(out / "rejects.parquet")
    got: dict[str, str] = {}
    for path in images["source_path"]:
        got[Path(path).name] = "kept"
    for path, reason in zip(rejects["path"], rejects["reason"]):
        name = Path(path).name
        got["p11/" + name if "/p11/" in f"/{path}" and name in got else name] = reason
    return got


def test_every_good_file_kept_every_bad_file_rejected_with_its_reason(corpus, extracted):
    _, expect = corpus
    out, _ = extracted
    assert _outcomes(out) == expect
    rejects = io.read_parquet(out / "rejects.parquet")
    assert (rejects["stage"] == "extract").all()
    assert rejects["detail"].str.len().gt(5).all()
    assert not rejects["detail"].str.contains("\n").any()  # one sentence per row
    assert not rejects["detail"].str.contains(r" at 0x[0-9a-f]+", regex=True).any()  # no run-specific addresses
    assert len(io.read_parquet(out / "images.parquet")) + len(rejects) == len(expect)


def test_warning_names_the_unknown_transfer_syntax(extracted):
    _, procs = extracted
    assert PRIVATE_SYNTAX in procs[0].stderr
    assert "pydicom.pixels.decoders" not in procs[0].stderr  # decoder tracebacks are not dumped into the log


def test_colour_reject_policy(corpus, tmp_path):
    root, _ = corpus
    proc = cli("alta.data.extract", "shard", "--source", "mimic", "--root", root, "--shard", "p10", "--out", tmp_path,
               "--size", SIZE, "--workers", "1", "--colour", "reject")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rejects = io.read_parquet(tmp_path / "shards" / "p10" / "rejects.parquet").set_index("path")["reason"]
    assert rejects["files/p10/p10000001/s50000002/rgb.dcm"] == "colour"
    images = io.read_parquet(tmp_path / "shards" / "p10" / "images.parquet")
    assert "rgb" not in set(images["image_id"]) and {"good1", "good2", "dup"} <= set(images["image_id"])


def test_colour_default_is_luminance(extracted):
    out, _ = extracted
    images = io.read_parquet(out / "images.parquet").set_index("image_id")
    png = np.asarray(Image.open(out / images.loc["rgb", "png_path"]))
    assert png.ndim == 2 and png.dtype == np.uint8 and png.shape[0] == SIZE


def test_unparsable_metadata_dates_do_not_fail_extract_and_pair_drops_them(extracted, tmp_path):
    out, _ = extracted
    images = io.read_parquet(out / "images.parquet").set_index("image_id")
    assert images.loc["good3", "StudyDate"] == "2150-13-45"  # recorded as given, judged later
    sections = pd.DataFrame({"study_id": ["50000001", "50000002", "50000003"],
                             "text": ["lungs are clear today"] * 3, "text_source": ["findings"] * 3,
                             "n_words": [4] * 3})
    sec = tmp_path / "sections.parquet"
    io.write_parquet(sec, sections)
    proc = cli("alta.data.pair", "--images", out / "images.parquet", "--sections", sec, "--out", tmp_path / "pair")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert_clean_stderr(proc)
    pairs = io.read_parquet(tmp_path / "pair" / "pairs.parquet")
    dropped = io.read_parquet(tmp_path / "pair" / "dropped.parquet").set_index("image_id")
    assert len(pairs) + len(dropped) == len(images)
    assert dropped.loc["good3", "reason"] == "unparsable_time"


def test_reports_latin1_nul_empty_no_sections_binary(corpus, tmp_path):
    root, _ = corpus
    proc = cli("alta.data.sections", "--source", "mimic", "--root", root, "--out", tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert_clean_stderr(proc)
    assert "s50000002.txt: not valid UTF-8" in proc.stderr and "NUL" in proc.stderr
    sec = io.read_parquet(tmp_path / "sections.parquet").set_index("study_id")
    rej = io.read_parquet(tmp_path / "rejects.parquet")
    reasons = {Path(p).name: r for p, r in zip(rej["path"], rej["reason"])}
    assert reasons == {"s50000003.txt": "empty_report", "s50000010.txt": "undecodable_report"}
    assert set(sec.index) == {"50000001", "50000002", "50000009"}
    latin = sec.loc["50000002"]
    assert latin["encoding"] in ("cp1252", "latin-1") and latin["nul_bytes"] == 1
    assert "Café au lait opacity in the right lung." in latin["text"] and "naïve" in latin["text"]
    assert pd.isna(sec.loc["50000009", "text"]) and sec.loc["50000009", "text_status"] == "no_sections"
    assert sec.loc["50000001", "text_status"] == "ok"


def test_manifest_paths_that_do_not_exist_are_rejected(tmp_path):
    good = tmp_path / "img" / "a.png"
    good.parent.mkdir()
    Image.fromarray((_ramp(bits=8)).astype(np.uint8)).save(good)
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame({"subject_id": ["s1", "s1", "s1"], "study_id": ["t1", "t1", "t2"], "image_id": ["a", "b", "a"],
                  "path": ["img/a.png", "img/missing.png", "img/a.png"], "view_position": ["PA", "PA", "PA"],
                  "study_date": ["20200101"] * 3, "study_time": ["101010"] * 3,
                  "report_path": ["rep/t1.txt", "rep/t1.txt", "rep/gone.txt"]}).to_csv(manifest, index=False)
    (tmp_path / "rep").mkdir()
    (tmp_path / "rep" / "t1.txt").write_text(" FINDINGS: Normal heart size and clear lungs.\n")
    shard = manifest_shard("s1", 10)
    proc = cli("alta.data.extract", "shard", "--source", "manifest", "--manifest", manifest, "--shard", shard,
               "--out", tmp_path / "out", "--size", SIZE, "--workers", "1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rej = io.read_parquet(tmp_path / "out" / "shards" / shard / "rejects.parquet").set_index("path")["reason"]
    assert rej["img/missing.png"] == "missing_file"
    assert list(rej[rej == "duplicate_image_id"].index) == ["img/a.png"]
    images = io.read_parquet(tmp_path / "out" / "shards" / shard / "images.parquet")
    assert images["image_id"].tolist() == ["a"]
    proc = cli("alta.data.sections", "--source", "manifest", "--manifest", manifest, "--out", tmp_path / "sec")
    assert proc.returncode == 0, proc.stderr[-2000:]
    srej = io.read_parquet(tmp_path / "sec" / "rejects.parquet")
    assert srej["reason"].tolist() == ["missing_file"] and srej["path"].tolist() == ["rep/gone.txt"]


# --- structural errors: the stage fails with one sentence naming the file ------------------------------------
@pytest.fixture(scope="module")
def bad_tables(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad_tables")
    pd.DataFrame({"subject_id": ["1"], "study_id": ["2"], "ViewPosition": ["PA"]}).to_csv(d / "meta_nocol.csv",
                                                                                          index=False)
    (d / "binary.csv").write_bytes(bytes(range(128, 256)) * 40)
    pd.DataFrame({"subject_id": ["1"], "study_id": ["2"], "image_id": ["x"], "path": ["x.png"]}).to_csv(
        d / "manifest_noview.csv", index=False)
    pd.DataFrame({"subject_id": ["1"], "image_id": ["x"]}).to_csv(d / "manifest_nostudy.csv", index=False)
    io.write_parquet(d / "sections_notext.parquet", pd.DataFrame({"study_id": ["2"], "impression": ["x"]}))
    return d


def _structural_cases(corpus_root: Path, d: Path, out: Path):
    return {
        "extract_metadata_missing_dicom_id": (
            ["alta.data.extract", "shard", "--source", "mimic", "--root", corpus_root, "--metadata", d / "meta_nocol.csv",
             "--shard", "p10", "--out", out], ["meta_nocol.csv", "dicom_id"]),
        "extract_metadata_binary": (
            ["alta.data.extract", "shard", "--source", "mimic", "--root", corpus_root, "--metadata", d / "binary.csv",
             "--shard", "p10", "--out", out], ["binary.csv"]),
        "extract_manifest_missing_column": (
            ["alta.data.extract", "shard", "--source", "manifest", "--manifest", d / "manifest_noview.csv", "--shard",
             "m00", "--out", out], ["manifest_noview.csv", "view_position"]),
        "extract_root_missing": (
            ["alta.data.extract", "shard", "--source", "mimic", "--root", d / "no_such_root", "--shard", "p10", "--out",
             out], ["no_such_root"]),
        "sections_manifest_missing_column": (
            ["alta.data.sections", "--source", "manifest", "--manifest", d / "manifest_nostudy.csv", "--out", out],
            ["manifest_nostudy.csv", "study_id"]),
        "pair_metadata_missing_columns": (
            ["alta.data.pair", "--metadata", d / "meta_nocol.csv", "--assume-reports", "--out", out],
            ["meta_nocol.csv", "dicom_id"]),
        "pair_images_not_parquet": (
            ["alta.data.pair", "--images", d / "binary.csv", "--sections", d / "sections_notext.parquet", "--out", out],
            ["binary.csv"]),
        "pair_sections_missing_text": (
            ["alta.data.pair", "--images", Path("IMAGES"), "--sections", d / "sections_notext.parquet", "--out", out],
            ["sections_notext.parquet", "text"]),
    }


@pytest.mark.parametrize("case", ["extract_metadata_missing_dicom_id", "extract_metadata_binary",
                                  "extract_manifest_missing_column", "extract_root_missing",
                                  "sections_manifest_missing_column", "pair_metadata_missing_columns",
                                  "pair_images_not_parquet", "pair_sections_missing_text"])
def test_structural_error_is_one_sentence_naming_file(case, corpus, extracted, bad_tables, tmp_path):
    root, _ = corpus
    args, names = _structural_cases(root, bad_tables, tmp_path / "out")[case]
    args = [str(extracted[0] / "images.parquet") if str(a) == "IMAGES" else a for a in args]
    proc = cli(*args)
    assert_one_line_failure(proc, *names)
    assert not list(tmp_path.rglob("*.parquet"))  # nothing that looks like a finished stage output
