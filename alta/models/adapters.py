"""AIM-style bottleneck adapters and the projection heads (docs/method.md §2.4, §2.5, §2.7).

Contract:
- ``Adapter(dim, hidden, skip)``: ``D_fc2(GELU(D_fc1(u)))`` (+ ``u`` when ``skip``); no dropout, no internal LN.
  Parameter names ``D_fc1.{weight,bias}``, ``D_fc2.{weight,bias}`` match the reference checkpoints.
- ``ProjectionHead(in_dim, out_dim)``: ``dense_to_output(LN(GELU(dense_to_hidden(x))))`` with LN eps 1e-12; the same
  layout serves as ``ImageProjectionHead`` and CXR-BERT's ``BertProjectionHead`` (keys of §5.2).
- ``init_adapter(adapter, style)``: ``zero`` = D_fc1 xavier-uniform / bias 0 and D_fc2 all zeros (the adapter is
  the identity branch at step 0); ``normal`` = N(0, 0.02) weights and zero biases for both linears (what
  ``from_pretrained`` gave the reference text adapters, docs/method.md §3 #4).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class Adapter(nn.Module):
    def __init__(self, dim: int, hidden: int, skip: bool = True) -> None:
        super().__init__()
        self.skip = skip
        self.D_fc1 = nn.Linear(dim, hidden)
        self.D_fc2 = nn.Linear(hidden, dim)
        init_adapter(self, "zero")

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        out = self.D_fc2(F.gelu(self.D_fc1(u)))
        return u + out if self.skip else out


def init_adapter(adapter: Adapter, style: str) -> None:
    with torch.no_grad():
        if style == "zero":
            nn.init.xavier_uniform_(adapter.D_fc1.weight)
            nn.init.zeros_(adapter.D_fc1.bias)
            nn.init.zeros_(adapter.D_fc2.weight)
            nn.init.zeros_(adapter.D_fc2.bias)
        elif style == "normal":
            for lin in (adapter.D_fc1, adapter.D_fc2):
                nn.init.normal_(lin.weight, std=0.02)
                nn.init.zeros_(lin.bias)
        else:
            raise ValueError(f"unknown adapter init {style!r} (expected 'zero' or 'normal')")


class ProjectionHead(nn.Module):
    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.dense_to_hidden = nn.Linear(in_dim, out_dim)
        self.LayerNorm = nn.LayerNorm(out_dim, eps=1e-12)
        self.dense_to_output = nn.Linear(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense_to_output(self.LayerNorm(F.gelu(self.dense_to_hidden(x))))


def init_reference(module: nn.Module) -> None:
    """Reference init applied with ``Module.apply``: Linear xavier-uniform / bias 0, LayerNorm (1, 0)."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
