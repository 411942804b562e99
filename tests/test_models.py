"""Models of docs/method.md §1-§2: parameter counts, trainable set, adapter init, masking, losses, overfitting."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from alta.models.build import build_alta, build_mrm, param_groups
from alta.models.losses import caption_lengths, global_contrastive_loss, local_contrastive_loss, local_similarity
from alta.models.params import breakdown, build_for_count
from alta.models.pos_embed import sincos_pos_embed_2d
from alta.models.text import mlm_mask
from alta.models.vit import random_masking

V = 120
SPECIAL = dict(pad=0, cls=2, sep=3, mask=4)


def tiny_alta(mode="recommended", seed=0, **kw):
    torch.manual_seed(seed)
    return build_alta("tiny", mode, vocab_size=V, special_ids=SPECIAL, **kw)


def text_batch(b=4, t=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, V, (b, t), generator=g)
    ids[:, 0] = SPECIAL["cls"]
    am = torch.ones(b, t, dtype=torch.long)
    for i in range(b):  # different lengths per sample: [CLS] words [SEP] [PAD]...
        n = t - (2 * i) % (t - 4)
        ids[i, n - 1] = SPECIAL["sep"]
        ids[i, n:] = SPECIAL["pad"]
        am[i, n:] = 0
    return ids, am


def image_batch(b=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    # smooth random images, so that masked patches are predictable from visible ones
    cf = nn.functional.interpolate(torch.randn(b, 3, 8, 8, generator=g), size=128, mode="bilinear")
    views = nn.functional.interpolate(torch.randn(b * 4, 3, 8, 8, generator=g), size=64, mode="bilinear")
    views = views.view(b, 4, 3, 64, 64)
    present = torch.ones(b, 4, dtype=torch.bool)
    present[0, 2:] = False
    present[1, 1] = False
    return cf, views, present


# ---------------------------------------------------------------- parameter counts (docs/method.md §1.1, §2.11)
@pytest.mark.parametrize("mode,trainable", [("faithful", 18_333_502), ("recommended", 18_924_094)])
def test_vit_base_alta_counts(mode, trainable):
    info = breakdown(build_for_count("alta", "vit_base", mode))
    assert info["total"] == 242_177_854
    assert info["trainable"] == trainable
    g = info["groups"]
    assert g["vision"]["total"] == 93_874_180
    assert g["decoder"] == {"total": 31_458_048, "trainable": 2_967_552}
    assert g["text"] == {"total": 116_845_626, "trainable": 7_992_378}
    assert g["vision"]["trainable"] == 7_373_572 + (590_592 if mode == "recommended" else 0)
    c = {k: v["trainable"] for k, v in info["components"].items()}
    assert c["vision LNs"] == 12 * 3_072 + 1_536
    assert c["vision adapters"] == c["text adapters"] == 7_100_928
    assert c["cls_token"] == 768 and c["temporal + view embeddings"] == 3_072
    assert c["image heads"] == c["text heads"] == 2 * 115_200
    assert c["logit scales"] == 4
    assert c["decoder embed/mask/pred"] == 590_592 + 768 + 2_362_368 and c["decoder LNs"] == 13_824
    assert c["text LNs"] == 1_536 + 12 * 3_072
    assert c["MLM transform + bias"] == 590_592 + 1_536 + 30_522
    assert c["missing_token"] == 0 and c["vision backbone"] == 0 and c["text backbone"] == 0


def test_vit_base_learned_missing_token_and_mrm_counts():
    info = breakdown(build_for_count("alta", "vit_base", "recommended", {"learned_missing_token": True}))
    assert info["trainable"] == 18_924_094 + 150_528
    mrm = breakdown(build_for_count("mrm", "vit_base"))
    assert mrm["total"] == 151_605_168
    assert {k: v["total"] for k, v in mrm["groups"].items()} == {
        "encoder": 85_798_656, "decoder": 31_458_048, "bert_mlp": 295_296, "report_decoder": 34_053_168}


def test_params_cli(capsys, tmp_path):
    from alta.models.params import main

    assert main(["--preset", "vit_base", "--mode", "faithful", "--json", str(tmp_path / "p.json")]) == 0
    assert "242,177,854" in capsys.readouterr().out
    assert json.loads((tmp_path / "p.json").read_text())["trainable"] == 18_333_502


# ---------------------------------------------------------------- trainable set (docs/method.md §2.3)
def test_trainable_set_matches_spec():
    for mode in ("faithful", "recommended"):
        m = build_for_count("alta", "vit_base", mode)
        names = m.trainable_names()
        assert names == {n for n, p in m.named_parameters() if p.requires_grad}
        ref = m.reference_trainable_names()
        if mode == "faithful":
            assert names == ref
        else:
            assert names - ref == {"bert_embed.weight", "bert_embed.bias"} and not ref - names
    m = build_for_count("alta", "vit_base", "recommended")
    trainable = m.trainable_names()
    for frozen in ["patch_embed.proj.weight", "blocks.3.attn.qkv.weight", "blocks.3.mlp.fc2.bias", "pos_embed",
                   "decoder_pos_embed", "missing_token", "decoder_blocks.1.attn.proj.weight",
                   "bert_encoder.bert.embeddings.word_embeddings.weight",
                   "bert_encoder.bert.encoder.layer.5.attention.self.query.weight",
                   "bert_encoder.bert.encoder.layer.5.output.dense.weight"]:
        assert frozen not in trainable, frozen
    for train in ["blocks.0.norm1.weight", "blocks.11.attn_adapter.D_fc2.bias", "norm.bias", "cls_token",
                  "decoder_blocks.3.norm2.weight", "decoder_pred.weight", "mask_token", "logit_scale_local3",
                  "bert_encoder.bert.encoder.layer.11.mlp_adapter.D_fc1.weight",
                  "bert_encoder.bert.encoder.layer.0.attention.output.LayerNorm.weight",
                  "bert_encoder.cls.predictions.bias", "bert_encoder.cls.predictions.transform.dense.weight",
                  "bert_encoder.local_projection_head.dense_to_output.weight", "bert_embed.weight"]:
        assert train in trainable, train


def test_full_decoder_and_learned_missing_token_options():
    m = tiny_alta(options={"train_full_decoder": True, "learned_missing_token": True})
    names = m.trainable_names()
    assert "decoder_blocks.0.attn.qkv.weight" in names and "missing_token" in names
    assert m.missing_token.requires_grad


# ---------------------------------------------------------------- adapters at step 0 (docs/method.md §2.4, §2.5)
def _run_encoder(m, x):
    tok = m.add_cls(m.embed_patches(x) + m.pos_embed[:, 1:])
    return m.run_blocks(tok)


def test_vision_adapters_zero_init_leave_encoder_unchanged():
    m = tiny_alta().eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        adapted = _run_encoder(m, x)
        plain = copy.deepcopy(m)
        for blk in plain.blocks:
            blk.attn_adapter = blk.mlp_adapter = None  # -> exactly timm's Block.forward
        reference = _run_encoder(plain, x)
        assert torch.allclose(adapted, reference, atol=1e-6)
        nn.init.normal_(m.blocks[0].mlp_adapter.D_fc2.weight, std=0.1)
        assert not torch.allclose(_run_encoder(m, x), reference, atol=1e-3)


def test_vision_block_formula():
    m = tiny_alta().eval()
    blk = m.blocks[1]
    with torch.no_grad():
        for a in (blk.attn_adapter, blk.mlp_adapter):
            nn.init.normal_(a.D_fc2.weight, std=0.1)
            nn.init.normal_(a.D_fc2.bias, std=0.1)
        x = torch.randn(2, 17, 64)
        h = x + blk.attn_adapter(blk.attn(blk.norm1(x)))
        u = blk.norm2(h)
        expected = h + blk.mlp(u) + 0.5 * blk.mlp_adapter(u)
        assert torch.allclose(blk(x), expected, atol=1e-6)
        assert torch.allclose(blk.attn_adapter(x), x + blk.attn_adapter.D_fc2(torch.nn.functional.gelu(blk.attn_adapter.D_fc1(x))))


def _plain_bert(enc):
    from transformers import BertModel

    plain = BertModel(enc.config, add_pooling_layer=False).eval()
    sd = {k: v for k, v in enc.bert.state_dict().items() if "_adapter." not in k}
    plain.load_state_dict(sd, strict=True)
    return plain


def test_text_adapters_recommended_identity_faithful_not():
    ids, am = text_batch()
    for mode, same in (("recommended", True), ("faithful", False)):
        m = tiny_alta(mode).eval()
        enc = m.bert_encoder
        with torch.no_grad():
            ours = enc(ids, am)
            ref = _plain_bert(enc)(input_ids=ids, attention_mask=am).last_hidden_state
        assert torch.allclose(ours, ref, atol=1e-5) == same, mode
        d_fc2 = enc.bert.encoder.layer[0].attn_adapter.D_fc2.weight
        assert (d_fc2.abs().sum() == 0) == same


def test_text_layer_formula_with_hooks():
    m = tiny_alta().eval()
    layer = m.bert_encoder.bert.encoder.layer[0]
    with torch.no_grad():
        for a in (layer.attn_adapter, layer.mlp_adapter):
            nn.init.normal_(a.D_fc2.weight, std=0.1)
        x = torch.randn(2, 7, 64)
        ctx = layer.attention.self(x)[0]
        a = layer.attention.output(ctx, x)  # LN_att(x + W_o SelfAttn(x))
        a2 = layer.attn_adapter(a)
        expected = layer.output.forward(layer.intermediate(a2), a2) + 0.5 * layer.mlp_adapter(a2)
        assert torch.allclose(layer(x), expected, atol=1e-5)
        # the hooks follow a deep copy (they target the copied adapters)
        clone = copy.deepcopy(layer)
        nn.init.zeros_(clone.mlp_adapter.D_fc2.weight)
        nn.init.zeros_(clone.mlp_adapter.D_fc2.bias)
        assert torch.allclose(clone(x), layer.output.forward(layer.intermediate(a2), a2), atol=1e-5)


# ---------------------------------------------------------------- masking and shapes (docs/method.md §1.3, §2.6)
def test_random_masking_vit_base_geometry():
    x = torch.randn(3, 196, 8)
    kept, mask, ids_restore = random_masking(x, 0.75, torch.Generator().manual_seed(0))
    assert kept.shape == (3, 49, 8) and mask.sum(1).tolist() == [147.0] * 3
    # kept rows are exactly the unmasked patches, in shuffled order
    for n in range(3):
        assert set(map(tuple, kept[n].tolist())) == set(map(tuple, x[n][mask[n] == 0].tolist()))
    assert torch.equal(torch.argsort(torch.argsort(ids_restore)), ids_restore)


def test_alta_encoder_shapes_independent_masks_and_missing_views():
    m = tiny_alta().eval()
    cf, views, present = image_batch()
    x = views.clone()
    with torch.no_grad():
        cls, patches, mask, ids_restore = m.forward_encoder(x, present, torch.Generator().manual_seed(3))
        assert cls.shape == (4, 4, 64) and patches.shape == (4, 4, 16, 64)
        assert mask.shape == (4, 4, 64) and bool((mask.sum(-1) == 48).all())
        assert not torch.equal(mask[:, 0], mask[:, 1]) and not torch.equal(mask[:, 2], mask[:, 3])
        # absent views do not depend on their pixels (replaced by missing_token)
        x2 = x.clone()
        x2[0, 2:] = 7.0
        x2[1, 1] = -3.0
        cls2, patches2, *_ = m.forward_encoder(x2, present, torch.Generator().manual_seed(3))
        assert torch.allclose(cls, cls2) and torch.allclose(patches, patches2)
        x2[2, 3] = 5.0  # a present view does change the output
        cls3, *_ = m.forward_encoder(x2, present, torch.Generator().manual_seed(3))
        assert not torch.allclose(cls[2], cls3[2])
        # views[:, 0] is ignored by forward(): the cf view is made from cf_target
        ids, am = text_batch()
        out1 = m(cf, views, present, ids, am, generator=torch.Generator().manual_seed(5))
        views_z = views.clone()
        views_z[:, 0] = 0
        out2 = m(cf, views_z, present, ids, am, generator=torch.Generator().manual_seed(5))
        assert torch.allclose(out1["loss"], out2["loss"])
        assert set(out1) == {"loss", "loss_global", "loss_local", "loss_mim", "loss_mlm", "logit_scale"}


def test_faithful_fp16_missing_token_runs_in_fp32():
    m = tiny_alta("faithful").eval()
    assert m.missing_token.dtype == torch.float16
    cf, views, present = image_batch()
    ids, am = text_batch()
    with torch.no_grad():
        out = m(cf, views, present, ids, am, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out["loss"])


def test_encode_image_and_text():
    m = tiny_alta().eval()
    ids, am = text_batch()
    with torch.no_grad():
        v = m.encode_image(torch.randn(4, 3, 64, 64))
        t = m.encode_text(ids, am)
        t_raw = m.encode_text(ids, am, normalize=False)
    assert v.shape == t.shape == (4, 32)
    assert torch.allclose(v.norm(dim=-1), torch.ones(4), atol=1e-5)
    assert torch.allclose(torch.nn.functional.normalize(t_raw, dim=-1), t, atol=1e-6)
    assert not torch.allclose(t_raw.norm(dim=-1), torch.ones(4), atol=1e-3)


def test_mlm_mask_rules():
    ids, am = text_batch(b=64, t=32)
    g = torch.Generator().manual_seed(0)
    masked, labels = mlm_mask(ids, am, SPECIAL, V, 0.5, (1.0, 0.0, 0.0), g)
    special = (ids == 0) | (ids == 2) | (ids == 3)
    sel = labels != -100
    assert not bool((sel & special).any()) and bool((masked[sel] == SPECIAL["mask"]).all())
    assert torch.equal(masked[~sel], ids[~sel]) and torch.equal(labels[sel], ids[sel])
    rate = sel.sum() / (am.bool() & ~special).sum()
    assert 0.45 < float(rate) < 0.55
    masked, labels = mlm_mask(ids, am, SPECIAL, V, 0.5, (0.8, 0.1, 0.1), torch.Generator().manual_seed(1))
    sel = labels != -100
    frac_mask = float((masked[sel] == SPECIAL["mask"]).float().mean())
    assert 0.7 < frac_mask < 0.9


def test_mrm_whole_word_masking():
    cont = torch.zeros(V, dtype=torch.bool)
    cont[60:] = True  # ids >= 60 are "##" pieces
    m = build_mrm("tiny", vocab_size=V, pad_token_id=0, mask_token_id=3, cls_token_id=2)
    m.is_continuation.copy_(cont)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, V, (200, 100), generator=g)
    ids[:, 0] = 2
    ids[:100, 70:] = 0  # half the rows padded from position 70
    masked, sel = m.mask_report(ids, g)
    assert not bool(sel[:, 0].any()) and not bool(sel[:, 99].any()) and not bool(sel[:100, 70:].any())
    assert torch.equal(masked[sel], torch.full_like(masked[sel], 3)) and torch.equal(masked[~sel], ids[~sel])
    is_cont = cont[ids]
    inner = torch.zeros_like(sel)
    inner[:, 2:99] = True
    # a continuation is masked iff the previous token is masked
    prev = torch.zeros_like(sel)
    prev[:, 1:] = sel[:, :-1]
    check = inner & is_cont & (ids != 0)
    assert torch.equal(sel[check], prev[check])
    rate = sel[:, 1:99][~is_cont[:, 1:99] & (ids[:, 1:99] != 0)].float().mean()
    assert 0.45 < float(rate) < 0.55


# ---------------------------------------------------------------- losses (docs/method.md §2.8, §3 #1)
def _simulate_ranks(fn, per_rank_args, world):
    """Run ``fn(*args, gather=...)`` per simulated rank: the gather of call k returns the concatenation of call k's
    tensors of all ranks, the local one keeping its graph (what all_gather with gradient gives)."""
    records = [[] for _ in range(world)]
    for r in range(world):
        fn(*per_rank_args[r], gather=lambda x, r=r: (records[r].append(x.detach()), x)[1])
    outs = []
    for r in range(world):
        calls = iter(range(len(records[r])))

        def gather(x, r=r, calls=calls):
            k = next(calls)
            return torch.cat([x if q == r else records[q][k] for q in range(world)], dim=0)

        outs.append(fn(*per_rank_args[r], gather=gather))
    return outs


def test_local_loss_single_equals_simulated_multi_rank():
    torch.manual_seed(0)
    b, world = 6, 3
    regions = torch.randn(b, 12, 8)
    words = torch.randn(b, 9, 8)
    ids, am = text_batch(b=b, t=10)
    scales = tuple(torch.tensor(v) for v in (2.0, 1.5, 1.0))
    single = local_contrastive_loss(regions, words, caption_lengths(am), scales)
    per_rank = [(regions[2 * r:2 * r + 2], words[2 * r:2 * r + 2],
                 caption_lengths(am[2 * r:2 * r + 2]), scales) for r in range(world)]
    outs = _simulate_ranks(lambda *a, gather: local_contrastive_loss(*a, gather=gather), per_rank, world)
    for out in outs:
        assert torch.allclose(out, single, atol=1e-5)
    # lengths matter: the reference misalignment (lengths of other samples) changes the loss
    wrong = local_contrastive_loss(regions, words, caption_lengths(am).roll(2), scales)
    assert not torch.allclose(wrong, single, atol=1e-3)


def test_global_loss_single_equals_simulated_multi_rank():
    torch.manual_seed(1)
    img = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    scale = torch.tensor(2.0)
    single = global_contrastive_loss(img, txt, scale)
    per_rank = [(img[2 * r:2 * r + 2], txt[2 * r:2 * r + 2], scale) for r in range(3)]
    for out in _simulate_ranks(lambda *a, gather: global_contrastive_loss(*a, gather=gather), per_rank, 3):
        assert torch.allclose(out, single, atol=1e-6)


def test_local_similarity_matches_loop_definition():
    torch.manual_seed(2)
    r, e = torch.randn(3, 5, 4), torch.randn(2, 6, 4)
    lens = torch.tensor([6, 3])
    t1, t2, t3 = torch.tensor(3.0), torch.tensor(2.0), torch.tensor(1.5)
    got = local_similarity(r, e, lens, t1, t2, t3)
    for b in range(3):
        for i in range(2):
            w = e[i, : lens[i]]
            a = (r[b] @ w.t()).softmax(dim=1)  # (K, W): over words
            alpha = (t1 * a).softmax(dim=0)  # over regions
            c = alpha.t() @ r[b]  # (W, D)
            cos = torch.nn.functional.cosine_similarity(w, c, dim=-1, eps=1e-8)
            assert torch.allclose(got[b, i], t3 * torch.log(torch.exp(t2 * cos).sum()), atol=1e-5)


# ---------------------------------------------------------------- optimisation helpers
def test_param_groups_and_clamp():
    for mode, exempt in (("faithful", False), ("recommended", True)):
        m = tiny_alta(mode)
        decay, no_decay = param_groups(m, 0.05)
        ids_decay = {id(p) for p in decay["params"]}
        ids_no = {id(p) for p in no_decay["params"]}
        assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
        assert (id(m.cls_token) in ids_no) == exempt and (id(m.view_embedding) in ids_decay) != exempt
        assert id(m.logit_scale) in ids_no and id(m.blocks[0].norm1.weight) in ids_no
        assert id(m.blocks[0].attn_adapter.D_fc1.weight) in ids_decay
        assert id(m.patch_embed.proj.weight) not in ids_decay | ids_no
        assert len(ids_decay | ids_no) == sum(p.requires_grad for p in m.parameters())
    with torch.no_grad():
        m.logit_scale.fill_(9.0)
        m.logit_scale_local2.fill_(-1.0)
    m.clamp_logit_scales()
    assert abs(m.logit_scale.item() - torch.log(torch.tensor(100.0)).item()) < 1e-6
    assert m.logit_scale_local2.item() == 0.0


def test_sincos_table_properties():
    t = sincos_pos_embed_2d(16, 4)
    assert t.shape == (17, 16) and torch.equal(t[0], torch.zeros(16))
    # first half of the channels follows the column, second half the row (MAE layout)
    assert torch.allclose(t[1, :8], t[5, :8]) and not torch.allclose(t[1, 8:], t[5, 8:])
    assert torch.allclose(t[1, 8:], t[2, 8:]) and not torch.allclose(t[1, :8], t[2, :8])


# ---------------------------------------------------------------- overfitting one batch
def _overfit(model, loss_key, steps, lr, batch):
    opt = torch.optim.AdamW(param_groups(model, 0.0), lr=lr)
    values = []
    for _ in range(steps):
        out = model(*batch, generator=torch.Generator().manual_seed(0))
        opt.zero_grad()
        out[loss_key].backward()
        opt.step()
        if hasattr(model, "clamp_logit_scales"):
            model.clamp_logit_scales()
        values.append(out[loss_key].item())
    return values


@pytest.mark.parametrize("key", ["loss_global", "loss_local", "loss_mim", "loss_mlm"])
def test_alta_each_loss_decreases_on_one_batch(key):
    # dropout off: overfitting one batch tests that every loss gets gradients through the trainable set
    m = tiny_alta(overrides={"text_dropout": 0.0}).train()
    cf, views, present = image_batch()
    ids, am = text_batch()
    values = _overfit(m, key, 30, 3e-3, (cf, views, present, ids, am))
    # MIM: the decoder blocks are frozen, only embed/pred/LNs (and the encoder adapters) learn
    assert values[-1] < (0.85 if key == "loss_mim" else 0.5) * values[0], values


def test_mrm_losses_decrease_on_one_batch():
    torch.manual_seed(0)
    m = build_mrm("tiny", vocab_size=V, pad_token_id=0, mask_token_id=3, cls_token_id=2,
                  overrides={"report_dropout": 0.0}).train()
    cf, _, _ = image_batch()
    ids = torch.randint(5, V, (4, 100), generator=torch.Generator().manual_seed(0))
    ids[:, 0] = 2
    ids[:, 60:] = 0
    am = (ids != 0).long()
    opt = torch.optim.AdamW(param_groups(m, 0.0), lr=2e-3)
    first = last = None
    for _ in range(25):
        out = m(cf, ids, am, generator=torch.Generator().manual_seed(0))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        first = first or {k: out[k].item() for k in ("loss_mim", "loss_rep")}
        last = {k: out[k].item() for k in ("loss_mim", "loss_rep")}
    assert last["loss_mim"] < 0.85 * first["loss_mim"] and last["loss_rep"] < 0.7 * first["loss_rep"], (first, last)


def test_every_trainable_parameter_gets_a_gradient():
    """DDP without find_unused_parameters needs a gradient for every trainable parameter (docs/method.md §3 #11)."""
    m = tiny_alta(options={"learned_missing_token": True}).train()
    cf, views, present = image_batch()
    ids, am = text_batch()
    m(cf, views, present, ids, am, generator=torch.Generator().manual_seed(0))["loss"].backward()
    assert [n for n, p in m.named_parameters() if p.requires_grad and p.grad is None] == []
    r = build_mrm("tiny", vocab_size=V, pad_token_id=0, mask_token_id=3, cls_token_id=2)
    ids = torch.randint(5, V, (2, 100))
    r(cf[:2], ids, torch.ones_like(ids))["loss"].backward()
    assert [n for n, p in r.named_parameters() if p.requires_grad and p.grad is None] == []
    assert not r.bert_encoder.model.bert.pooler.dense.weight.requires_grad


def test_build_mrm_from_wordpiece_tokenizer():
    from tokenizers import Tokenizer
    from tokenizers.models import WordPiece

    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[MASK]": 3, "lung": 4, "##s": 5, "clear": 6, "##ly": 7}
    tok = Tokenizer(WordPiece(vocab, unk_token="[UNK]"))
    m = build_mrm("tiny", tokenizer=tok)
    assert m.vocab_size == 8 and (m.pad_token_id, m.cls_token_id, m.mask_token_id) == (0, 2, 3)
    assert m.is_continuation.tolist() == [False] * 5 + [True, False, True]


# ---------------------------------------------------------------- small-scale options (AltaOptions, docs/results.md §1)
SMALL_SCALE = {"inference_view_loss": True, "image_pooling": "patch_mean", "text_pooling": "token_mean",
               "exclude_missing_views": True}


@pytest.mark.parametrize("key,value", [("image_pooling", "max"), ("text_pooling", "pooler")])
def test_small_scale_options_reject_unknown_values(key, value):
    with pytest.raises(ValueError, match=key):
        tiny_alta(options={key: value})


@pytest.mark.parametrize("pooling", ["cls", "patch_mean", "patch_grid"])
def test_training_global_embedding_is_the_inference_embedding_without_masking(pooling):
    """With no masking and only the current frontal present, the four-view training embedding (§2.6, present views
    only) must be exactly what inference embeds (§2.10), for both poolings: then loss_global == loss_global_cf."""
    m = tiny_alta(overrides={"mask_ratio": 0.0},
                  options={"inference_view_loss": True, "exclude_missing_views": True, "image_pooling": pooling}).eval()
    cf, views, _ = image_batch()
    present = torch.zeros(4, 4, dtype=torch.bool)
    present[:, 0] = True
    ids, am = text_batch()
    with torch.no_grad():
        out = m(cf, views, present, ids, am, generator=torch.Generator().manual_seed(0))
        cf_s = nn.functional.interpolate(cf, size=64, mode="bicubic", align_corners=False, antialias=True)
        expected = global_contrastive_loss(m.encode_image(cf_s), m.encode_text(ids, am), m.logit_scale)
    assert torch.allclose(out["loss_global_cf"], expected, atol=1e-5)
    assert torch.allclose(out["loss_global"], out["loss_global_cf"], atol=1e-5)
    terms = sum(out[k] for k in ("loss_global", "loss_local", "loss_mim", "loss_mlm", "loss_global_cf"))
    assert torch.allclose(out["loss"], terms)
    assert "loss_global_cf" not in tiny_alta().eval()(cf, views, present, ids, am)


def test_patch_grid_places_each_visible_patch_in_its_grid_cell():
    """patch_grid: the K visible patch outputs go to the cells random_masking took them from, the masked cells are
    zero, and the visible ones are scaled by N/K; the full grid (inference) is flattened as it is."""
    m = tiny_alta(options={"image_pooling": "patch_grid"})
    n, d = m.cfg.num_patches, m.cfg.embed_dim
    assert m.projection_head.dense_to_hidden.in_features == n * d
    grid = torch.randn(2, 4, n, d)
    kept, mask, ids_restore = random_masking(grid.flatten(0, 1), 0.75, torch.Generator().manual_seed(0))
    k = kept.shape[1]
    feat = m.view_feature(None, kept.view(2, 4, k, d), ids_restore.view(2, 4, n)).view(2, 4, n, d)
    visible = (mask.view(2, 4, n) == 0).unsqueeze(-1)
    assert torch.allclose(feat, torch.where(visible, grid * (n / k), torch.zeros(())))
    assert torch.equal(m.view_feature(None, grid), grid.flatten(-2))


def test_pooling_options_change_the_inference_embeddings():
    """patch_mean / token_mean embed other features than [CLS]; token_mean ignores padding."""
    base, pooled = tiny_alta().eval(), tiny_alta(options=SMALL_SCALE).eval()
    x = torch.randn(4, 3, 64, 64)
    ids, am = text_batch()
    with torch.no_grad():
        assert not torch.allclose(base.encode_image(x), pooled.encode_image(x), atol=1e-3)
        assert not torch.allclose(base.encode_text(ids, am), pooled.encode_text(ids, am), atol=1e-3)
        h = pooled.bert_encoder(ids, am)
        w = am.unsqueeze(-1).float()
        mean = (h * w).sum(1) / w.sum(1)
        expected = nn.functional.normalize(pooled.bert_encoder.cls_projection_head(mean), dim=-1)
        assert torch.allclose(pooled.encode_text(ids, am), expected, atol=1e-6)
        longer = torch.cat([ids, torch.full((4, 8), SPECIAL["pad"])], dim=1)
        assert torch.allclose(pooled.encode_text(longer, torch.cat([am, torch.zeros(4, 8, dtype=am.dtype)], 1)),
                              pooled.encode_text(ids, am), atol=1e-5)


def test_small_scale_options_every_trainable_parameter_gets_a_gradient_and_cf_loss_decreases():
    m = tiny_alta(overrides={"text_dropout": 0.0}, options=SMALL_SCALE).train()
    assert m.trainable_names() == tiny_alta().trainable_names()  # no new parameters, same trainable set
    cf, views, present = image_batch()
    ids, am = text_batch()
    m(cf, views, present, ids, am, generator=torch.Generator().manual_seed(0))["loss"].backward()
    assert [n for n, p in m.named_parameters() if p.requires_grad and p.grad is None] == []
    m.zero_grad()
    values = _overfit(m, "loss_global_cf", 30, 3e-3, (cf, views, present, ids, am))
    assert values[-1] < 0.5 * values[0], values
