"""Tests for the training engine (alta.train.engine), the stage CLIs and alta.train.distributed, on the tiny preset."""

from __future__ import annotations

import json
import math
import os
import signal
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from alta.models.build import build_alta
from alta.train import distributed as D
from alta.train import engine as T

SMALL = {"preset": "tiny", "batch_size": 4, "num_workers": 0, "log_every": 2, "warmup_epochs": 1, "schedule_epochs": 4,
         "max_epochs": 2, "blr": 1e-2, "val_max_rows": 4}


def _args(s, out, **kw):
    return SimpleNamespace(pairs=s.pairs, images=s.images, extract_dir=s.extract, tokenizer=s.tok, out=out,
                           text_dir="none", mrm_weights="none", sections=None, **kw)


def _task(stage_module, args, cfg, info):
    """The stage's Task as its ``main`` builds it: tokenizer, seeded model from random init, data."""
    from alta.models.build import build_mrm
    from alta.train.tokenizer import load_tokenizer, special_ids

    tok = load_tokenizer(args.tokenizer)
    torch.manual_seed(cfg["seed"])
    kw = {"preset": cfg["preset"], "mode": cfg["mode"], "tokenizer": tok, "vocab_size": len(tok),
          "overrides": cfg["model_overrides"] or None, "options": cfg["model_options"] or None}
    model = build_alta(special_ids=special_ids(tok), **kw) if stage_module.__name__.endswith("align") \
        else build_mrm(**kw)
    return stage_module.build_task(args, cfg, tok, model, info)


def test_schedule_warmup_cosine_and_truncation():
    peak, spe = 1.0, 10
    assert T.lr_at(0, spe, peak, 10, 100) == 0.0
    assert T.lr_at(50, spe, peak, 10, 100) == pytest.approx(0.5)
    assert T.lr_at(100, spe, peak, 10, 100) == pytest.approx(1.0)
    assert T.lr_at(550, spe, peak, 10, 100) == pytest.approx(0.5)
    assert T.lr_at(1000, spe, peak, 10, 100) == pytest.approx(0.0, abs=1e-12)
    at_stop = T.lr_at(300, spe, peak, 10, 100)  # max_epochs 30 of a 100-epoch layout
    assert at_stop == pytest.approx(0.5 * (1 + math.cos(math.pi * 20 / 90)))
    assert at_stop == pytest.approx(0.883, abs=1e-3)


def test_distributed_detection():
    assert D.detect({}).world_size == 1
    info = D.detect({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    assert (info.rank, info.world_size, info.local_rank, info.launcher) == (1, 2, 1, "torchrun")
    assert info.backend == ("nccl" if torch.cuda.is_available() else "gloo")
    srun = D.detect({"SLURM_PROCID": "3", "SLURM_STEP_NUM_TASKS": "4", "SLURM_LOCALID": "1", "SLURM_STEP_ID": "0"})
    assert (srun.rank, srun.world_size, srun.local_rank, srun.launcher) == (3, 4, 1, "srun")
    # a batch script without srun is one process even in a multi-task allocation
    assert D.detect({"SLURM_PROCID": "0", "SLURM_NTASKS": "4"}).world_size == 1
    assert D.first_host("gpu[03-05,9],cpu1") == "gpu03" and D.first_host("n1,n2") == "n1"


def _final_weights(path):
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def test_align_cli_outputs(synth, tmp_path):
    from alta.train import align

    out = tmp_path / "a"
    rc = align.main(["--pairs", str(synth.pairs), "--images", str(synth.images), "--extract-dir", str(synth.extract),
                     "--tokenizer", str(synth.tok), "--out", str(out), "--config-json",
                     json.dumps({**SMALL, "max_steps": 3})])
    assert rc == 0
    for name in ("checkpoint.pt", "best.pt", "last.pt", "tokenizer/tokenizer.json", "loss_curve.png"):
        assert (out / name).exists(), name
    ck = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert {"model", "optimizer", "epoch", "step", "scaler", "args", "preset", "mode", "tokenizer_dir"} <= set(ck)
    assert ck["step"] == 3 and ck["preset"] == "tiny" and "logit_scale" in ck["model"]
    assert all(0 <= float(ck["model"][k]) <= math.log(100) + 1e-6
               for k in ("logit_scale", "logit_scale_local1", "logit_scale_local2", "logit_scale_local3"))
    assert ck["history"][-1]["step"] == 3 and "loss_mlm" in ck["history"][-1]


def test_sigterm_then_resume_matches_uninterrupted_run(synth, tmp_path):
    from alta.train import align

    cfg = {**align.DEFAULTS, **SMALL, "max_steps": 4, "ckpt_every": 100}
    info = D.detect({})

    def run(out, kill_at=None):
        task = _task(align, _args(synth, out), cfg, info)
        if kill_at is not None:
            calls, fwd = {"n": 0}, task.forward

            def forward(m, batch, dev):
                calls["n"] += 1
                if calls["n"] == kill_at:
                    os.kill(os.getpid(), signal.SIGTERM)  # arrives mid-step; honoured at the step boundary
                return fwd(m, batch, dev)

            task.forward = forward
        return T.fit(task, T.TrainConfig.from_dict(cfg), cfg, out, info)

    straight = tmp_path / "straight"
    run(straight)
    resumed = tmp_path / "resumed"
    with pytest.raises(T.Preempted) as exc:
        run(resumed, kill_at=2)
    assert exc.value.exit_code == 143
    midway = torch.load(resumed / "last.pt", weights_only=False)
    assert midway["step"] == 2
    assert not (resumed / "checkpoint.pt").exists()
    summary = run(resumed)
    assert summary["step"] == 4
    a, b = _final_weights(straight / "checkpoint.pt"), _final_weights(resumed / "checkpoint.pt")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(midway["model"][k], a[k]) for k in a)  # the resumed steps did train


def test_mrm_with_accumulation_and_non_finite_stop(synth, tmp_path):
    from alta.train import mrm

    cfg = {**mrm.DEFAULTS, **SMALL, "batch_size": 8, "accum_steps": 2, "max_steps": 2, "ckpt_every": 1}
    info = D.detect({})
    out = tmp_path / "m"
    summary = T.fit(_task(mrm, _args(synth, out), cfg, info), T.TrainConfig.from_dict(cfg), cfg, out, info)
    assert summary["step"] == 2 and summary["micro_batch_per_rank"] == 4
    assert (out / "checkpoint.pt").exists()

    bad = tmp_path / "bad"
    cfg = {**cfg, "max_steps": 4}
    task = _task(mrm, _args(synth, bad), cfg, info)
    calls, fwd = {"n": 0}, task.forward

    def forward(m, batch, dev):  # the real model; its loss turns non-finite at the 5th micro-batch (step 2)
        calls["n"] += 1
        out = fwd(m, batch, dev)
        if calls["n"] >= 5:
            out = {**out, "loss": out["loss"] * float("nan")}
        return out

    task.forward = forward
    with pytest.raises(T.NonFiniteLoss, match=r"non-finite loss at step 2 .*loss=nan.*loss_mim="):
        T.fit(task, T.TrainConfig.from_dict(cfg), cfg, bad, info)
    last = torch.load(bad / "last.pt", weights_only=False)
    assert last["step"] == 2 and not (bad / "checkpoint.pt").exists()
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())


# -- 2-process gloo DDP == one process on the same global batch --------------------------------------------------
SPECIAL = {"pad": 0, "unk": 1, "cls": 2, "mask": 3, "sep": 4}
# Heads and decoder: their gradients come only from L_GLOBAL, L_LOCAL (which need the cross-rank gather) and L_MIM.
# L_MLM is a per-rank mean over a random number of selected tokens, so DDP averaging differs from one process there.
CONTRASTIVE_PARAMS = ("projection_head.", "local_projection_head.", "logit_scale", "decoder_",
                      "bert_encoder.cls_projection_head.", "bert_encoder.local_projection_head.")


def _batch(n=4):
    g = torch.Generator().manual_seed(0)
    cf = torch.randn(n, 3, 128, 128, generator=g)
    views = torch.randn(n, 4, 3, 64, 64, generator=g)
    present = torch.ones(n, 4, dtype=torch.bool)
    present[1, 3] = present[2, 1] = False
    ids = torch.randint(5, 50, (n, 16), generator=g)
    mask = torch.ones_like(ids)
    # texts of different lengths, padded on the right to the longest: rank 1 of 2 gets rows 2-3, whose longest is 9
    for row, length in enumerate((16, 12, 9, 7)[:n]):
        ids[row, 0], ids[row, length - 1] = SPECIAL["cls"], SPECIAL["sep"]
        ids[row, length:], mask[row, length:] = SPECIAL["pad"], 0
    return cf, views, present, ids, mask


def _rank_batch(rank, world):
    """This rank's rows, with texts cut to the rank's own longest, as the Collator pads them."""
    cf, views, present, ids, mask = (t.chunk(world)[rank] for t in _batch())
    longest = int(mask.sum(dim=1).max())
    return cf, views, present, ids[:, :longest], mask[:, :longest]


def _content_masking(x, mask_ratio, generator=None):
    """Masking whose 'noise' is a function of each token's content, so it is identical in both runs."""
    from alta.models import vit

    n, length, d = x.shape
    keep = int(length * (1 - mask_ratio))
    ids_shuffle = torch.argsort(x.detach().sum(-1), dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    x_kept = torch.gather(x, 1, ids_shuffle[:, :keep].unsqueeze(-1).expand(-1, -1, d))
    assert vit.random_masking is not None
    return x_kept, (ids_restore >= keep).to(x.dtype), ids_restore


def _grads(rank, world, init_file):
    import alta.models.alta as alta_mod

    alta_mod.random_masking = _content_masking
    if world > 1:
        torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = build_alta(preset="tiny", vocab_size=50, special_ids=SPECIAL)
    model.eval()  # no dropout: the remaining randomness must not differ between the runs
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    b = _rank_batch(rank, world)
    net(*b)["loss"].backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()
             if p.requires_grad and p.grad is not None and n.startswith(CONTRASTIVE_PARAMS)}
    if world > 1:
        torch.distributed.destroy_process_group()
    return grads


def _ddp_worker(rank, world, init_file, out_dir):
    torch.save(_grads(rank, world, init_file), Path(out_dir) / f"grads{rank}.pt")


@pytest.mark.slow
def test_ddp_two_ranks_gives_single_process_gradients(tmp_path):
    """Two gloo ranks whose texts have different padded lengths (9 and 16 tokens) give the gradients of one process
    on all rows padded to 16: the local loss's cross-rank gather must cope with each rank's own length."""
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "rdzv"), str(tmp_path)), nprocs=2, join=True)
    single = _grads(0, 1, None)
    g0, g1 = (torch.load(tmp_path / f"grads{r}.pt") for r in (0, 1))
    assert single.keys() == g0.keys() and len(single) > 10
    assert any(k.startswith("logit_scale") for k in single)
    for k in single:
        assert torch.allclose(g0[k], g1[k], atol=1e-6), k  # DDP synchronised the ranks
        # relative to the tensor's largest entry: the shorter rank's matmuls sum in another order (float32 noise
        # is ~3e-6 of the largest entry here); a missed gather or a mask error changes gradients by far more
        err = (g0[k] - single[k]).abs().max() / single[k].abs().max().clamp_min(1e-6)
        assert err < 1e-4, (k, float(err))


@pytest.mark.slow
def test_sigkill_mid_training_then_rerun_resumes_to_the_same_final_step(synth, tmp_path):
    """A hard kill (no handler runs) loses at most the steps since the last periodic checkpoint: the rerun resumes
    from last.pt and ends at the configured final step; no checkpoint.pt appears before the run really ends."""
    import subprocess
    import time

    out = tmp_path / "killed"
    cfg = json.dumps({**SMALL, "max_steps": 12, "max_epochs": 20, "ckpt_every": 2, "val_max_rows": 4})
    cmd = [sys.executable, "-m", "alta.train.align", "--pairs", str(synth.pairs), "--images", str(synth.images),
           "--extract-dir", str(synth.extract), "--tokenizer", str(synth.tok), "--out", str(out),
           "--config-json", cfg]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (out / "last.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    proc.kill()
    proc.wait()
    if proc.returncode == 0:
        pytest.skip("the run finished before it could be killed")
    assert not (out / "checkpoint.pt").exists()
    killed_at = torch.load(out / "last.pt", map_location="cpu", weights_only=False)["step"]
    assert 0 < killed_at < 12
    assert subprocess.run(cmd, capture_output=True, timeout=600).returncode == 0
    final = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert final["step"] == 12
    assert [h["step"] for h in final["history"]][-1] == 12


def test_input_digest_reads_small_files_and_fingerprints_large_ones(tmp_path, monkeypatch):
    """Small inputs enter the resume digest by content; a file above the limit (an image store) by size and mtime,
    so a job start does not read a store of tens of GB on every rank."""
    from alta.train import stage

    monkeypatch.setattr(stage, "CONTENT_DIGEST_MAX_BYTES", 16)
    images = tmp_path / "extract"
    (images / "shards").mkdir(parents=True)
    table, store = images / "images.parquet", images / "shards" / "store.u8"
    table.write_bytes(b"rows v1")
    store.write_bytes(b"\x00" * 64)
    inputs = {"images": str(images), "tokenizer": str(tmp_path / "absent")}
    before = stage.input_digest(inputs)
    assert stage.input_digest(inputs) == before

    table.write_bytes(b"rows v2")  # a small file: a new content is a new digest, whatever its mtime
    os.utime(table, ns=(store.stat().st_mtime_ns,) * 2)
    assert stage.input_digest(inputs) != before
    table.write_bytes(b"rows v1")
    assert stage.input_digest(inputs) == before  # the same bytes again: the same digest

    st = store.stat()
    store.write_bytes(b"\x01" * 64)  # same size, restored mtime: a large file is not read
    os.utime(store, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert stage.input_digest(inputs) == before
    os.utime(store, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # rewritten later: a new digest
    assert stage.input_digest(inputs) != before


@pytest.mark.parametrize("stage_name", ["align", "mrm"])
def test_training_stages_put_their_image_stores_in_the_resume_digest(synth, tmp_path, stage_name):
    """The packed stores are read besides --images: re-extracted pixels under an unchanged images table must still
    change the digest that decides whether last.pt is resumed."""
    import importlib
    import shutil

    from alta.train import stage

    module = importlib.import_module(f"alta.train.{stage_name}")
    extract = tmp_path / "extract"
    shutil.copytree(synth.extract, extract)
    s = SimpleNamespace(pairs=synth.pairs, images=synth.images, extract=extract, tok=synth.tok)
    task = _task(module, _args(s, tmp_path / "out"), {**module.DEFAULTS, **SMALL}, D.detect({}))
    images = pd.read_parquet(synth.images)
    assert sorted(task.input_files.values()) == sorted({extract / f for f in images["store_file"]})
    inputs = {"pairs": str(s.pairs), "images": str(s.images)}
    before = stage.input_digest({**inputs, **task.input_files})
    store = extract / images["store_file"].iloc[0]
    data = bytearray(store.read_bytes())
    data[0] ^= 0xFF  # one pixel re-rendered; the table is the same
    store.write_bytes(bytes(data))
    assert stage.input_digest({**inputs, **task.input_files}) != before
