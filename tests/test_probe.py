"""Tests for `alta probe` (alta/evaluate/probe.py): frozen-feature diagnostics per checkpoint."""

from __future__ import annotations

import json

import pytest


def test_probe_measures_feature_diversity_and_linear_information(synth, tmp_path):
    """`alta probe`: identical features have cosine 1; a label the features encode gets a high CV AUROC, noise ~0.5;
    the command runs end to end on the random reference model."""
    import numpy as np
    import pandas as pd

    from alta import io
    from alta.evaluate import probe

    x = np.random.default_rng(0).normal(size=(60, 8))
    assert probe.mean_pairwise_cosine(np.ones((5, 4))) == pytest.approx(1.0)
    assert abs(probe.mean_pairwise_cosine(x)) < 0.1
    y = (x[:, 0] > 0).astype(int)
    assert probe.probe_auroc(x, y) > 0.95
    assert abs(probe.probe_auroc(x, np.random.default_rng(1).integers(0, 2, 60)) - 0.5) < 0.2
    assert probe.probe_auroc(x, np.r_[np.ones(3), np.zeros(57)].astype(int)) is None  # too few positives

    studies = io.read_parquet(synth.pairs)[["subject_id", "study_id"]].drop_duplicates()
    rng = np.random.default_rng(0)
    chex = studies.assign(**{label: rng.choice([1.0, 0.0, -1.0, np.nan], len(studies)) for label in probe.LABELS})
    chex["study_id"] = "s" + chex["study_id"].astype(str)  # the real table's ids carry no "s"; both are accepted
    pd.DataFrame(chex).to_csv(tmp_path / "chex.csv", index=False)
    out = tmp_path / "probe.json"
    rc = probe.main(["--model", "random=none", "--pairs", str(synth.pairs), "--images", str(synth.images),
                     "--extract-dir", str(synth.extract), "--tokenizer", str(synth.tok), "--chexpert",
                     str(tmp_path / "chex.csv"), "--out", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())["results"][0]
    assert res["model"] == "random" and res["n_studies"] > 0 and -1 <= res["img_cls_cos"] <= 1
    assert -1 <= res["img_mean_cos"] <= 1
    assert {f"probe_cardiomegaly_{f}" for f in ("img_cls", "img_mean", "text_cls", "text_mean")} <= set(res)
