"""MAE decoder with the MRM super-resolution target (docs/method.md §1.1, §1.4, §2.8 L_MIM).

Contract (``MAEDecoderMixin``, mixed into an ``nn.Module`` that also has the ViT encoder):
- ``build_decoder(cfg)`` adds ``decoder_embed``, ``mask_token``, ``decoder_pos_embed`` (frozen sin-cos),
  ``decoder_blocks`` (plain timm blocks), ``decoder_norm``, ``decoder_pred`` as direct attributes (flat keys §5.2/§5.3).
- ``forward_decoder(latent (N,1+K,D), ids_restore (N,L)) -> pred (N,L,(2p)^2*3)``: CLS dropped from the output.
- ``patchify(target (N,3,2S,2S)) -> (N,L,(2p)^2*3)``: row-major patches, (row, col, channel) order inside a patch.
- ``mim_loss(target, pred, mask)``: MSE on per-patch normalised targets (norm_pix_loss, unbiased variance,
  eps 1e-6), averaged over removed patches (mask 1).
"""

from __future__ import annotations

import torch
from torch import nn

from .pos_embed import sincos_pos_embed_2d
from .presets import ModelConfig
from .vit import make_blocks


class MAEDecoderMixin:
    def build_decoder(self, cfg: ModelConfig) -> None:
        d = cfg.decoder_embed_dim
        self.decoder_embed = nn.Linear(cfg.embed_dim, d)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, cfg.num_patches + 1, d), requires_grad=False)
        self.decoder_blocks = make_blocks(d, cfg.decoder_depth, cfg.decoder_num_heads, cfg, adapters=False)
        self.decoder_norm = nn.LayerNorm(d, eps=cfg.norm_eps)
        self.decoder_pred = nn.Linear(d, cfg.target_patch**2 * cfg.in_chans)
        self._target_patch = cfg.target_patch
        self._norm_pix_loss = cfg.norm_pix_loss

    def init_decoder_special(self, construction: str = "mae") -> None:
        with torch.no_grad():
            grid = int(round((self.decoder_pos_embed.shape[1] - 1) ** 0.5))
            self.decoder_pos_embed.copy_(sincos_pos_embed_2d(self.decoder_pos_embed.shape[-1], grid,
                                                             construction=construction).unsqueeze(0))
            nn.init.normal_(self.mask_token, std=0.02)

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        x = self.decoder_embed(latent)
        n, length = ids_restore.shape
        fill = self.mask_token.to(x.dtype).expand(n, length + 1 - x.shape[1], -1)
        x_ = torch.cat([x[:, 1:], fill], dim=1)
        x_ = torch.gather(x_, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[2]))
        x = torch.cat([x[:, :1], x_], dim=1) + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        p = self._target_patch
        n, c, h, w = imgs.shape
        if h != w or h % p:
            raise ValueError(f"target image must be square with side a multiple of {p}, got {tuple(imgs.shape)}")
        g = h // p
        x = imgs.reshape(n, c, g, p, g, p)
        x = torch.einsum("nchpwq->nhwpqc", x)
        return x.reshape(n, g * g, p * p * c)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        p = self._target_patch
        n, length, _ = x.shape
        g = int(round(length**0.5))
        x = x.reshape(n, g, g, p, p, -1)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(n, x.shape[1], g * p, g * p)

    def mim_loss(self, target_imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        target = self.patchify(target_imgs).float()
        if self._norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1.0e-6) ** 0.5
        loss = ((pred.float() - target) ** 2).mean(dim=-1)
        mask = mask.float()
        return (loss * mask).sum() / mask.sum().clamp_min(1.0)  # mask_ratio 0: nothing to reconstruct, loss 0
