"""Stage `mrm`: masked record modelling pretraining (docs/method.md §1).

Inputs: ``--pairs`` pairs.parquet (gives each subject's split and each study's training text), ``--images``
images.parquet (every image of the training split's subjects is a row, frontal and lateral: the reference uses no
view filter), ``--extract-dir`` (the packed store's folder), ``--tokenizer`` a tokenizer directory with [PAD],
[CLS] and [MASK] (alta tokenizer), optional ``--sections`` sections.parquet for ``text_source: full_report``.

Text per image (config ``text_source``): ``findings_impression`` (recommended; the pairs.parquet ``text`` of the
study) or ``full_report`` (faithful; sections.parquet ``full_text``). Images of studies without a text are not used;
the counts are logged (``dataset_*`` params). ``"[CLS] "`` is prepended and the text is tokenised, truncated and
padded to ``max_length`` (100) tokens without [SEP] (§1.2).

Outputs in ``--out``: ``checkpoint.pt`` (``{'model', 'optimizer', 'epoch', 'step', 'scaler', 'args', 'preset',
'mode', 'tokenizer_dir'}``, MRM key names, docs/method.md §5.3), ``last.pt``, ``epochNN.pt``, ``tokenizer/``,
``loss_curve.png``, ``train_summary.json``, ``tracking.jsonl``.

Launch as for ``alta align`` (python -m, torchrun, srun). ``batch_size`` is the global batch per optimiser step
(256) = per-rank batch x ranks x ``accum_steps``. Exit codes: 0 done, 3 non-finite loss, 143/138 after
SIGTERM/SIGUSR1 with a checkpoint saved.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from alta import io
from alta.train import augment as A
from alta.train import distributed, stage
from alta.train import loader as altadata
from alta.train.tokenizer import load_tokenizer

log = logging.getLogger("alta.train.mrm")

DEFAULTS: dict = stage.defaults("mrm")  # docs/method.md §1.5; alta/recipes.py


def mrm_texts(pairs, text_source: str, sections_path: str | None) -> dict[str, str]:
    """study_id -> training text for MRM."""
    if text_source == "findings_impression":
        t = pairs[["study_id", "text"]].dropna().drop_duplicates("study_id")
        return dict(zip(t["study_id"].astype(str), t["text"].astype(str)))
    if text_source == "full_report":
        if not sections_path:
            raise ValueError("text_source full_report needs --sections sections.parquet")
        sec = io.read_parquet(sections_path)
        if "full_text" not in sec.columns:
            raise ValueError(f"{sections_path}: no full_text column")
        sec = sec[sec["full_text"].notna() & (sec["full_text"].astype(str).str.strip() != "")]
        return dict(zip(sec["study_id"].astype(str), sec["full_text"].astype(str)))
    raise ValueError(f"text_source must be findings_impression or full_report, not {text_source!r}")


def mrm_collator(tok, max_length: int) -> altadata.Collator:
    """``[CLS] report`` without [SEP], padded to ``max_length`` in every batch (§1.2; see :class:`Collator`)."""
    return altadata.Collator(tok, max_length, prefix_cls=True, pad_to_max_length=True)


def build_task(args, cfg: dict, tok, model, info):
    """The training split's images with their texts and the step's forward (augmentation on the device)."""
    from alta.models.build import param_groups
    from alta.train.engine import Task

    pairs, images = altadata.load_tables(args.pairs, args.images)
    subjects = set(pairs.loc[pairs["split"] == cfg["split"], "subject_id"].astype(str))
    ds = altadata.MrmDataset(images, mrm_texts(pairs, cfg["text_source"], args.sections), subjects, args.extract_dir)
    log.info("MRM dataset: %s", ds.stats)
    gen = torch.Generator()
    aug = A.MrmTrainAugment(model.cfg.target_size, gen, cfg["mean"], cfg["std"])

    def forward(m, batch, dev):
        return m(aug(batch["image"], dev), batch["input_ids"].to(dev), batch["attention_mask"].to(dev))

    collate = mrm_collator(tok, cfg["max_length"])
    return Task(model=model, dataset=ds, groups=ds.study, collate=collate, forward=forward, generator=gen,
                input_files=ds.store.files(),
                param_groups=lambda m: param_groups(m, weight_decay=cfg["weight_decay"]),
                meta={"preset": cfg["preset"], "mode": cfg["mode"], "tokenizer_dir": "tokenizer", "stage": "mrm",
                      "dataset": ds.stats})


def parser() -> argparse.ArgumentParser:
    p = stage.parser("mrm", __doc__)
    p.add_argument("--sections", help="sections.parquet (needed for text_source: full_report)")
    return p


def main(argv: list[str] | None = None) -> int:
    from alta.models.build import build_mrm

    # parse
    parsed = stage.parse("mrm", parser(), argv)
    if parsed is None:  # --print-defaults
        return 0
    args, cfg = parsed
    inputs = {"pairs": str(args.pairs), "tokenizer": str(args.tokenizer), "sections": str(args.sections),
              "images": str(args.images)}
    with distributed.session() as info:
        # build: the model (random init), then the data
        tok = load_tokenizer(args.tokenizer)
        torch.manual_seed(cfg["seed"])  # same initial weights on every rank and every (re)start
        model = build_mrm(preset=cfg["preset"], mode=cfg["mode"], tokenizer=tok, vocab_size=len(tok),
                          pad_token_id=tok.pad_token_id, mask_token_id=tok.mask_token_id,
                          cls_token_id=tok.cls_token_id,
                          overrides=cfg["model_overrides"] or None, options=cfg["model_options"] or None)
        task = build_task(args, cfg, tok, model, info)
        if info.is_main:
            stage.save_tokenizer(tok, Path(args.out) / "tokenizer")
        # train and write
        return stage.train("mrm", cfg, inputs, task, args.out, info)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    raise SystemExit(main())
