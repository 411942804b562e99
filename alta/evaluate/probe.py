"""`alta probe`: what the frozen towers know before (and after) alignment — a diagnostic for small-data runs.

ALTA trains only adapters, norms and heads on top of frozen encoders (docs/method.md §2.3), so alignment can only use
what the frozen features already carry. This command measures that, per checkpoint, on one current frontal image
and the training text of each study:

- ``img_cls_cos`` / ``img_mean_cos``: mean pairwise cosine of the image encoder's [CLS] output / mean patch output
  (final LN, eval transform, no masking, no projection head) over the studies. Near 1.0 a global image embedding
  built on it cannot tell images apart, whatever the heads learn.
- ``probe_<label>_<features>``: 5-fold cross-validated AUROC of a logistic regression (standardised features) that
  predicts a CheXpert label (1 = positive; 0, -1 and blank = not positive) from image [CLS], image patch mean,
  text [CLS] or the text's mean token state. 0.5 = no linear information.

Models: ``--model NAME=CHECKPOINT`` (an MRM or align checkpoint, kinds as in ``alta evaluate``; NAME ``random``
with CHECKPOINT ``none`` builds the preset with seed 0 and no weights, the reference point). Inputs: ``--pairs``,
``--images``, ``--extract-dir``, ``--tokenizer``, ``--text-dir`` (as for align), ``--chexpert`` the
``mimic-cxr-2.0.0-chexpert.csv.gz`` table, ``--split`` (default train). Output: a JSON file (``--out``) and a
table on stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch

from alta import io

log = logging.getLogger("alta.evaluate.probe")
LABELS = ("Cardiomegaly", "Pleural Effusion", "Edema")


def study_rows(pairs_path: str, chexpert_path: str, split: str):
    """One row per study of ``split`` (canonical frontal: PA first, then the smallest dicom_id) with its labels."""
    import pandas as pd

    from alta.evaluate.run import study_frontals

    rows = study_frontals(io.read_parquet(pairs_path), split, pairs_path)
    labels = pd.read_csv(chexpert_path, dtype={"subject_id": str, "study_id": str})
    missing = [c for c in ("study_id", *LABELS) if c not in labels.columns]
    if missing:
        raise ValueError(f"{chexpert_path}: missing columns {missing}")
    labels["study_id"] = labels["study_id"].str.lstrip("s")
    rows = rows.merge(labels[["study_id", *LABELS]], on="study_id", how="left")
    return rows.reset_index(drop=True)


def features(model, rows, images_path: str, extract_dir: str, tokenizer, batch: int = 64) -> dict[str, np.ndarray]:
    """Frozen-tower features: image [CLS] and image patch mean (after the final LN), text [CLS] and text mean
    token state."""
    from alta.models.text import masked_mean
    from alta.train import augment as A
    from alta.train.loader import ImageStore

    store = ImageStore(io.read_parquet(images_path), extract_dir)
    s = int(model.cfg.img_size)
    img, imean, tcls, tmean = [], [], [], []
    with torch.no_grad():
        for i in range(0, len(rows), batch):
            part = rows.iloc[i:i + batch]
            x = torch.stack([A.eval_transform(torch.tensor(np.asarray(store.read(d))), s)
                             for d in part["dicom_id"]])
            h = model.inference_states(x)
            img.append(h[:, 0])
            imean.append(h[:, 1:].mean(1))
            enc = tokenizer(part["text"].astype(str).tolist(), max_length=128, padding=True, truncation=True,
                            return_tensors="pt", return_token_type_ids=False)
            h = model.bert_encoder(enc["input_ids"], enc["attention_mask"])
            tcls.append(h[:, 0])
            tmean.append(masked_mean(h, enc["attention_mask"]))
    return {"img_cls": torch.cat(img).numpy(), "img_mean": torch.cat(imean).numpy(),
            "text_cls": torch.cat(tcls).numpy(), "text_mean": torch.cat(tmean).numpy()}


def mean_pairwise_cosine(x: np.ndarray) -> float:
    z = x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)
    c = z @ z.T
    n = len(z)
    return float((c.sum() - np.trace(c)) / (n * (n - 1)))


def probe_auroc(x: np.ndarray, y: np.ndarray, seed: int = 0) -> float | None:
    """5-fold CV AUROC of a standardised logistic regression; None when a class has fewer than 5 studies."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from alta.evaluate.metrics import auroc

    if min(int(y.sum()), int(len(y) - y.sum())) < 5:
        return None
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    p = cross_val_predict(clf, x, y, cv=StratifiedKFold(5, shuffle=True, random_state=seed), method="predict_proba")
    return float(auroc(y, p[:, 1]))


def probe_model(name: str, ckpt: str, args, rows) -> dict:
    from alta.evaluate.embedding import Embedder
    from alta.train.tokenizer import load_tokenizer

    if name == "random":
        from alta.models.build import build_alta
        from alta.train.tokenizer import special_ids

        tok = load_tokenizer(args.tokenizer)
        torch.manual_seed(0)
        model = build_alta(args.preset, text_dir=args.text_dir, tokenizer=tok, vocab_size=len(tok),
                           special_ids=special_ids(tok)).eval()
    else:
        emb = Embedder.from_checkpoint(name, ckpt, tokenizer_dir=args.tokenizer, text_dir=args.text_dir,
                                       mrm_options=json.loads(args.mrm_options), trust=name in (args.trust or []),
                                       mrm_preset=args.mrm_preset, mrm_overrides=json.loads(args.mrm_overrides))
        model, tok = emb.model, emb.tokenizer
    feats = features(model, rows, args.images, args.extract_dir, tok)
    out: dict = {"model": name, "checkpoint": ckpt, "n_studies": len(rows),
                 "img_cls_cos": mean_pairwise_cosine(feats["img_cls"]),
                 "img_mean_cos": mean_pairwise_cosine(feats["img_mean"])}
    for label in LABELS:
        y = (rows[label].to_numpy(dtype=float) == 1.0).astype(int)
        key = label.lower().replace(" ", "_")
        out[f"positive_{key}"] = int(y.sum())
        for f, x in feats.items():
            out[f"probe_{key}_{f}"] = probe_auroc(x, y)
    return out


def main(argv: list[str] | None = None) -> int:
    from alta.evaluate.run import add_model_inputs

    ap = argparse.ArgumentParser(prog="alta probe", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_inputs(ap, "mrm=..., align=..., or random=none (repeatable)")
    ap.add_argument("--chexpert", required=True, help="mimic-cxr-2.0.0-chexpert.csv(.gz)")
    ap.add_argument("--split", default="train")
    ap.add_argument("--preset", default="tiny", help="preset of the `random` reference model")
    ap.add_argument("--out", required=True, help="output JSON")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    rows = study_rows(args.pairs, args.chexpert, args.split)
    results = []
    for spec in args.model:
        name, _, ckpt = spec.partition("=")
        if name != "random" and not Path(ckpt).is_file():
            raise FileNotFoundError(f"--model {spec}: no such checkpoint")
        results.append(probe_model(name, ckpt, args, rows))
    io.write_json(args.out, {"split": args.split, "labels": list(LABELS), "results": results})
    keys = [k for k in results[0] if k.startswith(("img_cls_cos", "img_mean_cos", "probe_"))]
    print("| metric | " + " | ".join(r["model"] for r in results) + " |")
    print("|---|" + "---:|" * len(results))
    for k in keys:
        vals = ["n/a" if r[k] is None else f"{r[k]:.3f}" for r in results]
        print(f"| {k} | " + " | ".join(vals) + " |")
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    raise SystemExit(main())
