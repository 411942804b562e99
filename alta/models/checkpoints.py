"""Checkpoint files: our own save/load and the import of the official MRM.pth / ALTA.pth (docs/method.md §4, §5).

Contract:
- ``read_checkpoint(path, trust=False) -> object``: every checkpoint file, ours or from outside, is read with
  ``torch.load(weights_only=True)``: tensors, containers and primitives, plus ``SAFE_GLOBALS`` (the types released
  checkpoints hold: the reference's ``argparse.Namespace`` args, NumPy scalars). Any other type would be rebuilt by
  running code from the file, so it is refused with :class:`UntrustedCheckpoint` naming the file and the type;
  ``trust=True`` (the user's opt-in for a file they trust) keeps such objects as inert :class:`ForeignObject`
  placeholders and warns: no file is ever unpickled with code execution.
- ``save_checkpoint(path, model, optimizer=None, scaler=None, epoch=None, step=None, config=None, args=None,
  name=None)``: atomic ``torch.save`` of ``{'model', 'optimizer', 'scaler', 'epoch', 'step', 'config', 'args',
  'name'}`` (the reference layout plus ``step``/``config``); a DDP wrapper is unwrapped.
- ``load_checkpoint(path_or_obj, model=None, optimizer=None, scaler=None, map_location='cpu') -> dict``: accepts
  ``{'model': sd, ...}`` or a bare state dict; loads the model with ``load_model_state`` (strict up to the version
  dependent ``position_ids`` buffers; fp16 ``missing_token`` is cast to the model dtype; tied text tensors must be
  equal in the file) and the optimiser/scaler when given.
- ``load_mrm_into_alta(alta, sd)``: §5.5 — non-strict load of MRM.pth; asserts the exact loaded / missing /
  unexpected sets; a missing decoder key is an error unless ``options.train_full_decoder``. The file's sin-cos
  tables are kept; each is matched against both constructions (pos_embed.py: MAE's and the official code's), the
  match is logged, and a table that matches neither is a warning naming the key. Returns ``{'loaded', 'missing',
  'unexpected', 'pos_embed'}`` (sorted lists; ``pos_embed`` maps each table to ``mae`` | ``official`` | ``neither``).
- ``inference_state_dict(alta)`` / ``load_inference_state(alta, sd)``: the §4 ``encoder_inference.pt`` subset.
- ``load_mae_encoder(mrm, sd)``: ImageNet MAE encoder weights (``mae_pretrain_vit_base.pth``) into MRM
  (the ``--init-from`` option); everything but the encoder must be reported missing.
"""

from __future__ import annotations

import argparse
import logging
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..io import atomic_path
from .pos_embed import which_construction

log = logging.getLogger("alta.models.checkpoints")

_POSITION_IDS = re.compile(r"(^|\.)embeddings\.position_ids$")
ENCODER_KEY = re.compile(r"^(patch_embed\.|cls_token$|pos_embed$|norm\.|blocks\.\d+\.(norm1|attn|norm2|mlp)\.)")
DECODER_KEY = re.compile(r"^(decoder_embed\.|mask_token$|decoder_pos_embed$|decoder_blocks\.|decoder_norm\.|decoder_pred\.)")
TIED_TEXT = (
    ("bert_encoder.cls.predictions.decoder.weight", "bert_encoder.bert.embeddings.word_embeddings.weight"),
    ("bert_encoder.cls.predictions.decoder.bias", "bert_encoder.cls.predictions.bias"),
)


def _safe_globals() -> list:
    import numpy as np

    out: list = [argparse.Namespace, np.dtype, np.ndarray]
    for mod in ("numpy._core.multiarray", "numpy.core.multiarray"):
        for name in ("scalar", "_reconstruct"):
            try:
                out.append(getattr(__import__(mod, fromlist=[name]), name))
            except (ImportError, AttributeError):
                pass
    out += [type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32", "bool")]
    return out


SAFE_GLOBALS = _safe_globals()
TRUST_HINT = ("if you trust this file, pass --trust-checkpoint (workflow: the matching trust_* config key) to read "
              "such objects as inert placeholders")


class UntrustedCheckpoint(ValueError):
    """A checkpoint file holds an object whose unpickling would run code from the file."""


class ForeignObject:
    """An object of a type outside the allowlist, read from a checkpoint marked as trusted: kept as inert data (the
    type's name is this class's name, the pickled arguments in ``args``, the state in ``state``); its own class is
    never imported and nothing from the file runs."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs, self.state = args, kwargs, None

    def __setstate__(self, state):
        self.state = state


def _placeholders(path: Path) -> list[tuple[type, str]]:
    """One inert :class:`ForeignObject` subclass per type the file names outside the allowlist."""
    allowed = {f"{g.__module__}.{g.__qualname__}" for g in SAFE_GLOBALS}
    names = [n for n in torch.serialization.get_unsafe_globals_in_checkpoint(str(path)) if n not in allowed
             and n.rsplit(".", 1)[-1] not in {"scalar", "_reconstruct"}]  # NumPy's, already allowed by object
    return [(type(name.rsplit(".", 1)[-1], (ForeignObject,), {"__module__": "alta.foreign"}), name)
            for name in names]


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", trust: bool = False) -> Any:
    """Read a checkpoint file as data (see the module contract); errors name the file and the problem.

    ``trust=True`` accepts types outside the allowlist as inert :class:`ForeignObject` placeholders instead of
    refusing the file; it never unpickles with code execution (types from modules torch blocks, such as ``os`` or
    ``subprocess``, still refuse the file)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    try:
        allowed = SAFE_GLOBALS + (_placeholders(path) if trust else [])
        with torch.serialization.safe_globals(allowed):
            obj = torch.load(path, map_location=map_location, weights_only=True)
        if trust and len(allowed) > len(SAFE_GLOBALS):
            log.warning("%s: marked as trusted; objects of %s kept as inert placeholders (never run)", path,
                        ", ".join(name for _, name in allowed[len(SAFE_GLOBALS):]))
        return obj
    except pickle.UnpicklingError as exc:
        m = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if not m:
            raise ValueError(f"{path}: not a PyTorch checkpoint ({str(exc).splitlines()[-1][:200]})") from None
        what = m.group(1)
        hint = "its module is one torch never loads from a file" if trust else TRUST_HINT
        raise UntrustedCheckpoint(
            f"{path}: refused to load: the file holds an object of type {what}, which torch can only rebuild by "
            f"running code from the file (weights are tensors, containers and numbers); {hint}") from None
    except (RuntimeError, KeyError, EOFError, ValueError) as exc:
        raise ValueError(f"{path}: not a PyTorch checkpoint ({type(exc).__name__}: "
                         f"{(str(exc).splitlines() or [''])[0][:200]})") from None


def unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


def extract_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        return obj["model"]
    if isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    raise ValueError("checkpoint is neither {'model': state_dict, ...} nor a bare state dict")


def save_checkpoint(path: str | Path, model: nn.Module, optimizer=None, scaler=None, epoch: int | None = None,
                    step: int | None = None, config: dict | None = None, args: Any = None,
                    name: str | None = None) -> None:
    obj = {
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "epoch": epoch, "step": step, "config": config, "args": args, "name": name,
    }
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_model_state(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    model = unwrap(model)
    sd = {k: v for k, v in state_dict.items() if not _POSITION_IDS.search(k)}
    for a, b in TIED_TEXT:
        if a in sd and b in sd and not torch.equal(sd[a].float(), sd[b].float()):
            raise ValueError(f"{source}: tied tensors {a} and {b} differ")
    own = model.state_dict()
    bad = {k: (tuple(v.shape), tuple(own[k].shape)) for k, v in sd.items() if k in own and v.shape != own[k].shape}
    missing, unexpected = sorted(set(own) - set(sd)), sorted(set(sd) - set(own))
    if missing or unexpected or bad:
        raise ValueError(
            f"{source}: state dict does not match the model: {len(missing)} missing (e.g. {missing[:5]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:5]}), shape mismatches {dict(list(bad.items())[:5])}"
        )
    model.load_state_dict(sd, strict=True)  # copy_ casts dtypes (fp16 missing_token -> model dtype)


def load_checkpoint(path_or_obj: str | Path | dict, model: nn.Module | None = None, optimizer=None, scaler=None,
                    map_location: str | torch.device = "cpu") -> dict:
    source = str(path_or_obj) if isinstance(path_or_obj, (str, Path)) else "checkpoint"
    if isinstance(path_or_obj, (str, Path)):
        obj = read_checkpoint(path_or_obj, map_location=map_location)
    else:
        obj = path_or_obj
    sd = extract_state_dict(obj)
    if model is not None:
        load_model_state(model, sd, source)
    if isinstance(obj, dict) and "model" in obj:
        if optimizer is not None and obj.get("optimizer") is not None:
            optimizer.load_state_dict(obj["optimizer"])
        if scaler is not None and obj.get("scaler") is not None:
            scaler.load_state_dict(obj["scaler"])
        return obj
    return {"model": sd}


def mrm_shared_keys(alta: nn.Module) -> set[str]:
    """ALTA state-dict keys that MRM.pth also has (docs/method.md §5.3 'Shared with ALTA')."""
    return {k for k in unwrap(alta).state_dict() if ENCODER_KEY.match(k) or DECODER_KEY.match(k)}


def _check_sincos(model: nn.Module, source: str) -> dict[str, str]:
    """Name the construction of each loaded sin-cos table (kept as loaded either way, docs/method.md §5.5)."""
    found = {}
    for name in ("pos_embed", "decoder_pos_embed"):
        construction = which_construction(getattr(model, name))
        found[name] = construction or "neither"
        if construction is None:
            log.warning("%s: loaded %s is neither the MAE nor the official 2-D sin-cos table; it is kept as loaded",
                        source, name)
        else:
            log.info("%s: %s is the %s sin-cos table", source, name,
                     "MAE" if construction == "mae" else "official-code (omega / D / 2.)")
    return found


def load_mrm_into_alta(alta: nn.Module, state_dict: dict[str, torch.Tensor], source: str = "MRM.pth") -> dict:
    alta = unwrap(alta)
    sd = {k: v for k, v in extract_state_dict(state_dict).items() if not _POSITION_IDS.search(k)}
    shared = mrm_shared_keys(alta)
    decoder_keys = {k for k in shared if DECODER_KEY.match(k)}
    missing_decoder = sorted(decoder_keys - set(sd))
    if missing_decoder and not alta.options.train_full_decoder:
        raise ValueError(
            f"{source}: {len(missing_decoder)} MAE decoder keys are missing (e.g. {missing_decoder[:4]}); a random "
            "frozen decoder makes the partial decoder training meaningless. Set align.train_full_decoder: true "
            "to train the whole decoder instead."
        )
    missing_encoder = sorted((shared - decoder_keys) - set(sd))
    if missing_encoder:
        raise ValueError(f"{source}: encoder keys missing: {missing_encoder[:8]}")
    result = alta.load_state_dict({k: v for k, v in sd.items() if k in shared}, strict=False)
    unexpected = sorted(set(sd) - shared)
    expected_unexpected = re.compile(r"^(bert_mlp\.|bert_encoder\.model\.)")
    wrong = [k for k in unexpected if not expected_unexpected.match(k)]
    if wrong:
        raise ValueError(f"{source}: unexpected keys outside bert_mlp.*/bert_encoder.model.*: {wrong[:8]}")
    missing = sorted(result.missing_keys)
    expected_missing = re.compile(
        r"^(blocks\.\d+\.(attn|mlp)_adapter\.|temporal_embedding$|view_embedding$|missing_token$|bert_embed\."
        r"|projection_head\.|local_projection_head\.|logit_scale|bert_encoder\.)"
    )
    wrong = [k for k in missing if not expected_missing.match(k) and k not in missing_decoder]
    if wrong:
        raise ValueError(f"{source}: keys missing that MRM.pth must provide: {wrong[:8]}")
    for k, v in sd.items():
        if k in shared and v.shape != alta.state_dict()[k].shape:
            raise ValueError(f"{source}: shape of {k} is {tuple(v.shape)}, model has {tuple(alta.state_dict()[k].shape)}")
    tables = _check_sincos(alta, source)
    return {"loaded": sorted(set(sd) & shared), "missing": missing, "unexpected": unexpected, "pos_embed": tables}


def load_mae_encoder(mrm: nn.Module, state_dict: dict[str, torch.Tensor], source: str = "mae_pretrain_vit_base.pth"):
    """ImageNet MAE encoder -> MRM encoder (the reference init of §1.1 when the file is available)."""
    mrm = unwrap(mrm)
    sd = extract_state_dict(state_dict)
    enc = {k: v for k, v in sd.items() if ENCODER_KEY.match(k)}
    if not enc:
        raise ValueError(f"{source}: no ViT encoder keys (patch_embed/blocks/norm/cls_token/pos_embed)")
    own = mrm.state_dict()
    bad = {k: tuple(v.shape) for k, v in enc.items() if k not in own or own[k].shape != v.shape}
    if bad:
        raise ValueError(f"{source}: encoder keys not matching the MRM encoder: {dict(list(bad.items())[:5])}")
    result = mrm.load_state_dict(enc, strict=False)
    absent = [k for k in result.missing_keys if ENCODER_KEY.match(k)]
    if absent:
        raise ValueError(f"{source}: encoder keys absent from the file: {absent[:8]}")
    _check_sincos(mrm, source)
    return {"loaded": sorted(enc), "ignored": sorted(set(sd) - set(enc))}


_NOT_FOR_INFERENCE = re.compile(
    r"^(bert_embed\.|missing_token$|local_projection_head\.|logit_scale_local|bert_encoder\.local_projection_head\."
    r"|bert_encoder\.cls\.predictions\.)"
)


def inference_state_dict(alta: nn.Module) -> dict[str, torch.Tensor]:
    """The §4 export (``encoder_inference.pt``): vision encoder + adapters, ``projection_head``, temporal/view
    embeddings, CXR-BERT + adapters, ``cls_projection_head``; no decoder, MLM head, local heads, ``bert_embed``."""
    sd = unwrap(alta).state_dict()
    return {k: v for k, v in sd.items() if not DECODER_KEY.match(k) and not _NOT_FOR_INFERENCE.match(k)}


def load_inference_state(alta: nn.Module, state_dict: dict[str, torch.Tensor], source: str = "export") -> None:
    """Load an inference export (or a full checkpoint) for ``encode_image`` / ``encode_text``: every inference key
    must be present with the right shape; the parts unused at inference keep their values."""
    alta = unwrap(alta)
    sd = {k: v for k, v in extract_state_dict(state_dict).items() if not _POSITION_IDS.search(k)}
    needed = inference_state_dict(alta)
    missing = sorted(set(needed) - set(sd))
    bad = [k for k in needed if k in sd and sd[k].shape != needed[k].shape]
    if missing or bad:
        raise ValueError(f"{source}: inference keys missing {missing[:8]} or with wrong shapes {bad[:8]}")
    alta.load_state_dict({k: sd[k] for k in needed}, strict=False)
