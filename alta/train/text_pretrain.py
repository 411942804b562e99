"""Stage `text_pretrain`: a CXR-BERT stand-in for runs that have no pretrained text encoder.

Why: ALTA's text tower is CXR-BERT-specialized with its backbone frozen (docs/method.md §2.3); only adapters, LayerNorms
and heads are trained. Without the hub (the demo, the tests, air-gapped sites) the alternative is a randomly
initialised BERT frozen the same way, whose outputs do not depend on what a report says in any way adapters could
use. CXR-BERT itself is a BERT pretrained by masked language modelling on radiology text and then given a [CLS]
projection trained with a sentence-level objective. This stage does the same at the preset's size, on the corpus's
own report texts (training split only, so nothing of the held-out studies is seen), and writes a directory in the
CXR-BERT-specialized layout that `align` and `evaluate` load with ``--text-dir`` exactly as they load the real model.
It is a stand-in, not a substitute: at the tiny size its token states learn the findings vocabulary, while its [CLS]
summary stays a weak description of the findings (the project's issue 3 has the probe numbers).

Objectives (both weight 1 by default), on two views of each report, each a random subset (at least
``min_sentence_fraction``) of its sentences in random order:
- MLM on view b: BERT masking (``mlm_probability`` 0.15 of non-special tokens; ``mlm_replace`` 80 % [MASK],
  10 % random, 10 % kept), cross-entropy on the selected positions.
- View contrast: symmetric InfoNCE between ``cls_projection_head([CLS])`` of the two views over the batch,
  learnable temperature clamped like ALTA's. Matching partial, reordered views of a report is a text-only
  analogue of CXR-BERT's findings-impression matching: it makes the [CLS] summary depend on what the sentences say.

Inputs: ``--pairs`` pairs.parquet (unique ``text`` of the ``split`` rows), ``--tokenizer`` (the run's tokenizer; its
vocabulary becomes the model's). ``--images`` / ``--extract-dir`` are not used.
Outputs in ``--out``: ``model/`` (``config.json`` with ``projection_size``, ``model.safetensors`` with ``bert.*``,
``cls.predictions.*`` and ``cls_projection_head.*`` keys, ``tokenizer`` files), written atomically after training,
plus the engine's ``checkpoint.pt``, ``last.pt`` (resume), ``loss_curve.png``, ``train_summary.json``,
``tracking.jsonl``. The exported config carries the preset's ``text_dropout`` (what ALTA trains with).
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from alta import io
from alta.models.alta import LOGIT_SCALE_MAX
from alta.models.text import mlm_mask
from alta.train import distributed, stage
from alta.train.tokenizer import load_tokenizer, special_ids, split_sentences

log = logging.getLogger("alta.train.text_pretrain")

DEFAULTS: dict = stage.defaults("text_pretrain")  # alta/recipes.py

class TextPretrainModel(nn.Module):
    """BertForMaskedLM of the preset geometry + ``cls_projection_head`` + a log temperature.

    ``forward(view_a, view_b, masked_ids, labels, length_groups)`` with ``view_*`` = (ids (B,T), attention_mask
    (B,T)) and the MLM corruption ``masked_ids``/``labels`` of ``view_b``: returns ``dict(loss_contrastive, loss_mlm,
    logit_scale)``. ``length_groups`` only changes how the encoder is batched (:meth:`encode`), not the computation.
    """

    def __init__(self, cfg, vocab_size: int, pad_token_id: int, dropout: float, init_std: float,
                 attention_dropout: float | None = None) -> None:
        from transformers import BertForMaskedLM

        from alta.models.adapters import ProjectionHead
        from alta.models.presets import resolve_config
        from alta.models.text import _bert_config, _hf_like_init

        super().__init__()
        self.cfg = resolve_config(cfg, {"text_dropout": dropout, "text_init_std": init_std})
        config = _bert_config(self.cfg, vocab_size, pad_token_id)
        if attention_dropout is not None:  # None: the attention probabilities get ``dropout`` too, as in BERT
            config.attention_probs_dropout_prob = attention_dropout
        self.mlm = BertForMaskedLM(config)
        self.cls_projection_head = ProjectionHead(self.cfg.text_hidden, self.cfg.proj_dim)
        self.cls_projection_head.apply(lambda m: _hf_like_init(m, init_std))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def encode(self, ids: torch.Tensor, attention_mask: torch.Tensor, length_groups: int = 1) -> torch.Tensor:
        """BERT's last hidden states (N, T, H) for the rows of ``ids``, run as ``length_groups`` passes over rows of
        similar length, each cut after its group's last attended position (zeros beyond it).

        Rows never attend to each other in BERT, so without dropout the result is that of one padded pass over all
        rows; with dropout the masks are drawn per group, so it is the same in distribution, not bit for bit (and
        ``length_groups`` is part of the resume hash). The point is the padding: report views vary several-fold in
        length (demo reports: median 42 tokens, longest 129), and three passes instead of one padded pass make the
        demo's step 1.4x faster (bench/results.md, text_stand_in)."""
        n, T = ids.shape
        order = torch.argsort(attention_mask.sum(1), stable=True)
        parts = []
        for rows in torch.tensor_split(order, max(1, min(length_groups, n))):
            L = int(attention_mask[rows].any(0).nonzero().max()) + 1
            h = self.mlm.bert(input_ids=ids[rows, :L], attention_mask=attention_mask[rows, :L]).last_hidden_state
            parts.append(F.pad(h, (0, 0, 0, T - L)))
        return torch.cat(parts)[torch.argsort(order)]

    def forward(self, view_a, view_b, masked_ids: torch.Tensor, labels: torch.Tensor,
                length_groups: int = 1) -> dict[str, torch.Tensor]:
        from alta.models.losses import global_contrastive_loss
        from alta.models.text import masked_lm_loss

        # one encoder call over [view a; view b; masked view b] (3B rows), split by length (see encode)
        B, T = view_a[0].shape[0], max(view_a[0].shape[1], view_b[0].shape[1])
        rows = [(view_a[0], view_a[1]), (view_b[0], view_b[1]), (masked_ids, view_b[1])]
        ids = torch.cat([F.pad(i, (0, T - i.shape[1]), value=0) for i, _ in rows])
        mask = torch.cat([F.pad(m, (0, T - m.shape[1]), value=0) for _, m in rows])
        h = self.encode(ids, mask, length_groups)
        z = F.normalize(self.cls_projection_head(h[:2 * B, 0]), dim=-1)
        loss_contrastive = global_contrastive_loss(z[:B], z[B:], self.logit_scale)
        sel = labels != -100
        loss_mlm = masked_lm_loss(self.mlm.cls(h[2 * B:, :labels.shape[1]][sel]), labels[sel])
        return dict(loss_contrastive=loss_contrastive, loss_mlm=loss_mlm,
                    logit_scale=self.logit_scale.detach().exp())

    @torch.no_grad()
    def clamp_logit_scale(self) -> None:
        self.logit_scale.clamp_(0.0, LOGIT_SCALE_MAX)


class TextDataset(torch.utils.data.Dataset):
    """Unique report texts, sorted (a stable order whatever the pairs table's row order); item ``(i, epoch)`` gives
    two sentence views of text i drawn from a generator seeded by (seed, epoch, i), as ``PairsDataset`` does."""

    def __init__(self, texts: list[str], seed: int = 0, min_fraction: float = 0.5) -> None:
        self.texts = sorted(set(texts))
        self.seed, self.min_fraction = seed, min_fraction

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, key) -> dict:
        i, epoch = key if isinstance(key, tuple) else (key, 0)
        rng = np.random.default_rng([self.seed, epoch, i])
        text = self.texts[i]
        return {"index": int(i), "view_a": sentence_view(text, rng, self.min_fraction),
                "view_b": sentence_view(text, rng, self.min_fraction)}


def sentence_view(text: str, rng: np.random.Generator, min_fraction: float) -> str:
    """A random subset (>= ``min_fraction`` of the sentences, at least one) of ``text``'s sentences, shuffled."""
    sents = split_sentences(text)
    if len(sents) <= 1:
        return text.strip()
    k = int(rng.integers(max(1, math.ceil(min_fraction * len(sents))), len(sents) + 1))
    return " ".join(sents[j] for j in rng.permutation(len(sents))[:k])


def train_texts(pairs, split: str) -> list[str]:
    rows = pairs[pairs["split"] == split] if split else pairs
    texts = rows["text"].dropna().astype(str)
    texts = texts[texts.str.strip() != ""]
    if texts.empty:
        raise ValueError(f"no report texts in split {split!r} of the pairs table")
    return texts.tolist()


def build_task(args, cfg: dict, tok, model, info):
    """The training split's report texts, the two sentence views per text and the step's forward (MLM masking)."""
    from alta.models.build import param_groups
    from alta.train.engine import Task

    sids = special_ids(tok)
    pairs = io.read_parquet(args.pairs)
    ds = TextDataset(train_texts(pairs, cfg["split"]), cfg["seed"], cfg["min_sentence_fraction"])
    log.info("text pretraining on %d unique report texts (split %s)", len(ds), cfg["split"])
    collate = _ViewCollate(tok, cfg["max_length"])
    gen = torch.Generator()
    replace = tuple(float(x) for x in cfg["mlm_replace"])

    def forward(m, batch, dev):
        masked, labels = mlm_mask(batch["b_ids"], batch["b_mask"], sids, len(tok), cfg["mlm_probability"],
                                  replace, gen)
        out = m((batch["a_ids"].to(dev), batch["a_mask"].to(dev)), (batch["b_ids"].to(dev), batch["b_mask"].to(dev)),
                masked.to(dev), labels.to(dev), cfg["length_groups"])
        out["loss"] = cfg["contrastive_weight"] * out["loss_contrastive"] + cfg["mlm_weight"] * out["loss_mlm"]
        return out

    return Task(model=model, dataset=ds, groups=list(range(len(ds))), collate=collate, forward=forward,
                param_groups=lambda m: param_groups(m, weight_decay=cfg["weight_decay"], mode="recommended"),
                generator=gen, after_step=lambda m: m.clamp_logit_scale(),
                meta={"preset": cfg["preset"], "mode": "recommended", "tokenizer_dir": "tokenizer",
                      "stage": "text_pretrain"})


def _preset(cfg: dict):
    from alta.models.presets import resolve_config

    return resolve_config(cfg["preset"], cfg.get("model_overrides") or None)


class _ViewCollate:
    """Tokenise both views of a batch, padded to the batch's longest view (at most ``max_length``):
    ``{index, a_ids, a_mask, b_ids, b_mask}``."""

    def __init__(self, tokenizer, max_length: int) -> None:
        self.tok, self.max_length = tokenizer, max_length

    def __call__(self, samples: list[dict]) -> dict:
        out = {"index": torch.tensor([s["index"] for s in samples], dtype=torch.long)}
        for v in ("a", "b"):
            enc = self.tok([s[f"view_{v}"] for s in samples], max_length=self.max_length, padding="longest",
                           truncation=True, return_tensors="pt", return_token_type_ids=False)
            out[f"{v}_ids"], out[f"{v}_mask"] = enc["input_ids"].long(), enc["attention_mask"].long()
        return out


def export_text_encoder(checkpoint: str | Path, dest: str | Path, tokenizer_dir: str | Path) -> Path:
    """Write ``dest`` (a CXR-BERT-specialized-layout directory) from a text_pretrain ``checkpoint.pt``."""
    from safetensors.torch import save_file

    from alta.models.checkpoints import read_checkpoint

    ck = read_checkpoint(checkpoint)
    args = ck["args"]
    tok = load_tokenizer(tokenizer_dir)
    model = TextPretrainModel(_preset(args), len(tok), tok.pad_token_id, args["dropout"], args["init_std"],
                              args.get("attention_dropout"))
    model.load_state_dict(ck["model"])
    base = _preset(args)
    config = model.mlm.config
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = base.text_dropout
    config.projection_size = base.proj_dim
    config.architectures = ["BertForMaskedLM"]
    config.alta_stand_in = True  # align names this text encoder a stand-in, not CXR-BERT (recipe differences)
    weights = {f"bert.{k}": v for k, v in model.mlm.bert.state_dict().items()}
    weights.update({f"cls.{k}": v for k, v in model.mlm.cls.state_dict().items()
                    if k not in ("predictions.decoder.weight", "predictions.decoder.bias")})  # tied, saved once
    weights.update({f"cls_projection_head.{k}": v for k, v in model.cls_projection_head.state_dict().items()})
    dest = Path(dest)
    with io.atomic_dir(dest) as tmp:
        config.to_json_file(str(tmp / "config.json"))
        save_file({k: v.contiguous().clone() for k, v in weights.items()}, str(tmp / "model.safetensors"))
        tok.save_pretrained(str(tmp))
    return dest


def parser() -> argparse.ArgumentParser:
    return stage.parser("text_pretrain", __doc__, images=False)


def main(argv: list[str] | None = None) -> int:
    # parse
    parsed = stage.parse("text_pretrain", parser(), argv)
    if parsed is None:  # --print-defaults
        return 0
    args, cfg = parsed
    inputs = {"pairs": str(args.pairs), "tokenizer": str(args.tokenizer)}
    with distributed.session() as info:
        # build: a BERT of the preset's size (random init), then the texts
        tok = load_tokenizer(args.tokenizer)
        if special_ids(tok).get("mask") is None:
            raise ValueError(f"{args.tokenizer}: the tokenizer has no [MASK] token (needed for MLM)")
        torch.manual_seed(cfg["seed"])  # same initial weights on every rank and every (re)start
        model = TextPretrainModel(_preset(cfg), len(tok), tok.pad_token_id, cfg["dropout"], cfg["init_std"],
                                  cfg["attention_dropout"])
        task = build_task(args, cfg, tok, model, info)
        if info.is_main:
            stage.save_tokenizer(tok, Path(args.out) / "tokenizer")
        # train and write
        rc = stage.train("text_pretrain", cfg, inputs, task, args.out, info)
        if rc == 0 and info.is_main:  # the CXR-BERT-layout directory align and evaluate load with --text-dir
            out = Path(args.out)
            export_text_encoder(out / "checkpoint.pt", out / "model", out / "tokenizer")
            log.info("wrote the text encoder directory %s (load it with --text-dir)", out / "model")
    return rc


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    raise SystemExit(main())
