"""alta.data.extract end to end on a tiny MIMIC tree written here (good and bad files), the packed store, determinism,
input helpers, and the manifest path on the real covid-chestxray images (docs/data.md §2, §7; docs/architecture.md)."""

from __future__ import annotations

import gzip
import json
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import covid_manifest, make_dataset, ramp_image, write_dicom
from conftest import study_dir as _study
from PIL import Image
from pydicom.uid import ImplicitVRLittleEndian, RLELossless

from alta import io
from alta.data import extract, inputs, store
from alta.data.inputs import list_shards, manifest_shard, shard_files

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SIZE = 48


def _img(seed: int, shape=(60, 80), bits=12) -> np.ndarray:
    return ramp_image(shape, bits, seed, lo=0.5, noise=0.05)


@pytest.fixture(scope="module")
def mimic_tree(tmp_path_factory) -> tuple[Path, dict]:
    """A MIMIC-layout tree; returns (root, expected {file name: reason or 'kept'})."""
    root = tmp_path_factory.mktemp("mimic")
    expect = {}
    a = _study(root, "10000001", "50000001")
    write_dicom(a / "aaa.dcm", make_dataset(_img(1), bits_stored=12, ViewPosition="PA", StudyDate="21800506",
                                            StudyTime="213014.531", PatientName="Doe^John"))
    ds = make_dataset(_img(2, (70, 50)), "MONOCHROME1", bits_stored=12, ViewPosition="LATERAL")
    write_dicom(a / "tmp.dcm", ds)
    (a / "bbb.dcm.gz").write_bytes(gzip.compress((a / "tmp.dcm").read_bytes(), mtime=0))
    (a / "tmp.dcm").unlink()
    b = _study(root, "10000002", "50000002")
    write_dicom(b / "ccc.dcm", make_dataset(_img(3, bits=8).astype(np.uint8), syntax=ImplicitVRLittleEndian))
    (b / "zero.dcm").write_bytes(b"")
    (b / "text.dcm").write_text("this is not a DICOM file\n" * 20)
    (root / "files" / "p10" / "p10000002" / "s50000002.txt").write_text("FINDINGS: report, not an image.\n")
    expect.update({"aaa.dcm": "kept", "bbb.dcm.gz": "kept", "ccc.dcm": "kept", "zero.dcm": "not_dicom",
                   "text.dcm": "not_dicom"})

    c = _study(root, "11000003", "50000003")
    write_dicom(c / "trunc.dcm", make_dataset(_img(4), bits_stored=12))
    raw = (c / "trunc.dcm").read_bytes()
    (c / "trunc.dcm").write_bytes(raw[:-2000])
    write_dicom(c / "ct.dcm", make_dataset(_img(5), modality="CT"))
    write_dicom(c / "multi.dcm", make_dataset(np.stack([_img(6), _img(7)]), frames=2))
    write_dicom(c / "notgz.dcm.gz", make_dataset(_img(8)))
    rgb = np.stack([_img(9, bits=8), _img(10, bits=8), _img(11, bits=8)], -1).astype(np.uint8)
    write_dicom(c / "rgb.dcm", make_dataset(rgb, modality="OT"))
    write_dicom(c / "ddd.dcm", make_dataset(_img(12), bits_stored=12))
    (c / "ddd.dcm.gz").write_bytes(gzip.compress((c / "ddd.dcm").read_bytes(), mtime=0))
    rle = make_dataset(_img(13), bits_stored=12)
    rle.compress(RLELossless, generate_instance_uid=False)
    write_dicom(c / "rle.dcm", rle)
    expect.update({"trunc.dcm": "truncated", "ct.dcm": "non_radiograph_modality", "multi.dcm": "multi_frame",
                   "notgz.dcm.gz": "not_gzip", "rgb.dcm": "kept", "ddd.dcm": "kept", "ddd.dcm.gz": "duplicate_image_id",
                   "rle.dcm": "kept"})
    meta = pd.DataFrame({"dicom_id": ["ccc", "aaa"], "subject_id": ["10000002", "10000001"],
                         "study_id": ["50000002", "50000001"], "ViewPosition": ["AP", "LL"],
                         "StudyDate": ["21800101", "21800506"], "StudyTime": ["80556.875", "213014.531"],
                         "ViewCodeSequence_CodeMeaning": ["antero-posterior", "postero-anterior"]})
    meta.to_csv(root / "mimic-cxr-2.0.0-metadata.csv", index=False)
    return root, expect


def _run(root: Path, out: Path, workers: int, render_mode: str = "mimic_jpg") -> None:
    for shard in list_shards("mimic", root):
        assert extract.main(["shard", "--source", "mimic", "--root", str(root), "--shard", shard, "--out", str(out),
                             "--size", str(SIZE), "--workers", str(workers), "--render", render_mode]) == 0
    assert extract.main(["merge", "--out", str(out)]) == 0


@pytest.fixture(scope="module")
def extracted(mimic_tree, tmp_path_factory):
    root, _ = mimic_tree
    out = tmp_path_factory.mktemp("extract")
    _run(root, out, workers=2)
    return out


def test_counts_and_reasons(mimic_tree, extracted):
    root, expect = mimic_tree
    images = io.read_parquet(extracted / "images.parquet")
    rejects = io.read_parquet(extracted / "rejects.parquet")
    stats = json.loads((extracted / "extract_stats.json").read_text())
    assert stats["n_in"] == len(expect) == len(images) + len(rejects) == stats["n_kept"] + stats["n_rejected"]
    got = {Path(p).name: "kept" for p in images["source_path"]}
    got.update({Path(p).name: r for p, r in zip(rejects["path"], rejects["reason"])})
    assert got == expect
    assert (rejects["stage"] == "extract").all() and rejects["detail"].str.len().gt(0).all()
    assert stats["rejects_by_reason"]["not_dicom"] == 2
    assert stats["per_render_mode"] == {"mimic_jpg": 6}
    assert stats["per_transfer_syntax"]["1.2.840.10008.1.2.5"] == 1
    assert stats["n_colour_converted"] == 1


def test_images_table_contract(extracted):
    images = io.read_parquet(extracted / "images.parquet")
    assert list(images.columns) == extract.IMAGES_SCHEMA.names
    keys = list(zip(images.subject_id, images.study_id, images.image_id))
    assert keys == sorted(keys)
    row = images.set_index("image_id")
    assert row.loc["aaa", "source_path"] == "files/p10/p10000001/s50000001/aaa.dcm"
    assert row.loc["aaa", "subject_id"] == "10000001" and row.loc["aaa", "study_id"] == "50000001"
    assert row.loc["aaa", "ViewPosition"] == "PA"  # the DICOM value wins over the metadata CSV ("LL")
    assert row.loc["ccc", "ViewPosition"] == "AP" and row.loc["ccc", "StudyTime"] == "80556.875"  # blank -> filled
    assert row.loc["ccc", "TransferSyntaxUID"] == ImplicitVRLittleEndian
    assert row.loc["bbb", "PhotometricInterpretation"] == "MONOCHROME1" and row.loc["bbb", "Rows"] == 70
    assert (images[["height", "width"]].min(axis=1) == SIZE).all()
    assert row.loc["bbb", "height"] == round(70 * SIZE / 50)
    assert "PatientName" not in images.columns and not images.isin(["Doe^John"]).any().any()
    assert images["shard"].tolist() == ["p10"] * 3 + ["p11"] * 3
    assert (images["store_file"] == "shards/" + images["shard"] + "/store.u8").all()


def test_store_round_trips_to_png(extracted):
    images = io.read_parquet(extracted / "images.parquet")
    for shard, grp in images.groupby("shard"):
        mm = store.open_store(extracted / "shards" / shard / "store.u8")
        assert mm.shape[0] == int((grp.height * grp.width).sum())
        for r in grp.itertuples():
            img = store.read_image(mm, r.store_offset, r.height, r.width)
            png = np.asarray(Image.open(extracted / r.png_path))
            assert png.dtype == np.uint8 and np.array_equal(img, png)
    with pytest.raises(IndexError):
        store.read_image(mm, mm.shape[0] - 10, 10, 10)


def test_monochrome1_file_is_inverted(extracted):
    images = io.read_parquet(extracted / "images.parquet").set_index("image_id")
    # _img is a left-to-right ramp: MONOCHROME2 renders dark-left, MONOCHROME1 bright-left
    aaa = np.asarray(Image.open(extracted / images.loc["aaa", "png_path"])).astype(float)
    bbb = np.asarray(Image.open(extracted / images.loc["bbb", "png_path"])).astype(float)
    assert aaa[:, :8].mean() < aaa[:, -8:].mean() and bbb[:, :8].mean() > bbb[:, -8:].mean()


def test_deterministic_across_runs_and_workers(mimic_tree, extracted, tmp_path):
    root, _ = mimic_tree
    _run(root, tmp_path, workers=1)
    for rel in ["images.parquet", "rejects.parquet", "shards/p10/store.u8", "shards/p11/store.u8",
                "shards/p11/images.parquet"]:
        assert (tmp_path / rel).read_bytes() == (extracted / rel).read_bytes(), rel


def test_input_helpers(mimic_tree):
    root, _ = mimic_tree
    assert list_shards("mimic", root) == ["p10", "p11"]
    files = shard_files("mimic", root, "p10")
    assert files == sorted(files) and len(files) == 5 and all(f.endswith((".dcm", ".dcm.gz")) for f in files)
    assert manifest_shard("311a", 10) == "m%02d" % (zlib.crc32(b"311a") % 10)


def test_store_writer_is_atomic(tmp_path):
    dest = tmp_path / "s.u8"
    with pytest.raises(RuntimeError):
        with store.StoreWriter(dest) as w:
            w.append(np.ones((3, 4), np.uint8))
            raise RuntimeError("killed")
    assert not dest.exists() and not list(tmp_path.iterdir())
    with store.StoreWriter(dest) as w:
        assert w.append(np.ones((3, 4), np.uint8)) == 0 and w.append(np.zeros((2, 2), np.uint8)) == 12
    mm = store.open_store(dest)
    assert store.read_image(mm, 12, 2, 2).sum() == 0 and store.read_image(mm, 0, 3, 4).sum() == 12


def test_manifest_missing_column_fails_with_one_line(tmp_path, capsys):
    m = tmp_path / "m.csv"
    pd.DataFrame({"subject_id": ["1"], "study_id": ["2"], "image_id": ["x"], "path": ["x.png"]}).to_csv(m, index=False)
    rc = extract.main(["shard", "--source", "manifest", "--manifest", str(m), "--shard", "m00", "--out",
                       str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and str(m) in err and "view_position" in err


def test_mimic_jpg_tree_takes_headers_from_metadata(tmp_path, capsys):
    root = tmp_path / "jpg"
    d = _study(root, "12000001", "51000001")
    Image.fromarray((_img(20, (90, 70), bits=8)).astype(np.uint8)).save(d / "g1.jpg", quality=95)
    rgb = np.stack([_img(21, (90, 70), bits=8), _img(22, (90, 70), bits=8), _img(23, (90, 70), bits=8)], -1)
    Image.fromarray(rgb.astype(np.uint8)).save(d / "c2.jpg", quality=95)
    args = ["shard", "--source", "mimic_jpg", "--root", str(root), "--shard", "p12", "--out", str(tmp_path / "o"),
            "--size", str(SIZE), "--workers", "1"]
    assert extract.main(args) == 2 and "metadata" in capsys.readouterr().err  # JPGs carry no header
    meta = pd.DataFrame({"dicom_id": ["g1", "c2"], "subject_id": ["12000001"] * 2, "study_id": ["51000001"] * 2,
                         "ViewPosition": ["PA", "LATERAL"], "StudyDate": ["21800101"] * 2,
                         "StudyTime": ["80556.875"] * 2, "PatientOrientationCodeSequence_CodeMeaning": ["Erect", ""]})
    io.write_csv_gz(root / "mimic-cxr-2.0.0-metadata.csv.gz", meta)
    assert extract.main(args) == 0
    images = io.read_parquet(tmp_path / "o" / "shards" / "p12" / "images.parquet").set_index("image_id")
    assert list(images.index) == ["c2", "g1"] and (images["render_mode"] == "jpg").all()
    assert images.loc["g1", "ViewPosition"] == "PA" and images.loc["c2", "ViewPosition"] == "LATERAL"
    assert images.loc["g1", "StudyTime"] == "80556.875" and images.loc["g1", "Rows"] == 90
    assert images.loc["g1", "PatientOrientationCodeSequence_CodeMeaning"] == "Erect"
    assert pd.isna(images.loc["c2", "PatientOrientationCodeSequence_CodeMeaning"])
    assert (images["source_format"] == "jpg").all() and images.loc["g1", "width"] == SIZE
    assert images["Modality"].isna().all() and images["TransferSyntaxUID"].isna().all()


def test_manifest_covid_chestxray(tmp_path):
    base = SHARED / "covid-chestxray"
    if not (base / "metadata.csv").exists():
        pytest.skip(f"shared data not available: {base}")
    man = covid_manifest(base, tmp_path / "manifest.csv")
    shards = list_shards("manifest", ".", manifest=tmp_path / "manifest.csv")
    assert shards == sorted({manifest_shard(s) for s in man["subject_id"]})
    chosen = shards[:2]  # two of ten shards keep the test fast; the rest behave the same
    out = tmp_path / "out"
    for shard in chosen:
        assert extract.main(["shard", "--source", "manifest", "--manifest", str(tmp_path / "manifest.csv"),
                             "--shard", shard, "--out", str(out), "--size", str(SIZE), "--workers", "2"]) == 0
    assert extract.main(["merge", "--out", str(out)]) == 0
    images = io.read_parquet(out / "images.parquet")
    rejects = io.read_parquet(out / "rejects.parquet")
    mine = man[man["subject_id"].map(manifest_shard).isin(chosen)]
    exists = mine["path"].map(lambda p: Path(p).is_file())
    assert len(images) + len(rejects) == len(mine) and exists.sum() > 10
    assert set(rejects.loc[rejects.reason == "missing_file", "path"]) == set(mine.loc[~exists, "path"])
    assert set(images["image_id"]) == set(mine.loc[exists, "image_id"]) and (rejects.reason == "missing_file").all()
    assert set(images["source_format"]) <= {"jpg", "png"} and (images["render_mode"] == "jpg").all()
    assert (images[["height", "width"]].min(axis=1) == SIZE).all()
    byid = mine.set_index("image_id")
    assert (images["ViewPosition"].to_numpy() == byid.loc[images["image_id"], "view_position"].to_numpy()).all()
    assert (images["StudyDate"].to_numpy() == byid.loc[images["image_id"], "study_date"].to_numpy()).all()
    assert images["StudyTime"].isna().all()
    r = images.iloc[0]
    png = np.asarray(Image.open(out / r.png_path))
    assert np.array_equal(store.read_image(store.open_store(out / r.store_file), r.store_offset, r.height, r.width),
                          png)


def test_png_choice_none_sample_all(mimic_tree, extracted, tmp_path):
    """--png none/sample/all changes only which inspection PNGs exist (png_path null otherwise): the store, the
    tables' other columns and the rejects are identical; a sample is the smallest crc32(image_id)s, any workers."""
    root, _ = mimic_tree
    ref = io.read_parquet(extracted / "images.parquet")  # default --png sample of 500: every image of this tree
    assert ref["png_path"].notna().all()
    outs = {}
    for name, args, workers in (("none", ["--png", "none"], 1), ("sample2", ["--png", "sample", "--png-sample", "2"], 2),
                                ("all", ["--png", "all"], 1)):
        out = outs[name] = tmp_path / name
        assert extract.main(["shard", "--source", "mimic", "--root", str(root), "--shard", "p10", "--out", str(out),
                             "--size", str(SIZE), "--workers", str(workers), *args]) == 0
    ref10 = io.read_parquet(extracted / "shards" / "p10" / "images.parquet")
    # the p10 shard's candidates: its inputs not rejected before reading (here every kept image is also a candidate)
    cand = {t.image_id for t in inputs.shard_tasks("mimic", root, "p10") if t.reject is None}
    expect_sample = set(sorted(cand, key=lambda i: (zlib.crc32(i.encode()), i))[:2]) & set(ref10["image_id"])
    for name, out in outs.items():
        d = out / "shards" / "p10"
        img = io.read_parquet(d / "images.parquet")
        assert (d / "store.u8").read_bytes() == (extracted / "shards" / "p10" / "store.u8").read_bytes(), name
        assert img.drop(columns="png_path").equals(ref10.drop(columns="png_path")), name
        assert io.read_parquet(d / "rejects.parquet").equals(io.read_parquet(extracted / "shards/p10/rejects.parquet"))
        with_png = set(img.loc[img["png_path"].notna(), "image_id"])
        files = sorted((out / "png").rglob("*.png")) if (out / "png").is_dir() else []
        want = {"none": set(), "sample2": expect_sample, "all": set(img["image_id"])}[name]
        assert with_png == want and len(files) == len(want), name
        stats = json.loads((d / "shard_stats.json").read_text())
        assert stats["n_png"] == len(want)
        assert {"setup", "wait_workers", "store_append", "rows", "store_publish", "tables"} <= set(stats["parent_s"])
        mm = store.open_store(d / "store.u8")
        for r in img[img["png_path"].notna()].itertuples():
            assert np.array_equal(np.asarray(Image.open(out / r.png_path)),
                                  store.read_image(mm, r.store_offset, r.height, r.width))
    assert extract.main(["shard", "--source", "mimic", "--root", str(root), "--shard", "p10", "--out",
                         str(tmp_path / "bad"), "--png-sample", "-1"]) == 2


def test_png_sample_ids_rule():
    from alta.data.inputs import Task

    tasks = [Task(path=f"{i}", source_path=f"{i}", image_id=f"id{i}", subject_id="1", study_id="2", shard="m00",
                  kind="dicom", reject=("missing_file", "x") if i == 3 else None) for i in range(20)]
    assert extract.png_sample_ids(tasks, "all") is None
    assert extract.png_sample_ids(tasks, "none") == frozenset() == extract.png_sample_ids(tasks, "sample", 0)
    five = extract.png_sample_ids(tasks, "sample", 5)
    ok = sorted((t.image_id for t in tasks if t.reject is None), key=lambda i: zlib.crc32(i.encode()))
    assert five == frozenset(ok[:5]) and "id3" not in extract.png_sample_ids(tasks, "sample", 100)
    assert extract.png_sample_ids(list(reversed(tasks)), "sample", 5) == five  # order does not matter
