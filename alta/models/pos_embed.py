"""Fixed 2-D sine-cosine positional embeddings, MAE construction (method.md §1.1).

Contract: ``sincos_pos_embed_2d(dim, grid, cls_token=True) -> Tensor (1 + grid*grid, dim)`` in float64-computed,
float32-returned values. Half of the channels encode the row coordinate and half the column coordinate (MAE puts the
grid's second meshgrid axis first); each half is [sin(pos*omega), cos(pos*omega)] with omega_k = 1/10000^(k/(dim/4)).
The CLS row is all zeros.
"""

from __future__ import annotations

import torch


def _sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    if dim % 2:
        raise ValueError(f"sin-cos embedding dimension must be even, got {dim}")
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    out = pos.reshape(-1, 1).to(torch.float64) * omega.reshape(1, -1)
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def sincos_pos_embed_2d(dim: int, grid: int, cls_token: bool = True) -> torch.Tensor:
    """(grid*grid [+1], dim) table; row-major patch order, leading zero row for CLS when ``cls_token``."""
    if dim % 4:
        raise ValueError(f"2-D sin-cos embedding dimension must be a multiple of 4, got {dim}")
    coords = torch.arange(grid, dtype=torch.float64)
    # MAE: np.meshgrid(w, h) then stack -> first half of the channels follows the column index (w).
    gw, gh = torch.meshgrid(coords, coords, indexing="xy")
    emb = torch.cat([_sincos_1d(dim // 2, gw), _sincos_1d(dim // 2, gh)], dim=1)
    if cls_token:
        emb = torch.cat([torch.zeros(1, dim, dtype=torch.float64), emb], dim=0)
    return emb.float()
