"""Training data: datasets over pairs.parquet + images.parquet + the packed uint8 store, the study-unique batch
sampler, and batch collation (docs/method.md §1.2, §2.5, §2.9; docs/data.md §4.3, §5).

Inputs
------
* ``pairs.parquet`` (docs/data.md §4.5; ids are strings): one row per current frontal image; ``dicom_id``,
  ``cl_dicom_id``, ``pf_dicom_id``, ``pl_dicom_id`` (nullable) name the four views; ``text``; ``split``.
* ``images.parquet`` (alta.data.extract): ``image_id`` -> ``store_file`` (relative to the extract folder),
  ``store_offset``, ``height``, ``width``. The store is raw C-order uint8 (h, w) arrays, read through ``np.memmap``
  with no decoding.

What a sample is
----------------
* ALTA (:class:`PairsDataset`): the central ``crop`` x ``crop`` square of each view, ``crop = round(448/512 * short
  side)`` (Resize(512)+CenterCrop(448) of the reference equals the central 448 of our 512-short-side store; the
  Resize(256)+CenterCrop(224) of the other views is the same square at half size, done on the device). Absent views
  are zeros with ``present = False``. The report text has its sentences shuffled on every draw; the shuffle is a
  pure function of (seed, epoch, row), so it does not depend on worker count or on resuming.
* MRM (:class:`MrmDataset`): one row per image of the training split (frontal and lateral, the reference uses no
  view filter), the central square of side ``short side``; the study's text.

Batches (:class:`Collator`): ``views`` uint8 (B,4,C,C) or ``image`` uint8 (B,C,C), ``present`` bool (B,4),
``input_ids``/``attention_mask`` int64 (B, T) with T the batch's longest text, at most ``max_length`` (MRM:
T = ``max_length``), ``index`` int64 (B,). Resizing, augmentation and
normalisation happen on the training device (alta.train.augment).

:class:`StudyBatchSampler` builds global batches (per-rank batch x world size) from a (seed, epoch) permutation;
with ``unique_study`` no global batch holds two rows of one study (contrastive false negatives); every rank takes
its slice of the same global batch (DistributedSampler-equivalent sharding); incomplete batches are dropped.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from alta import io
from alta.train.tokenizer import shuffle_sentences

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # tokenisation runs inside forked loader workers
log = logging.getLogger("alta.train.loader")

VIEW_COLUMNS = ("dicom_id", "cl_dicom_id", "pf_dicom_id", "pl_dicom_id")  # [cf, cl, pf, pl]
CROP_FRACTION = 448 / 512
LATERAL_VIEWS = {"LATERAL", "LL"}
LATERAL_MEANINGS = {"lateral", "left lateral"}


class ImageStore:
    """image_id -> uint8 array from the packed store; memmaps are opened lazily (once per process)."""

    def __init__(self, images: pd.DataFrame, extract_dir: str | Path):
        need = {"image_id", "store_file", "store_offset", "height", "width"}
        if missing := need - set(images.columns):
            raise ValueError(f"images table lacks columns {sorted(missing)}")
        dup = images["image_id"].duplicated()
        if dup.any():
            raise ValueError(f"images table has duplicate image_id values, e.g. {images['image_id'][dup].iloc[0]!r}")
        self.extract_dir = Path(extract_dir)
        self.row = {iid: i for i, iid in enumerate(images["image_id"].astype(str))}
        self.file = images["store_file"].astype(str).to_numpy()
        self.off = images["store_offset"].to_numpy(np.int64)
        self.h = images["height"].to_numpy(np.int64)
        self.w = images["width"].to_numpy(np.int64)
        self._mm: dict[str, np.memmap] = {}

    def files(self) -> dict[str, Path]:
        """The store files the table points at, by their ``store_file`` name (for the resume digest)."""
        return {f"store_file:{f}": self.extract_dir / f for f in sorted(set(self.file))}

    def __getstate__(self):  # memmaps are reopened in each worker process
        return {k: v for k, v in self.__dict__.items() if k != "_mm"} | {"_mm": {}}

    def __contains__(self, image_id) -> bool:
        return image_id in self.row

    def short_side(self, image_id: str) -> int:
        r = self.row[image_id]
        return int(min(self.h[r], self.w[r]))

    def read(self, image_id: str) -> np.ndarray:
        """The stored (h, w) uint8 image as a read-only view of the memmap (no copy, no decode)."""
        r = self.row[image_id]
        f = self.file[r]
        mm = self._mm.get(f)
        if mm is None:
            path = self.extract_dir / f
            if not path.exists():
                raise FileNotFoundError(f"packed store {path} (image {image_id}) not found")
            mm = self._mm[f] = np.memmap(path, np.uint8, mode="r")
        off, h, w = int(self.off[r]), int(self.h[r]), int(self.w[r])
        if off + h * w > mm.shape[0]:
            raise ValueError(f"{self.extract_dir / f}: image {image_id} at offset {off} ({h}x{w}) runs past the end")
        return mm[off:off + h * w].reshape(h, w)

    def center_square(self, image_id: str, side: int, fraction: float = 1.0) -> np.ndarray:
        """Central square of ``round(fraction * short side)`` px, resized to ``side`` only if sizes differ."""
        img = self.read(image_id)
        h, w = img.shape
        c = int(round(min(h, w) * fraction))
        top, left = (h - c) // 2, (w - c) // 2
        sq = img[top:top + c, left:left + c]
        if c != side:  # off-size image (another extract size): rare path, antialiased resize on the CPU
            t = torch.from_numpy(np.ascontiguousarray(sq)).float()[None, None]
            t = torch.nn.functional.interpolate(t, size=(side, side), mode="bilinear", antialias=True)
            sq = t.round().clamp(0, 255).to(torch.uint8)[0, 0].numpy()
        return sq


def _mode_short_side(store: ImageStore, ids) -> int:
    counts = Counter(store.short_side(i) for i in ids)
    if not counts:
        raise ValueError("no images to read")
    return counts.most_common(1)[0][0]


def _check_ids(df: pd.DataFrame, store: ImageStore, cols, name: str) -> None:
    for col in cols:
        ids = df[col].dropna().astype(str)
        missing = ids[~ids.map(store.__contains__)]
        if len(missing):
            raise ValueError(f"{name}: {len(missing)} {col} values are not in images.parquet, "
                             f"e.g. {missing.iloc[0]!r}")


class PairsDataset(torch.utils.data.Dataset):
    """ALTA rows: four uint8 view crops, presence flags and the sentence-shuffled report text."""

    def __init__(self, pairs: pd.DataFrame, images: pd.DataFrame, extract_dir: str | Path, split: str | None = "train",
                 seed: int = 0, shuffle_text: bool = True, lateral_sampling: str = "first", crop: int | None = None):
        if lateral_sampling not in {"first", "random"}:
            raise ValueError(f"lateral_sampling must be 'first' or 'random', not {lateral_sampling!r}")
        df = pairs if split is None else pairs[pairs["split"] == split]
        self.df = df.reset_index(drop=True)
        if len(self.df) == 0:
            raise ValueError(f"pairs table has no rows for split {split!r}")
        if self.df["text"].isna().any():
            raise ValueError(f"pairs table has {int(self.df['text'].isna().sum())} rows without text")
        self.store = ImageStore(images, extract_dir)
        _check_ids(self.df, self.store, VIEW_COLUMNS, "pairs.parquet")
        self.view_ids = [[None if pd.isna(v) else str(v) for v in self.df[c]] for c in VIEW_COLUMNS]
        self.study = self.df["study_id"].astype(str).to_numpy()
        self.texts = self.df["text"].astype(str).tolist()
        self.seed, self.shuffle_text, self.lateral_sampling = seed, shuffle_text, lateral_sampling
        self.crop = crop or int(round(_mode_short_side(self.store, self.view_ids[0]) * CROP_FRACTION))
        self.laterals = _laterals_by_study(images) if lateral_sampling == "random" else {}
        self.prior_study = (self.df["prior_study_id"].astype("string").tolist()
                            if "prior_study_id" in self.df else [None] * len(self.df))

    def __len__(self) -> int:
        return len(self.df)

    def _lateral(self, i: int, col: int, study, rng) -> str | None:
        first = self.view_ids[col][i]
        if self.lateral_sampling == "first" or first is None or study is None or pd.isna(study):
            return first
        cands = self.laterals.get(str(study), [first])
        return cands[int(rng.integers(len(cands)))]

    def __getitem__(self, key) -> dict:
        i, epoch = key if isinstance(key, tuple) else (key, 0)
        rng = np.random.default_rng([self.seed, epoch, i])
        ids = [self.view_ids[0][i], self._lateral(i, 1, self.study[i], rng), self.view_ids[2][i],
               self._lateral(i, 3, self.prior_study[i], rng)]
        views = [None if v is None else self.store.center_square(v, self.crop, CROP_FRACTION) for v in ids]
        text = shuffle_sentences(self.texts[i], rng) if self.shuffle_text else self.texts[i]
        return {"views": views, "text": text, "index": i}


def _laterals_by_study(images: pd.DataFrame) -> dict[str, list[str]]:
    """study_id -> sorted lateral image_ids (ViewPosition, else the ViewCodeSequence meaning; docs/data.md §4.1)."""
    vp = images.get("ViewPosition", pd.Series(pd.NA, index=images.index)).astype("string").str.upper()
    meaning = images.get("ViewCodeSequence_CodeMeaning", pd.Series(pd.NA, index=images.index)).astype("string")
    lat = vp.isin(LATERAL_VIEWS).fillna(False) | (vp.isna() & meaning.str.lower().isin(LATERAL_MEANINGS).fillna(False))
    sub = images.loc[lat.to_numpy(), ["study_id", "image_id"]].astype(str).sort_values(["study_id", "image_id"])
    return sub.groupby("study_id")["image_id"].apply(list).to_dict()


class MrmDataset(torch.utils.data.Dataset):
    """MRM rows: every image of the chosen split's subjects whose study has a text; the central uint8 square."""

    def __init__(self, images: pd.DataFrame, texts_by_study: dict[str, str], subjects: set[str],
                 extract_dir: str | Path, side: int | None = None):
        img = images.astype({"subject_id": str, "study_id": str, "image_id": str})
        in_split = img["subject_id"].isin(subjects)
        has_text = img["study_id"].isin(set(texts_by_study))
        self.stats = {"images": int(len(img)), "not_in_split": int((~in_split).sum()),
                      "in_split_without_text": int((in_split & ~has_text).sum())}
        self.df = img[in_split & has_text].reset_index(drop=True)
        self.stats["rows"] = int(len(self.df))
        if len(self.df) == 0:
            raise ValueError(f"MRM dataset is empty: {self.stats}")
        self.store = ImageStore(images, extract_dir)
        self.ids = self.df["image_id"].tolist()
        self.study = self.df["study_id"].to_numpy()
        self.texts = [texts_by_study[s] for s in self.study]
        self.side = side or _mode_short_side(self.store, self.ids)

    def __len__(self) -> int:
        return len(self.df)

    def __getitem__(self, key) -> dict:
        i = key[0] if isinstance(key, tuple) else key
        return {"image": self.store.center_square(self.ids[i], self.side), "text": self.texts[i], "index": i}


class Collator:
    """Stack uint8 images and tokenise the batch's texts in one call: cut at ``max_length``, padded to the batch's
    longest text (ALTA and the text stand-in mask padding everywhere, so padding further only costs compute: align
    ran 12 % faster).

    ``prefix_cls`` (MRM, docs/method.md §1.2): prepend the string "[CLS] " and tokenise without the tokenizer's own
    special-token template, so the sequence is ``[CLS] report…`` with no [SEP]. ``pad_to_max_length`` (MRM): pad
    every batch to ``max_length``, as the method does; MRM's report masking spares the last position and its
    ``faithful`` loss averages over every position, pads included, so its result depends on the padded length.
    """

    def __init__(self, tokenizer, max_length: int, prefix_cls: bool = False, pad_to_max_length: bool = False):
        self.tok, self.max_length, self.prefix_cls = tokenizer, max_length, prefix_cls
        self.padding = "max_length" if pad_to_max_length else "longest"

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        if self.prefix_cls:
            texts = [f"{self.tok.cls_token} {t}" for t in texts]
        enc = self.tok(texts, max_length=self.max_length, padding=self.padding, truncation=True,
                       add_special_tokens=not self.prefix_cls, return_tensors="pt", return_token_type_ids=False)
        return {"input_ids": enc["input_ids"].long(), "attention_mask": enc["attention_mask"].long()}

    def __call__(self, samples: list[dict]) -> dict:
        B = len(samples)
        out = self.tokenize([s["text"] for s in samples])
        out["index"] = torch.tensor([s["index"] for s in samples], dtype=torch.long)
        if "views" in samples[0]:
            c = next(v for v in samples[0]["views"] if v is not None).shape[0]
            views = np.empty((B, 4, c, c), np.uint8)  # every slot is written below (zeros for absent views)
            present = np.zeros((B, 4), bool)
            for b, s in enumerate(samples):
                for v, arr in enumerate(s["views"]):
                    if arr is not None:
                        views[b, v] = arr
                        present[b, v] = True
                    else:
                        views[b, v] = 0
            out["views"], out["present"] = torch.from_numpy(views), torch.from_numpy(present)
        else:
            out["image"] = torch.from_numpy(np.stack([s["image"] for s in samples]))
        return out


class StudyBatchSampler(torch.utils.data.Sampler):
    """Deterministic per-(seed, epoch) global batches, sharded by rank; optionally study-unique; drop_last.

    Yields lists of ``(row, epoch)`` keys (the datasets use the epoch to seed per-draw randomness).
    ``accum``: batches per epoch are rounded down to a multiple of it (whole optimiser steps).
    """

    def __init__(self, groups, batch_size: int, world_size: int = 1, rank: int = 0, seed: int = 0,
                 unique_study: bool = True, accum: int = 1):
        self.groups = pd.factorize(pd.Series(list(groups), dtype="string"))[0]
        self.n, self.bs, self.world, self.rank, self.seed = len(self.groups), batch_size, world_size, rank, seed
        self.unique, self.G = unique_study, batch_size * world_size
        self.num_batches = (self.n // self.G) // accum * accum
        if self.num_batches == 0:
            raise ValueError(f"{self.n} rows are too few for one global batch of {self.G} (x{accum} accumulation)")
        if unique_study and len(set(self.groups.tolist())) < self.G:
            raise ValueError(f"batch_unique_study: only {len(set(self.groups.tolist()))} studies for a global batch "
                             f"of {self.G}; lower the batch size or disable batch_unique_study")
        self.epoch, self.start = 0, 0
        self._cache: tuple[int, list[np.ndarray]] | None = None

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch; ``start_batch`` skips batches already consumed (resume)."""
        self.epoch, self.start = epoch, start_batch

    def __len__(self) -> int:
        return self.num_batches - self.start

    def global_batches(self, epoch: int) -> list[np.ndarray]:
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        batches = ([perm[k * self.G:(k + 1) * self.G] for k in range(self.num_batches)] if not self.unique
                   else self._unique_batches(perm))
        self._cache = (epoch, batches)
        return batches

    def _unique_batches(self, perm: np.ndarray) -> list[np.ndarray]:
        g, G, pos, deferred, batches = self.groups, self.G, 0, [], []
        for _ in range(self.num_batches):
            batch, seen, keep = [], set(), []
            for i in deferred:  # rows pushed out of earlier batches go first, in order
                if len(batch) == G or g[i] in seen:
                    keep.append(i)
                else:
                    batch.append(i)
                    seen.add(g[i])
            while len(batch) < G and pos < self.n:
                i = perm[pos]
                pos += 1
                if g[i] in seen:
                    keep.append(i)
                else:
                    batch.append(i)
                    seen.add(g[i])
            deferred = keep
            if len(batch) < G:  # epoch tail dominated by a few studies: top up with other studies' rows
                for i in perm:
                    if len(batch) == G:
                        break
                    if g[i] not in seen:
                        batch.append(i)
                        seen.add(g[i])
            batches.append(np.asarray(batch))
        return batches

    def __iter__(self):
        batches = self.global_batches(self.epoch)
        lo, hi = self.rank * self.bs, (self.rank + 1) * self.bs
        for b in batches[self.start:]:
            yield [(int(i), self.epoch) for i in b[lo:hi]]


def load_tables(pairs_path: str | Path, images_path: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read pairs.parquet and images.parquet, with identifiers as strings (contracts)."""
    pairs, images = io.read_parquet(pairs_path), io.read_parquet(images_path)
    for df, name, cols in ((pairs, pairs_path, ("subject_id", "study_id", "dicom_id", "text", "split")),
                           (images, images_path, ("image_id", "study_id", "subject_id", "store_file"))):
        if missing := [c for c in cols if c not in df.columns]:
            raise ValueError(f"{name}: missing columns {missing}")
    for c in ("subject_id", "study_id", *VIEW_COLUMNS, "prior_study_id"):
        if c in pairs:
            pairs[c] = pairs[c].astype("string")
    for c in ("subject_id", "study_id", "image_id"):
        images[c] = images[c].astype("string")
    return pairs, images


def make_loader(dataset, sampler: StudyBatchSampler, collate, num_workers: int = 0, pin_memory: bool = False,
                seed: int = 0):
    """DataLoader over ``sampler``; its own seeded generator keeps the global torch RNG untouched (resume)."""
    return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=num_workers,
                                       pin_memory=pin_memory, generator=torch.Generator().manual_seed(seed),
                                       persistent_workers=False, prefetch_factor=4 if num_workers else None)
