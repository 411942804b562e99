"""Tests for the text_pretrain stage (alta.train.text_pretrain): the CXR-BERT stand-in used when no text_dir is given."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from alta.train import text_pretrain as tp
from alta.train.tokenizer import split_sentences


def _run(s, out, **cfg):
    return tp.main(["--pairs", str(s.pairs), "--tokenizer", str(s.tok), "--out", str(out), "--config-json",
                    json.dumps({"preset": "tiny", "batch_size": 8, "log_every": 1, "warmup_epochs": 1, **cfg})])


def test_sentence_views_are_deterministic_subsets():
    text = "Heart is enlarged. Small left pleural effusion. No pneumothorax. Lungs are clear."
    ds = tp.TextDataset([text, "One sentence only."], seed=3, min_fraction=0.5)
    sents = set(split_sentences(text))
    i = ds.texts.index(text)
    for epoch in range(5):
        item = ds[(i, epoch)]
        assert item == ds[(i, epoch)]  # same (seed, epoch, index) -> same views, so a resumed run sees the same data
        for v in (item["view_a"], item["view_b"]):
            got = split_sentences(v)
            assert set(got) <= sents and len(got) >= 2 and len(got) == len(set(got))
    assert len({ds[(i, e)]["view_a"] for e in range(10)}) > 1
    assert ds[(ds.texts.index("One sentence only."), 0)]["view_a"] == "One sentence only."


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_length_groups_change_the_batching_not_the_losses_or_gradients(padding_side):
    """The encoder split into passes over rows of similar length (less padding) computes what one padded pass does."""
    from alta.models.presets import PRESETS

    torch.manual_seed(0)
    model = tp.TextPretrainModel(PRESETS["tiny"], vocab_size=50, pad_token_id=0, dropout=0.0, init_std=0.3)
    gen = torch.Generator().manual_seed(1)

    def views(n, T):
        lengths = torch.randint(2, T + 1, (n,), generator=gen)
        mask = (torch.arange(T)[None] < lengths[:, None]).long()
        if padding_side == "left":
            mask = mask.flip(1)
        return torch.randint(5, 50, (n, T), generator=gen) * mask, mask

    a, b = views(6, 17), views(6, 23)
    masked = b[0].clone()
    labels = torch.full_like(masked, -100)
    sel = (b[1] == 1) & (torch.rand(masked.shape, generator=gen) < 0.3)
    sel[0, b[1][0].nonzero()[0]] = True  # at least one MLM target
    labels[sel], masked[sel] = masked[sel], 4
    results = []
    for groups in (1, 3, 12):
        model.zero_grad()
        out = model(a, b, masked, labels, length_groups=groups)
        (out["loss_contrastive"] + out["loss_mlm"]).backward()
        results.append((out["loss_contrastive"].item(), out["loss_mlm"].item(),
                        [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    for loss_c, loss_m, grads in results[1:]:
        assert loss_c == pytest.approx(results[0][0], rel=1e-5) and loss_m == pytest.approx(results[0][1], rel=1e-5)
        assert len(grads) == len(results[0][2])
        for g, g0 in zip(grads, results[0][2]):
            torch.testing.assert_close(g, g0, rtol=1e-3, atol=1e-5)


@pytest.mark.slow
def test_text_pretrain_learns_and_exports_a_directory_align_loads(synth, tmp_path):
    from safetensors.torch import load_file

    from alta.models.build import build_alta
    from alta.models.presets import PRESETS
    from alta.train import align
    from alta.train.tokenizer import load_tokenizer, special_ids

    out = tmp_path / "tp"
    assert _run(synth, out, max_steps=30, blr=0.02, schedule_epochs=20, max_epochs=20) == 0
    hist = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False)["history"]
    first, last = hist[0], hist[-1]
    assert last["step"] == 30
    assert last["loss_mlm"] < first["loss_mlm"] and last["loss_contrastive"] < first["loss_contrastive"]

    model_dir = out / "model"
    cfg = json.loads((model_dir / "config.json").read_text())
    tiny = PRESETS["tiny"]
    assert cfg["projection_size"] == tiny.proj_dim and cfg["hidden_size"] == tiny.text_hidden
    assert cfg["hidden_dropout_prob"] == tiny.text_dropout  # exported with ALTA's dropout, not the pretraining one
    weights = load_file(str(model_dir / "model.safetensors"))
    assert any(k.startswith("bert.encoder.layer.") for k in weights)
    assert "cls.predictions.transform.dense.weight" in weights and "cls_projection_head.dense_to_hidden.weight" in weights

    tok = load_tokenizer(synth.tok)
    torch.manual_seed(0)
    m = build_alta("tiny", text_dir=str(model_dir), tokenizer=tok, vocab_size=len(tok), special_ids=special_ids(tok))
    emb = m.bert_encoder.bert.embeddings.word_embeddings.weight
    assert torch.equal(emb, weights["bert.embeddings.word_embeddings.weight"])
    assert torch.equal(m.bert_encoder.cls_projection_head.dense_to_output.weight,
                       weights["cls_projection_head.dense_to_output.weight"])
    # local head starts as a copy of the pretrained [CLS] head (docs/method.md §2.2), the backbone stays frozen
    assert torch.equal(m.bert_encoder.local_projection_head.dense_to_output.weight,
                       weights["cls_projection_head.dense_to_output.weight"])
    assert not emb.requires_grad

    rc = align.main(["--pairs", str(synth.pairs), "--images", str(synth.images), "--extract-dir", str(synth.extract),
                     "--tokenizer", str(synth.tok), "--text-dir", str(model_dir), "--out", str(tmp_path / "al"),
                     "--config-json", json.dumps({"preset": "tiny", "batch_size": 4, "num_workers": 0, "max_steps": 2,
                                                  "val_max_rows": 4})])
    assert rc == 0
    ck = torch.load(tmp_path / "al" / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert torch.equal(ck["model"]["bert_encoder.bert.embeddings.word_embeddings.weight"], emb)


def test_text_pretrain_rejects_an_empty_split(synth, tmp_path):
    with pytest.raises(ValueError, match="no report texts in split 'test'"):
        _run(synth, tmp_path / "e", split="test", max_steps=1)


def test_schema_sections_list_exactly_each_trainers_keys():
    """config.schema.yaml must accept every trainer key (`--print-defaults`) and nothing the trainer would reject."""
    import yaml

    from alta.train import align, mrm

    schema = yaml.safe_load((Path(__file__).resolve().parents[1] / "workflow/schemas/config.schema.yaml").read_text())
    from alta.recipes import WORKFLOW_KEYS

    for stage, defaults in (("mrm", mrm.DEFAULTS), ("align", align.DEFAULTS), ("text_pretrain", tp.DEFAULTS)):
        props = set(schema["properties"][stage]["properties"]) - WORKFLOW_KEYS
        # `recipe` is chosen once, at the top level of the config, and handed to each stage
        assert props == set(defaults) - {"recipe"}, (stage, sorted(props ^ (set(defaults) - {"recipe"})))


def test_a_rerun_on_changed_inputs_starts_afresh_instead_of_resuming(synth, tmp_path):
    """last.pt is reused only for the same settings and the same input contents: after the reports change at the
    same path, the rerun trains on the new ones (as a fresh run does), not from the weights of the old ones."""
    import shutil

    from alta import io

    pairs = tmp_path / "pairs.parquet"
    shutil.copyfile(synth.pairs, pairs)
    s = SimpleNamespace(pairs=pairs, tok=synth.tok)
    out, cfg = tmp_path / "tp", {"max_steps": 2, "schedule_epochs": 2, "max_epochs": 2}
    assert _run(s, out, **cfg) == 0
    first = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert _run(s, out, **cfg) == 0  # same inputs: resumes at the final step, the same weights
    again = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert all(torch.equal(first["model"][k], again["model"][k]) for k in first["model"])

    df = io.read_parquet(pairs)
    df["text"] = df["text"].str.replace("effusion", "opacity", regex=False) + " Heart size is normal."
    io.write_parquet(pairs, df)
    assert _run(s, out, **cfg) == 0
    changed = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False)
    fresh = tmp_path / "fresh"
    assert _run(s, fresh, **cfg) == 0
    expected = torch.load(fresh / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert all(torch.equal(changed["model"][k], expected["model"][k]) for k in expected["model"])
    assert any(not torch.equal(changed["model"][k], first["model"][k]) for k in first["model"])
