"""Tests for alta.train.tokenizer, alta.train.loader and alta.train.augment on a tiny synthetic pairs/images/store set built here."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import build_synthetic

from alta import io
from alta.train import augment as A
from alta.train import loader as D
from alta.train.tokenizer import load_tokenizer, shuffle_sentences, special_ids, split_sentences, train_tokenizer


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return build_synthetic(tmp_path_factory.mktemp("synth"))


@pytest.fixture(scope="module")
def tok(synth, tmp_path_factory):
    pairs = io.read_parquet(synth[0])
    return train_tokenizer(pairs["text"].tolist(), tmp_path_factory.mktemp("t") / "tok", vocab_size=300)


def test_tokenizer_trains_and_round_trips(tok, tmp_path):
    assert special_ids(tok) == {"pad": 0, "unk": 1, "cls": 2, "mask": 3, "sep": 4}
    enc = tok("Heart size is normal.", max_length=16, padding="max_length", truncation=True)
    ids = enc["input_ids"]
    assert ids[0] == 2 and 4 in ids and ids[-1] == 0 and len(ids) == 16
    assert tok.decode(ids, skip_special_tokens=True) == "heart size is normal."
    again = load_tokenizer(Path(tok.name_or_path))
    assert again("no pneumothorax")["input_ids"] == tok("no pneumothorax")["input_ids"]
    from transformers import PreTrainedTokenizerFast

    assert PreTrainedTokenizerFast.from_pretrained(tok.name_or_path).mask_token_id == 3


def test_tokenizer_cli(synth, tmp_path):
    from alta.train.tokenizer import main

    assert main(["--texts", str(synth[0]), "--out", str(tmp_path / "tk"), "--vocab-size", "200"]) == 0
    assert (tmp_path / "tk" / "tokenizer.json").exists() and (tmp_path / "tk" / "tokenizer_stats.json").exists()


@pytest.mark.slow
def test_tokenizer_is_the_same_in_every_process(synth, tmp_path):
    """The same corpus gives the same tokenizer bytes in separate processes (the `tokenizers` trainer did not: it
    breaks ties between equal merges in hash order, and every run got other ids)."""
    import os
    import subprocess
    import sys

    outs = []
    for seed in ("1", "2"):
        out = tmp_path / f"tk{seed}"
        subprocess.run([sys.executable, "-m", "alta.train.tokenizer", "--texts", str(synth[0]), "--out", str(out),
                        "--vocab-size", "200", "--split", "all"], check=True, capture_output=True,
                       env={**os.environ, "PYTHONHASHSEED": seed})
        outs.append((out / "tokenizer.json").read_bytes())
    assert outs[0] == outs[1]


def test_wordpiece_vocab_merges_the_most_frequent_pair_first_and_ties_in_order():
    from alta.train.tokenizer import SPECIAL_TOKENS, wordpiece_vocab

    vocab = wordpiece_vocab({"abab": 3, "cd": 2, "ce": 2}, vocab_size=100)
    assert vocab[:5] == SPECIAL_TOKENS
    assert vocab[5:11] == ["##a", "##b", "##d", "##e", "a", "c"]  # the alphabet, sorted
    # every pair of "abab" occurs 3 times: ties go in lexicographic order (## sorts first); then cd, ce (2 each)
    assert vocab[11:] == ["##ab", "##bab", "abab", "cd", "ce"]
    assert len(wordpiece_vocab({"abab": 3, "cd": 2, "ce": 2}, vocab_size=12)) == 12
    assert wordpiece_vocab({"ab": 1}, vocab_size=100, min_frequency=2) == [*SPECIAL_TOKENS, "##b", "a"]


def test_sentence_split_and_shuffle_keep_the_multiset():
    text = "Seen by Dr. Smith e.g. today. Heart normal? Lungs clear. No effusion."
    sents = split_sentences(text)
    assert sents == ["Seen by Dr. Smith e.g. today.", "Heart normal?", "Lungs clear.", "No effusion."]
    outs = {shuffle_sentences(text, np.random.default_rng(i)) for i in range(20)}
    assert len(outs) > 1
    for o in outs:
        assert Counter(split_sentences(o)) == Counter(sents)


def test_pairs_dataset_and_collate_shapes(synth, tok):
    pairs, images = D.load_tables(synth[0], synth[1])
    ds = D.PairsDataset(pairs, images, synth[2], split="train")
    assert ds.crop == 112  # 448/512 of the 128-px short side
    col = D.Collator(tok, 32)
    batch = col([ds[(i, 0)] for i in range(len(ds))])
    B = len(ds)
    assert batch["views"].shape == (B, 4, 112, 112) and batch["views"].dtype == torch.uint8
    # texts are padded to the batch's longest (cut at max_length), not to max_length
    longest = max(len(tok(t)["input_ids"]) for t in ds.df["text"])
    assert batch["present"].shape == (B, 4) and batch["input_ids"].shape == (B, min(32, longest))
    assert batch["attention_mask"][:, -1].any()
    expect = torch.tensor(ds.df[list(D.VIEW_COLUMNS)].notna().to_numpy())
    assert torch.equal(batch["present"], expect)
    assert batch["present"][:, 0].all() and not batch["present"].all()
    absent = ~batch["present"]
    assert (batch["views"][absent] == 0).all()
    # the crop is the centre of the stored image, read without decoding
    iid = ds.view_ids[0][0]
    full = ds.store.read(iid)
    h, w = full.shape
    assert np.array_equal(batch["views"][0, 0].numpy(), full[(h - 112) // 2:(h - 112) // 2 + 112,
                                                               (w - 112) // 2:(w - 112) // 2 + 112])


def test_text_shuffle_is_deterministic_per_seed_epoch_row(synth):
    pairs, images = D.load_tables(synth[0], synth[1])
    ds = D.PairsDataset(pairs, images, synth[2], split="train", seed=3)
    long_rows = [i for i, t in enumerate(ds.texts) if len(split_sentences(t)) >= 4]
    assert long_rows
    i = long_rows[0]
    assert ds[(i, 1)]["text"] == ds[(i, 1)]["text"]
    assert len({ds[(i, e)]["text"] for e in range(12)}) > 1


def test_unique_study_sampler(synth):
    pairs, _ = D.load_tables(synth[0], synth[1])
    train = pairs[pairs["split"] == "train"].reset_index(drop=True)
    groups = train["study_id"].tolist()
    assert len(groups) > len(set(groups))  # some studies have two rows
    s0 = D.StudyBatchSampler(groups, 2, world_size=2, rank=0, seed=1)
    s1 = D.StudyBatchSampler(groups, 2, world_size=2, rank=1, seed=1)
    for epoch in range(3):
        s0.set_epoch(epoch)
        s1.set_epoch(epoch)
        b0, b1 = list(s0), list(s1)
        assert len(b0) == len(b1) == len(groups) // 4
        for x, y in zip(b0, b1):
            rows = [i for i, _ in x + y]
            assert len(rows) == 4 and len({groups[i] for i in rows}) == 4
            assert all(e == epoch for _, e in x + y)
    again = D.StudyBatchSampler(groups, 2, world_size=2, rank=0, seed=1)
    again.set_epoch(2)
    s0.set_epoch(2)
    assert list(again) == list(s0)
    other = D.StudyBatchSampler(groups, 2, world_size=2, rank=0, seed=2)
    other.set_epoch(2)
    assert list(other) != list(s0)
    s0.set_epoch(2, start_batch=1)
    assert list(s0) == list(again)[1:]
    with pytest.raises(ValueError, match="studies"):
        D.StudyBatchSampler(["a", "a", "b", "b"], 3)


def test_loader_with_workers_matches_in_process(synth, tok):
    pairs, images = D.load_tables(synth[0], synth[1])
    ds = D.PairsDataset(pairs, images, synth[2], split="train")
    out = []
    for nw in (0, 1):
        s = D.StudyBatchSampler(ds.study, 4, seed=0)
        s.set_epoch(1)
        out.append(list(D.make_loader(ds, s, D.Collator(tok, 24), num_workers=nw)))
    for a, b in zip(*out):
        assert torch.equal(a["views"], b["views"]) and torch.equal(a["input_ids"], b["input_ids"])


def test_augmentation_shares_parameters_within_pairs():
    g = torch.Generator().manual_seed(0)
    aug = A.AltaTrainAugment(32, 64, g)
    noise = torch.rand(3, 2, 8, 8, generator=torch.Generator().manual_seed(1))  # seeded: the bound below is tight
    smooth = torch.nn.functional.interpolate(noise, size=(80, 80), mode="bilinear")
    base = (smooth * 255).round().to(torch.uint8)  # smooth images: resampling error stays small
    views = torch.stack([base[:, 0], base[:, 1], base[:, 0], base[:, 1]], 1)  # pf = cf, pl = cl
    present = torch.ones(3, 4, dtype=torch.bool)
    cf_t, v, pres = aug(views, present)
    assert cf_t.shape == (3, 3, 64, 64) and v.shape == (3, 4, 3, 32, 32)
    # pf got cf's parameters at S; cf itself was augmented at 2S and resized -> equal up to resampling error
    # (normalised units: 0.04 is about 3 grey levels; a different sample's parameters give > 0.1)
    assert (v[:, 2] - v[:, 0]).abs().mean() < 0.04
    assert (v[:, 2] - v[:, 0].roll(1, 0)).abs().mean() > 0.1  # other samples' parameters differ
    assert torch.allclose(v[:, 3], v[:, 1], atol=1e-5)
    assert not torch.allclose(v[:, 1], v[:, 0])
    # exact check at one size: augment cl-type views of identical pairs in the lateral slots
    views2 = torch.stack([base[:, 0], base[:, 0], base[:, 0], base[:, 0]], 1)
    _, v2, _ = A.AltaTrainAugment(32, 64, torch.Generator().manual_seed(5))(views2, present)
    assert torch.allclose(v2[:, 1], v2[:, 3], atol=1e-5) and not torch.allclose(v2[:, 1], v2[:, 2], atol=1e-3)
    # different samples get different parameters; channels are the grey image repeated
    assert torch.equal(v[:, :, 0], v[:, :, 2])
    present[0, 3] = False
    _, v3, _ = aug(views, present)
    assert (v3[0, 3] == 0).all()


def test_augmentation_geometry_is_size_independent():
    img = torch.zeros(1, 1, 64, 64)
    img[:, :, 20:30, 36:50] = 1.0
    small = A.resize(img, 32)
    theta = A.sample_affine(1, torch.Generator().manual_seed(1))
    big_w = A.resize(A.apply_affine(img, theta), 32)
    small_w = A.apply_affine(small, theta)
    assert (big_w - small_w).abs().mean() < 0.03
    # identity parameters leave the image unchanged
    eye = torch.tensor([[[1.0, 0, 0], [0, 1.0, 0]]])
    assert torch.allclose(A.apply_affine(img, eye), img, atol=1e-5)


def test_augmentation_is_seeded():
    x = torch.randint(0, 256, (2, 4, 40, 40), dtype=torch.uint8)
    p = torch.ones(2, 4, dtype=torch.bool)
    a = A.AltaTrainAugment(16, 32, torch.Generator().manual_seed(7))(x, p)
    b = A.AltaTrainAugment(16, 32, torch.Generator().manual_seed(7))(x, p)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    m1 = A.MrmTrainAugment(32, torch.Generator().manual_seed(3))(x[:, 0])
    m2 = A.MrmTrainAugment(32, torch.Generator().manual_seed(3))(x[:, 0])
    assert m1.shape == (2, 3, 32, 32) and torch.equal(m1, m2)


def test_eval_transform_matches_resize_centercrop():
    img = torch.arange(300 * 400, dtype=torch.float32).reshape(300, 400) % 256
    out = A.eval_transform(img.to(torch.uint8), 56)
    assert out.shape == (3, 56, 56)
    # Resize(64) + CenterCrop(56): compare with torchvision on a tensor
    import torchvision.transforms.v2.functional as TF

    ref = TF.center_crop(TF.resize(img[None] / 255.0, 64, interpolation=TF.InterpolationMode.BICUBIC,
                                   antialias=True).clamp(0, 1), 56)
    assert torch.allclose(out[0], (ref[0] - A.ALTA_MEAN) / A.ALTA_STD, atol=1e-4)


def test_mrm_dataset_counts_and_prefix(synth, tok):
    pairs, images = D.load_tables(synth[0], synth[1])
    from alta.train.mrm import mrm_texts

    subjects = set(pairs.loc[pairs["split"] == "train", "subject_id"])
    ds = D.MrmDataset(images, mrm_texts(pairs, "findings_impression", None), subjects, synth[2])
    st = ds.stats
    assert st["rows"] + st["not_in_split"] + st["in_split_without_text"] == st["images"] == len(images)
    assert set(images.loc[images["ViewPosition"] == "LATERAL", "image_id"]) & set(ds.ids)  # laterals are used
    b = D.Collator(tok, 20, prefix_cls=True)([ds[i] for i in range(3)])
    assert b["image"].shape == (3, 128, 128)
    assert (b["input_ids"][:, 0] == tok.cls_token_id).all() and not (b["input_ids"] == tok.sep_token_id).any()
    # MRM's collator pads to max_length (its masking and faithful loss depend on the padded length), not to the
    # batch's longest as align's does
    from alta.train import mrm

    samples = [ds[i] for i in range(3)]
    longest = max(len(tok(f"{tok.cls_token} {s['text']}", add_special_tokens=False)["input_ids"]) for s in samples)
    assert longest < 100
    assert D.Collator(tok, 100, prefix_cls=True)(samples)["input_ids"].shape == (3, longest)
    assert mrm.mrm_collator(tok, 100)(samples)["input_ids"].shape == (3, 100)


def test_missing_image_is_a_clear_error(synth):
    pairs, images = D.load_tables(synth[0], synth[1])
    bad = pairs.copy()
    bad.loc[0, "cl_dicom_id"] = "nope"
    with pytest.raises(ValueError, match="cl_dicom_id values are not in images.parquet"):
        D.PairsDataset(bad, images, synth[2])
