"""Checkpoint compatibility (docs/method.md §5): official key layouts, MRM.pth -> ALTA, CXR-BERT directory, round trip."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from alta.models.build import build_alta, build_mrm
from alta.models.checkpoints import (
    ForeignObject,
    UntrustedCheckpoint,
    load_checkpoint,
    load_mae_encoder,
    read_checkpoint,
    save_checkpoint,
)
from alta.models.params import build_for_count
from alta.models.pos_embed import sincos_pos_embed_2d, which_construction

V = 120
SPECIAL = dict(pad=0, cls=2, sep=3, mask=4)


def tiny_alta(**kw):
    return build_alta("tiny", vocab_size=V, special_ids=SPECIAL, **kw)


def tiny_mrm():
    return build_mrm("tiny", vocab_size=V, pad_token_id=0, mask_token_id=3, cls_token_id=2)


def _block_keys(prefix: str, d: int, mlp: int) -> dict[str, tuple]:
    return {
        f"{prefix}.norm1.weight": (d,), f"{prefix}.norm1.bias": (d,), f"{prefix}.norm2.weight": (d,),
        f"{prefix}.norm2.bias": (d,), f"{prefix}.attn.qkv.weight": (3 * d, d), f"{prefix}.attn.qkv.bias": (3 * d,),
        f"{prefix}.attn.proj.weight": (d, d), f"{prefix}.attn.proj.bias": (d,),
        f"{prefix}.mlp.fc1.weight": (mlp, d), f"{prefix}.mlp.fc1.bias": (mlp,),
        f"{prefix}.mlp.fc2.weight": (d, mlp), f"{prefix}.mlp.fc2.bias": (d,),
    }


def _adapter_keys(prefix: str, d: int, a: int) -> dict[str, tuple]:
    out = {}
    for kind in ("attn_adapter", "mlp_adapter"):
        out.update({f"{prefix}.{kind}.D_fc1.weight": (a, d), f"{prefix}.{kind}.D_fc1.bias": (a,),
                    f"{prefix}.{kind}.D_fc2.weight": (d, a), f"{prefix}.{kind}.D_fc2.bias": (d,)})
    return out


def _head_keys(prefix: str, d: int, p: int) -> dict[str, tuple]:
    return {f"{prefix}.dense_to_hidden.weight": (p, d), f"{prefix}.dense_to_hidden.bias": (p,),
            f"{prefix}.LayerNorm.weight": (p,), f"{prefix}.LayerNorm.bias": (p,),
            f"{prefix}.dense_to_output.weight": (p, p), f"{prefix}.dense_to_output.bias": (p,)}


def _bert_keys(prefix: str, vocab: int, h: int, layers: int, inter: int, pos: int) -> dict[str, tuple]:
    out = {f"{prefix}bert.embeddings.word_embeddings.weight": (vocab, h),
           f"{prefix}bert.embeddings.position_embeddings.weight": (pos, h),
           f"{prefix}bert.embeddings.token_type_embeddings.weight": (2, h),
           f"{prefix}bert.embeddings.LayerNorm.weight": (h,), f"{prefix}bert.embeddings.LayerNorm.bias": (h,)}
    for i in range(layers):
        lp = f"{prefix}bert.encoder.layer.{i}"
        for n in ("query", "key", "value"):
            out.update({f"{lp}.attention.self.{n}.weight": (h, h), f"{lp}.attention.self.{n}.bias": (h,)})
        out.update({f"{lp}.attention.output.dense.weight": (h, h), f"{lp}.attention.output.dense.bias": (h,),
                    f"{lp}.attention.output.LayerNorm.weight": (h,), f"{lp}.attention.output.LayerNorm.bias": (h,),
                    f"{lp}.intermediate.dense.weight": (inter, h), f"{lp}.intermediate.dense.bias": (inter,),
                    f"{lp}.output.dense.weight": (h, inter), f"{lp}.output.dense.bias": (h,),
                    f"{lp}.output.LayerNorm.weight": (h,), f"{lp}.output.LayerNorm.bias": (h,)})
    out.update({f"{prefix}cls.predictions.bias": (vocab,), f"{prefix}cls.predictions.transform.dense.weight": (h, h),
                f"{prefix}cls.predictions.transform.dense.bias": (h,),
                f"{prefix}cls.predictions.transform.LayerNorm.weight": (h,),
                f"{prefix}cls.predictions.transform.LayerNorm.bias": (h,),
                f"{prefix}cls.predictions.decoder.weight": (vocab, h), f"{prefix}cls.predictions.decoder.bias": (vocab,)})
    return out


def _image_keys(c) -> dict[str, tuple]:
    d, n, dd = c.embed_dim, c.num_patches, c.decoder_embed_dim
    out = {"patch_embed.proj.weight": (d, 3, c.patch_size, c.patch_size), "patch_embed.proj.bias": (d,),
           "cls_token": (1, 1, d), "pos_embed": (1, n + 1, d), "norm.weight": (d,), "norm.bias": (d,),
           "decoder_embed.weight": (dd, d), "decoder_embed.bias": (dd,), "mask_token": (1, 1, dd),
           "decoder_pos_embed": (1, n + 1, dd), "decoder_norm.weight": (dd,), "decoder_norm.bias": (dd,),
           "decoder_pred.weight": (c.target_patch**2 * 3, dd), "decoder_pred.bias": (c.target_patch**2 * 3,)}
    for i in range(c.depth):
        out.update(_block_keys(f"blocks.{i}", d, int(d * c.mlp_ratio)))
    for i in range(c.decoder_depth):
        out.update(_block_keys(f"decoder_blocks.{i}", dd, int(dd * c.mlp_ratio)))
    return out


def expected_alta_keys(c, vocab: int) -> dict[str, tuple]:
    """docs/method.md §5.2 at the geometry of config ``c``."""
    d, n, p = c.embed_dim, c.num_patches, c.proj_dim
    out = _image_keys(c)
    out.update({"missing_token": (1, n, d), "temporal_embedding": (1, 2, d), "view_embedding": (1, 2, d),
                "bert_embed.weight": (c.text_hidden, d), "bert_embed.bias": (c.text_hidden,),
                "logit_scale": (), "logit_scale_local1": (), "logit_scale_local2": (), "logit_scale_local3": ()})
    for i in range(c.depth):
        out.update(_adapter_keys(f"blocks.{i}", d, c.adapter_dim))
    out.update(_head_keys("projection_head", d, p))
    out.update(_head_keys("local_projection_head", d, p))
    h = c.text_hidden
    out.update(_bert_keys("bert_encoder.", vocab, h, c.text_layers, c.text_intermediate, c.text_max_positions))
    for i in range(c.text_layers):
        out.update(_adapter_keys(f"bert_encoder.bert.encoder.layer.{i}", h, c.text_adapter_dim))
    out.update(_head_keys("bert_encoder.cls_projection_head", h, p))
    out.update(_head_keys("bert_encoder.local_projection_head", h, p))
    return out


def expected_mrm_keys(c, vocab: int) -> dict[str, tuple]:
    """docs/method.md §5.3 at the geometry of config ``c``."""
    out = _image_keys(c)
    out.update({"bert_mlp.weight": (c.report_hidden, c.embed_dim), "bert_mlp.bias": (c.report_hidden,)})
    h = c.report_hidden
    out.update(_bert_keys("bert_encoder.model.", vocab, h, c.report_layers, c.report_intermediate,
                          c.report_max_positions))
    out.update({"bert_encoder.model.bert.pooler.dense.weight": (h, h), "bert_encoder.model.bert.pooler.dense.bias": (h,)})
    return out


def _shapes(model) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_key_layouts_match_spec_vit_base_and_tiny():
    a = build_for_count("alta", "vit_base", "recommended")
    assert _shapes(a) == expected_alta_keys(a.cfg, 30522)
    m = build_for_count("mrm", "vit_base")
    assert _shapes(m) == expected_mrm_keys(m.cfg, 30000)
    t = tiny_alta()
    assert _shapes(t) == expected_alta_keys(t.cfg, V)
    r = tiny_mrm()
    assert _shapes(r) == expected_mrm_keys(r.cfg, V)
    # the MRM output matrix is a separate tensor; the ALTA one is tied to the word embeddings
    assert r.bert_encoder.model.cls.predictions.decoder.weight is not r.bert_encoder.model.bert.embeddings.word_embeddings.weight
    assert t.bert_encoder.cls.predictions.decoder.weight is t.bert_encoder.bert.embeddings.word_embeddings.weight


def _official_alta_dict(c, seed=0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {k: torch.randn(s, generator=g) for k, s in expected_alta_keys(c, V).items()}
    sd["bert_encoder.cls.predictions.decoder.weight"] = sd["bert_encoder.bert.embeddings.word_embeddings.weight"]
    sd["bert_encoder.cls.predictions.decoder.bias"] = sd["bert_encoder.cls.predictions.bias"]
    sd["missing_token"] = sd["missing_token"].half()
    sd["bert_encoder.bert.embeddings.position_ids"] = torch.arange(c.text_max_positions)[None]
    return sd


def test_official_alta_loads_strictly():
    model = tiny_alta()
    sd = _official_alta_dict(model.cfg)
    load_checkpoint({"model": sd, "epoch": 29, "name": "ALTA"}, model)
    own = model.state_dict()
    for k in ("blocks.2.attn_adapter.D_fc2.weight", "bert_encoder.bert.encoder.layer.1.mlp_adapter.D_fc1.bias",
              "logit_scale_local2", "decoder_pred.weight"):
        assert torch.equal(own[k], sd[k]), k
    assert model.missing_token.dtype == torch.float32 and torch.equal(own["missing_token"], sd["missing_token"].float())
    load_checkpoint(sd, tiny_alta())  # a bare state dict is accepted too
    bad = dict(sd)
    del bad["decoder_blocks.0.mlp.fc1.bias"]
    with pytest.raises(ValueError, match="missing"):
        load_checkpoint(bad, tiny_alta())
    bad = dict(sd)
    bad["bert_encoder.cls.predictions.decoder.weight"] = bad["bert_encoder.cls.predictions.decoder.weight"] + 1
    with pytest.raises(ValueError, match="tied"):
        load_checkpoint(bad, tiny_alta())


def test_official_mrm_loads_into_mrm_and_alta():
    mrm = tiny_mrm()
    sd = {k: v.clone() for k, v in mrm.state_dict().items()}
    sd["bert_encoder.model.bert.embeddings.position_ids"] = torch.arange(100)[None]
    load_checkpoint({"model": sd}, tiny_mrm())

    alta = tiny_alta()
    report = alta.load_mrm_encoder({"model": sd})
    shared = set(alta.mrm_state_dict())
    assert set(report["loaded"]) == shared
    # position_ids is a version-dependent buffer: ignored, not reported
    assert set(report["unexpected"]) == {k for k in sd if k.startswith(("bert_mlp.", "bert_encoder.model."))
                                         and not k.endswith("position_ids")}
    expected_missing = {k for k in alta.state_dict() if k not in shared}
    assert set(report["missing"]) == expected_missing
    assert all(k.startswith(("blocks.", "temporal_embedding", "view_embedding", "missing_token", "bert_embed.",
                             "projection_head.", "local_projection_head.", "logit_scale", "bert_encoder."))
               for k in expected_missing)
    for k in ("blocks.1.attn.qkv.weight", "decoder_blocks.0.mlp.fc2.weight", "mask_token", "cls_token"):
        assert torch.equal(alta.state_dict()[k], sd[k]), k

    no_decoder = {k: v for k, v in sd.items() if k != "decoder_blocks.1.attn.proj.weight"}
    with pytest.raises(ValueError, match="decoder keys are missing"):
        tiny_alta().load_mrm_encoder(no_decoder)
    escape = tiny_alta(options={"train_full_decoder": True})
    escape.load_mrm_encoder(no_decoder)
    assert "decoder_blocks.1.attn.proj.weight" in escape.trainable_names()



def official_code_table(dim: int, grid: int) -> np.ndarray:
    """The 2-D sin-cos table as the official ALTA/MRM `util/pos_embed.py` computes it, written independently in
    NumPy: per axis, omega = arange(d/2) / d / 2 (the precedence slip), then [sin, cos]; column axis first, CLS 0."""
    def axis(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / d / 2.0)
        out = pos.reshape(-1)[:, None] * omega[None, :]
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    w, h = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64))
    emb = np.concatenate([axis(dim // 2, w), axis(dim // 2, h)], axis=1)
    return np.concatenate([np.zeros((1, dim)), emb], axis=0)


def _with_tables(sd, encoder: str, decoder: str):
    out = dict(sd)
    for key, construction in (("pos_embed", encoder), ("decoder_pos_embed", decoder)):
        dim, n = sd[key].shape[-1], sd[key].shape[1]
        grid = int(round((n - 1) ** 0.5))
        table = (official_code_table(dim, grid) if construction == "official"
                 else sincos_pos_embed_2d(dim, grid, construction="mae").numpy())
        out[key] = torch.from_numpy(table).float()[None]
    return out


def test_official_construction_matches_the_official_code_and_differs_from_mae():
    for dim, grid in ((64, 8), (768, 14)):
        ours = sincos_pos_embed_2d(dim, grid, construction="official").numpy()
        assert np.allclose(ours, official_code_table(dim, grid), atol=1e-6)
        assert not np.allclose(ours, sincos_pos_embed_2d(dim, grid, construction="mae").numpy(), atol=1e-3)


@pytest.mark.parametrize("encoder,decoder", [("official", "official"), ("mae", "official")])
def test_released_mrm_tables_load_into_alta_and_are_kept(encoder, decoder, caplog):
    sd = _with_tables(tiny_mrm().state_dict(), encoder, decoder)
    alta = tiny_alta()
    with caplog.at_level("INFO", logger="alta.models.checkpoints"):
        report = alta.load_mrm_encoder({"model": sd})
    assert report["pos_embed"] == {"pos_embed": encoder, "decoder_pos_embed": decoder}
    assert torch.equal(alta.pos_embed, sd["pos_embed"]) and torch.equal(alta.decoder_pos_embed, sd["decoder_pos_embed"])
    assert "official-code" in caplog.text and not any(r.levelname == "WARNING" for r in caplog.records
                                                      if r.name == "alta.models.checkpoints")


def test_a_table_of_neither_construction_is_a_warning_and_kept(caplog):
    sd = dict(tiny_mrm().state_dict())
    sd["pos_embed"] = torch.randn_like(sd["pos_embed"])
    alta = tiny_alta()
    with caplog.at_level("WARNING", logger="alta.models.checkpoints"):
        report = alta.load_mrm_encoder(sd)
    assert report["pos_embed"]["pos_embed"] == "neither"
    assert "pos_embed is neither the MAE nor the official" in caplog.text
    assert torch.equal(alta.pos_embed, sd["pos_embed"])


def test_faithful_mode_initialises_tables_with_the_official_construction():
    for mode, construction in (("faithful", "official"), ("recommended", "mae")):
        for model in (build_alta(preset="tiny", mode=mode, vocab_size=V, special_ids=SPECIAL),
                      build_mrm(preset="tiny", mode=mode, vocab_size=V, pad_token_id=0, mask_token_id=3,
                                cls_token_id=2)):
            assert which_construction(model.pos_embed) == construction, (mode, type(model).__name__)
            assert which_construction(model.decoder_pos_embed) == construction


def test_read_checkpoint_refuses_code_and_accepts_released_layouts(tmp_path):
    sd = tiny_mrm().state_dict()
    released = tmp_path / "MRM.pth"
    torch.save({"model": sd, "optimizer": None, "epoch": 199, "scaler": {"scale": 1024.0},
                "args": argparse.Namespace(batch_size=32, blr=1.5e-4, output_dir="/out", mask_ratio=0.75)}, released)
    obj = read_checkpoint(released)
    assert obj["args"].batch_size == 32 and torch.equal(obj["model"]["cls_token"], sd["cls_token"])

    evil = tmp_path / "evil.pth"
    torch.save({"model": sd, "hook": _RunsCode()}, evil)
    with pytest.raises(UntrustedCheckpoint, match=r"evil\.pth: refused to load.*_rebuild_runs_code.*--trust-checkpoint"):
        read_checkpoint(evil)
    trusted = read_checkpoint(evil, trust=True)  # the explicit opt-in: the object is kept as data, never rebuilt
    assert isinstance(trusted["hook"], ForeignObject) and type(trusted["hook"]).__name__ == "_rebuild_runs_code"
    assert not RAN and torch.equal(trusted["model"]["cls_token"], sd["cls_token"])
    system = tmp_path / "system.pth"
    torch.save({"model": sd, "hook": _CallsSystem()}, system)
    with pytest.raises(UntrustedCheckpoint, match=r"system\.pth: refused to load.*system"):
        read_checkpoint(system, trust=True)  # a module torch never loads from a file: refused even when trusted
    junk = tmp_path / "notes.pth"
    junk.write_text("not a checkpoint")
    with pytest.raises(ValueError, match=r"notes\.pth: not a PyTorch checkpoint"):
        read_checkpoint(junk)


RAN: list = []  # what the pickled objects below would have run


def _rebuild_runs_code():
    RAN.append("_rebuild_runs_code")
    return _RunsCode()


class _RunsCode:
    """A pickled object whose loading would call a function: stands for code hidden in a downloaded file."""

    def __reduce__(self):
        return (_rebuild_runs_code, ())


class _CallsSystem:
    """A pickled object whose loading would run a shell command."""

    def __reduce__(self):
        import os

        return (os.system, ("true",))


def test_build_alta_with_mrm_checkpoint_sets_trainable_after_loading():
    sd = tiny_mrm().state_dict()
    model = build_alta("tiny", vocab_size=V, special_ids=SPECIAL, mrm_checkpoint={"model": sd})
    assert torch.equal(model.state_dict()["blocks.0.mlp.fc1.weight"], sd["blocks.0.mlp.fc1.weight"])
    assert not model.blocks[0].mlp.fc1.weight.requires_grad and model.blocks[0].norm1.weight.requires_grad


def test_mae_encoder_init():
    src = tiny_mrm()
    enc = {k: v for k, v in src.state_dict().items() if k.startswith(("patch_embed", "cls_token", "pos_embed",
                                                                      "blocks.", "norm."))}
    dst = tiny_mrm()
    info = load_mae_encoder(dst, {"model": enc})
    assert torch.equal(dst.state_dict()["blocks.3.attn.qkv.weight"], enc["blocks.3.attn.qkv.weight"])
    assert not info["ignored"]


def test_save_load_round_trip(tmp_path):
    model = tiny_alta()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    with torch.no_grad():
        model.blocks[0].attn_adapter.D_fc2.weight.add_(0.5)
    cfg = {"model": {"preset": "tiny", "mode": "recommended"}, "lr": 1e-3}
    path = tmp_path / "ckpt" / "newest.pt"
    save_checkpoint(path, model, optimizer=opt, epoch=3, step=120, config=cfg, name="align")
    fresh = tiny_alta()
    opt2 = torch.optim.AdamW([p for p in fresh.parameters() if p.requires_grad], lr=1e-3)
    obj = load_checkpoint(path, fresh, optimizer=opt2)
    assert obj["step"] == 120 and obj["epoch"] == 3 and obj["config"] == cfg and obj["name"] == "align"
    for k, v in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k
    assert not list(tmp_path.glob("ckpt/.*.tmp"))
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "absent.pt", fresh)


def _write_cxr_bert_dir(path, hidden=64, layers=2, heads=4, inter=128, vocab=V, proj=32):
    """A CXR-BERT-specialized-layout directory: config.json (model_type cxr-bert) + one safetensors file holding
    bert.*, cls.predictions.* and cls_projection_head.*."""
    from safetensors.torch import load_file, save_file
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(7)
    cfg = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                     intermediate_size=inter, max_position_embeddings=128, hidden_dropout_prob=0.25,
                     attention_probs_dropout_prob=0.25)
    BertForMaskedLM(cfg).save_pretrained(path)
    weights = load_file(str(path / "model.safetensors"))
    g = torch.Generator().manual_seed(3)
    head = {"cls_projection_head.dense_to_hidden.weight": torch.randn(proj, hidden, generator=g),
            "cls_projection_head.dense_to_hidden.bias": torch.randn(proj, generator=g),
            "cls_projection_head.LayerNorm.weight": torch.randn(proj, generator=g),
            "cls_projection_head.LayerNorm.bias": torch.randn(proj, generator=g),
            "cls_projection_head.dense_to_output.weight": torch.randn(proj, proj, generator=g),
            "cls_projection_head.dense_to_output.bias": torch.randn(proj, generator=g)}
    save_file({**weights, **head}, str(path / "model.safetensors"), metadata={"format": "pt"})
    conf = json.loads((path / "config.json").read_text())
    conf.update(model_type="cxr-bert", architectures=["CXRBertModel"], projection_size=proj)
    (path / "config.json").write_text(json.dumps(conf))
    return {**weights, **head}


def test_text_encoder_from_local_cxr_bert_dir(tmp_path):
    weights = _write_cxr_bert_dir(tmp_path)
    model = build_alta("tiny", text_dir=tmp_path, special_ids=SPECIAL)
    enc = model.bert_encoder
    sd = enc.state_dict()
    for k in ("bert.encoder.layer.1.attention.self.query.weight", "bert.embeddings.word_embeddings.weight",
              "cls.predictions.transform.dense.weight", "cls_projection_head.dense_to_output.weight"):
        assert torch.equal(sd[k], weights[k]), k
    for k in [k for k in sd if k.startswith("local_projection_head.")]:
        assert torch.equal(sd[k], sd["cls_projection_head." + k.split(".", 1)[1]])
    assert enc.config.hidden_dropout_prob == 0.25 and enc.config._attn_implementation == "sdpa"
    assert all(a.D_fc2.weight.abs().sum().item() == 0 for a in enc.adapters())
    assert enc.cls.predictions.decoder.weight is enc.bert.embeddings.word_embeddings.weight
    with pytest.raises(FileNotFoundError):
        build_alta("tiny", text_dir=tmp_path / "nope", special_ids=SPECIAL)


def test_inference_export_round_trip():
    from alta.models.checkpoints import inference_state_dict, load_inference_state

    src = tiny_alta().eval()
    with torch.no_grad():
        src.projection_head.dense_to_output.bias.add_(1.0)
        src.bert_encoder.bert.encoder.layer[0].attn_adapter.D_fc2.weight.normal_()
    export = inference_state_dict(src)
    assert not any(k.startswith(("decoder_", "bert_embed", "missing_token", "local_projection_head"))
                   or ".cls.predictions." in k or "local_projection_head" in k for k in export)
    dst = tiny_alta().eval()
    load_inference_state(dst, export)
    x = torch.randn(2, 3, 64, 64)
    ids = torch.randint(5, V, (2, 12))
    am = torch.ones_like(ids)
    with torch.no_grad():
        assert torch.allclose(src.encode_image(x), dst.encode_image(x), atol=1e-6)
        assert torch.allclose(src.encode_text(ids, am), dst.encode_text(ids, am), atol=1e-6)
    del export["projection_head.dense_to_output.bias"]
    with pytest.raises(ValueError, match="inference keys missing"):
        load_inference_state(tiny_alta(), export)
