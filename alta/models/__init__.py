"""MRM and ALTA models (method.md §1, §2) and their builders.

Public API (what the training loop and the evaluation call)::

    build_mrm(preset="tiny", mode="recommended", vocab_size=None, pad_token_id=None, mask_token_id=None,
              cls_token_id=None, tokenizer=None, overrides=None, options=None, device=None,
              is_continuation=None) -> MRM
    build_alta(preset="tiny", mode="recommended", text_dir=None, tokenizer=None, vocab_size=None,
               special_ids=None, overrides=None, options=None, device=None, mrm_checkpoint=None) -> ALTA
    param_groups(model, weight_decay=0.05, mode=None) -> list[dict]      AdamW groups, trainable params only
    save_checkpoint / load_checkpoint / inference_state_dict / load_inference_state   see alta.models.checkpoints

``preset`` is a name of ``presets.PRESETS`` (or a ``ModelConfig``) and ``overrides`` a dict of its fields;
``mode`` is ``faithful`` | ``recommended`` and ``options`` a dict of ``AltaOptions`` fields. ``device="meta"``
builds without allocating weights (parameter counting). ``build_alta`` sets ``requires_grad`` from the explicit
trainable set before any DDP wrapping.

The names load on first use (PEP 562), so that ``alta.models.presets`` (plain dataclasses) imports without torch:
the config validator uses it before any job runs.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "ALTA": ".alta", "MRM": ".mrm", "AltaOptions": ".presets", "ModelConfig": ".presets", "PRESETS": ".presets",
    "resolve_config": ".presets", "resolve_options": ".presets", "build_alta": ".build", "build_mrm": ".build",
    "param_groups": ".build", "inference_state_dict": ".checkpoints", "load_checkpoint": ".checkpoints",
    "load_inference_state": ".checkpoints", "load_mrm_into_alta": ".checkpoints", "save_checkpoint": ".checkpoints",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
