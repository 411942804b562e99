"""The text stand-in's training step (``alta.train.text_pretrain``, ``tiny`` preset): what the demo recipe's speed-ups
buy, as ratios of interleaved timings in one run.

Inputs are demo-style reports (``alta.demo.reports.mimic_report`` on random latent states, sectioned by
``alta.data.sections`` into the findings + impression text the stage trains on), a WordPiece tokenizer trained on
them (``alta.train.tokenizer``), and the stage's own dataset and collate (two random sentence views per report,
padded to the batch's longer view). A step is the stage's forward (MLM masking of view b, both losses) and backward,
batch 16, one thread. Variants:

* ``one pass``: ``length_groups: 1``, the three encoder passes of a step (view a, view b, masked view b) each
  padded to the batch's longest view — what the stage did before ``length_groups``;
* ``length groups``: ``length_groups: 3`` (the default), the 48 rows in 3 passes of similar length;
* ``+ no attention dropout``: also ``attention_dropout: 0`` (the demo recipe), so that attention can use the fused
  kernel instead of dropping out a (B, heads, T, T) tensor.

Measured, never asserted.
"""

from __future__ import annotations

import tempfile

import numpy as np
import torch

from bench.common import interleaved, ratio, row

SECTION = "text_stand_in"
BATCH = 16


def corpus(n: int, seed: int = 0) -> list[str]:
    """``n`` findings + impression texts of demo reports."""
    from alta.data.sections import load_overrides, parse_report, training_text
    from alta.demo.findings import evolve, random_initial
    from alta.demo.reports import mimic_report

    rng = np.random.default_rng(seed)
    texts, none = [], load_overrides("none")
    while len(texts) < n:
        prior = random_initial(rng) if rng.random() < 0.6 else None
        state = evolve(prior, rng) if prior is not None else random_initial(rng)
        report, _ = mimic_report(state, prior, ["PA", "LATERAL"], rng)
        text = training_text(parse_report(str(len(texts)), report, none), report)[0]
        if text:
            texts.append(text)
    return texts


class Variant:
    """One model configuration with its batches; ``step()`` runs the next timed forward+backward."""

    def __init__(self, tok, texts: list[str], length_groups: int, attention_dropout: float | None, seed: int = 0):
        from alta.models.presets import PRESETS
        from alta.models.text import mlm_mask
        from alta.train import text_pretrain as tp
        from alta.train.tokenizer import special_ids

        torch.manual_seed(seed)
        self.model = tp.TextPretrainModel(PRESETS["tiny"], len(tok), tok.pad_token_id, 0.1, 0.02,
                                          attention_dropout).train()
        ds = tp.TextDataset(texts, seed)
        collate = tp._ViewCollate(tok, 128)
        order = np.random.default_rng(seed).permutation(len(ds))
        self.batches = [collate([ds[(int(i), 0)] for i in order[k:k + BATCH]])
                        for k in range(0, len(order) - BATCH + 1, BATCH)]
        self.sids, self.vocab, self.groups = special_ids(tok), len(tok), length_groups
        self.mlm_mask, self.gen, self.k = mlm_mask, torch.Generator().manual_seed(seed), 0

    def step(self) -> None:
        b = self.batches[self.k % len(self.batches)]
        self.k += 1
        masked, labels = self.mlm_mask(b["b_ids"], b["b_mask"], self.sids, self.vocab, 0.15, (0.8, 0.1, 0.1),
                                       self.gen)
        out = self.model((b["a_ids"], b["a_mask"]), (b["b_ids"], b["b_mask"]), masked, labels, self.groups)
        (out["loss_contrastive"] + out["loss_mlm"]).backward()
        self.model.zero_grad(set_to_none=True)


def run(quick: bool = False) -> dict:
    from alta.train.tokenizer import load_tokenizer, train_tokenizer

    texts = corpus(120 if quick else 320)
    with tempfile.TemporaryDirectory() as d:
        train_tokenizer(texts, d, vocab_size=2000)
        tok = load_tokenizer(d)
    lengths = [len(tok(t)["input_ids"]) for t in texts]
    variants = {"one pass": Variant(tok, texts, 1, None), "length groups": Variant(tok, texts, 3, None),
                "+ no attention dropout": Variant(tok, texts, 3, 0.0)}
    times = interleaved({k: v.step for k, v in variants.items()}, repeats=10 if quick else 60, warmup=3)
    ms = {k: 1000 * t["median_s"] for k, t in times.items()}
    base = ms["one pass"]
    rows = [row(SECTION, f"tiny text stand-in step, {k}", v, "ms/step",
                f"batch {BATCH}, median of {len(times[k]['runs_s'])}") for k, v in ms.items()]
    rows += [row(SECTION, "length groups: speed-up", ratio(base, ms["length groups"]), "x",
                 "same losses and gradients without dropout (tests/test_textpretrain.py)"),
             row(SECTION, "length groups + no attention dropout: speed-up",
                 ratio(base, ms["+ no attention dropout"]), "x", "the demo recipe")]
    details = {"texts": len(texts), "tokens_median": float(np.median(lengths)), "tokens_max": int(max(lengths)),
               "batch": BATCH, "times": times}
    return {"rows": rows, "details": details, "targets": []}
