"""Straightforward reference formulations the package is tested against."""
import numpy as np
import torch


def loop_patchify(imgs: torch.Tensor, p: int) -> torch.Tensor:
    """Straightforward reference: token i*w+j holds pixels (r, s, c) of patch (i, j)."""
    b, c, height, width = imgs.shape
    h, w = height // p, width // p
    out = torch.empty(b, h * w, p * p * c)
    for n in range(b):
        for i in range(h):
            for j in range(w):
                out[n, i * w + j] = imgs[n, :, i * p : (i + 1) * p, j * p : (j + 1) * p].permute(1, 2, 0).reshape(-1)
    return out


def numpy_reference_pos_embed(dim: int, h: int, w: int) -> np.ndarray:
    """The MAE reference formulation (numpy), extended to an h x w grid."""

    def one_d(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    grid = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))  # w first, as reference
    return np.concatenate([one_d(dim // 2, grid[0]), one_d(dim // 2, grid[1])], axis=1)
