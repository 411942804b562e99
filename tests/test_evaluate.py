"""The evaluate stage: real 5x200 text side, the CLI on a trained checkpoint, skipped benchmarks, embed/zeroshot."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import (
    build_synthetic,
    shared_data,
)
from PIL import Image

from alta import io
from alta.evaluate import benchmarks as B
from alta.evaluate import prompts as P
from alta.evaluate.embedding import Embedder
from alta.models.build import build_alta
from alta.train.tokenizer import load_tokenizer, special_ids, train_tokenizer


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 3-step ALTA checkpoint and a 3-step MRM checkpoint from the real CLIs, on synthetic pairs."""
    from alta.train import align, mrm

    root = tmp_path_factory.mktemp("eval")
    pairs, images, extract = build_synthetic(root)
    train_tokenizer(io.read_parquet(pairs)["text"].tolist(), root / "tok", vocab_size=300)
    small = {"preset": "tiny", "batch_size": 4, "num_workers": 0, "log_every": 2, "warmup_epochs": 1, "schedule_epochs": 4,
             "max_epochs": 2, "blr": 1e-2, "max_steps": 3}
    common = ["--pairs", str(pairs), "--images", str(images), "--extract-dir", str(extract),
              "--tokenizer", str(root / "tok")]
    assert mrm.main([*common, "--out", str(root / "mrm"), "--config-json", json.dumps(small)]) == 0
    assert align.main([*common, "--out", str(root / "align"), "--mrm-weights", str(root / "mrm" / "checkpoint.pt"),
                       "--config-json", json.dumps({**small, "val_max_rows": 4})]) == 0
    return root, pairs, images, extract


def test_real_5x200_text_side(tmp_path):
    """Impressions and class prompts of the real file go through cleaning, tokenisation and the text tower."""
    df = B.read_chexpert_5x200(shared_data("benchmarks", "chexpert_5x200.csv"))
    assert df["label"].tolist() == [i // 200 for i in range(1000)]  # derived from columns, checked against blocks
    prompts = P.chexpert5_prompts(cleaned=True)
    corpus = df["text_clean"].tolist() + [p for ps in prompts.values() for p in ps]
    train_tokenizer(corpus, tmp_path / "tok", vocab_size=800)
    tok = load_tokenizer(tmp_path / "tok")
    torch.manual_seed(0)
    emb = Embedder(build_alta("tiny", tokenizer=tok, vocab_size=len(tok), special_ids=special_ids(tok)), tok)
    txt = emb.texts(df["text_clean"].tolist(), P.TEXT_PROTOCOLS["chexpert5x200_i2t"])
    rec = emb.last_text_record
    assert txt.shape == (1000, 32) and np.allclose(np.linalg.norm(txt, axis=1), 1, atol=1e-5)
    assert rec["n_texts"] == 1000 and rec["clean"] == "gloria" and rec["max_length"] == 256
    # the longest cleaned impression has 92 words: with a corpus tokenizer nothing needs truncation at 256
    assert rec["n_over_length"] == 0
    proj = {c: emb.texts(p, P.TEXT_PROTOCOLS["chexpert5x200_zeroshot"], normalize=False) for c, p in prompts.items()}
    assert {c: len(v) for c, v in proj.items()} == P.EXPECTED_PROMPT_COUNTS
    img = txt[:7]  # any unit vectors stand in for image embeddings here
    scores = P.class_scores(img, proj, aggregation="mean_embedding")
    assert scores.shape == (7, 5) and np.all(np.abs(scores) <= 1 + 1e-5)


def test_evaluate_cli_scores_models_and_reports_skips(trained, tmp_path):
    from alta.evaluate import run

    root, pairs, images, extract = trained
    out = tmp_path / "evaluate"
    cfg = {"heldout_split": "validate", "chexpert_5x200": str(tmp_path / "absent.csv"),
           "chexpert_root": str(tmp_path), "batch_size": 8}
    rc = run.main(["--model", f"mrm={root / 'mrm' / 'checkpoint.pt'}",
                   "--model", f"align={root / 'align' / 'checkpoint.pt'}", "--pairs", str(pairs), "--images",
                   str(images), "--extract-dir", str(extract), "--tokenizer", str(root / "align" / "tokenizer"),
                   "--out", str(out), "--config-json", json.dumps(cfg)])
    assert rc == 0
    for model in ("mrm", "align"):
        res = json.loads((out / "metrics" / model / "heldout.json").read_text())
        n = res["pool_size"]
        assert 0 <= res[f"i2t_R@1_of_{n}"] <= res[f"i2t_R@5_of_{n}"] <= 1 and n == res["n_studies"] > 0
        assert "i2t_R@1" not in res  # R@K is only quoted with its pool size
        assert res["model"]["kind"] == model and res["protocol"]["ties"] == "pessimistic"
    table = pd.read_csv(out / "comparison.csv")
    assert table["model"].tolist() == ["mrm", "align"] and f"heldout.i2t_R@5_of_{n}" in table.columns
    report = (out / "report.md").read_text()
    assert "files not found" in report and "config keys not set" in report  # 5x200 and RSNA skipped, with reasons
    assert (out / "plots" / "retrieval_examples_align.png").stat().st_size > 0


def test_small_scale_options_reach_the_inference_models(trained, tmp_path):
    """An align run with the demo's small-scale options trains loss_global_cf, its checkpoint embeds with the same
    pooling, and the MRM baseline built with --mrm-options embeds the same features as the aligned model."""
    from alta.evaluate.embedding import Embedder
    from alta.train import align

    root, pairs, images, extract = trained
    opts = {"inference_view_loss": True, "image_pooling": "patch_mean", "text_pooling": "token_mean"}
    cfg = {"preset": "tiny", "batch_size": 4, "num_workers": 0, "log_every": 1, "warmup_epochs": 1, "schedule_epochs": 4,
           "max_epochs": 2, "blr": 1e-2, "max_steps": 2, "val_max_rows": 4, "model_options": opts}
    out = tmp_path / "align"
    assert align.main(["--pairs", str(pairs), "--images", str(images), "--extract-dir", str(extract),
                       "--tokenizer", str(root / "tok"), "--mrm-weights", str(root / "mrm" / "checkpoint.pt"),
                       "--out", str(out), "--config-json", json.dumps(cfg)]) == 0
    logged = [json.loads(line) for line in (out / "tracking.jsonl").read_text().splitlines()]
    assert any("loss_global_cf" in r["payload"].get("values", {}) for r in logged if r["kind"] == "metrics")
    tok = str(out / "tokenizer")
    aligned = Embedder.from_checkpoint("align", str(out / "checkpoint.pt"), tok)
    assert (aligned.model.options.image_pooling, aligned.model.options.text_pooling) == ("patch_mean", "token_mean")
    mrm_ck = str(root / "mrm" / "checkpoint.pt")
    plain = Embedder.from_checkpoint("mrm", mrm_ck, tok)
    pooled = Embedder.from_checkpoint("mrm", mrm_ck, tok, mrm_options=opts)
    assert plain.model.options.image_pooling == "cls" and pooled.model.options.image_pooling == "patch_mean"
    grey = [np.random.default_rng(i).integers(0, 255, (80, 80), dtype=np.uint8) for i in range(3)]
    assert not np.allclose(plain.images(grey), pooled.images(grey), atol=1e-4)
    with pytest.raises(ValueError, match="image_pooling"):
        Embedder.from_checkpoint("mrm", mrm_ck, tok, mrm_options={"image_pooling": "max"})


def test_embed_and_zeroshot_cli(trained, tmp_path, capsys):
    from alta.evaluate import embed

    root = trained[0]
    rng = np.random.default_rng(0)
    files = []
    for i in range(3):
        p = tmp_path / f"x{i}.png"
        Image.fromarray(rng.integers(0, 255, (90, 80), dtype=np.uint8)).save(p)
        files.append(str(p))
    ck, tok = str(root / "align" / "checkpoint.pt"), str(root / "align" / "tokenizer")
    out = tmp_path / "emb.parquet"
    assert embed.main(["embed", "--checkpoint", ck, "--tokenizer", tok, "--images", *files,
                       "--texts", "no acute findings.", "--out", str(out)]) == 0
    df = io.read_parquet(out)
    assert df["kind"].tolist() == ["image"] * 3 + ["text"]
    assert np.allclose([np.linalg.norm(e) for e in df["embedding"]], 1, atol=1e-5)
    assert embed.main(["zeroshot", "--checkpoint", ck, "--tokenizer", tok, "--images", *files,
                       "--class", "effusion=pleural effusion|small effusion", "--class", "normal=no acute findings",
                       "--out", str(tmp_path / "z.csv")]) == 0
    z = pd.read_csv(tmp_path / "z.csv")
    assert np.allclose(z["p:effusion"] + z["p:normal"], 1)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        embed.main(["embed", "--checkpoint", ck, "--tokenizer", tok, "--images", str(tmp_path / "missing.png"),
                    "--out", str(out)])


def test_seeds_spread_and_multilabel_auroc_through_the_cli(trained, tmp_path, monkeypatch, mlflow_uri):
    """Two align seeds are scored one by one and as mean ± sd (JSON, report, comparison, MLflow); the multi-label
    protocol reads a generic list with blanks and reports a one-class finding as undefined."""
    from alta import tracking
    from alta.evaluate import run
    from alta.train import align

    root, pairs, images, extract = trained
    small = {"preset": "tiny", "batch_size": 4, "num_workers": 0, "log_every": 2, "warmup_epochs": 1,
             "schedule_epochs": 4, "max_epochs": 2, "blr": 1e-2, "max_steps": 3, "val_max_rows": 4}  # as `trained`
    common = ["--pairs", str(pairs), "--images", str(images), "--extract-dir", str(extract),
              "--tokenizer", str(root / "tok")]
    assert align.main([*common, "--out", str(tmp_path / "align1"), "--mrm-weights",
                       str(root / "mrm" / "checkpoint.pt"), "--seed", "1", "--config-json", json.dumps(small)]) == 0
    records = [json.loads(line) for line in (tmp_path / "align1" / "tracking.jsonl").read_text().splitlines()]
    assert [r["payload"]["seed"] for r in records if r["kind"] == "params" and "seed" in r["payload"]] == [1]
    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir()
    rows = []
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8)).save(tmp_path / "img" / f"{i}.jpg")
        ptx = "" if i < 4 else int(i % 3 == 0)  # blank: not labelled for pneumothorax
        rows.append({"path": f"{i}.jpg", "Edema": i % 2, "Fracture": 0, "Pneumothorax": ptx})
    pd.DataFrame(rows).to_csv(tmp_path / "labels.csv", index=False)
    cfg = {"heldout_split": "validate", "batch_size": 8, "multilabel_list": str(tmp_path / "labels.csv"),
           "multilabel_root": str(tmp_path / "img")}
    monkeypatch.chdir(tmp_path)  # the sqlite store's default artifact root
    ctx = tmp_path / "context.json"
    tracking.start_parent(ctx, mlflow_uri, f"seeds-{tmp_path.name}", "seeds test", params={})
    monkeypatch.setenv(tracking.CONTEXT_ENV, str(ctx))
    out = tmp_path / "evaluate"
    rc = run.main(["--model", f"mrm={root / 'mrm' / 'checkpoint.pt'}",
                   "--model", f"align@0={root / 'align' / 'checkpoint.pt'}",
                   "--model", f"align@1={tmp_path / 'align1' / 'checkpoint.pt'}", "--pairs", str(pairs), "--images",
                   str(images), "--extract-dir", str(extract), "--tokenizer", str(root / "align" / "tokenizer"),
                   "--out", str(out), "--config-json", json.dumps(cfg)])
    tracking.end_parent(ctx, "FINISHED")
    assert rc == 0
    ml = json.loads((out / "metrics" / "align_seed0" / "multilabel.json").read_text())
    assert ml["auroc/Fracture"] is None and "0 positive" in ml["auroc_undefined"]["Fracture"]
    assert ml["counts"]["Pneumothorax"] == {"pos": 2, "neg": 6, "unlabelled": 4} and ml["n_findings_defined"] == 2
    assert ml["auroc_macro"] == pytest.approx((ml["auroc/Edema"] + ml["auroc/Pneumothorax"]) / 2)
    assert ml["protocol"]["prompts"]["Edema"] == ["There is edema", "There is no edema"]
    per = [json.loads((out / "metrics" / f"align_seed{s}" / "heldout.json").read_text()) for s in (0, 1)]
    assert per[0]["model"]["seed"] == 0 and per[1]["model"]["seed"] == 1
    key = f"i2t_MedR_of_{per[0]['pool_size']}"
    spread = json.loads((out / "spread.json").read_text())["align"]
    assert spread["seeds"] == [0, 1] and spread["labels"] == {"0": "align_seed0", "1": "align_seed1"}
    st = spread["benchmarks"]["heldout"][key]
    a, b = per[0][key], per[1][key]
    assert st["per_seed"] == {"0": a, "1": b} and st["mean"] == pytest.approx((a + b) / 2)
    assert st["sd"] == pytest.approx(abs(a - b) / np.sqrt(2))
    table = pd.read_csv(out / "comparison.csv")
    assert table["model"].tolist() == ["mrm", "align_seed0", "align_seed1", "align (mean)", "align (sd)"]
    assert table.loc[3, "multilabel.auroc_macro"] == pytest.approx(
        spread["benchmarks"]["multilabel"]["auroc_macro"]["mean"])
    report = (out / "report.md").read_text()
    assert "**align** mean ± sd (2 seeds)" in report and "| Fracture | 0 / 12 | undefined |" in report
    client = tracking._client(mlflow_uri)
    exp = client.get_experiment_by_name(f"seeds-{tmp_path.name}")
    runs = client.search_runs([exp.experiment_id], max_results=50)
    seeded = [r for r in runs if r.data.tags.get("alta.seed")]
    assert sorted(r.data.tags["alta.model"] for r in seeded) == ["align_seed0", "align_seed1"]
    (summary,) = [r for r in runs if r.data.tags.get("alta.seeds") == "0,1"]
    m = summary.data.metrics
    name = f"heldout.{key}"
    assert m[f"{name}.mean"] == pytest.approx(st["mean"]) and m[f"{name}.sd"] == pytest.approx(st["sd"])
    assert m[f"{name}.seed0"] == pytest.approx(a) and m[f"{name}.seed1"] == pytest.approx(b)


def test_file_embeddings_are_computed_once_per_path(tmp_path):
    """Benchmarks sharing images (the demo's multi-label list and the ConVIRT candidates) embed each file once, and
    the cached rows are the embeddings a fresh pass computes."""
    corpus = ["there is no pneumothorax", "heart size is normal", "small left pleural effusion"]
    train_tokenizer(corpus, tmp_path / "tok", vocab_size=100)
    tok = load_tokenizer(tmp_path / "tok")
    torch.manual_seed(0)
    model = build_alta("tiny", tokenizer=tok, vocab_size=len(tok), special_ids=special_ids(tok))
    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        paths.append(str(tmp_path / f"{i}.jpg"))
        Image.fromarray(rng.integers(0, 256, (48, 40), dtype=np.uint8)).save(paths[-1])
    emb = Embedder(model, tok)
    first = emb.images_from_files(paths[:2])
    fresh = Embedder(model, tok).images_from_files(paths)
    Path(paths[1]).unlink()  # a second read of this file would now fail
    again = emb.images_from_files([paths[2], paths[1], paths[0], paths[1]])
    assert np.array_equal(again[[2, 1]], first) and np.array_equal(again[3], first[1])
    assert np.allclose(again[0], fresh[2], atol=1e-6) and np.allclose(first, fresh[:2], atol=1e-6)
    with pytest.raises(ValueError, match="unreadable benchmark image"):
        Embedder(model, tok).images_from_files([paths[1]])
