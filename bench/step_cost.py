"""Step cost on CPU: per-sample forward+backward time and FLOPs of ``align`` vs ``mrm`` vs full fine-tuning.

For each preset (``tiny``, ``vit_base``) three models are built with random weights (costs do not depend on the
values) and trained for a few steps on random inputs of the training shapes:

* ``align``: ALTA (:func:`alta.models.build.build_alta`, ``recommended``) with its frozen set (docs/method.md §2.3): four
  views (cf from its 2S target) x 25% visible patches, the text encoder on a clean and a masked copy of 128
  tokens, the MIM decoder, all four losses.
* ``full``: the same ALTA model with every parameter ``requires_grad`` (full fine-tuning).
* ``mrm``: MRM (:func:`alta.models.build.build_mrm`) on a 2S image and a 100-token report.

A step is ``loss = model(...)["loss"]; loss.backward()`` (no optimiser step: its cost scales with the trainable
parameters and is reported separately as the trainable fraction). FLOPs are counted on one step with
``torch.utils.flop_counter.FlopCounterMode`` (matmuls/convolutions/attention; what the counter registers), split
into forward and forward+backward. The ALTA/MRM compute over a whole run uses the paper's epochs (30 vs 200) at
equal samples per epoch, and at 0.6x ALTA rows per epoch (one row per study); docs/method.md §2.12 measured 0.43 and
0.26 against the paper's "< 1/5". Measured, never asserted.
"""

from __future__ import annotations

import gc
import logging

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.common import interleaved, ratio, row

SECTION = "step_cost"
SPECIAL = {"pad": 0, "cls": 2, "sep": 3, "mask": 4}
TEXT_LEN, REPORT_LEN = 128, 100  # align max_length, mrm max_length (alta.train.align / alta.train.mrm defaults)
VOCAB = {"tiny": (4000, 4000), "vit_base": (30522, 30000)}  # (CXR-BERT text, MRM report); tiny: a demo tokenizer
ALTA_EPOCHS, MRM_EPOCHS = 30, 200
ALTA_ROWS_PER_IMAGE = 0.6  # one ALTA row per study is about 0.6x the MIMIC image count (docs/method.md §2.12)


def _ids(b: int, t: int, vocab: int, g: torch.Generator, sep: bool) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(5, vocab, (b, t), generator=g)
    ids[:, 0] = SPECIAL["cls"]
    if sep:
        ids[:, -1] = SPECIAL["sep"]
    return ids, torch.ones(b, t, dtype=torch.long)  # full length: the reference pads to max_length anyway


def inputs(kind: str, cfg, b: int, vocab: int, seed: int = 0) -> tuple:
    g = torch.Generator().manual_seed(seed)
    target = torch.randn(b, 3, cfg.target_size, cfg.target_size, generator=g)
    if kind == "mrm":
        return (target, *_ids(b, REPORT_LEN, vocab, g, sep=False))
    views = torch.randn(b, 4, 3, cfg.img_size, cfg.img_size, generator=g)
    present = torch.ones(b, 4, dtype=torch.bool)
    return (target, views, present, *_ids(b, TEXT_LEN, vocab, g, sep=True))


def build(kind: str, preset: str):
    from alta.models.build import build_alta, build_mrm

    text_v, report_v = VOCAB[preset]
    torch.manual_seed(0)
    if kind == "mrm":
        quiet = logging.getLogger("alta.models.mrm")
        level = quiet.level
        quiet.setLevel(logging.ERROR)  # "no tokenizer vocabulary" warning: whole-word masking is irrelevant here
        try:
            return build_mrm(preset, vocab_size=report_v, pad_token_id=0, mask_token_id=3, cls_token_id=2).train()
        finally:
            quiet.setLevel(level)
    model = build_alta(preset, vocab_size=text_v, special_ids=SPECIAL).train()
    if kind == "full":
        for p in model.parameters():
            p.requires_grad_(True)
    return model


class Runner:
    """One model with its inputs: counts FLOPs once, then ``step()`` runs one timed forward+backward."""

    def __init__(self, kind: str, preset: str, batch: int):
        self.model = build(kind, preset)
        self.batch = batch
        self.x = inputs(kind, self.model.cfg, batch, VOCAB[preset][1 if kind == "mrm" else 0])
        self.steps = 0
        with FlopCounterMode(display=False) as fc:
            out = self.model(*self.x, generator=torch.Generator().manual_seed(0))
            self.flops_fwd = fc.get_total_flops()
            out["loss"].backward()
        self.flops_total = fc.get_total_flops()
        self.model.zero_grad(set_to_none=True)
        params = list(self.model.parameters())
        self.n_all = sum(p.numel() for p in params)
        self.n_train = sum(p.numel() for p in params if p.requires_grad)

    def step(self) -> None:
        self.steps += 1
        out = self.model(*self.x, generator=torch.Generator().manual_seed(self.steps))
        out["loss"].backward()
        self.model.zero_grad(set_to_none=True)

    def summary(self, t: dict) -> dict:
        b = self.batch
        return {"batch": b, **t, "ms_per_sample": 1000 * t["median_s"] / b,
                "gflops_fwd_per_sample": self.flops_fwd / b / 1e9,
                "gflops_fwd_bwd_per_sample": self.flops_total / b / 1e9, "params_total": self.n_all,
                "params_trainable": self.n_train, "trainable_fraction": self.n_train / self.n_all}


def measure(preset: str, batch: int, warmup: int, repeats: int) -> dict[str, dict]:
    """align, mrm and full fine-tuning of one preset, their steps interleaved (robust ratios on a shared CPU)."""
    runners = {k: Runner(k, preset, batch) for k in ("align", "mrm", "full")}
    times = interleaved({k: r.step for k, r in runners.items()}, repeats, warmup)
    out = {k: runners[k].summary(times[k]) for k in runners}
    del runners
    gc.collect()
    return out


def run(presets=("tiny", "vit_base"), quick: bool = False, threads: int | None = None) -> dict:
    from alta.models.params import breakdown, build_for_count

    details: dict = {"threads": threads or torch.get_num_threads(), "text_len": TEXT_LEN, "report_len": REPORT_LEN,
                     "epochs": {"align": ALTA_EPOCHS, "mrm": MRM_EPOCHS}}
    rows = []
    plan = {"tiny": (8, 2, 5 if quick else 15), "vit_base": (2, 0 if quick else 1, 1 if quick else 3)}
    for preset in presets:
        batch, warmup, repeats = plan[preset]
        r = measure(preset, batch, warmup, repeats)
        a, m, f = r["align"], r["mrm"], r["full"]
        r["time_align_vs_mrm"] = ratio(a["ms_per_sample"], m["ms_per_sample"])
        r["time_align_vs_full"] = ratio(a["ms_per_sample"], f["ms_per_sample"])
        r["flops_align_vs_mrm"] = ratio(a["gflops_fwd_bwd_per_sample"], m["gflops_fwd_bwd_per_sample"])
        r["flops_align_vs_full"] = ratio(a["gflops_fwd_bwd_per_sample"], f["gflops_fwd_bwd_per_sample"])
        run_scale = ALTA_EPOCHS / MRM_EPOCHS
        r["run_flops_alta_vs_mrm_equal_rows"] = r["flops_align_vs_mrm"] * run_scale
        r["run_flops_alta_vs_mrm_study_rows"] = r["flops_align_vs_mrm"] * run_scale * ALTA_ROWS_PER_IMAGE
        r["run_time_alta_vs_mrm_equal_rows"] = r["time_align_vs_mrm"] * run_scale
        if preset == "vit_base":  # the paper's 7.57 % is the faithful trainable set (docs/method.md §2.11)
            counts = breakdown(build_for_count("alta", "vit_base", "faithful"))
            r["trainable_fraction_faithful"] = counts["trainable"] / counts["total"]
        details[preset] = r
        for k, label in (("align", "align (ALTA, frozen set)"), ("mrm", "mrm"), ("full", "ALTA full fine-tuning")):
            rows.append(row(SECTION, f"{preset} {label}: fwd+bwd", r[k]["ms_per_sample"], "ms/sample",
                            f"batch {r[k]['batch']}, {r[k]['gflops_fwd_bwd_per_sample']:.3g} GFLOPs/sample "
                            f"(fwd {r[k]['gflops_fwd_per_sample']:.3g}), median of {len(r[k]['runs_s'])}"))
        rows += [
            row(SECTION, f"{preset} align / mrm per sample", r["time_align_vs_mrm"], "x time",
                f"FLOPs ratio {r['flops_align_vs_mrm']:.3g}"),
            row(SECTION, f"{preset} align / full fine-tuning per sample", r["time_align_vs_full"], "x time",
                f"FLOPs ratio {r['flops_align_vs_full']:.3g}"),
            row(SECTION, f"{preset} align trainable fraction", 100 * a["trainable_fraction"], "%",
                f"{a['params_trainable']:,d} of {a['params_total']:,d} (recommended mode)"
                + (f"; faithful {100 * r['trainable_fraction_faithful']:.2f} %" if preset == "vit_base" else "")),
            row(SECTION, f"{preset} ALTA/MRM compute over a run", r["run_flops_alta_vs_mrm_equal_rows"], "x",
                f"FLOPs, {ALTA_EPOCHS} vs {MRM_EPOCHS} epochs, equal rows/epoch; "
                f"{r['run_flops_alta_vs_mrm_study_rows']:.3g} at {ALTA_ROWS_PER_IMAGE}x rows; "
                f"time-based {r['run_time_alta_vs_mrm_equal_rows']:.3g}; paper claims < 0.2"),
        ]
    return {"rows": rows, "details": details, "targets": []}
