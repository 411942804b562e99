"""ViT encoder with optional AIM adapters and MAE-style random masking (docs/method.md §1.1, §1.3, §2.4, §2.10).

Contract:
- ``AdapterBlock``: a timm ``Block`` (timm ``Attention`` with fused SDPA, timm ``Mlp``, pre-LN) plus
  ``attn_adapter`` (series, internal skip) and ``mlp_adapter`` (parallel, scale s)::

      h = x + A_attn(MSA(LN1(x)));   y = h + FFN(LN2(h)) + s * A_mlp(LN2(h))

  Without adapters (``adapters=False``) it is exactly the timm block. State-dict names: ``norm1``, ``attn.qkv``,
  ``attn.proj``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``, ``attn_adapter.D_fc{1,2}``, ``mlp_adapter.D_fc{1,2}``.
- ``ViTEncoderMixin``: adds ``patch_embed``, ``cls_token``, ``pos_embed`` (frozen sin-cos Parameter), ``blocks``,
  ``norm`` as direct attributes of the owning model, so the checkpoint keys are the flat reference names
  (docs/method.md §5.2/§5.3). Methods: ``embed_patches``, ``random_masking``, ``add_cls``, ``run_blocks``.
- ``random_masking(x, mask_ratio, generator)``: keep the ``int(L*(1-r))`` patches with the smallest noise;
  returns ``(x_kept (N,K,D), mask (N,L) with 1 = removed, ids_restore (N,L))``.
"""

from __future__ import annotations

from functools import partial

import torch
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block
from torch import nn

from .adapters import Adapter
from .pos_embed import sincos_pos_embed_2d
from .presets import ModelConfig


class AdapterBlock(Block):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, norm_eps: float,
                 adapter_dim: int | None = None, adapter_scale: float = 0.5) -> None:
        super().__init__(dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=True,
                         norm_layer=partial(nn.LayerNorm, eps=norm_eps))
        self.adapter_scale = adapter_scale
        if adapter_dim is not None:
            self.attn_adapter = Adapter(dim, adapter_dim, skip=True)
            self.mlp_adapter = Adapter(dim, adapter_dim, skip=False)
        else:
            self.attn_adapter = None
            self.mlp_adapter = None

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        if self.attn_adapter is None:
            return super().forward(x, attn_mask=attn_mask, is_causal=is_causal)
        x = x + self.attn_adapter(self.attn(self.norm1(x), attn_mask=attn_mask, is_causal=is_causal))
        u = self.norm2(x)
        return x + self.mlp(u) + self.adapter_scale * self.mlp_adapter(u)


def make_blocks(dim: int, depth: int, num_heads: int, cfg: ModelConfig, adapters: bool) -> nn.ModuleList:
    adim = int(dim * cfg.adapter_ratio) if adapters else None
    return nn.ModuleList(
        AdapterBlock(dim, num_heads, cfg.mlp_ratio, cfg.norm_eps, adim, cfg.adapter_scale) for _ in range(depth)
    )


def random_masking(x: torch.Tensor, mask_ratio: float, generator: torch.Generator | None = None):
    """Per-sample random masking by argsort of uniform noise (MAE); 1 in ``mask`` marks a removed patch."""
    n, length, d = x.shape
    keep = int(length * (1 - mask_ratio))
    gen_device = generator.device if generator is not None else x.device
    noise = torch.rand(n, length, generator=generator, device=gen_device).to(x.device)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :keep]
    x_kept = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, d))
    mask = (ids_restore >= keep).to(x.dtype)
    return x_kept, mask, ids_restore


class ViTEncoderMixin:
    """Mix into an ``nn.Module`` subclass; call ``self.build_encoder(cfg, adapters)`` in ``__init__``."""

    def build_encoder(self, cfg: ModelConfig, adapters: bool) -> None:
        self.patch_embed = PatchEmbed(cfg.img_size, cfg.patch_size, cfg.in_chans, cfg.embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_patches + 1, cfg.embed_dim), requires_grad=False)
        self.blocks = make_blocks(cfg.embed_dim, cfg.depth, cfg.num_heads, cfg, adapters)
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)

    def init_encoder_special(self, construction: str = "mae") -> None:
        """Sin-cos table (``construction``: pos_embed.py), patch-embed conv as a flattened Linear, cls token
        N(0, 0.02) (after ``init_reference``)."""
        with torch.no_grad():
            grid = self.patch_embed.grid_size[0]
            self.pos_embed.copy_(sincos_pos_embed_2d(self.pos_embed.shape[-1], grid,
                                                     construction=construction).unsqueeze(0))
            w = self.patch_embed.proj.weight
            nn.init.xavier_uniform_(w.view(w.shape[0], -1))
            nn.init.normal_(self.cls_token, std=0.02)

    def embed_patches(self, x: torch.Tensor) -> torch.Tensor:
        return self.patch_embed(x)

    def add_cls(self, x: torch.Tensor) -> torch.Tensor:
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        return torch.cat([cls.to(x.dtype), x], dim=1)

    def run_blocks(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)
