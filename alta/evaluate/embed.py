"""``alta embed`` and ``alta zeroshot``: apply a trained or imported model to new images and texts.

``alta embed (--checkpoint CKPT --tokenizer DIR [--kind align|mrm|official] | --model URI) [--images F ...]
[--texts T ...] --out embeddings.parquet``
    Writes one row per input: ``kind`` (image/text), ``source`` (the file path or the text), ``embedding``
    (list<float32>, L2-normalised, docs/method.md §2.10). Images may be DICOM (rendered with ``--render``, default
    ``mimic_jpg`` as in training), PNG or JPEG.

``alta zeroshot (--checkpoint CKPT --tokenizer DIR | --model URI) --images F ... --class NAME="prompt one|prompt two" ...
[--out scores.csv]``
    For each image, the cosine similarity to every class embedding (mean of the class prompts' unnormalised
    projections, then normalised: the reference rule) and the softmax over classes at temperature 1. Prints the
    table; writes it as CSV with ``--out``.

``--model`` takes an MLflow model instead of a checkpoint: ``models:/NAME/VERSION`` from the Model Registry (the
workflow's ``register_model`` stage registers one per align checkpoint; ``--tracking-uri`` or
``MLFLOW_TRACKING_URI`` names the store), ``runs:/RUN_ID/model`` or a local model folder. Its weights are read
with ``torch.load(weights_only=True)`` and embed exactly as the checkpoint they were exported from.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from alta import io
from alta.data import render
from alta.evaluate.embedding import Embedder
from alta.evaluate.prompts import TextProtocol, class_scores

TEXT = TextProtocol(clean="training", max_length=128, truncation=True)


def read_grey(path: str, mode: str) -> np.ndarray:
    """Any supported image file as 8-bit grey: DICOMs rendered with ``mode``, PNG/JPEG as stored."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file")
    name = p.name.lower()
    try:
        if name.endswith((".png", ".jpg", ".jpeg")):
            return render.read_raster(p)[0]
        ds = render.read_dicom(p)
        arr, info = render.decode_pixels(ds)
        return render.render(arr, ds, mode, info)
    except render.Reject as exc:
        raise ValueError(f"{p}: cannot use this image ({exc.reason}: {exc.detail})") from exc


def _common(ap: argparse.ArgumentParser) -> None:
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="checkpoint file (ours, MRM.pth or ALTA.pth)")
    src.add_argument("--model", help="an MLflow model: models:/NAME/VERSION, runs:/RUN_ID/model or a local model "
                                     "folder (alta register_model); replaces --checkpoint/--kind/--tokenizer")
    ap.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI"),
                    help="MLflow tracking/registry URI for --model models:/... (default: $MLFLOW_TRACKING_URI)")
    ap.add_argument("--kind", default="align", choices=["align", "mrm", "official"],
                    help="checkpoint kind (default: align, our ALTA checkpoint)")
    ap.add_argument("--tokenizer", help="tokenizer directory (saved beside our checkpoints); with --checkpoint")
    ap.add_argument("--render", default="mimic_jpg", choices=["mimic_jpg", "voi", "reference_rsna"],
                    help="DICOM rendering (default mimic_jpg, as in training)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--trust-checkpoint", action="store_true",
                    help="read --checkpoint keeping objects outside the allowlist as inert placeholders (a file you trust; nothing runs)")


def _embedder(ap: argparse.ArgumentParser, args) -> Embedder:
    if args.model:
        from alta.report import mlflow_model

        if args.kind != "align" or args.tokenizer:
            ap.error("--model holds an aligned model and its tokenizer: drop --kind and --tokenizer")

        import tempfile

        with tempfile.TemporaryDirectory(prefix="alta-model-") as tmp:  # everything is in memory once loaded
            try:
                local = mlflow_model.local_model_dir(args.model, args.tracking_uri, dst=tmp)
                weights, tok = mlflow_model.model_files(local)
            except Exception as exc:  # noqa: BLE001 - registry errors (unknown name/version) as one line
                ap.exit(2, f"alta: --model {args.model}: {str(exc).splitlines()[0]}\n")
            return mlflow_model.load_embedder(weights, tok, batch_size=args.batch_size)
    if not args.tokenizer:
        ap.error("--checkpoint needs --tokenizer")
    return Embedder.from_checkpoint(args.kind, args.checkpoint, args.tokenizer, batch_size=args.batch_size,
                                    trust=args.trust_checkpoint)


def embed(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="alta embed", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(ap)
    ap.add_argument("--images", nargs="*", default=[], help="image files")
    ap.add_argument("--texts", nargs="*", default=[], help="texts (quote each)")
    ap.add_argument("--out", required=True, help="output Parquet file")
    args = ap.parse_args(argv)
    if not args.images and not args.texts:
        ap.error("give --images and/or --texts")
    emb = _embedder(ap, args)
    rows = []
    if args.images:
        v = emb.images(read_grey(p, args.render) for p in args.images)
        rows += [{"kind": "image", "source": p, "embedding": e.tolist()} for p, e in zip(args.images, v)]
    if args.texts:
        t = emb.texts(args.texts, TEXT)
        rows += [{"kind": "text", "source": s, "embedding": e.tolist()} for s, e in zip(args.texts, t)]
    io.write_parquet(args.out, pd.DataFrame(rows))
    print(f"wrote {len(rows)} embeddings to {args.out}")
    return 0


def zeroshot(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="alta zeroshot", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(ap)
    ap.add_argument("--images", nargs="+", required=True, help="image files")
    ap.add_argument("--class", dest="classes", action="append", required=True, metavar='NAME="p1|p2"',
                    help="a class and its prompts separated by |, repeatable (at least two classes)")
    ap.add_argument("--out", help="write the scores as CSV")
    args = ap.parse_args(argv)
    classes = dict(c.split("=", 1) for c in args.classes)
    if len(classes) < 2:
        ap.error("zero-shot needs at least two --class entries")
    emb = _embedder(ap, args)
    v = emb.images(read_grey(p, args.render) for p in args.images)
    proj = {name: emb.texts([s.strip() for s in prompts.split("|") if s.strip()], TEXT, normalize=False)
            for name, prompts in classes.items()}
    sims = class_scores(v, proj, aggregation="mean_embedding")
    probs = torch.softmax(torch.from_numpy(sims), dim=1).numpy()
    table = pd.DataFrame({"image": args.images, "predicted": [list(classes)[i] for i in sims.argmax(1)]})
    for j, name in enumerate(classes):
        table[f"cos:{name}"] = sims[:, j]
        table[f"p:{name}"] = probs[:, j]
    print(table.to_string(index=False))
    if args.out:
        io.write_text(args.out, table.to_csv(index=False))
    return 0


def main(argv: list[str] | None = None) -> int:
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("embed", "zeroshot"):
        print("usage: python -m alta.evaluate.embed {embed|zeroshot} ...  (or: alta embed / alta zeroshot)")
        return 2
    with torch.inference_mode():
        return embed(argv[1:]) if argv[0] == "embed" else zeroshot(argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
