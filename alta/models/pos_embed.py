"""Fixed 2-D sine-cosine positional embeddings in the two constructions that exist (docs/method.md §1.1, §5.5).

Contract: ``sincos_pos_embed_2d(dim, grid, cls_token=True, construction="mae") -> Tensor (1 + grid*grid, dim)`` in
float64-computed, float32-returned values. Half of the channels encode the row coordinate and half the column
coordinate (MAE puts the grid's second meshgrid axis first); each half is [sin(pos*omega), cos(pos*omega)] over the
frequencies omega_k = 1/10000^e_k, k < d/2, of its d = dim/2 channels:

* ``mae``: e_k = k / (d/2), MAE's ``omega /= embed_dim / 2.``;
* ``official``: e_k = k / (2d), what the official ALTA and MRM code compute with ``omega = omega / embed_dim / 2.``
  (an operator-precedence slip; a released MRM.pth carries tables built this way).

The CLS row is all zeros. ``which_construction(table)`` names the construction a loaded table follows, or None.
"""

from __future__ import annotations

import torch

CONSTRUCTIONS = ("mae", "official")


def _sincos_1d(dim: int, pos: torch.Tensor, construction: str) -> torch.Tensor:
    if dim % 2:
        raise ValueError(f"sin-cos embedding dimension must be even, got {dim}")
    if construction not in CONSTRUCTIONS:
        raise ValueError(f"sin-cos construction must be one of {CONSTRUCTIONS}, got {construction!r}")
    k = torch.arange(dim // 2, dtype=torch.float64)
    omega = k / (dim / 2.0) if construction == "mae" else k / dim / 2.0
    omega = 1.0 / 10000**omega
    out = pos.reshape(-1, 1).to(torch.float64) * omega.reshape(1, -1)
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def sincos_pos_embed_2d(dim: int, grid: int, cls_token: bool = True, construction: str = "mae") -> torch.Tensor:
    """(grid*grid [+1], dim) table; row-major patch order, leading zero row for CLS when ``cls_token``."""
    if dim % 4:
        raise ValueError(f"2-D sin-cos embedding dimension must be a multiple of 4, got {dim}")
    coords = torch.arange(grid, dtype=torch.float64)
    # MAE: np.meshgrid(w, h) then stack -> first half of the channels follows the column index (w).
    gw, gh = torch.meshgrid(coords, coords, indexing="xy")
    emb = torch.cat([_sincos_1d(dim // 2, gw, construction), _sincos_1d(dim // 2, gh, construction)], dim=1)
    if cls_token:
        emb = torch.cat([torch.zeros(1, dim, dtype=torch.float64), emb], dim=0)
    return emb.float()


def which_construction(table: torch.Tensor, atol: float = 1e-5) -> str | None:
    """The construction a (1, 1 + grid*grid, dim) or (1 + grid*grid, dim) table follows, or None for neither."""
    t = table.detach().float().cpu().reshape(-1, table.shape[-1])
    grid = int(round((t.shape[0] - 1) ** 0.5))
    if grid * grid + 1 != t.shape[0] or t.shape[1] % 4:
        return None
    for construction in CONSTRUCTIONS:
        if torch.allclose(t, sincos_pos_embed_2d(t.shape[1], grid, construction=construction), atol=atol):
            return construction
    return None
