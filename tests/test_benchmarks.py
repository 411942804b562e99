"""Benchmark readers, GLoRIA cleaning and prompt construction, on synthetic files and the real benchmark files."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from alta.evaluate import benchmarks as B
from alta.evaluate import prompts as P
from alta.evaluate.textclean import gloria_clean

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "benchmarks"
REAL_5X200 = SHARED / "chexpert_5x200.csv"
REAL_RSNA_TEST = SHARED / "rsna_test_list.txt"
REAL_RSNA_VAL = SHARED / "rsna_val_list.txt"


def _need(path: Path) -> Path:
    if not path.is_file():
        pytest.skip(f"shared benchmark file {path} is absent (../shared/data not mounted)")
    return path


# -------------------------------------------------------------------------------------------------- textclean
def test_gloria_clean_steps():
    # Numbered items split, then "."; single-token pieces ("noted", "2") dropped; lowercase; \w+ tokens.
    assert gloria_clean("1. No acute\ncardiopulmonary process.\n2. Noted.") == "no acute cardiopulmonary process"
    assert gloria_clean("Heart\ufffd\ufffdsize normal.") == "heart size normal"
    # Non-ASCII characters vanish inside tokens; the <=1-token test happens before that step.
    # Second piece: tokens ["éé", "x"] pass the 2-token test, then "éé" empties and goes, leaving "x".
    assert gloria_clean("Caf\u00e9 normal. \u00e9\u00e9 x") == "caf normal x"
    assert gloria_clean("\u00e9 \u00fc. Lungs clear") == " lungs clear"  # an all-non-ASCII piece leaves ""
    # GLoRIA's numbered-item regex also eats the "1." of a decimal.
    assert gloria_clean("There is a 1.5 cm nodule") == "there is a 5 cm nodule"
    assert gloria_clean("Stable.") == ""
    with pytest.raises(TypeError):
        gloria_clean(float("nan"))


# ---------------------------------------------------------------------------------------------------- prompts
def test_chexpert5_prompt_counts_order_and_duplicates():
    prompts = P.chexpert5_prompts()
    assert list(prompts) == list(P.CHEXPERT5_CLASSES)
    assert {k: len(v) for k, v in prompts.items()} == {"Atelectasis": 210, "Cardiomegaly": 15,
                                                       "Consolidation": 192, "Edema": 18, "Pleural Effusion": 54}
    assert len(set(prompts["Pleural Effusion"])) == 36
    # Pleural Effusion nests severity -> location -> subtype.
    assert prompts["Pleural Effusion"][:3] == ["left bilateral pleural effusion", "left subpulmonic pleural effusion",
                                               "left bilateral pleural effusion"]
    assert prompts["Pleural Effusion"][-1] == "increased tiny bilateral pleural effusion"
    assert prompts["Atelectasis"][0] == "subsegmental atelectasis at the mid lung zone"
    assert prompts["Atelectasis"][-1] == "minimal residual atelectasis at the right lower lobe"
    assert prompts["Edema"][3] == "mild pulmonary edema"
    raw = P.chexpert5_prompts(cleaned=False)
    assert "apperance of bilateral consolidation at the right uppper lobe" in raw["Consolidation"]
    assert "presistent pulmonary edema" in raw["Edema"]


def test_long_cardiomegaly_prompt_stays_one_text_after_cleaning():
    raw = [p for p in P.chexpert5_prompts(cleaned=False)["Cardiomegaly"] if "ventricular" in p]
    assert raw == ["mildly enlarged cardiac silhouette, likely left ventricular enlargement. "
                   "other chambers are less prominent"]
    cleaned = gloria_clean(raw[0])
    assert cleaned == ("mildly enlarged cardiac silhouette likely left ventricular enlargement "
                       "other chambers are less prominent")
    assert cleaned in P.chexpert5_prompts()["Cardiomegaly"]


def test_rsna_prompt_sets():
    assert P.rsna_prompts() == (["There is pneumonia"], ["There is no pneumonia"])
    pos, neg = P.rsna_prompts("biovil_4x4")
    assert len(pos) == len(neg) == 4 and "No signs of pneumonia" in neg
    with pytest.raises(ValueError, match="unknown"):
        P.rsna_prompts("cxr_clip")


# -------------------------------------------------------------------------------------------------- 5x200
def _write_5x200(path: Path, per_class: int = 3, order=None) -> pd.DataFrame:
    rows = []
    for k, cls in enumerate(P.CHEXPERT5_CLASSES):
        for j in range(per_class):
            lab = {c: 0.0 for c in B.CHEXPERT_LABELS_14}
            lab[cls] = 1.0
            rows.append({"Path": f"CheXpert-v1.0-small/train/patient{k:03d}{j:02d}/study1/view1_frontal.jpg",
                         "Sex": "Male", "Age": 50, "Frontal/Lateral": "Frontal", "AP/PA": "AP", **lab,
                         "Report Impression": f"\n1. Finding {cls} in view {'abc'[j % 3]}.\n2. Stable.\n"})
    df = pd.DataFrame(rows)
    if order is not None:
        df = df.iloc[order].reset_index(drop=True)
    df.to_csv(path)  # writes the unnamed index column: 21 columns as in §7.1
    return df


def test_read_small_5x200_derives_labels_from_columns(tmp_path):
    csv = tmp_path / "small.csv"
    _write_5x200(csv, per_class=3)
    df = B.read_chexpert_5x200(csv, image_root="/data/chexpert")
    assert df["label"].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]
    assert df["path"][0] == "/data/chexpert/CheXpert-v1.0-small/train/patient00000/study1/view1_frontal.jpg"
    assert df["text_clean"][0] == "finding atelectasis in view a"
    info = df.attrs["benchmark"]
    assert info["blocks_in_order"] and info["class_counts"] == {c: 3 for c in P.CHEXPERT5_CLASSES}
    assert info["variant"] == "unrecognised file" and len(info["sha256"]) == 64


def test_read_5x200_out_of_block_order_warns_and_keeps_labels(tmp_path):
    csv = tmp_path / "shuffled.csv"
    src = _write_5x200(csv, per_class=2, order=[9, 0, 4, 1, 8, 2, 3, 5, 6, 7])
    with pytest.warns(UserWarning, match="not in class blocks"):
        df = B.read_chexpert_5x200(csv)
    expected = src[list(P.CHEXPERT5_CLASSES)].to_numpy().argmax(1)
    assert df["label"].tolist() == expected.tolist()
    assert df.attrs["benchmark"]["blocks_in_order"] is False


def test_read_5x200_column_count_and_missing_columns(tmp_path):
    csv = tmp_path / "small.csv"
    df = _write_5x200(csv)
    df.to_csv(csv, index=False)  # 20 columns
    with pytest.raises(B.BenchmarkError, match="expected 21 columns"):
        B.read_chexpert_5x200(csv)
    assert len(B.read_chexpert_5x200(csv, strict=False)) == 15
    df.drop(columns=["Edema"]).to_csv(csv)
    with pytest.raises(B.BenchmarkError, match=r"missing column\(s\) \['Edema'\]"):
        B.read_chexpert_5x200(csv)


def test_real_5x200_facts():
    df = B.read_chexpert_5x200(_need(REAL_5X200))
    info = df.attrs["benchmark"]
    assert len(df) == 1000
    assert info["class_counts"] == {c: 200 for c in P.CHEXPERT5_CLASSES} and info["blocks_in_order"]
    assert (df["label"].to_numpy() == np.arange(1000) // 200).all()  # block structure confirmed, not assumed
    assert info["variant"] == "gloria_5x200 (DopamineLcy/ALTA)"
    assert info["n_patients"] == 966 and info["n_studies"] == 992 and info["n_patients_in_two_or_more_classes"] == 12
    assert info["max_clean_words"] == 92
    assert info["n_duplicated_clean_texts"] == 16 and info["n_duplicated_raw_texts"] == 12
    # No duplicated cleaned text carries conflicting labels (§6.1).
    assert (df.groupby("text_clean")["label"].nunique() == 1).all()


def test_real_5x200_corrupted_row_is_named(tmp_path):
    raw = pd.read_csv(_need(REAL_5X200))
    raw.loc[17, "Cardiomegaly"] = 1.0  # row 17 is an Atelectasis row: now two positives
    raw.loc[503, "No Finding"] = 1.0
    bad = tmp_path / "chexpert_5x200_bad.csv"
    raw.to_csv(bad, index=False)
    with pytest.raises(B.BenchmarkError) as err:
        B.read_chexpert_5x200(bad)
    msg = str(err.value)
    assert str(bad) in msg and "row 17: 2 positives" in msg and "row 503" in msg
    with pytest.warns(UserWarning, match="excluding 2 bad row"):
        df = B.read_chexpert_5x200(bad, strict=False)
    assert len(df) == 998 and 17 not in set(df["row"]) and 503 not in set(df["row"])
    assert [r["row"] for r in df.attrs["benchmark"]["excluded_rows"]] == [17, 503]


# ------------------------------------------------------------------------------------------------- ConVIRT
def _write_convirt(root: Path, per_class: int = 2) -> None:
    (root / "image-retrieval").mkdir(parents=True)
    (root / "text-retrieval").mkdir(parents=True)
    cands, iq, tq = [], [], []
    for cls in B.CONVIRT_QUERY_CLASSES:
        k = B.CHEXPERT_LABELS_14.index(cls)
        for j in range(per_class):
            lab = {c: 0.0 for c in B.CHEXPERT_LABELS_14}
            lab[cls] = 1.0
            lab["Support Devices"] = -1.0 if j else np.nan  # uncertain/blank cells are not positives
            cands.append({"Path": f"CheXpert-v1.0-small/train/patient{k:02d}{j:03d}/study1/view1_frontal.jpg",
                          "Sex": "Female", "Age": 40, "Frontal/Lateral": "Frontal", "AP/PA": "PA", **lab})
        iq.append({"Variable": cls, "Path": f"CheXpert-v1.0-small/train/patient{k:02d}999/study1/view1_frontal.jpg"})
        tq.append({"Variable": cls, "Text": f"{cls} is present."})
    pd.DataFrame(cands).to_csv(root / "image-retrieval" / "candidate.csv", index=False)
    shutil.copy(root / "image-retrieval" / "candidate.csv", root / "text-retrieval" / "candidate.csv")
    pd.DataFrame(iq).to_csv(root / "image-retrieval" / "query.csv", index=False)
    pd.DataFrame(tq).to_csv(root / "text-retrieval" / "query.csv", index=False)


def test_convirt_label_index_table():
    assert B.CONVIRT_QUERY_CLASSES == {"No Finding": 0, "Cardiomegaly": 2, "Edema": 5, "Pneumonia": 7,
                                       "Atelectasis": 8, "Pneumothorax": 9, "Pleural Effusion": 10, "Fracture": 12}


def test_read_convirt_synthetic(tmp_path):
    _write_convirt(tmp_path)
    sets = B.read_convirt(tmp_path)
    assert len(sets.candidates) == 16 and len(sets.image_queries) == 8 and len(sets.text_queries) == 8
    assert set(sets.candidates["label"]) == set(B.CONVIRT_QUERY_CLASSES.values())
    assert sets.text_queries.set_index("class_name")["label"]["Fracture"] == 12
    assert sets.info["candidate_class_counts"] == {c: 2 for c in B.CONVIRT_QUERY_CLASSES}
    # Query patients patientKK999 never appear among candidates.
    assert sets.info["n_image_queries_sharing_patient_with_candidates"] == 0


def test_read_convirt_rejects_bad_candidates_and_self_match(tmp_path):
    _write_convirt(tmp_path)
    cand = tmp_path / "image-retrieval" / "candidate.csv"
    df = pd.read_csv(cand)
    df.loc[5, "Pneumonia"] = 1.0  # two positives
    df.to_csv(cand, index=False)
    with pytest.raises(B.BenchmarkError, match="differs from"):
        B.read_convirt(tmp_path)
    shutil.copy(cand, tmp_path / "text-retrieval" / "candidate.csv")
    with pytest.raises(B.BenchmarkError, match=r"candidate\.csv: 1 bad row\(s\): row 5: 2 labels equal to 1\.0"):
        B.read_convirt(tmp_path)
    with pytest.warns(UserWarning):
        assert len(B.read_convirt(tmp_path, strict=False).candidates) == 15

    _write_convirt(tmp_path / "b")
    q = tmp_path / "b" / "image-retrieval" / "query.csv"
    qdf = pd.read_csv(q)
    qdf.loc[3, "Path"] = pd.read_csv(tmp_path / "b" / "image-retrieval" / "candidate.csv")["Path"][0]
    qdf.loc[4, "Variable"] = "Lung Opacity"
    qdf.to_csv(q, index=False)
    with pytest.raises(B.BenchmarkError, match="row 4: unknown Variable 'Lung Opacity'"):
        B.read_convirt(tmp_path / "b")
    qdf.loc[4, "Variable"] = "Edema"
    qdf.to_csv(q, index=False)
    with pytest.raises(B.BenchmarkError, match=r"rows \[3\] are also candidates"):
        B.read_convirt(tmp_path / "b")


# ---------------------------------------------------------------------------------------------------- RSNA
def test_real_rsna_lists():
    test = B.read_rsna_list(_need(REAL_RSNA_TEST))
    val = B.read_rsna_list(_need(REAL_RSNA_VAL))
    t, v = test.attrs["benchmark"], val.attrs["benchmark"]
    assert (len(test), int(test["label"].sum())) == (3000, 1094)
    assert (len(val), int(val["label"].sum())) == (1500, 223)
    assert t["rsna_split"] == "mrm_3000" and v["rsna_split"] == "mrm_val_1500"
    assert t["lines_with_trailing_space"] == 3000 and v["lines_with_trailing_space"] == 1500
    assert test["rel_path"].str.startswith("stage_2_test_images/").all()
    assert val["rel_path"].str.startswith("stage_2_train_images/").all()
    assert test["patient_id"][0] == "2d29c5d7-cd1e-4fb7-896b-c55b69ca6c96" and test["label"][0] == 1
    assert REAL_RSNA_TEST.read_bytes().split(b"\n")[0].endswith(b" 1 ")  # the format really has the trailing space


def test_rsna_list_errors(tmp_path):
    lines = _need(REAL_RSNA_TEST).read_text().split("\n")
    bad = tmp_path / "test_list.txt"
    lines_bad = list(lines)
    lines_bad[4] = lines_bad[4].replace(" 0 ", " 2 ").replace(" 1 ", " 2 ")
    bad.write_text("\n".join(lines_bad))
    with pytest.raises(B.BenchmarkError, match=r"test_list\.txt: 1 bad line\(s\): line 5"):
        B.read_rsna_list(bad)
    flipped = [ln.replace(" 1 ", " 0 ") if i < 10 else ln for i, ln in enumerate(lines)]
    bad.write_text("\n".join(flipped))
    with pytest.raises(B.BenchmarkError, match="must be the MRM mrm_3000 list"):
        B.read_rsna_list(bad)
    small = tmp_path / "small.txt"
    small.write_text("a/x.dcm 1\na/y.dcm 0\n")  # no trailing space, custom size: accepted
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        df = B.read_rsna_list(small, image_root="/rsna")
    assert df["path"].tolist() == ["/rsna/a/x.dcm", "/rsna/a/y.dcm"]
    assert df.attrs["benchmark"]["rsna_split"] == "custom"
    small.write_text("a/x.dcm 1 \na/x.dcm 0 \n")
    with pytest.raises(B.BenchmarkError, match="duplicated image paths at lines"):
        B.read_rsna_list(small)


# ------------------------------------------------------------------------------------ multi-label lists
def test_generic_labelled_list(tmp_path):
    f = tmp_path / "labels.csv"
    f.write_text("path,Edema,Pleural Effusion\na.jpg,1,0\nb.jpg,,1\nc.jpg,0,\n")
    df = B.read_labelled_list(f, image_root=tmp_path / "img")
    assert df["path"].tolist() == [str(tmp_path / "img" / n) for n in ("a.jpg", "b.jpg", "c.jpg")]
    assert df["Edema"].tolist()[0] == 1.0 and np.isnan(df["Edema"].iloc[1]) and df["Edema"].iloc[2] == 0.0
    info = df.attrs["benchmark"]
    assert info["findings"] == ["Edema", "Pleural Effusion"] and info["format"] == "generic" and info["n"] == 3
    assert B.read_labelled_list(f, findings=["Pleural Effusion"]).columns.tolist()[-1] == "Pleural Effusion"
    with pytest.raises(B.BenchmarkError, match="not in the generic list"):
        B.read_labelled_list(f, findings=["Fracture"])
    f.write_text("path,Edema\na.jpg,1\nb.jpg,-1\nc.jpg,yes\n")
    with pytest.raises(B.BenchmarkError, match=r"labels.csv: 2 bad row\(s\): row 1: .*-1.*row 2: .*yes"):
        B.read_labelled_list(f)
    with pytest.warns(UserWarning, match="excluding 2"):
        df = B.read_labelled_list(f, strict=False)
    assert df["rel_path"].tolist() == ["a.jpg"] and len(df.attrs["benchmark"]["excluded_rows"]) == 2
    f.write_text("path,Edema\na.jpg,1\na.jpg,0\n")
    with pytest.raises(B.BenchmarkError, match="duplicated image paths"):
        B.read_labelled_list(f)
    with pytest.raises(B.BenchmarkError, match="not found"):
        B.read_labelled_list(tmp_path / "absent.csv")


def test_chestxray14_data_entry_split_and_layout(tmp_path):
    f = tmp_path / "Data_Entry_2017.csv"
    f.write_text("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
                 "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],\n"
                 "00000001_000.png,Cardiomegaly|Effusion,0,1,58,M,PA,2682,2749,0.143,0.143,\n"
                 "00000002_000.png,No Finding,0,2,81,M,PA,2500,2048,0.171,0.171,\n"
                 "00000003_000.png,Hernia,0,3,74,F,PA,2500,2048,0.168,0.168,\n")
    (tmp_path / "test_list.txt").write_text("00000001_000.png\n00000003_000.png\n")
    (tmp_path / "images_002" / "images").mkdir(parents=True)
    (tmp_path / "images_002" / "images" / "00000003_000.png").write_bytes(b"")
    df = B.read_labelled_list(f, "chestxray14", image_root=tmp_path, split_list=tmp_path / "test_list.txt")
    assert df["rel_path"].tolist() == ["00000001_000.png", "00000003_000.png"]
    assert df["path"].iloc[1] == str(tmp_path / "images_002" / "images" / "00000003_000.png")
    assert list(df.columns[3:]) == list(B.CHESTXRAY14_FINDINGS)
    assert df.loc[0, ["Cardiomegaly", "Effusion", "Hernia"]].tolist() == [1.0, 1.0, 0.0]
    assert df.loc[1, "Hernia"] == 1.0 and df[list(B.CHESTXRAY14_FINDINGS)].notna().all().all()
    assert df.attrs["benchmark"]["split_list"]["n_lines"] == 2
    (tmp_path / "test_list.txt").write_text("00000009_000.png\n")
    with pytest.raises(B.BenchmarkError, match=r"test_list.txt: 1 image\(s\) not in Data_Entry_2017.csv"):
        B.read_labelled_list(f, "chestxray14", split_list=tmp_path / "test_list.txt")
    f.write_text("Image Index,Finding Labels\n00000001_000.png,Cardiomegaly|Flu\n")
    with pytest.raises(B.BenchmarkError, match="Cardiomegaly\\|Flu"):
        B.read_labelled_list(f, "chestxray14")


def test_chexpert_test_labels_uncertain_policies(tmp_path):
    cols = ["Path", "Sex", *B.CHEXPERT_LABELS_14]
    rows = [["test/patient1/study1/view1_frontal.jpg", "Male", *([0] * 14)],
            ["test/patient2/study1/view1_frontal.jpg", "Female", *([""] * 14)]]
    rows[0][cols.index("Edema")] = -1
    rows[1][cols.index("Edema")] = 1
    f = tmp_path / "test_labels.csv"
    pd.DataFrame(rows, columns=cols).to_csv(f, index=False)
    ign = B.read_labelled_list(f, "chexpert_test", findings=["Edema", "Cardiomegaly"])
    assert np.isnan(ign["Edema"].iloc[0]) and ign["Edema"].iloc[1] == 1.0 and np.isnan(ign["Cardiomegaly"].iloc[1])
    assert ign.attrs["benchmark"]["n_uncertain"] == {"Edema": 1, "Cardiomegaly": 0}
    assert B.read_labelled_list(f, "chexpert_test", uncertain="positive")["Edema"].iloc[0] == 1.0
    assert B.read_labelled_list(f, "chexpert_test", uncertain="negative")["Edema"].iloc[0] == 0.0
    with pytest.raises(B.BenchmarkError, match="uncertain-label policy"):
        B.read_labelled_list(f, "chexpert_test", uncertain="maybe")
    pd.DataFrame(rows, columns=cols).assign(Extra=1).to_csv(f, index=False)
    with pytest.raises(B.BenchmarkError, match=r"unexpected column\(s\) \['Extra'\]"):
        B.read_labelled_list(f, "chexpert_test")


def test_real_label_files_through_the_labelled_readers(tmp_path):
    """The real 5x200 labels as a CheXpert labels CSV, and the real RSNA test list as a generic list."""
    real = pd.read_csv(_need(REAL_5X200))
    f = tmp_path / "labels.csv"
    real[["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *B.CHEXPERT_LABELS_14]].to_csv(f, index=False)
    df = B.read_labelled_list(f, "chexpert_test", findings=list(P.CHEXPERT5_CLASSES))
    assert len(df) == 1000 and {c: int(df[c].sum()) for c in P.CHEXPERT5_CLASSES} == dict.fromkeys(
        P.CHEXPERT5_CLASSES, 200)
    rsna = B.read_rsna_list(_need(REAL_RSNA_TEST))
    g = tmp_path / "rsna.csv"
    rsna[["rel_path", "label"]].rename(columns={"rel_path": "path", "label": "Pneumonia"}).to_csv(g, index=False)
    df = B.read_labelled_list(g)
    assert len(df) == 3000 and int(df["Pneumonia"].sum()) == 1094


def test_multilabel_prompts_defaults_and_overrides():
    p = P.multilabel_prompts(["Effusion", "Pleural_Thickening", "Mass", "No Finding"])
    assert p["Effusion"] == ("There is pleural effusion", "There is no pleural effusion")
    assert p["Pleural_Thickening"] == ("There is pleural thickening", "There is no pleural thickening")
    assert p["Mass"] == ("There is a mass", "There is no mass")
    assert p["No Finding"][0] != p["No Finding"][1]
    assert P.multilabel_prompts(["Edema"], {"Edema": ["edema", "no edema"]})["Edema"] == ("edema", "no edema")
    assert P.multilabel_prompts(["Edema"], template=("{finding}", "no {finding}"))["Edema"] == ("edema", "no edema")
    with pytest.raises(ValueError, match="not evaluated"):
        P.multilabel_prompts(["Edema"], {"Hernia": ["a", "b"]})
