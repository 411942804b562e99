"""Text models: CXR-BERT with adapters (ALTA, docs/method.md §2.5) and the MRM report decoder (docs/method.md §1.1).

Contract:
- ``CXRBertEncoder``: children ``bert`` and ``cls`` of an HF ``BertForMaskedLM`` (word embeddings tied to the MLM
  output matrix, MLM bias tied), ``cls_projection_head``, ``local_projection_head`` and adapters registered as
  ``bert.encoder.layer.N.{attn_adapter,mlp_adapter}`` and applied through forward hooks, so state-dict keys are the
  §5.2 text keys without the ``bert_encoder.`` prefix.
  ``forward(ids, attention_mask, cond=None) -> last hidden states (N,T,H)``; ``cond`` (N,H) is added to every token
  embedding after the embedding LN/dropout, before layer 1.
- ``build_text_encoder(cfg, options, text_dir=None, vocab_size=None)``: a local CXR-BERT-specialized directory
  (``config.json`` + ``model.safetensors`` / ``pytorch_model.bin``, keys ``bert.*``, ``cls.predictions.*``,
  ``cls_projection_head.*``) or a randomly initialised BERT of the preset geometry; adapters then initialised per
  ``options.text_adapter_init`` and ``local_projection_head`` copied from ``cls_projection_head``.
- ``ReportDecoder``: ``model`` = BertForMaskedLM with a pooler and an MLM output matrix NOT tied to the word
  embeddings (keys §5.3 below ``bert_encoder.``); ``forward(ids, attention_mask, z) -> logits``.
- ``mlm_mask(...)``: i.i.d. sub-word selection of non-special attended tokens, (mask, random, keep) replacement;
  labels -100 at unselected positions.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from transformers import BertConfig, BertForMaskedLM, BertModel
from transformers.masking_utils import create_bidirectional_mask

from .adapters import Adapter, ProjectionHead, init_adapter
from .presets import AltaOptions, ModelConfig


class _AttnAdapterHook:
    """Forward hook on ``layer.attention``: output[0] <- attn_adapter(output[0]). A callable object (not a closure)
    so that ``copy.deepcopy`` of the model re-targets the hook to the copied adapter."""

    def __init__(self, adapter: Adapter) -> None:
        self.adapter = adapter

    def __call__(self, module, args, output):
        return (self.adapter(output[0]), *output[1:])


class _MlpAdapterHook:
    """Forward hook on ``layer.output``: adds s * mlp_adapter(a') after the output LN; a' is the block input."""

    def __init__(self, adapter: Adapter, scale: float) -> None:
        self.adapter = adapter
        self.scale = scale

    def __call__(self, module, args, output):
        return output + self.scale * self.adapter(args[1])


def _embed_and_encode(bert: BertModel, ids, attention_mask, cond) -> torch.Tensor:
    emb = bert.embeddings(input_ids=ids)
    if cond is not None:
        emb = emb + cond.to(emb.dtype).unsqueeze(1)
    mask = create_bidirectional_mask(config=bert.config, inputs_embeds=emb, attention_mask=attention_mask)
    return bert.encoder(emb, attention_mask=mask).last_hidden_state


class CXRBertEncoder(nn.Module):
    def __init__(self, mlm: BertForMaskedLM, proj_dim: int, adapter_dim: int, adapter_scale: float) -> None:
        super().__init__()
        self.config = mlm.config
        self.bert = mlm.bert
        self.cls = mlm.cls
        hidden = mlm.config.hidden_size
        self.cls_projection_head = ProjectionHead(hidden, proj_dim)
        self.local_projection_head = ProjectionHead(hidden, proj_dim)
        for layer in self.bert.encoder.layer:
            layer.attn_adapter = Adapter(hidden, adapter_dim, skip=True)
            layer.mlp_adapter = Adapter(hidden, adapter_dim, skip=False)
            layer.attention.register_forward_hook(_AttnAdapterHook(layer.attn_adapter))
            layer.output.register_forward_hook(_MlpAdapterHook(layer.mlp_adapter, adapter_scale))

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor, cond: torch.Tensor | None = None):
        return _embed_and_encode(self.bert, ids, attention_mask, cond)

    def mlm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.cls(hidden)

    def adapters(self) -> list[Adapter]:
        return [a for layer in self.bert.encoder.layer for a in (layer.attn_adapter, layer.mlp_adapter)]


def _bert_config(cfg: ModelConfig, vocab_size: int, pad_token_id: int) -> BertConfig:
    config = BertConfig(
        vocab_size=vocab_size, hidden_size=cfg.text_hidden, num_hidden_layers=cfg.text_layers,
        num_attention_heads=cfg.text_heads, intermediate_size=cfg.text_intermediate,
        max_position_embeddings=cfg.text_max_positions, hidden_dropout_prob=cfg.text_dropout,
        attention_probs_dropout_prob=cfg.text_dropout, layer_norm_eps=cfg.text_ln_eps, pad_token_id=pad_token_id,
        initializer_range=cfg.text_init_std,
    )
    config._attn_implementation = "sdpa"
    return config


def _read_weight_files(text_dir: Path) -> dict[str, torch.Tensor]:
    """All tensors of a local HF model directory (single file or sharded index)."""
    from safetensors.torch import load_file

    def load_one(path: Path) -> dict[str, torch.Tensor]:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        from .checkpoints import read_checkpoint

        return read_checkpoint(path)  # weights only: a text_dir comes from outside

    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = text_dir / index_name
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            out: dict[str, torch.Tensor] = {}
            for shard in shards:
                out.update(load_one(text_dir / shard))
            return out
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (text_dir / name).is_file():
            return load_one(text_dir / name)
    raise FileNotFoundError(f"{text_dir}: no model.safetensors or pytorch_model.bin (CXR-BERT-specialized layout)")


def build_text_encoder(cfg: ModelConfig, options: AltaOptions, text_dir: str | Path | None = None,
                       vocab_size: int | None = None, pad_token_id: int = 0) -> CXRBertEncoder:
    if text_dir is not None:
        text_dir = Path(text_dir)
        if not (text_dir / "config.json").is_file():
            raise FileNotFoundError(f"{text_dir}: not a local HF model directory (config.json missing)")
        config = BertConfig.from_json_file(str(text_dir / "config.json"))
        # the load report would list cls_projection_head.* as "unexpected" (BertForMaskedLM has no such module);
        # those keys are loaded just below, and a genuinely missing backbone key still fails the strict check there.
        # The per-tensor progress bar is silenced too: it only wrote carriage-return noise into the stage logs.
        from transformers.utils import logging as hf_logging

        level, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        try:
            mlm, info = BertForMaskedLM.from_pretrained(
                str(text_dir), config=config, local_files_only=True, attn_implementation="sdpa", dtype=torch.float32,
                output_loading_info=True,
            )
        finally:
            hf_logging.set_verbosity(level)
            if bar:
                hf_logging.enable_progress_bar()
        missing = [k for k in info.get("missing_keys", []) if k != "cls.predictions.decoder.weight"]
        if missing:
            raise KeyError(f"{text_dir}: text encoder weights lack {sorted(missing)[:8]}")
        proj_dim = int(getattr(config, "projection_size", cfg.proj_dim))
        if proj_dim != cfg.proj_dim:
            raise ValueError(f"{text_dir}: projection_size {proj_dim} != image projection size {cfg.proj_dim}")
        enc = CXRBertEncoder(mlm, proj_dim, int(config.hidden_size * cfg.adapter_ratio), cfg.adapter_scale)
        weights = _read_weight_files(text_dir)
        head = {k[len("cls_projection_head."):]: v for k, v in weights.items() if k.startswith("cls_projection_head.")}
        if not head:
            raise KeyError(f"{text_dir}: weights contain no cls_projection_head.* keys (need CXR-BERT-specialized)")
        enc.cls_projection_head.load_state_dict(head, strict=True)
    else:
        if vocab_size is None:
            raise ValueError("vocab_size is required when no text_dir (pretrained CXR-BERT) is given")
        mlm = BertForMaskedLM(_bert_config(cfg, vocab_size, pad_token_id))
        enc = CXRBertEncoder(mlm, cfg.proj_dim, cfg.text_adapter_dim, cfg.adapter_scale)
        enc.cls_projection_head.apply(lambda m: _hf_like_init(m, cfg.text_init_std))
    for adapter in enc.adapters():
        init_adapter(adapter, "zero" if options.text_adapter_init == "zero" else "normal")
    enc.local_projection_head.load_state_dict(enc.cls_projection_head.state_dict())
    return enc


def _hf_like_init(module: nn.Module, std: float) -> None:
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=std)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class ReportDecoder(nn.Module):
    """MRM report decoder. Reproduces the reference quirks: an unused pooler and an untied MLM output matrix (the
    BERT trunk is replaced after HF tied the weights, so ``cls.predictions.decoder.weight`` keeps the old tensor)."""

    def __init__(self, cfg: ModelConfig, vocab_size: int, pad_token_id: int = 0) -> None:
        super().__init__()
        config = BertConfig(
            vocab_size=vocab_size, hidden_size=cfg.report_hidden, num_hidden_layers=cfg.report_layers,
            num_attention_heads=cfg.report_heads, intermediate_size=cfg.report_intermediate,
            max_position_embeddings=cfg.report_max_positions, hidden_dropout_prob=cfg.report_dropout,
            attention_probs_dropout_prob=cfg.report_dropout, layer_norm_eps=1e-12, pad_token_id=pad_token_id,
        )
        config._attn_implementation = "sdpa"
        self.model = BertForMaskedLM(config)
        self.model.bert = BertModel(config, add_pooling_layer=True)

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        hidden = _embed_and_encode(self.model.bert, ids, attention_mask, z)
        return self.model.cls(hidden)


def mlm_mask(ids: torch.Tensor, attention_mask: torch.Tensor, special_ids: dict[str, int], vocab_size: int,
             probability: float, replace: tuple[float, float, float],
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """ALTA MLM corruption (docs/method.md §2.5): returns ``(masked_ids, labels)``."""
    gen_device = generator.device if generator is not None else ids.device

    def rand(*shape):
        return torch.rand(*shape, generator=generator, device=gen_device).to(ids.device)

    special = torch.zeros_like(ids, dtype=torch.bool)
    for key in ("cls", "sep", "pad"):
        if special_ids.get(key) is not None:
            special |= ids == special_ids[key]
    candidate = attention_mask.bool() & ~special
    selected = candidate & (rand(*ids.shape) < probability)
    labels = torch.where(selected, ids, torch.full_like(ids, -100))
    p_mask, p_random, _ = replace
    u = rand(*ids.shape)
    to_mask = selected & (u < p_mask)
    to_random = selected & (u >= p_mask) & (u < p_mask + p_random)
    out = torch.where(to_mask, torch.full_like(ids, special_ids["mask"]), ids)
    if p_random > 0:
        random_ids = (rand(*ids.shape) * vocab_size).long().clamp_(max=vocab_size - 1)
        out = torch.where(to_random, random_ids, out)
    return out, labels


def masked_mean(x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(B,L,D) x, (B,L) 0/1 weights (attention mask, present views) -> (B,D) mean over the weighted positions."""
    w = weights.to(x.dtype).unsqueeze(-1)
    return (x * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)


def masked_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean CE over positions whose label is not -100 (0 with a graph when a batch has no such position)."""
    labels = labels.reshape(-1)
    logits = logits.reshape(-1, logits.shape[-1])
    if not bool((labels != -100).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), labels, ignore_index=-100)
