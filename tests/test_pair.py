"""Tests of the pairing stage (docs/data.md §4): hand-built timelines, outputs, CLI modes, covid-chestxray subset."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pandas as pd
import pytest

from alta import io
from alta.data.coverage import compute_stats, reference_csv
from alta.data.pair import main
from alta.data.pairing import PairOptions, build_pairs
from alta.data.studies import hashed_split, parse_study_time, read_split_csv, resolve_view

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
COVID = SHARED / "covid-chestxray"
OUTPUTS = ("pairs.parquet", "dropped.parquet", "pairs_stats.json", "train.csv")


@pytest.fixture(autouse=True)
def _local_tracking(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("ALTA_TRACKING_CONTEXT", raising=False)


def img(image_id, subject, study, view, date="21800101", time=None, code=None):
    return {"image_id": image_id, "subject_id": subject, "study_id": study, "png_path": f"png/{study}/{image_id}.png",
            "ViewPosition": view, "ViewCodeSequence_CodeMeaning": code, "StudyDate": date, "StudyTime": time}


def sections_for(images: pd.DataFrame, without=()) -> pd.DataFrame:
    sids = sorted(set(images["study_id"]))
    return pd.DataFrame({"study_id": sids, "text": [None if s in without else f"Report of study {s} here."
                                                    for s in sids],
                         "text_source": "findings+impression", "n_words": 5})


def run(rows, without=(), split_map=None, **opts):
    images = pd.DataFrame(rows)
    res = build_pairs(images, sections_for(images, without), split_map, PairOptions(**opts))
    assert len(res.pairs) + len(res.dropped) == len(images)  # images in = rows + dropped, always
    return res


def row(res, dicom_id) -> dict:
    sel = res.pairs[res.pairs["dicom_id"] == dicom_id]
    assert len(sel) == 1, f"{dicom_id}: {len(sel)} rows"
    return {k: (None if not isinstance(v, list) and pd.isna(v) else v) for k, v in sel.iloc[0].to_dict().items()}


def test_mimic_time_without_leading_zero_orders_within_a_day():
    assert parse_study_time("80556.875") == (8 * 3600 + 5 * 60 + 56.875, None)
    assert parse_study_time("0")[0] == 0.0 and parse_study_time("235959")[0] == 86399
    # the later study id is the morning one: string or numeric comparison of times would get this wrong
    res = run([img("x1", "1", "50000001", "PA", "21800723", "165500.312"),
               img("x2", "1", "50000002", "PA", "21800723", "80556.875")])
    assert row(res, "x1")["prior_study_id"] == "50000002"
    assert row(res, "x2")["prior_study_id"] is None
    assert row(res, "x1")["prior_gap_days"] == pytest.approx((16 * 3600 + 55 * 60 + 0.312 - 29156.875) / 86400)


def test_order_never_by_ids_and_not_by_file_order():
    # study and dicom ids decrease while time increases; input rows shuffled
    rows = [img(f"f{9 - k}", "7", f"5{9 - k}", "PA", f"2180010{k + 1}", "120000") for k in range(5)]
    res = run([rows[i] for i in (4, 2, 0, 3, 1)])
    assert len(res.pairs) == 5
    assert list(res.pairs["study_id"]) == ["59", "58", "57", "56", "55"]  # sorted by time
    for k in range(1, 5):
        assert row(res, f"f{9 - k}")["prior_study_id"] == f"5{9 - k + 1}"
    shuffled = run([rows[i] for i in (3, 0, 4, 1, 2)])
    pd.testing.assert_frame_equal(shuffled.pairs, res.pairs)


def test_equal_times_never_pair_and_ties_are_flagged_and_resolved():
    rows = [img("a1", "1", "30", "AP", "21800101", "100000"), img("a2", "1", "30", "LATERAL", "21800101", "100000"),
            img("b1", "1", "20", "PA", "21800101", "100000"),
            img("c1", "1", "10", "PA", "21800101", "100000"),
            img("d1", "1", "40", "PA", "21800102", "090000")]
    res = run(rows)
    for i in ("a1", "b1", "c1"):  # same timestamp: no prior, not each other's
        assert row(res, i)["prior_study_id"] is None
    d = row(res, "d1")
    # same ViewPosition first (b, c are PA), then a lateral (neither), then the smallest study_id
    assert d["prior_study_id"] == "10" and d["prior_tie"] is True and d["pf_dicom_id"] == "c1"
    res = run([r for r in rows if r["image_id"] != "c1"] + [img("d2", "1", "40", "AP", "21800102", "090000")])
    assert row(res, "d2")["prior_study_id"] == "30" and row(res, "d2")["pl_dicom_id"] == "a2"  # same view AP
    assert row(res, "d1")["prior_study_id"] == "20"
    assert compute_stats(res, 6)["anomalies"]["prior_tie_rows"] == 2
    # one known and one unknown time on the same date are a tie too, never a prior
    res = run([img("e1", "2", "1", "PA", "21800101", None), img("e2", "2", "2", "PA", "21800101", "120000"),
               img("e3", "2", "3", "PA", "21800101", "130000")])
    assert row(res, "e2")["prior_study_id"] is None and row(res, "e1")["time_known"] is False
    assert row(res, "e3")["prior_study_id"] == "2"  # both times known on one day -> ordered
    res = run([img("e1", "2", "1", "PA", "21800101", None), img("e2", "2", "2", "PA", "21800101", "120000"),
               img("e4", "2", "4", "PA", "21800105", "080000")])
    assert row(res, "e4")["prior_study_id"] == "1" and row(res, "e4")["prior_tie"] is True


def test_frontalless_recent_study_is_skipped_and_counted():
    res = run([img("a", "1", "1", "PA", "21800101"), img("b", "1", "2", "LATERAL", "21800105"),
               img("b2", "1", "2", "LAO", "21800105"), img("c", "1", "3", "AP", "21800110"),
               img("c-pa", "1", "3", "PA", "21800110")])
    c = row(res, "c")
    assert c["prior_study_id"] == "1" and c["pl_dicom_id"] is None  # the skipped study's lateral is not used
    assert compute_stats(res, 5)["anomalies"]["skipped_frontalless_studies"] == 1  # once per study, not per row


def test_prior_frontal_same_view_preferred_then_smallest_id():
    res = run([img("p-ap", "1", "1", "AP", "21800101"), img("p-pa2", "1", "1", "PA", "21800101"),
               img("p-pa1", "1", "1", "PA", "21800101"),
               img("c-pa", "1", "2", "PA", "21800201"), img("c-ap", "1", "2", "AP", "21800201"),
               img("only-ap", "3", "7", "AP", "21800101"), img("late-pa", "3", "8", "PA", "21800301")])
    assert row(res, "c-pa")["pf_dicom_id"] == "p-pa1" and row(res, "c-ap")["pf_dicom_id"] == "p-ap"
    assert row(res, "late-pa")["pf_dicom_id"] == "only-ap"  # other frontal type when the same is absent
    stats = compute_stats(res, 7)
    assert stats["coverage_pct"]["prior_same_view_position"] == pytest.approx(100 * 2 / 7, abs=1e-3)


def test_prior_lateral_only_from_the_prior_study_and_current_lateral_smallest_id():
    res = run([img("old-pa", "1", "1", "PA", "21800101"), img("old-lat", "1", "1", "LATERAL", "21800101"),
               img("mid-pa", "1", "2", "PA", "21800201"),
               img("new-pa", "1", "3", "PA", "21800301"), img("new-l9", "1", "3", "LL", "21800301"),
               img("new-l1", "1", "3", "LATERAL", "21800301")])
    new = row(res, "new-pa")
    assert new["prior_study_id"] == "2" and new["pl_dicom_id"] is None and new["pl_path"] is None
    assert new["cl_dicom_id"] == "new-l1" and list(new["cl_candidates"]) == ["new-l1", "new-l9"]
    assert row(res, "mid-pa")["pl_dicom_id"] == "old-lat" and row(res, "mid-pa")["pl_path"] == "png/1/old-lat.png"


def test_missing_views_are_null_not_dropped_and_no_report_text_dropped():
    res = run([img("solo", "1", "1", "PA", "21800101"), img("quiet", "1", "2", "AP", "21800201"),
               img("quiet-l", "1", "2", "LATERAL", "21800201")], without=("2",))
    solo = row(res, "solo")
    assert solo["cf_path"] == "png/1/solo.png"
    assert all(solo[k] is None for k in ("cl_path", "pf_path", "pl_path", "cl_dicom_id", "prior_study_id",
                                         "pf_dicom_id", "pl_dicom_id", "prior_gap_days"))
    reasons = dict(zip(res.dropped["image_id"], res.dropped["reason"]))
    assert reasons == {"quiet": "no_report_text", "quiet-l": "lateral_view"}


def test_prior_needs_no_report_but_a_study_without_date_is_never_a_prior():
    res = run([img("p", "1", "1", "PA", "21800101"), img("n", "1", "2", "PA", None),
               img("c", "1", "3", "PA", "21800301")], without=("1",))
    assert row(res, "c")["prior_study_id"] == "1"  # the prior has no report text but a usable frontal
    assert row(res, "n")["prior_study_id"] is None and pd.isna(res.pairs["study_time"]).sum() == 1
    assert res.pairs["dicom_id"].iloc[-1] == "n"  # unknown time sorts last within the subject
    assert compute_stats(res, 3)["anomalies"]["studies_without_date"] == 1


def test_blank_view_position_resolved_from_view_code_sequence():
    assert resolve_view(None, "antero-posterior") == ("AP", None)
    assert resolve_view("", "left lateral") == ("LL", None)
    assert resolve_view(" ", None) == (None, "blank_view")
    assert resolve_view("AP Supine", None) == ("AP", None) and resolve_view("L", None) == ("LATERAL", None)
    assert resolve_view("L", None, aliases={}) == (None, "excluded_view:L")
    res = run([img("f", "1", "1", None, code="postero-anterior"), img("l", "1", "1", "", code="lateral"),
               img("b", "1", "1", None, code=None)])
    f = row(res, "f")
    assert f["view_position"] == "PA" and f["cl_dicom_id"] == "l"
    assert res.dropped.set_index("image_id").loc["b", "reason"] == "blank_view"


def test_excluded_views_counted_per_value():
    res = run([img("pa", "1", "1", "PA"), img("x1", "1", "1", "LAO"), img("x2", "1", "1", "LAO"),
               img("x3", "1", "1", "XTABLE LATERAL"), img("x4", "1", "1", "AP AXIAL"), img("x5", "1", "1", None)])
    stats = compute_stats(res, 6)
    assert stats["excluded_views"] == {"AP AXIAL": 1, "LAO": 2, "XTABLE LATERAL": 1}
    assert stats["dropped_by_reason"] == {"blank_view": 1, "excluded_view": 4}
    assert row(res, "pa")["cl_dicom_id"] is None  # XTABLE LATERAL is not a lateral


def test_unparsable_times_rejected_and_counted():
    bad = [("21800101", "246000"), ("21800101", "126100"), ("21800101", "120075"), ("21800101", "12:00"),
           ("2180011", "120000"), ("21801301", "120000")]
    res = run([img(f"b{i}", "1", f"s{i}", "PA", d, t) for i, (d, t) in enumerate(bad)]
              + [img("ok", "1", "ok", "PA", "21800101", "235959.999")])
    assert len(res.pairs) == 1 and set(res.dropped["reason"]) == {"unparsable_time"}
    assert compute_stats(res, 7)["anomalies"]["unparsable_time_images"] == 6


def test_inconsistent_study_time_uses_the_earliest_and_flags():
    res = run([img("a", "1", "1", "PA", "21800101", "120000"), img("b", "1", "1", "LATERAL", "21800101", "090000"),
               img("c", "1", "2", "PA", "21800101", "100000")])
    # study 1 counts at 09:00 (its earliest image), so it precedes study 2 at 10:00
    assert row(res, "a")["prior_study_id"] is None and row(res, "c")["prior_study_id"] == "1"
    assert str(row(res, "a")["study_time"]) == "2180-01-01 09:00:00"
    assert compute_stats(res, 3)["anomalies"]["studies_inconsistent_time"] == 1


def test_max_prior_gap_days():
    rows = [img("a", "1", "1", "PA", "21800101"), img("b", "1", "2", "PA", "21800301")]
    assert row(run(rows), "b")["prior_gap_days"] == pytest.approx(60.0)
    res = run(rows, max_prior_gap_days=30)
    assert row(res, "b")["prior_study_id"] is None
    assert compute_stats(res, 2)["anomalies"]["priors_beyond_max_gap"] == 1


def test_hashed_split_patient_disjoint_deterministic():
    subjects = [str(10000000 + i) for i in range(2000)]
    a = [hashed_split(s) for s in subjects]
    assert a == [hashed_split(s) for s in subjects]
    assert 120 < a.count("validate") < 280 and 120 < a.count("test") < 280
    assert a != [hashed_split(s, seed=1) for s in subjects]
    res = run([img(f"i{k}", str(k % 40), f"s{k}", "PA", f"218001{1 + k % 28:02d}") for k in range(200)])
    assert (res.pairs.groupby("subject_id")["split"].nunique() == 1).all()
    assert dict(zip(res.pairs["subject_id"], res.pairs["split"])) == {str(k): hashed_split(str(k)) for k in range(40)}


def _write_inputs(tmp_path: Path, rows, without=()) -> tuple[Path, Path]:
    images = pd.DataFrame(rows)
    io.write_parquet(tmp_path / "images.parquet", images)
    io.write_parquet(tmp_path / "sections.parquet", sections_for(images, without))
    return tmp_path / "images.parquet", tmp_path / "sections.parquet"


TIMELINE = [img("c1", "007", "53", "PA", "21800101", "80000"), img("c1-l", "007", "53", "LATERAL", "21800101", "80000"),
            img("c2", "007", "52", "AP", "21800105", "185843.483"), img("c3", "007", "51", "PA", "21800110"),
            img("c3-l", "007", "51", "LL", "21800110"), img("d1", "9", "60", "PA", "21800101", "1"),
            img("d2", "9", "61", "PA", "21800102", "1"), img("x", "9", "61", "SWIMMERS", "21800102", "1")]


def test_split_csv_and_subject_in_two_splits_error(tmp_path):
    images, sections = _write_inputs(tmp_path, TIMELINE + [img("z", "42", "70", "PA"), img("z-l", "42", "70", "LL")])
    split = tmp_path / "mimic-cxr-2.0.0-split.csv.gz"
    table = pd.DataFrame({"dicom_id": ["c1", "c2", "d1"], "study_id": ["53", "52", "60"],
                          "subject_id": ["007", "007", "9"], "split": ["test", "test", "validate"]})
    with gzip.open(split, "wt") as fh:
        table.to_csv(fh, index=False)
    assert read_split_csv(split) == {"007": "test", "9": "validate"}
    assert main(["--images", str(images), "--sections", str(sections), "--split-csv", str(split),
                 "--out", str(tmp_path / "out"), "--export-splits", "train,test"]) == 0
    pairs = io.read_parquet(tmp_path / "out" / "pairs.parquet")
    assert dict(zip(pairs["subject_id"], pairs["split"])) == {"007": "test", "9": "validate"}
    dropped = io.read_parquet(tmp_path / "out" / "dropped.parquet").set_index("image_id")["reason"]
    assert dropped["z"] == "not_in_split" and dropped["z-l"] == "lateral_view"
    assert len(pd.read_csv(tmp_path / "out" / "test.csv", dtype=str)) == 3
    assert len(pd.read_csv(tmp_path / "out" / "train.csv", dtype=str)) == 0
    bad = tmp_path / "bad.csv"
    table.assign(split=["test", "train", "validate"]).to_csv(bad, index=False)
    with pytest.raises(ValueError, match="subject 007"):
        main(["--images", str(images), "--sections", str(sections), "--split-csv", str(bad),
              "--out", str(tmp_path / "bad")])


def test_train_csv_sentinel_roundtrip_and_byte_identical_outputs(tmp_path):
    rows = [dict(r, StudyDate=r["StudyDate"]) for r in TIMELINE]
    images, sections = _write_inputs(tmp_path, rows)
    args = ["--images", str(images), "--sections", str(sections), "--val-frac", "0", "--test-frac", "0"]
    assert main(args + ["--out", str(tmp_path / "a")]) == 0
    assert main(args + ["--out", str(tmp_path / "b")]) == 0
    for name in OUTPUTS:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    # shuffled input rows give the same bytes (no file order dependence)
    images2, sections2 = _write_inputs(tmp_path / "shuf", list(reversed(rows)))
    assert main(["--images", str(images2), "--sections", str(sections2), "--val-frac", "0", "--test-frac", "0",
                 "--out", str(tmp_path / "c")]) == 0
    for name in OUTPUTS:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "c" / name).read_bytes(), name

    csv = pd.read_csv(tmp_path / "a" / "train.csv", dtype=str, keep_default_na=False)
    pairs = io.read_parquet(tmp_path / "a" / "pairs.parquet")
    assert list(csv.columns) == ["image_path", "auxview_image_path", "last_image_path", "last_auxview_image_path",
                                 "report"]
    assert len(csv) == len(pairs) == 5
    assert list(pairs["subject_id"]) == ["007", "007", "007", "9", "9"]  # ids stay strings ("007")
    first = csv.iloc[0]
    assert first["image_path"] == "png/53/c1.png" and first["auxview_image_path"] == "png/53/c1-l.png"
    assert first["last_image_path"] == "-1" and first["last_auxview_image_path"] == "-1"
    assert csv.iloc[2]["last_auxview_image_path"] == "-1" and csv.iloc[2]["auxview_image_path"] == "png/51/c3-l.png"
    assert csv.iloc[1]["last_auxview_image_path"] == "png/53/c1-l.png"
    assert (csv["report"] == pairs["text"]).all()
    stats = json.loads((tmp_path / "a" / "pairs_stats.json").read_text())
    assert stats["counts"]["images_in"] == 8 and stats["counts"]["rows"] + stats["counts"]["dropped"] == 8
    assert str(pairs["study_time"].dtype).startswith("datetime64")
    assert list(pairs["cl_candidates"].iloc[2]) == ["c3-l"]
    assert str(pairs.set_index("dicom_id").loc["c2", "study_time"]) == "2180-01-05 18:58:43.483000"  # exact, no ns noise
    assert (tmp_path / "a" / "tracking.jsonl").exists()
    assert reference_csv(pairs, ("train",), prefix="/data/").splitlines()[1].startswith("/data/png/53/c1.png,")


def test_metadata_mode_assume_reports(tmp_path):
    meta = tmp_path / "mimic-cxr-2.0.0-metadata.csv.gz"
    text = """dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns,StudyDate,StudyTime,ProcedureCodeSequence_CodeMeaning,ViewCodeSequence_CodeMeaning,PatientOrientationCodeSequence_CodeMeaning
02aa804e-bde0afdd-112c0b34-7bc16630-4e384014,10000032,50414267,CHEST (PA AND LAT),PA,3056,2544,21800506,213014.531,CHEST (PA AND LAT),postero-anterior,Erect
174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962,10000032,50414267,CHEST (PA AND LAT),LATERAL,3056,2544,21800506,213014.531,CHEST (PA AND LAT),lateral,Erect
2a2277a9-b0ded155-c0de8eb9-c124d10e-82c5caab,10000032,53189527,CHEST (PA AND LAT),PA,3056,2544,21800626,165500.312,CHEST (PA AND LAT),postero-anterior,Erect
e084de3b-be89b11e-20fe3f9f-9c8d8dfe-4cfd202c,10000032,53189527,CHEST (PA AND LAT),LATERAL,3056,2544,21800626,165500.312,CHEST (PA AND LAT),lateral,Erect
68b5c4b1-227d0485-9cc38c3f-7b84ab51-4b472714,10000032,53911762,CHEST (PORTABLE AP),AP,2705,2539,21800723,80556.875,CHEST (PORTABLE AP),antero-posterior,
"""
    with gzip.open(meta, "wt") as fh:
        fh.write(text)
    with pytest.raises(SystemExit):
        main(["--metadata", str(meta), "--out", str(tmp_path / "o")])
    assert main(["--metadata", str(meta), "--assume-reports", "--out", str(tmp_path / "o")]) == 0
    stats = json.loads((tmp_path / "o" / "pairs_stats.json").read_text())
    assert stats["counts"]["rows"] == 3 and stats["coverage_pct"]["prior_study"] == pytest.approx(200 / 3, abs=1e-3)
    assert stats["coverage_pct"]["all_four_views"] == pytest.approx(100 / 3, abs=1e-3)
    assert not (tmp_path / "o" / "pairs.parquet").exists()  # placeholder texts never become training rows


def _covid_xray() -> pd.DataFrame:
    if not (COVID / "metadata.csv").exists():
        pytest.skip(f"covid-chestxray subset not found at {COVID} (shared test data absent)")
    meta = pd.read_csv(COVID / "metadata.csv", dtype=str)
    present = set(os.listdir(COVID / "images"))
    x = meta[meta["modality"] == "X-ray"].drop_duplicates("filename")
    return x[x["filename"].isin(present)].reset_index(drop=True)


def test_covid_chestxray_manifest_pairing(tmp_path):
    x = _covid_xray()
    numeric = pd.to_numeric(x["offset"], errors="coerce")
    dates = [(pd.Timestamp("2020-01-01") + pd.Timedelta(days=int(o))).strftime("%Y%m%d") if o == o else ""
             for o in numeric]
    manifest = pd.DataFrame({
        "subject_id": x["patientid"], "image_id": x["filename"], "path": "images/" + x["filename"],
        "study_id": [f"{p}_{int(o)}" if o == o else f"{p}_na" for p, o in zip(x["patientid"], numeric)],
        "view_position": x["view"].fillna(""), "study_date": dates, "study_time": "",
        # every image gets a text so that coverage depends on views and time only
        "report_text": x["clinical_notes"].fillna("Clinical notes are not available for this image."),
    })
    path = tmp_path / "manifest.csv"
    manifest.to_csv(path, index=False)
    assert main(["--manifest", str(path), "--text-source", "full_report", "--out", str(tmp_path / "out")]) == 0
    pairs = io.read_parquet(tmp_path / "out" / "pairs.parquet")
    dropped = io.read_parquet(tmp_path / "out" / "dropped.parquet")
    assert len(pairs) + len(dropped) == len(manifest)
    assert (dropped.loc[~dropped["reason"].isin(["lateral_view", "blank_view"]), "reason"]
            .str.startswith("excluded_view:")).all()

    p13 = pairs[(pairs["subject_id"] == "13") & (pairs["study_id"] == "13_10")]
    assert len(p13) == 1
    r = p13.iloc[0]
    assert r["view_position"] == "PA" and r["prior_study_id"] == "13_9" and pd.notna(r["cl_dicom_id"])
    assert pd.notna(r["pf_dicom_id"]) and pd.isna(r["pl_dicom_id"]) and r["prior_gap_days"] == pytest.approx(1.0)
    assert not r["time_known"]

    # independent count: a study (numeric offset) with frontal + lateral and a strictly earlier frontal study
    frontal, lateral = {"PA", "AP", "AP Supine"}, {"L"}
    x = x.assign(o=numeric).dropna(subset=["o"])
    expected = set()
    for pid, g in x.groupby("patientid"):
        views = g.groupby("o")["view"].agg(lambda v: set(v.dropna()))
        for o, vs in views.items():
            if vs & frontal and vs & lateral and any(views[p] & frontal for p in views.index if p < o):
                expected.add(pid)
    got = set(pairs.loc[pairs["cl_dicom_id"].notna() & pairs["pf_dicom_id"].notna(), "subject_id"])
    assert got == expected and "13" in got
    assert len(got) == 9  # on the 314 images present (docs/data.md's 10 counts patient 92, whose images are absent)


def test_manifest_mode_split_column_report_paths_and_sectioned_text(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "s1.txt").write_text("                FINAL REPORT\n EXAMINATION: CHEST (PA AND LAT)\n\n"
                                           " FINDINGS: The lungs are clear.\n\n IMPRESSION: No acute process.\n")
    (tmp_path / "r" / "s2.txt").write_text("Notes without any section header at all.\n")
    manifest = pd.DataFrame({
        "subject_id": ["311a", "311a", "311a", "12"], "study_id": ["s1", "s1", "s2", "s3"],
        "image_id": ["i1", "i2", "i3", "i4"], "path": ["a/i1.jpg", "a/i2.jpg", "a/i3.jpg", "a/i4.jpg"],
        "view_position": ["PA", "L", "AP Supine", "AP"], "study_date": ["20200101", "20200101", "20200103", ""],
        "study_time": ["", "", "", ""], "report_path": ["r/s1.txt", "r/s1.txt", "r/s2.txt", ""],
        "report_text": ["", "", "", "\n FINDINGS: Low lung volumes.\n IMPRESSION: Stable, no change."],
        "split": ["validate", "validate", "validate", "test"]})
    path = tmp_path / "manifest.csv"
    manifest.to_csv(path, index=False)
    assert main(["--manifest", str(path), "--out", str(tmp_path / "o"), "--export-splits", ""]) == 0
    pairs = io.read_parquet(tmp_path / "o" / "pairs.parquet")
    assert list(pairs["dicom_id"]) == ["i4", "i1"]  # subject "12" sorts before "311a" as a string
    assert pairs["text"].iloc[0] == "Low lung volumes. Stable, no change."
    r = pairs.set_index("dicom_id").loc["i1"]
    assert r["text"] == "The lungs are clear. No acute process." and r["text_source"] == "findings+impression"
    assert r["split"] == "validate" and r["cl_path"] == "a/i2.jpg" and pd.isna(r["prior_study_id"])
    dropped = io.read_parquet(tmp_path / "o" / "dropped.parquet").set_index("image_id")
    assert dropped.loc["i3", "reason"] == "no_report_text"  # header-less notes give no findings/impression
    assert not (tmp_path / "o" / "train.csv").exists()
    manifest.loc[3, "subject_id"] = "311a"
    manifest.to_csv(path, index=False)
    with pytest.raises(ValueError, match="subject 311a"):
        main(["--manifest", str(path), "--out", str(tmp_path / "o2")])
