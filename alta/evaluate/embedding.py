"""Image and text embeddings on the inference path of docs/method.md §2.10, for every benchmark and for ``alta embed``.

:class:`Embedder` wraps an ALTA model in ``eval()`` (CXR-BERT dropout is 0.25: forgetting eval makes results
noisy, docs/evaluation.md §6.10) and computes, in fp32 and without masking:

* images: grey uint8 -> Resize(S*256/224, bicubic, antialias) -> CenterCrop(S) -> 3 channels ->
  Normalize(0.4785, 0.2834) (``alta.train.augment.eval_transform``) -> ``encode_image`` (CLS of the current-frontal
  embedding, ``projection_head``, L2-normalised);
* texts: cleaned per the benchmark's :class:`~alta.evaluate.prompts.TextProtocol`, tokenised, ->
  ``encode_text`` (``cls_projection_head`` of [CLS]; normalised or not).

Three checkpoint kinds load into the same ALTA architecture:

* ``align``: our checkpoint (``{'model', 'preset', 'mode', 'args', ...}``), loaded strictly;
* ``mrm``: an MRM checkpoint (ours or the released ``MRM.pth``), loaded into a freshly initialised ALTA (seed 0) with
  the docs/method.md §5.5 rules: the MRM encoder *before* alignment (adapters are zero, heads untrained);
* ``official``: the released ``ALTA.pth`` at the ``vit_base`` preset, loaded strictly (docs/method.md §5.5).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from alta import io
from alta.data import render
from alta.data.sections import clean_text
from alta.evaluate.prompts import TextProtocol
from alta.evaluate.textclean import gloria_clean
from alta.train import augment

log = logging.getLogger("alta.evaluate")


def _clean(texts: Sequence[str], how: str) -> list[str]:
    if how == "gloria":
        return [gloria_clean(t) for t in texts]
    if how == "training":
        return [clean_text(t) for t in texts]
    return [str(t) for t in texts]


class Embedder:
    """Batched, deterministic embeddings from one model; see the module docstring for the exact path."""

    def __init__(self, model, tokenizer, *, batch_size: int = 64, device: str | torch.device = "cpu",
                 preset: str = "?", checkpoint_sha256: str = "", kind: str = "align"):
        self.model = model.eval().to(device)
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.preset = preset
        self.kind = kind
        self.checkpoint_sha256 = checkpoint_sha256
        self.img_size = int(model.cfg.img_size)
        self.max_positions = int(model.bert_encoder.bert.config.max_position_embeddings)
        self.last_text_record: dict = {}
        self._file_cache: dict[str, np.ndarray] = {}  # path -> embedding (images_from_files)

    # -- construction ---------------------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, kind: str, path: str, tokenizer_dir: str, text_dir: str | None = None,
                        batch_size: int = 64, device: str = "cpu", mrm_options: dict | None = None,
                        trust: bool = False, mrm_preset: str | None = None,
                        mrm_overrides: dict | None = None) -> "Embedder":
        """Build the ALTA architecture for ``kind`` (align / mrm / official) and load ``path`` into it.

        ``mrm_options`` (kind ``mrm`` only): ALTA options laid over the MRM checkpoint's own, normally the align
        stage's ``model_options``, so that the baseline embeds the same features (pooling) as the aligned model.
        ``mrm_preset`` / ``mrm_overrides`` (kind ``mrm``): the geometry of an MRM file that records none (a released
        MRM.pth), normally the align stage's, so that the baseline is the aligned model's architecture.
        ``trust``: the user's opt-in to read a file that holds more than weights, such objects kept as inert placeholders (``read_checkpoint``)."""
        from alta.models.build import build_alta
        from alta.models.checkpoints import extract_state_dict, load_checkpoint, read_checkpoint
        from alta.train.tokenizer import load_tokenizer, special_ids

        tok = load_tokenizer(tokenizer_dir)
        obj = read_checkpoint(path, trust=trust)
        meta = obj if isinstance(obj, dict) else {}
        args = meta.get("args") if isinstance(meta.get("args"), dict) else {}
        preset = meta.get("preset") or (mrm_preset if kind == "mrm" else None) or "vit_base"
        mode = meta.get("mode") or ("faithful" if kind == "official" else "recommended")
        common = dict(preset=preset, mode=mode, tokenizer=tok, vocab_size=len(tok), special_ids=special_ids(tok),
                      overrides=args.get("model_overrides") or None, options=args.get("model_options") or None)
        torch.manual_seed(0)  # untrained heads of the `mrm` baseline are the same in every run
        if kind == "mrm":
            common["options"] = {**(common["options"] or {}), **(mrm_options or {})} or None
            if not meta.get("preset"):
                common["overrides"] = {**(common["overrides"] or {}), **(mrm_overrides or {})} or None
            model = build_alta(**common, text_dir=text_dir, mrm_checkpoint=extract_state_dict(obj))
        elif kind in ("align", "official"):
            model = build_alta(**common)
            load_checkpoint(obj, model)
        else:
            raise ValueError(f"unknown model kind {kind!r}; expected align, mrm or official")
        emb = cls(model, tok, batch_size=batch_size, device=device, preset=preset, kind=kind,
                  checkpoint_sha256=io.sha256_file(path))
        emb.provenance = checkpoint_provenance(path, meta, kind)
        return emb

    def describe(self) -> dict:
        return {"kind": self.kind, "preset": self.preset, "checkpoint_sha256": self.checkpoint_sha256,
                **getattr(self, "provenance", {}),
                "transform": f"Resize({round(self.img_size * 256 / 224)}, bicubic, antialias) -> "
                             f"CenterCrop({self.img_size}) -> Grayscale(3) -> Normalize({augment.ALTA_MEAN}, "
                             f"{augment.ALTA_STD})",
                "contamination_risk": self.kind == "official"}

    # -- images ---------------------------------------------------------------------------------------------
    def images(self, grey: Iterable[np.ndarray]) -> np.ndarray:
        """(N, P) float32 L2-normalised embeddings of grey uint8 images (any size)."""
        out, batch = [], []
        for img in grey:
            batch.append(augment.eval_transform(torch.tensor(np.asarray(img)), self.img_size))  # copies read-only memmaps
            if len(batch) == self.batch_size:
                out.append(self._encode_images(batch))
                batch = []
        if batch:
            out.append(self._encode_images(batch))
        if not out:
            return np.zeros((0, 0), np.float32)
        return np.concatenate(out)

    def _encode_images(self, batch: list[torch.Tensor]) -> np.ndarray:
        with torch.no_grad():
            v = self.model.encode_image(torch.stack(batch).to(self.device)).float()
        return F.normalize(v, dim=-1).cpu().numpy()

    def images_from_files(self, paths: Iterable[str]) -> np.ndarray:
        """JPG/PNG files (CheXpert benchmarks): read as 8-bit grey, no re-rendering.

        Embeddings are kept per path for this model (deterministic in eval mode), so benchmarks sharing images (the
        demo's multi-label list holds the ConVIRT candidates) embed each file once.
        """
        paths = [str(p) for p in paths]
        new = list(dict.fromkeys(p for p in paths if p not in self._file_cache))

        def gen():
            for p in new:
                try:
                    yield render.read_raster(p)[0]
                except render.Reject as exc:
                    raise ValueError(f"{p}: unreadable benchmark image ({exc.reason}: {exc.detail})") from exc
        if new:
            self._file_cache.update(zip(new, self.images(gen())))
        if not paths:
            return np.zeros((0, 0), np.float32)
        return np.stack([self._file_cache[p] for p in paths])

    def images_from_dicoms(self, paths: Iterable[str], mode: str) -> np.ndarray:
        """DICOM files (RSNA) rendered with ``mode`` (``reference_rsna`` by default, docs/evaluation.md §4.2)."""
        def gen():
            for p in paths:
                try:
                    ds = render.read_dicom(p)
                    arr, info = render.decode_pixels(ds)
                    yield render.render(arr, ds, mode, info)
                except render.Reject as exc:
                    raise ValueError(f"{p}: unreadable benchmark DICOM ({exc.reason}: {exc.detail})") from exc
        return self.images(gen())

    def images_from_store(self, image_ids: Sequence[str], images_path: str, extract_dir: str) -> np.ndarray:
        """Images of the packed store (held-out split), read without decoding."""
        from alta.train.loader import ImageStore

        store = ImageStore(io.read_parquet(images_path), extract_dir)
        return self.images(store.read(i) for i in image_ids)

    # -- texts ----------------------------------------------------------------------------------------------
    def texts(self, texts: Sequence[str], protocol: TextProtocol, normalize: bool = True) -> np.ndarray:
        """(N, P) float32 text embeddings (unnormalised projections with ``normalize=False``).

        Texts are cleaned per ``protocol``; with ``truncation=False`` (reference protocols that never truncate)
        a batch is padded to its longest text instead of cutting it. ``max_length`` is capped at the text model's
        position table; both the cap and the number of truncated texts are recorded in ``last_text_record``.
        """
        cleaned = _clean(texts, protocol.clean)
        max_len = min(protocol.max_length, self.max_positions)
        lengths = [len(ids) for ids in self.tokenizer(cleaned, add_special_tokens=True)["input_ids"]] if cleaned else []
        n_long = sum(n > max_len for n in lengths)
        if n_long and not protocol.truncation:
            log.info("%d texts exceed %d tokens; padding to the longest instead (no truncation)", n_long, max_len)
        pad_to = max_len if protocol.truncation else min(max(max_len, max(lengths, default=1)), self.max_positions)
        self.last_text_record = {"clean": protocol.clean, "max_length": pad_to, "truncation": protocol.truncation,
                                 "n_texts": len(cleaned), "n_over_length": int(n_long),
                                 "capped_at_model_positions": protocol.max_length > self.max_positions}
        out = []
        for s in range(0, len(cleaned), self.batch_size):
            enc = self.tokenizer(cleaned[s:s + self.batch_size], padding="max_length", truncation=True,
                                 max_length=pad_to, return_tensors="pt")
            with torch.no_grad():
                t = self.model.encode_text(enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device),
                                           normalize=normalize).float()
            out.append(t.cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def checkpoint_provenance(path: str, meta: dict, kind: str) -> dict:
    """What a scored model started from: the file's size, the recipe its stage ran and how that differs from the
    published method (our checkpoints record both; an imported MRM.pth / ALTA.pth records neither)."""
    recipe = meta.get("recipe")
    out = {"checkpoint_bytes": Path(path).stat().st_size, "recipe": recipe or "unknown (imported file)"}
    if recipe is not None:
        out["recipe_differences"] = {k: v["value"] for k, v in (meta.get("recipe_differences") or {}).items()}
    if kind == "mrm":
        out["note"] = "ALTA built from these MRM weights, adapters and heads untrained"
    return out
