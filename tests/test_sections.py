"""Tests of the ``sections`` stage: MIT-LCP sectioning, overrides, training text, readers, CLI outputs."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from alta.data import report_readers as reports
from alta.data import sections
from alta.data.sections import load_overrides, parse_report, section_text, training_text

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
IU_TGZ = SHARED / "iu-xray" / "iu_reports_1-3000.tgz"
COVID = SHARED / "covid-chestxray"

WORKED = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)
 
 INDICATION:  ___ year old woman with ?pleural effusion  // ?pleural effusion
 
 TECHNIQUE:  Chest PA and lateral
 
 COMPARISON:  ___
 
 FINDINGS: 
 
 Cardiac size cannot be evaluated.  Large left pleural effusion is new.  Small
 right effusion is new.  The upper lungs are clear.  Right lower lobe opacities
 are better seen in prior CT.  There is no pneumothorax.  There are mild
 degenerative changes in the thoracic spine
 
 IMPRESSION: 
 
 Large left pleural effusion
"""

NO_OVERRIDES = {"spans": {}, "names": {}}


@pytest.fixture(autouse=True)
def _local_tracking(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("ALTA_TRACKING_CONTEXT", raising=False)


def names_of(text: str) -> list[str]:
    return section_text(text)[1]


# -- the algorithm --------------------------------------------------------------------------------------------
def test_worked_example_sections_and_text():
    secs, names, starts = section_text(WORKED)
    assert names == ["preamble", "examination", "indication", "technique", "comparison", "findings", "impression"]
    assert secs[0].strip() == "FINAL REPORT"
    assert secs[1].strip() == "CHEST (PA AND LAT)"
    assert all(WORKED[s:s + len(t)] == t for s, t in zip(starts, secs))
    p = parse_report("50000001", WORKED, NO_OVERRIDES)
    assert p["impression"] == "Large left pleural effusion" == p["conclusion"]
    assert p["findings"].startswith("Cardiac size cannot be evaluated.") and p["findings"].endswith("thoracic spine")
    assert p["comparison"] == "___" and p["last_paragraph"] is None and p["override"] == "none"
    text, src, status, n = training_text(p, WORKED)
    assert src == "findings+impression" and status == "ok"
    assert text.startswith("Cardiac size cannot be evaluated. Large left") and text.endswith(
        "thoracic spine Large left pleural effusion")
    assert "\n" not in text and "  " not in text


def test_header_edge_cases():
    # digits and '#' are not allowed in a header
    assert names_of("\n FINDINGS: a\n ADDENDUM #1: b\n") == ["preamble", "findings"]
    # a header at the very start has no preceding newline and is not seen
    assert names_of("IMPRESSION: clear lungs") == ["full report"]
    assert names_of(" IMPRESSION: clear lungs\n FINDINGS: x") == ["preamble", "findings"]
    # header-like text on the header's own line is skipped (search resumes after the next newline)
    secs, names, _ = section_text("x\n FINDINGS: see\n IMPRESSION: y\n")
    assert names == ["preamble", "findings", "impression"] and secs[1] == "see"
    # ... so an empty header whose ':\s' eats the newline swallows the next header line (reference behaviour)
    secs, names, _ = section_text("x\n FINDINGS:\n IMPRESSION: y\n")
    assert names == ["preamble", "findings"] and secs[1] == " IMPRESSION: y\n"
    secs, names, _ = section_text("x\n COMPARISON: none INDICATION: foo\n IMPRESSION: ok\n")
    assert names == ["preamble", "comparison", "impression"]


@pytest.mark.parametrize("header, expected", [
    ("FINDNGS", "findings"), ("IMPRESSON", "impression"), ("IMPESSION", "impression"), ("COMPARISION", "comparison"),
    ("FINDINGS AND IMPRESSION", "impression"), ("FINDINGS/IMPRESSION", "impression"), ("CONCLUSION", "impression"),
    ("NDICATION", "impression"), ("IDICATION", "indication"), ("REASON FOR EXAM", "indication"),
    ("CLINICAL HISTORY", "history"), ("PFI", "history"), ("HISTORY OF PRESENT ILLNESS", "history"),
    ("FINAL IMPRESSION", "impression"), ("PROVISIONAL FINDINGS IMPRESSION", "impression"),
    ("REFERENCE EXAM", "comparison"), ("WETREAD", "wet read"), ("RECOMMENDATION(S)", "recommendations"),
    ("PORTABLE AP CHEST", "findings"), ("CHEST, PA LATERAL", "findings"), ("PA AND LAT", "findings"),
    ("TECHNIQUE", "technique"), ("NOTIFICATION", "notification"), ("SOMETHING ELSE", "something else"),
])
def test_name_normalisation(header, expected):
    assert names_of(f"x\n {header}: some text here\n") == ["preamble", expected]


def test_empty_title_sections_removed_and_ndication_quirk():
    text = "\n CHEST, PA AND LATERAL:\n \n INDICATION: cough\n \n FINDINGS: \n \n IMPRESSION: clear\n"
    assert names_of(text) == ["preamble", "indication", "impression"]
    p = parse_report("1", "x\n NDICATION: no acute process\n", NO_OVERRIDES)
    assert p["impression"] == "no acute process" == p["conclusion"]


def test_last_paragraph_fallback_and_priority():
    text = "x\n INDICATION: cough\n \n There is a left effusion.\n \n No pneumothorax.\n"
    secs, names, starts = section_text(text)
    assert names == ["preamble", "indication", "last_paragraph"]
    assert secs[1] == "cough" and secs[2] == " There is a left effusion.\n \n No pneumothorax.\n"
    p = parse_report("1", text, NO_OVERRIDES)
    assert p["conclusion"] == "There is a left effusion.\n \n No pneumothorax."
    assert training_text(p, text)[:3] == ("There is a left effusion. No pneumothorax.", "last_paragraph", "ok")
    # headerless text: one 'full report' section, paragraph break -> last_paragraph
    assert names_of("Lungs clear.\n \n Heart normal.") == ["full report", "last_paragraph"]
    assert names_of("Lungs clear. Heart normal.") == ["full report"]
    # conclusion priority and LAST occurrence
    two = "x\n FINDINGS: f1\n IMPRESSION: i1\n FINDINGS: f2\n IMPRESSION: i2\n COMPARISON: c\n"
    p = parse_report("1", two, NO_OVERRIDES)
    assert (p["impression"], p["findings"], p["conclusion"]) == ("i2", "f2", "i2")
    p = parse_report("1", "x\n FINDINGS: f1\n COMPARISON: c\n", NO_OVERRIDES)
    assert p["conclusion"] == "f1"
    p = parse_report("1", "x\n COMPARISON: whole report written here\n", NO_OVERRIDES)
    assert p["conclusion"] == "whole report written here"
    assert training_text(p, "")[2] == "no_sections"  # comparison is never a training-text fallback
    p = parse_report("1", "x\n TECHNIQUE: pa\n", NO_OVERRIDES)
    assert p["conclusion"] == "" and p["impression"] is None


def test_impression_before_findings_keeps_report_order():
    text = "x\n IMPRESSION: normal chest study\n FINDINGS: lungs are clear\n"
    t, src, status, _ = training_text(parse_report("1", text, NO_OVERRIDES), text)
    assert t == "normal chest study lungs are clear"
    assert src == "findings+impression"


# -- overrides ------------------------------------------------------------------------------------------------
def test_packaged_overrides_table():
    ov = load_overrides()
    assert len(ov["spans"]) == 31 and sum(v == [0, 0] for v in ov["spans"].values()) == 8
    assert len(ov["names"]) == 23
    assert sorted(pd.Series(list(ov["names"].values())).value_counts().items()) == [
        ("examination", 5), ("history", 1), ("indication", 6), ("note", 1), ("recommendations", 7),
        ("technique", 3)]
    assert ov["spans"]["s50525523"] == [201, 349] and ov["names"]["s50913680"] == "recommendations"
    assert load_overrides("none") == NO_OVERRIDES
    assert parse_report("58235663", "x\n IMPRESSION: clear\n")["override"] == "span"  # packaged by default


def test_span_and_named_overrides():
    ov = load_overrides()
    report = "\n FINDINGS: " + "a" * 190 + "\n The real conclusion sits here" + " word" * 40 + "\n"
    p = parse_report("50525523", report, ov)
    assert p["override"] == "span" and p["impression"] == report[201:349].strip() == p["conclusion"]
    assert p["findings"] is None and p["last_paragraph"] is None
    assert training_text(p, report)[1] == "impression"
    p = parse_report("58235663", report, ov)  # [0, 0]: no findings in the whole report
    assert p["override"] == "span" and p["impression"] == "" == p["conclusion"]
    assert training_text(p, report) == (None, None, "empty", 0)
    named = "x\n INDICATION: cough\n RECOMMENDATION(S): Moderate right effusion, follow up advised.\n"
    p = parse_report("50913680", named, ov)
    assert p["override"] == "name"
    assert p["impression"] == "Moderate right effusion, follow up advised." == p["conclusion"]
    # the named section is missing -> automatic parse, override none
    p = parse_report("50913680", "x\n IMPRESSION: fine\n", ov)
    assert p["override"] == "none" and p["conclusion"] == "fine"


def test_override_file_option(tmp_path):
    f = tmp_path / "ov.json"
    f.write_text(json.dumps({"spans": {"s7": {"span": [3, 8]}}, "names": {"s8": {"section": "technique"}}}))
    ov = load_overrides(f)
    assert parse_report("7", "0123456789", ov)["impression"] == "34567"
    assert parse_report("8", "x\n TECHNIQUE: pa view\n", ov)["impression"] == "pa view"
    bad = tmp_path / "bad.json"
    bad.write_text('{"spans": {"s1": {"wrong": 1}}}')
    with pytest.raises(ValueError, match="bad.json"):
        load_overrides(bad)


# -- training text --------------------------------------------------------------------------------------------
def test_training_text_rules_and_minimum():
    assert sections.count_words("___ ___ lungs") == 1
    assert sections.count_words("No ___-year-old_ effusion __") == 4  # No, year, old_, effusion
    short = "x\n FINDINGS: ___ clear ___\n IMPRESSION: ok.\n"
    t = training_text(parse_report("1", short, NO_OVERRIDES), short)
    assert t == (None, None, "too_short", 2)
    assert training_text(parse_report("1", short, NO_OVERRIDES), short, min_words=2)[:3] == (
        "___ clear ___ ok.", "findings+impression", "ok")
    p = parse_report("1", WORKED, NO_OVERRIDES)
    assert training_text(p, WORKED, "impression")[:3] == ("Large left pleural effusion", "impression", "ok")
    full = training_text(p, WORKED, "full_report")
    assert full[1] == "full_report" and full[0].startswith("FINAL REPORT EXAMINATION: CHEST (PA AND LAT)")
    only_f = "x\n FINDINGS: Lungs are clear bilaterally.\n"
    assert training_text(parse_report("1", only_f, NO_OVERRIDES), only_f)[1] == "findings"
    with pytest.raises(ValueError):
        training_text(p, WORKED, "everything")


# -- readers --------------------------------------------------------------------------------------------------
def _mimic_tree(root: Path) -> Path:
    files = {
        "files/p10/p10000032/s50414267.txt": WORKED.encode(),
        "files/p10/p10000032/s53189527.txt": "\n FINDINGS: Opacit\xe9 in the right lower lobe.\n".encode("latin-1"),
        "files/p10/p10000033/s50000002.txt": b"\n IMPRESSION: No acute\x00 cardiopulmonary process.\n",
        "files/p11/p11000001/s50000003.txt": b"   \n \n  ",
        "files/p11/p11000001/s50000004.txt": b"Lungs clear. Heart normal.",
        "files/p11/p11000002/s50000005.txt": b"\x89PNG\r\n\x1a\n" + bytes(range(1, 32)) * 20,
        "files/p11/p11000002/s50000006.txt": b"\n IMPRESSION: ok.\n",
        "files/p11/p11000002/README.txt": b"not a report",
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    (root / "files/p10/p10000032/s50414267").mkdir()
    return root


def test_mimic_reader_encodings_and_rejects(tmp_path):
    root = _mimic_tree(tmp_path / "mimic")
    items = list(reports.read_mimic(root))
    assert len(items) == 7  # README.txt is not a report
    df, rj, stats = sections.build_tables(items, overrides=NO_OVERRIDES)
    assert stats["inputs"] == 7 == len(df) + len(rj)
    assert list(df["study_id"]) == sorted(df["study_id"])
    row = df.set_index("study_id")
    assert row.loc["50414267", "subject_id"] == "10000032"
    assert row.loc["50414267", "report_path"] == "files/p10/p10000032/s50414267.txt"
    assert row.loc["53189527", "encoding"] == "cp1252" and "Opacit\u00e9" in row.loc["53189527", "findings"]
    assert row.loc["50000002", "nul_bytes"] == 1 and row.loc["50000002", "impression"] == (
        "No acute cardiopulmonary process.")
    assert row.loc["50000004", "text_status"] == "no_sections" and pd.isna(row.loc["50000004", "text"])
    assert row.loc["50000006", "text_status"] == "too_short" and row.loc["50000006", "n_words"] == 1
    assert dict(zip(rj["path"], rj["reason"])) == {"files/p11/p11000001/s50000003.txt": "empty_report",
                                                    "files/p11/p11000002/s50000005.txt": "undecodable_report"}
    assert json.loads(row.loc["50414267", "sections_json"])[0] == ["preamble", WORKED[:WORKED.index("\n") + 2]]
    assert len(reports.list_report_files("mimic", root)) == 7


def test_duplicate_study_rejected(tmp_path):
    for subject in ("p10000001", "p10000002"):
        f = tmp_path / "files" / "p10" / subject / "s50000001.txt"
        f.parent.mkdir(parents=True)
        f.write_text("\n IMPRESSION: Lungs are clear.\n")
    df, rj, stats = sections.build_tables(reports.read_mimic(tmp_path / "files" / "p10"), overrides=NO_OVERRIDES)
    assert list(df["subject_id"]) == ["10000001"] and list(rj["reason"]) == ["duplicate_study"]
    assert rj["path"].item() == "p10000002/s50000001.txt" and "p10000001/s50000001.txt" in rj["detail"].item()
    # a single patient folder as the root works too
    assert [r.study_id for r in reports.read_mimic(tmp_path / "files" / "p10" / "p10000001")] == ["50000001"]


def test_latin1_only_bytes_and_utf16():
    text, enc, nul = reports.decode_report(b"\n FINDINGS: caf\x81 \xe9\n", "x")
    assert enc == "latin-1" and "\xe9" in text
    text, enc, nul = reports.decode_report("\n IMPRESSION: ok\r\n".encode("utf-16"), "y")
    assert enc == "utf-16" and text == "\n IMPRESSION: ok\n"
    assert isinstance(reports._report_or_reject(b"\x00\x00", "z", "1", None), reports.Reject)


def test_mimic_zip(tmp_path):
    root = _mimic_tree(tmp_path / "mimic")
    zpath = tmp_path / "mimic-cxr-reports.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for p in sorted(root.rglob("*.txt")):
            zf.write(p, p.relative_to(root).as_posix())
    a = sections.build_tables(reports.read_mimic(root), overrides=NO_OVERRIDES)[0]
    b = sections.build_tables(reports.read_mimic(zpath), overrides=NO_OVERRIDES)[0]
    pd.testing.assert_frame_equal(a, b)


def test_cli_outputs_official_view_and_determinism(tmp_path):
    root = _mimic_tree(tmp_path / "mimic")
    for out in ("a", "b"):
        assert sections.main(["--source", "mimic", "--root", str(root), "--out", str(tmp_path / out)]) == 0
    for f in ("sections.parquet", "rejects.parquet", "sections_stats.json"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    df = pd.read_parquet(tmp_path / "a" / "sections.parquet")
    assert list(df.columns[:14]) == ["study_id", "subject_id", "report_path", "impression", "findings",
                                     "last_paragraph", "comparison", "conclusion", "override", "n_sections",
                                     "sections_json", "full_text", "text", "text_source"]
    rj = pd.read_parquet(tmp_path / "a" / "rejects.parquet")
    assert list(rj.columns) == ["path", "reason", "detail", "stage"] and set(rj["stage"]) == {"sections"}
    stats = json.loads((tmp_path / "a" / "sections_stats.json").read_text())
    assert stats["inputs"] == stats["kept"] + stats["rejected"] == 7
    view = sections.official_view(df)
    assert list(view.columns) == ["study", "impression", "findings", "last_paragraph", "comparison"]
    assert view["study"].iloc[0] == "s50000002"
    assert sections.main(["--source", "mimic", "--root", str(tmp_path / "nope"), "--out", str(tmp_path)]) == 2


def test_manifest_text_and_paths(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "a.txt").write_text(WORKED)
    pd.DataFrame({
        "subject_id": ["311a", "311a", "312", "313", "314"],
        "study_id": ["311a_1", "311a_1", "312_0", "313_0", "314_0"],
        "image_id": ["i1", "i2", "i3", "i4", "i5"],
        "report_text": ["Left effusion is seen.", "Left effusion is seen.", "", "", ""],
        "report_path": ["", "", "r/a.txt", "r/missing.txt", ""],
    }).to_csv(tmp_path / "m.csv", index=False)
    df, rj, stats = sections.build_tables(reports.read_manifest(tmp_path / "m.csv"), overrides=NO_OVERRIDES)
    assert stats["inputs"] == 4 and len(df) == 2
    assert dict(zip(rj["reason"], rj["path"])) == {"missing_file": "r/missing.txt",
                                                    "empty_report": "m.csv#study_id=314_0"}
    row = df.set_index("study_id")
    assert row.loc["311a_1", "subject_id"] == "311a" and row.loc["311a_1", "full_text"] == "Left effusion is seen."
    assert row.loc["312_0", "impression"] == "Large left pleural effusion"
    assert reports.list_report_files("manifest", None, tmp_path / "m.csv") == sorted(
        [str(tmp_path / "m.csv"), str(tmp_path / "r" / "a.txt")])
    (tmp_path / "bad.csv").write_text("id,report_text\n1,x\n")
    with pytest.raises(ValueError, match="bad.csv.*study_id"):
        list(reports.read_manifest(tmp_path / "bad.csv"))


# -- real public data -----------------------------------------------------------------------------------------
@pytest.mark.skipif(not IU_TGZ.exists(), reason=f"IU X-ray reports not found at {IU_TGZ}")
def test_iu_xray_findings_impression_agree_with_xml_labels():
    n = agree = n_reports = 0
    for rel, raw in reports._iu_raw(IU_TGZ):
        uid, secs = reports.parse_iu_xml(raw, rel)
        n_reports += 1
        labelled = dict(secs)
        p = parse_report(uid, reports.render_iu(secs), NO_OVERRIDES)
        for label in ("FINDINGS", "IMPRESSION"):
            if labelled[label]:
                n += 1
                agree += " ".join((p[label.lower()] or "").split()) == labelled[label]
    assert n_reports == 2964 and n == 5501  # the archive holds 2,964 of ids 1-3000
    assert agree == n, f"agreement {agree}/{n}"
    df, rj, stats = sections.build_tables(reports.read_iu(IU_TGZ), overrides=NO_OVERRIDES)
    assert stats["inputs"] == 2964 and set(rj["reason"]) == {"empty_report"} and len(df) + len(rj) == 2964
    assert df["study_id"].str.match(r"^CXR\d+$").all() and df["subject_id"].isna().all()
    assert df.loc[df["study_id"] == "CXR1", "impression"].item() == "Normal chest x-XXXX."


@pytest.mark.skipif(not (COVID / "metadata.csv").exists(), reason=f"covid-chestxray subset not found at {COVID}")
def test_covid_clinical_notes_through_manifest(tmp_path):
    meta = pd.read_csv(COVID / "metadata.csv", dtype=str, keep_default_na=False)
    present = {p.name for p in (COVID / "images").iterdir()}
    meta = meta[meta["filename"].isin(present)].drop_duplicates("filename")
    man = pd.DataFrame({"subject_id": meta["patientid"], "study_id": meta["patientid"] + "_" + meta["offset"],
                        "image_id": meta["filename"], "path": "images/" + meta["filename"],
                        "report_text": meta["clinical_notes"]})
    man.to_csv(tmp_path / "covid.csv", index=False)
    n_studies = man["study_id"].nunique()
    for source in ("findings_impression", "full_report"):
        out = tmp_path / source
        assert sections.main(["--source", "manifest", "--manifest", str(tmp_path / "covid.csv"), "--out", str(out),
                              "--text-source", source]) == 0
        df = pd.read_parquet(out / "sections.parquet")
        rj = pd.read_parquet(out / "rejects.parquet")
        assert len(df) + len(rj) == n_studies and set(rj["reason"]) <= {"empty_report"}
        assert (df["n_sections"] == 1).all()  # no headers: one 'full report' section, no paragraph break
        if source == "findings_impression":
            assert set(df["text_status"]) == {"no_sections"} and df["text"].isna().all()
        else:
            assert (df["text_status"] == "ok").mean() > 0.9 and set(df["text_source"].dropna()) == {"full_report"}
