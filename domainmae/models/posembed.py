"""Fixed sin-cos codes: 2-D patch positions (MAE) and 1-D scalars such as central wavelengths."""
from __future__ import annotations

import torch


def sincos_1d(embed_dim: int, positions: torch.Tensor) -> torch.Tensor:
    """Transformer sin-cos code of scalar positions.

    Args:
        embed_dim: even output width D.
        positions: ``[M]`` float positions (patch index, wavelength in nm, ...).

    Returns:
        ``[M, D]`` float32: ``[sin(pos * w_k), cos(pos * w_k)]`` with ``w_k = 10000^(-2k/D)``.
    """
    if embed_dim % 2:
        raise ValueError(f"sin-cos embedding width must be even, got {embed_dim}")
    omega = torch.arange(embed_dim // 2, dtype=torch.float64) / (embed_dim / 2.0)
    omega = 1.0 / 10000**omega
    out = positions.to(torch.float64).reshape(-1, 1) * omega.reshape(1, -1)
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1).float()


def sincos_2d(embed_dim: int, grid: tuple[int, int]) -> torch.Tensor:
    """2-D sin-cos position embedding of an ``h x w`` patch grid (any aspect ratio).

    Half of the width codes the row, half the column, as in the MAE reference. Returns
    ``[h*w, D]``, row-major (token ``i*w + j`` is grid cell ``(i, j)``); no cls entry.
    """
    if embed_dim % 4:
        raise ValueError(f"2-D sin-cos embedding width must be a multiple of 4, got {embed_dim}")
    h, w = grid
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    # The reference codes the column coordinate in the first half and the row in the second.
    return torch.cat(
        [sincos_1d(embed_dim // 2, cols.reshape(-1)), sincos_1d(embed_dim // 2, rows.reshape(-1))], dim=1
    )
