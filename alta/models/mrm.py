"""MRM: masked record modelling (docs/method.md §1) — MAE with a super-resolution target plus a masked report decoder.

Contract:
- ``MRM(cfg, options, vocab_size, pad_token_id, mask_token_id, cls_token_id, is_continuation=None)``; state-dict
  keys are exactly docs/method.md §5.3 (encoder, decoder, ``bert_mlp.*``, ``bert_encoder.model.*``).
- ``forward(img_target (B,3,2S,2S), ids (B,T), attention_mask (B,T), generator=None, return_pred=False)``
  -> ``dict(loss, loss_mim, loss_rep)`` (+ ``pred``, ``mask`` when ``return_pred``). Image masking (75%) and
  whole-word report masking (50%, §1.3) happen inside; ``generator`` makes both reproducible.
- ``mask_report(ids, generator) -> (masked_ids, selected)``: §1.3 whole-word masking.
- ``continuation_table(tokenizer, vocab_size)``: bool (V,) marking ``##`` word pieces.
Initialisation (§1.1): Linear xavier-uniform / bias 0, LN (1, 0), patch-embed as flattened Linear, cls/mask tokens
N(0, 0.02), fixed sin-cos tables. Trainable: everything except the fixed sin-cos tables and the unused report
pooler (it never receives a gradient). The ImageNet MAE encoder weights are not shipped (no model hub offline): load them
with ``checkpoints.load_mae_encoder`` when the user has ``mae_pretrain_vit_base.pth``.
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from torch.nn import functional as F

from .adapters import init_reference
from .mae_decoder import MAEDecoderMixin
from .presets import AltaOptions, ModelConfig
from .text import ReportDecoder, masked_lm_loss
from .vit import ViTEncoderMixin, random_masking

log = logging.getLogger(__name__)


def continuation_table(tokenizer, vocab_size: int) -> torch.Tensor:
    """Bool (V,) table, True for WordPiece continuation tokens (``##`` prefix)."""
    table = torch.zeros(vocab_size, dtype=torch.bool)
    for token, idx in tokenizer.get_vocab().items():
        if idx < vocab_size and token.startswith("##"):
            table[idx] = True
    return table


class MRM(ViTEncoderMixin, MAEDecoderMixin, nn.Module):
    def __init__(self, cfg: ModelConfig, options: AltaOptions, vocab_size: int, pad_token_id: int = 0,
                 mask_token_id: int = 3, cls_token_id: int = 2, is_continuation: torch.Tensor | None = None) -> None:
        nn.Module.__init__(self)
        self.cfg, self.options = cfg, options
        self.vocab_size = vocab_size
        self.pad_token_id, self.mask_token_id, self.cls_token_id = pad_token_id, mask_token_id, cls_token_id
        self.build_encoder(cfg, adapters=False)
        self.build_decoder(cfg)
        self.bert_encoder = ReportDecoder(cfg, vocab_size, pad_token_id)
        self.bert_mlp = nn.Linear(cfg.embed_dim, cfg.report_hidden)
        if is_continuation is None:
            log.warning("MRM built without a tokenizer vocabulary: every token is treated as word-initial")
            is_continuation = torch.zeros(vocab_size, dtype=torch.bool)
        if is_continuation.shape != (vocab_size,):
            raise ValueError(f"is_continuation must have shape ({vocab_size},), got {tuple(is_continuation.shape)}")
        self.register_buffer("is_continuation", is_continuation.bool(), persistent=False)
        self.initialize_weights()
        # the reference builds a pooler it never uses; frozen so that DDP needs no find_unused_parameters
        self.bert_encoder.model.bert.pooler.requires_grad_(False)

    def initialize_weights(self) -> None:
        with torch.no_grad():
            self.apply(init_reference)
            self.init_encoder_special(self.options.pos_embed_construction)
            self.init_decoder_special(self.options.pos_embed_construction)

    def no_weight_decay(self) -> set[str]:
        return set()

    def mask_report(self, ids: torch.Tensor, generator: torch.Generator | None = None):
        """Whole-word masking: positions 1..T-2 before the first [PAD]; a word start is masked with p; a ``##``
        piece is masked iff the previous token is masked. No random/keep branch."""
        b, t = ids.shape
        gen_device = generator.device if generator is not None else ids.device
        u = torch.rand(b, t, generator=generator, device=gen_device).to(ids.device)
        pos = torch.arange(t, device=ids.device)
        before_pad = (ids == self.pad_token_id).long().cumsum(dim=1) == 0
        valid = before_pad & (pos >= 1) & (pos <= t - 2)
        cont = self.is_continuation[ids]
        head_pick = valid & ~cont & (u < self.cfg.report_mask_prob)
        # index of the word start each token belongs to (its last non-continuation position)
        head_idx = torch.where(~cont, pos.expand(b, t), torch.zeros_like(ids)).cummax(dim=1).values
        selected = valid & torch.gather(head_pick, 1, head_idx)
        masked = torch.where(selected, torch.full_like(ids, self.mask_token_id), ids)
        return masked, selected

    def forward_encoder(self, imgs: torch.Tensor, generator: torch.Generator | None = None):
        x = self.embed_patches(imgs) + self.pos_embed[:, 1:]
        x, mask, ids_restore = random_masking(x, self.cfg.mask_ratio, generator)
        return self.run_blocks(self.add_cls(x)), mask, ids_restore

    def forward_report_decoder(self, latent, masked_ids, attention_mask) -> torch.Tensor:
        z = self.bert_mlp(latent)[:, 1:].mean(dim=1)
        return self.bert_encoder(masked_ids, attention_mask, z)

    def forward(self, img_target: torch.Tensor, ids: torch.Tensor, attention_mask: torch.Tensor,
                generator: torch.Generator | None = None, return_pred: bool = False) -> dict[str, torch.Tensor]:
        size = self.cfg.img_size
        if img_target.shape[-1] != self.cfg.target_size or img_target.shape[-2] != self.cfg.target_size:
            raise ValueError(f"MRM expects a {self.cfg.target_size}px target image, got {tuple(img_target.shape)}")
        imgs = F.interpolate(img_target, size=(size, size), mode="bicubic", align_corners=False,
                             antialias=self.options.mrm_antialias)
        latent, mask, ids_restore = self.forward_encoder(imgs, generator)
        masked_ids, selected = self.mask_report(ids, generator)
        logits = self.forward_report_decoder(latent, masked_ids, attention_mask)
        if self.options.mrm_text_loss_positions == "all":
            labels = ids
        else:
            labels = torch.where(selected, ids, torch.full_like(ids, -100))
        loss_rep = masked_lm_loss(logits, labels)
        pred = self.forward_decoder(latent, ids_restore)
        loss_mim = self.mim_loss(img_target, pred, mask)
        out = dict(loss=loss_mim + loss_rep, loss_mim=loss_mim, loss_rep=loss_rep)
        if return_pred:
            out.update(pred=pred, mask=mask)
        return out
