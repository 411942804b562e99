"""The builders of the MRM and ALTA models and their optimiser parameter groups (used by the training stages, evaluate and the tests)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .alta import ALTA
from .mrm import MRM, continuation_table
from .presets import ModelConfig, resolve_config, resolve_options
from .text import build_text_encoder

__all__ = ["build_alta", "build_mrm", "param_groups"]


def _device_ctx(device: str | torch.device | None):
    return torch.device(device) if device is not None else contextlib.nullcontext()


def _tok_id(tokenizer, attr: str, token: str) -> int | None:
    if tokenizer is None:
        return None
    value = getattr(tokenizer, attr, None)
    if value is None and hasattr(tokenizer, "token_to_id"):  # a bare `tokenizers.Tokenizer`
        value = tokenizer.token_to_id(token)
    return value


def _vocab_size(tokenizer, vocab_size: int | None, default: int | None, what: str) -> int:
    if vocab_size is None and tokenizer is not None:
        vocab_size = len(tokenizer.get_vocab())
    vocab_size = vocab_size if vocab_size is not None else default
    if vocab_size is None:
        raise ValueError(f"{what}: vocab_size (or a tokenizer) is required for this preset")
    return int(vocab_size)


def build_mrm(preset: str | ModelConfig = "tiny", mode: str = "recommended", vocab_size: int | None = None,
              pad_token_id: int | None = None, mask_token_id: int | None = None, cls_token_id: int | None = None,
              tokenizer=None, overrides: dict[str, Any] | None = None, options: dict[str, Any] | None = None,
              device: str | torch.device | None = None, is_continuation: torch.Tensor | None = None) -> MRM:
    """MRM with random init (§1.1). ``tokenizer`` (HF or ``tokenizers.Tokenizer``) supplies the vocabulary, the
    special ids and the ``##`` continuation table used by whole-word masking (or pass ``is_continuation``, bool (V,))."""
    cfg = resolve_config(preset, overrides)
    opts = resolve_options(mode, options)
    vocab = _vocab_size(tokenizer, vocab_size, cfg.report_vocab_size, "build_mrm")
    pad = pad_token_id if pad_token_id is not None else (_tok_id(tokenizer, "pad_token_id", "[PAD]") or 0)
    mask = mask_token_id if mask_token_id is not None else _tok_id(tokenizer, "mask_token_id", "[MASK]")
    cls = cls_token_id if cls_token_id is not None else _tok_id(tokenizer, "cls_token_id", "[CLS]")
    cont = is_continuation
    if cont is None and tokenizer is not None:
        cont = continuation_table(tokenizer, vocab)
    with _device_ctx(device):
        return MRM(cfg, opts, vocab, pad, 3 if mask is None else mask, 2 if cls is None else cls, cont)


def build_alta(preset: str | ModelConfig = "tiny", mode: str = "recommended", text_dir: str | Path | None = None,
               tokenizer=None, vocab_size: int | None = None, special_ids: dict[str, int] | None = None,
               overrides: dict[str, Any] | None = None, options: dict[str, Any] | None = None,
               device: str | torch.device | None = None, mrm_checkpoint: dict | None = None) -> ALTA:
    """ALTA per §2.2: vision encoder + adapters + decoder (reference init), text encoder from ``text_dir`` (a local
    CXR-BERT-specialized directory) or random at the preset geometry, optional MRM weights (§5.5), trainable set."""
    cfg = resolve_config(preset, overrides)
    opts = resolve_options(mode, options)
    ids = dict(special_ids or {})
    for key, attr, token in [("pad", "pad_token_id", "[PAD]"), ("cls", "cls_token_id", "[CLS]"),
                             ("sep", "sep_token_id", "[SEP]"), ("mask", "mask_token_id", "[MASK]")]:
        if ids.get(key) is None:
            ids[key] = _tok_id(tokenizer, attr, token)
    if ids.get("mask") is None or ids.get("pad") is None:
        raise ValueError("build_alta: special_ids must give at least 'pad' and 'mask' (or pass a tokenizer)")
    vocab = None
    if text_dir is None:
        vocab = _vocab_size(tokenizer, vocab_size, cfg.text_vocab_size, "build_alta")
    with _device_ctx(device):
        text = build_text_encoder(cfg, opts, text_dir=text_dir, vocab_size=vocab, pad_token_id=ids["pad"])
        model = ALTA(cfg, opts, text, ids)
    if mrm_checkpoint is not None:
        model.load_mrm_encoder(mrm_checkpoint)
    model.apply_trainable()
    return model


def param_groups(model: nn.Module, weight_decay: float = 0.05, mode: str | None = None) -> list[dict]:
    """AdamW parameter groups (§1.5 / §2.9): decay on trainable parameters with ndim >= 2 that are not biases;
    no decay on biases, 1-D and 0-D parameters, and (recommended, §3 #8) on ``model.no_weight_decay()``.
    The switch comes from the model's own options (so ``model_options.exempt_embeddings_from_decay`` is honoured);
    ``mode`` only serves a model that carries no options."""
    model = getattr(model, "module", model)
    opts = getattr(model, "options", None) or resolve_options(mode or "recommended")
    skip = model.no_weight_decay() if opts.exempt_embeddings_from_decay and hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or name.endswith(".bias") or name in skip:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
