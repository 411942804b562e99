"""Training input cost: CPU time per 4-view ALTA sample delivered to the device, ours vs the reference pipeline.

Measured per core (``torch.set_num_threads(1)``, one process, warm page cache), on the same images:

* ``ours``: :class:`alta.train.loader.PairsDataset` (four central 448 crops read from the packed uint8 store through a
  memory map, sentence shuffle) + :class:`alta.train.loader.Collator` (stacking, tokenisation to 128 tokens): what the
  CPU pays when the augmentation runs on the GPU.
* ``ours + CPU augmentation``: the same followed by :class:`alta.train.augment.AltaTrainAugment` (vit_base geometry:
  448 target + 224 views, affine, jitter, normalise) run on CPU tensors: the cost if no GPU did that work.
* ``reference``: per view ``PIL.Image.open(jpeg).convert("RGB")`` then the reference ALTA transform of
  docs/method.md §2.9 in torchvision (cf: Resize(512, bicubic) + CenterCrop(448); cl/pf/pl: Resize(256, bicubic) +
  CenterCrop(224); then RandomAffine(20, translate 0.1, scale 0.95-1.05, shear 10), ColorJitter(0.8-1.2,
  0.8-1.2), Grayscale(3), ToTensor, Normalize(0.4785, 0.2834)), with the RNG re-seeded before each member of the
  (cf, pf) and (cl, pl) pairs as the reference does; then stacking and the same tokenisation as ours. Run on
  512-px JPEGs and on full-size (3000x2500, MIMIC-CXR-JPG-sized) JPEGs, both written at quality 95.
* ``tokenisation``: the Collator's tokenisation alone (part of both pipelines).

Images: large 16-bit demo DICOMs (``alta.demo.dataset.write_large``) rendered with our extraction (``mimic_jpg``): the
native 8-bit image is the full-size JPEG; its 512-short-side resize is both the 512-px JPEG and the store entry.
Target (docs/architecture.md): ours >= 20x cheaper than the 512-px reference per core.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.common import interleaved, ratio, row

SECTION = "loader"
SENTENCES = ["The cardiomediastinal silhouette is within normal limits.", "Heart size is normal.",
             "There is a small left pleural effusion with adjacent atelectasis.", "No pneumothorax is seen.",
             "Mild pulmonary vascular congestion is present.", "Osseous structures are intact.",
             "Lungs are otherwise clear without focal consolidation.", "Stable appearance of the right-sided PICC.",
             "No acute cardiopulmonary process.", "Compared to the prior study, the effusion has slightly increased."]
FULL_SHAPE = (3000, 2500)


def prepare(work: Path, n_images: int, n_rows: int, seed: int = 0):
    """Write full-size and 512-px JPEGs, a packed store, images/pairs tables and a tokenizer under ``work``."""
    import pandas as pd
    from PIL import Image

    from alta.data import render, store
    from alta.demo.dataset import write_large
    from alta.train.tokenizer import train_tokenizer

    rel = write_large(work / "dicom", n_images, seed=seed, shape=FULL_SHAPE)
    (work / "full").mkdir(parents=True, exist_ok=True)
    (work / "j512").mkdir(parents=True, exist_ok=True)
    img_rows = []
    with store.StoreWriter(work / "shards" / "m00" / "store.u8") as writer:
        for k, p in enumerate(rel):
            ds = render.read_dicom(work / "dicom" / p)
            arr, info = render.decode_pixels(ds)
            full = render.render(arr, ds, "mimic_jpg", info)
            small = render.resize_short_side(full, 512)
            iid = f"img{k:03d}"
            Image.fromarray(full).save(work / "full" / f"{iid}.jpg", quality=95)
            Image.fromarray(small).save(work / "j512" / f"{iid}.jpg", quality=95)
            img_rows.append({"image_id": iid, "subject_id": f"{k:03d}a", "study_id": f"9{k:03d}",
                             "store_file": "shards/m00/store.u8", "store_offset": writer.append(small),
                             "height": small.shape[0], "width": small.shape[1]})
    images = pd.DataFrame(img_rows).astype({"image_id": "string", "subject_id": "string", "study_id": "string"})
    ids = images["image_id"].tolist()
    rng = np.random.default_rng(seed)
    pair_rows = []
    for r in range(n_rows):
        text = " ".join(rng.permutation(SENTENCES)[:6])
        pair_rows.append({"subject_id": f"{r:04d}s", "study_id": f"5{r:04d}", "split": "train", "text": text,
                          "dicom_id": ids[r % n_images], "cl_dicom_id": ids[(r + 1) % n_images],
                          "pf_dicom_id": ids[(r + 2) % n_images], "pl_dicom_id": ids[(r + 3) % n_images]})
    pairs = pd.DataFrame(pair_rows).astype("string")
    tok = train_tokenizer(SENTENCES * 3, work / "tokenizer", vocab_size=400)
    return pairs, images, tok


def reference_transforms():
    """The reference ALTA training transforms (docs/method.md §2.9) for the current frontal and for the other views."""
    from torchvision import transforms as T

    def tail():
        return [T.RandomAffine(degrees=20, translate=(0.1, 0.1), scale=(0.95, 1.05), shear=10),
                T.ColorJitter(brightness=(0.8, 1.2), contrast=(0.8, 1.2)), T.Grayscale(3), T.ToTensor(),
                T.Normalize([0.4785] * 3, [0.2834] * 3)]

    bicubic = T.InterpolationMode.BICUBIC
    cf = T.Compose([T.Resize(512, interpolation=bicubic), T.CenterCrop(448), *tail()])
    other = T.Compose([T.Resize(256, interpolation=bicubic), T.CenterCrop(224), *tail()])
    return cf, other


class ReferenceLoader:
    """The reference per-sample pipeline over JPEG files (the comparison baseline; not part of alta)."""

    def __init__(self, pairs, image_dir: Path, collate, seed: int = 0):
        from alta.train.loader import VIEW_COLUMNS

        self.paths = [[str(image_dir / f"{r[c]}.jpg") for c in VIEW_COLUMNS] for _, r in pairs.iterrows()]
        self.texts = pairs["text"].tolist()
        self.collate, self.seed = collate, seed
        self.t_cf, self.t_other = reference_transforms()

    def sample(self, i: int):
        import random

        import torch
        from PIL import Image

        from alta.train.tokenizer import shuffle_sentences

        imgs = [Image.open(p).convert("RGB") for p in self.paths[i]]
        rng = np.random.default_rng([self.seed, i])
        s_front, s_lat = (int(x) for x in rng.integers(0, 2**31, 2))
        out = []
        for v, (img, s) in enumerate(zip(imgs, (s_front, s_lat, s_front, s_lat))):
            random.seed(s)  # the reference re-seeds before each view so that pairs share their parameters
            torch.manual_seed(s)
            out.append((self.t_cf if v == 0 else self.t_other)(img))
        return out, shuffle_sentences(self.texts[i], rng)

    def batch(self, idx: list[int]) -> dict:
        import torch

        samples = [self.sample(i) for i in idx]
        out = self.collate.tokenize([s[1] for s in samples])
        out["cf"] = torch.stack([s[0][0] for s in samples])
        out["views"] = torch.stack([torch.stack(s[0][1:]) for s in samples])
        return out


def _batches(n: int, bs: int) -> list[list[int]]:
    return [list(range(i, min(i + bs, n))) for i in range(0, n, bs)]


def run(work: Path, quick: bool = False) -> dict:
    import torch

    from alta.train import augment as A
    from alta.train import loader as D

    work = Path(work) / SECTION
    work.mkdir(parents=True, exist_ok=True)
    n_images, n_ours, n_ref512, n_full, bs, repeats = (4, 64, 16, 4, 16, 2) if quick else (8, 256, 64, 16, 16, 3)
    pairs, images, tok = prepare(work, n_images, max(n_ours, n_ref512, n_full))
    ds = D.PairsDataset(pairs, images, work, split="train", seed=0)
    collate = D.Collator(tok, 128)
    aug = A.AltaTrainAugment(224, 448, torch.Generator().manual_seed(0))
    ours_batches = _batches(n_ours, bs)

    def ours():
        for b in ours_batches:
            collate([ds[(i, 0)] for i in b])

    def ours_aug():
        for b in ours_batches:
            out = collate([ds[(i, 0)] for i in b])
            aug(out["views"], out["present"], "cpu")

    texts = [ds[(i, 0)]["text"] for i in range(n_ours)]

    def tokenise():
        for b in ours_batches:
            collate.tokenize([texts[i] for i in b])

    ref512 = ReferenceLoader(pairs, work / "j512", collate)
    ref_full = ReferenceLoader(pairs, work / "full", collate)
    res = {"batch_size": bs, "repeats": repeats, "crop": ds.crop, "n_images": n_images,
           "full_shape": list(FULL_SHAPE), "torch_threads": torch.get_num_threads()}
    counts = {"ours": n_ours, "ours_cpu_augment": n_ours, "tokenisation": n_ours, "reference_512": n_ref512,
              "reference_full": n_full}
    times = interleaved({"ours": ours, "ours_cpu_augment": ours_aug, "tokenisation": tokenise,
                         "reference_512": lambda: [ref512.batch(b) for b in _batches(n_ref512, bs)],
                         "reference_full": lambda: [ref_full.batch(b) for b in _batches(n_full, bs)]}, repeats)
    for name, t in times.items():
        n = counts[name]
        t.update(n_samples=n, per_sample_ms=1000 * t["median_s"] / n, samples_per_s=n / t["median_s"])
        res[name] = t
    cost = {k: res[k]["per_sample_ms"] for k in ("ours", "ours_cpu_augment", "reference_512", "reference_full")}
    res["ratio_ref512_vs_ours"] = ratio(cost["reference_512"], cost["ours"])
    res["ratio_full_vs_ours"] = ratio(cost["reference_full"], cost["ours"])
    res["ratio_ref512_vs_ours_cpu_augment"] = ratio(cost["reference_512"], cost["ours_cpu_augment"])
    res["ratio_full_vs_ref512"] = ratio(cost["reference_full"], cost["reference_512"])
    note_ours = "PairsDataset (4 x 448 crops from the store) + Collator (tokenise 128)"
    rows = [
        row(SECTION, "ours: store read + collate", res["ours"]["samples_per_s"], "samples/s/core", note_ours),
        row(SECTION, "ours + CPU-side augmentation", res["ours_cpu_augment"]["samples_per_s"], "samples/s/core",
            "AltaTrainAugment on CPU tensors (448 target + 4 x 224)"),
        row(SECTION, "tokenisation alone", res["tokenisation"]["samples_per_s"], "samples/s/core",
            "part of both pipelines"),
        row(SECTION, "reference, 512-px JPEG", res["reference_512"]["samples_per_s"], "samples/s/core",
            "PIL decode + torchvision transforms per view"),
        row(SECTION, f"reference, full-size JPEG {FULL_SHAPE[0]}x{FULL_SHAPE[1]}",
            res["reference_full"]["samples_per_s"], "samples/s/core", "PIL decode + torchvision transforms per view"),
        row(SECTION, "reference 512-px / ours", res["ratio_ref512_vs_ours"], "x cost", "target >= 20x"),
        row(SECTION, "reference full-size / ours", res["ratio_full_vs_ours"], "x cost"),
        row(SECTION, "reference 512-px / ours + CPU aug", res["ratio_ref512_vs_ours_cpu_augment"], "x cost",
            "if augmentation stayed on the CPU"),
        row(SECTION, "reference full-size / 512-px", res["ratio_full_vs_ref512"], "x cost"),
    ]
    v = res["ratio_ref512_vs_ours"]
    targets = [{"name": "training input: reference 512-px cost / ours per core", "value": v, "target": ">= 20",
                "met": v is not None and v >= 20}]
    return {"rows": rows, "details": res, "targets": targets}
