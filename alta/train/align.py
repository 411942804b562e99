"""Stage `align`: ALTA adapter alignment of the MRM encoder and CXR-BERT (docs/method.md §2).

Inputs: ``--pairs`` pairs.parquet (train rows; validate rows for best.pt), ``--images`` images.parquet,
``--extract-dir`` (folder the ``store_file`` paths are relative to), ``--mrm-weights`` an MRM checkpoint (ours or
``MRM.pth``) or ``none``, ``--text-dir`` a local CXR-BERT-specialized directory or ``none`` (preset-sized BERT,
random init), ``--tokenizer`` a tokenizer directory (alta tokenizer, or the CXR-BERT one).

Outputs in ``--out``: ``checkpoint.pt`` (final weights; ``{'model', 'optimizer', 'epoch', 'step', 'scaler', 'args',
'preset', 'mode', 'tokenizer_dir'}``, ALTA key names, docs/method.md §5.2), ``best.pt`` (highest validation
image->text Recall@5 on up to ``val_max_rows`` validate studies; the final weights if there is no validate split),
``last.pt`` (resume point), ``epochNN.pt`` (every ``save_every_epochs``), ``tokenizer/`` (``tokenizer_dir`` in the
checkpoints is relative to the checkpoint's folder), ``loss_curve.png``, ``train_summary.json``, ``tracking.jsonl``.

Launch: ``python -m alta.train.align ...`` (one process) or ``torchrun --standalone --nproc_per_node=N -m alta.train.align ...``
or ``srun python -m alta.train.align ...``. ``batch_size`` is the global batch per optimiser step (96 in the paper) and is
split over the ranks. Exit codes: 0 done, 3 non-finite loss, 143/138 checkpoint saved after SIGTERM/SIGUSR1.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from alta.evaluate import metrics as M
from alta.train import augment as A
from alta.train import distributed, stage
from alta.train import loader as altadata
from alta.train.tokenizer import load_tokenizer, special_ids

log = logging.getLogger("alta.train.align")

DEFAULTS: dict = stage.defaults("align")  # docs/method.md §2.9; alta/recipes.py


def retrieval_validator(pairs, images, extract_dir, collate, img_size: int, mean: float, std: float,
                        device: torch.device, max_rows: int, batch: int = 64):
    """Image->text Recall@5 on validate studies (one row per study, first ``max_rows`` by study_id); None if < 2.

    Scored by ``alta.evaluate.metrics.recall_at_k`` like the held-out benchmark: identical texts count as positives
    and ties rank pessimistically, so a collapsed (constant) embedding scores chance and never becomes best.pt."""
    val = pairs[pairs["split"] == "validate"].sort_values(["study_id", "dicom_id"]).drop_duplicates("study_id")
    val = val.head(max_rows)
    if len(val) < 2:
        return None
    ds = altadata.PairsDataset(val, images, extract_dir, split=None, shuffle_text=False)
    _, positives = M.duplicate_positive_sets(ds.texts)

    def validate(model) -> dict:
        imgs, txts = [], []
        for s in range(0, len(ds), batch):
            b = collate([ds[i] for i in range(s, min(s + batch, len(ds)))])
            x = A.resize(b["views"][:, 0:1].to(device).float().div_(255.0), img_size)
            imgs.append(F.normalize(model.encode_image(A.to_model_input(x, mean, std)).float(), dim=-1))
            t = model.encode_text(b["input_ids"].to(device), b["attention_mask"].to(device), normalize=True)
            txts.append(F.normalize(t.float(), dim=-1))
        sim = (torch.cat(imgs) @ torch.cat(txts).T).cpu().numpy()
        k = min(5, len(ds))
        r = M.recall_at_k(sim, positives, ks=[k])
        return {"metric": "retrieval_r5", "value": r[f"R@{k}"], "n": len(ds)}

    return validate


def read_mrm_weights(path: str, trust: bool = False) -> dict | None:
    """The MRM state dict align starts from (ours or a released ``MRM.pth``, weights only unless ``trust``); None
    for ``none``."""
    from alta.models.checkpoints import extract_state_dict, read_checkpoint

    if path in (None, "none"):
        return None
    if not Path(path).is_file():
        raise FileNotFoundError(f"--mrm-weights {path}: no such file")
    return extract_state_dict(read_checkpoint(path, trust=trust))


def build_task(args, cfg: dict, tok, model, info):
    """The training pairs, the step's forward (augmentation on the device) and the validation retrieval."""
    from alta.models.build import param_groups
    from alta.train.engine import Task

    S, T2 = model.cfg.img_size, model.cfg.target_size
    pairs, images = altadata.load_tables(args.pairs, args.images)
    ds = altadata.PairsDataset(pairs, images, args.extract_dir, split="train", seed=cfg["seed"],
                               shuffle_text=cfg["shuffle_sentences"], lateral_sampling=cfg["lateral_sampling"])
    collate = altadata.Collator(tok, cfg["max_length"])
    gen = torch.Generator()
    aug = A.AltaTrainAugment(S, T2, gen, cfg["mean"], cfg["std"], augment=cfg["augment"])
    device = torch.device(info.device)

    def forward(m, batch, dev):
        cf_t, views, present = aug(batch["views"], batch["present"], dev)
        return m(cf_t, views, present, batch["input_ids"].to(dev), batch["attention_mask"].to(dev))

    validate = retrieval_validator(pairs, images, args.extract_dir, altadata.Collator(tok, cfg["max_length"]), S,
                                   cfg["mean"], cfg["std"], device, cfg["val_max_rows"])
    text_dir = None if args.text_dir in (None, "none") else args.text_dir
    return Task(model=model, dataset=ds, groups=ds.study, collate=collate, forward=forward,
                param_groups=lambda m: param_groups(m, weight_decay=cfg["weight_decay"]),
                input_files=ds.store.files(), generator=gen, after_step=lambda m: m.clamp_logit_scales(),
                validate=validate,
                meta={"preset": cfg["preset"], "mode": cfg["mode"], "tokenizer_dir": "tokenizer",
                      "stage": "align", "inputs": stage.weight_files(mrm_weights=args.mrm_weights, text_dir=text_dir)})


def parser() -> argparse.ArgumentParser:
    p = stage.parser("align", __doc__)
    p.add_argument("--mrm-weights", default="none", help="MRM checkpoint to initialise the encoder/decoder, or none")
    p.add_argument("--text-dir", default="none", help="local CXR-BERT directory, or none (preset-sized random BERT)")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="read --mrm-weights keeping objects outside the allowlist as inert placeholders (a file you trust; nothing runs)")
    return p


def text_encoder_kind(text_dir: str | None) -> str:
    """``cxr_bert`` (a user's CXR-BERT directory), ``stand_in`` (exported by alta text_pretrain) or ``random``."""
    if text_dir in (None, "none"):
        return "random"
    cfg = Path(text_dir) / "config.json"
    try:
        return "stand_in" if json.loads(cfg.read_text()).get("alta_stand_in") else "cxr_bert"
    except (OSError, ValueError):
        return "cxr_bert"


def main(argv: list[str] | None = None) -> int:
    from alta.models.build import build_alta

    # parse
    parsed = stage.parse("align", parser(), argv)
    if parsed is None:  # --print-defaults
        return 0
    args, cfg = parsed
    inputs = {"pairs": str(args.pairs), "tokenizer": str(args.tokenizer), "mrm_weights": str(args.mrm_weights),
              "text_dir": str(args.text_dir), "text_encoder": text_encoder_kind(args.text_dir),
              "images": str(args.images)}
    if cfg["accum_steps"] != 1:
        log.warning("align with accum_steps=%d: gradient accumulation shrinks the contrastive negative set "
                    "(docs/method.md §2.9); prefer more devices or a smaller batch", cfg["accum_steps"])
    with distributed.session() as info:
        # build: the frozen MRM encoder and text encoder with their adapters, then the data
        tok = load_tokenizer(args.tokenizer)
        torch.manual_seed(cfg["seed"])  # same initial weights on every rank and every (re)start
        model = build_alta(preset=cfg["preset"], mode=cfg["mode"], tokenizer=tok, vocab_size=len(tok),
                           special_ids=special_ids(tok), text_dir=None if args.text_dir == "none" else args.text_dir,
                           mrm_checkpoint=read_mrm_weights(args.mrm_weights, args.trust_checkpoint),
                           overrides=cfg["model_overrides"] or None, options=cfg["model_options"] or None)
        task = build_task(args, cfg, tok, model, info)
        if info.is_main:
            stage.save_tokenizer(tok, Path(args.out) / "tokenizer")
        # train and write
        return stage.train("align", cfg, inputs, task, args.out, info)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    raise SystemExit(main())
