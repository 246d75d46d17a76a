"""Patchify / unpatchify: images <-> sequences of non-overlapping p x p patches.

Two token layouts are used across the package:

* **stacked** (standard MAE): one token per location carrying all channels,
  ``[B, C, H, W] -> [B, h*w, p*p*C]`` with pixels ordered ``(p, q, c)`` exactly as the
  reference ``models_mae.py`` does, so reference checkpoints' decoder heads line up.
* **channel** (channel-agnostic MAE): one token per (channel, location), channel-major,
  ``[B, C, H, W] -> [B, C*h*w, p*p]``; token ``c * h*w + i*w + j`` is channel ``c`` at
  grid cell ``(i, j)``.
"""
from __future__ import annotations

import torch


def grid_size(height: int, width: int, patch_size: int) -> tuple[int, int]:
    """Patch grid ``(h, w)`` of an image; both sides must be multiples of the patch size."""
    if height % patch_size or width % patch_size:
        raise ValueError(
            f"image size {height}x{width} is not a multiple of the patch size {patch_size}; "
            f"crop or pad to a multiple of {patch_size}"
        )
    return height // patch_size, width // patch_size


def patchify(imgs: torch.Tensor, patch_size: int) -> torch.Tensor:
    """``[B, C, H, W] -> [B, h*w, p*p*C]`` (stacked layout, pixels ordered p, q, c)."""
    b, c, height, width = imgs.shape
    h, w = grid_size(height, width, patch_size)
    p = patch_size
    x = imgs.reshape(b, c, h, p, w, p)
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(b, h * w, p * p * c)


def unpatchify(x: torch.Tensor, patch_size: int, grid: tuple[int, int]) -> torch.Tensor:
    """``[B, h*w, p*p*C] -> [B, C, H, W]``; inverse of :func:`patchify`."""
    b, n, d = x.shape
    h, w = grid
    p = patch_size
    if n != h * w or d % (p * p):
        raise ValueError(f"cannot unpatchify {tuple(x.shape)} onto a {h}x{w} grid of {p}px patches")
    c = d // (p * p)
    x = x.reshape(b, h, w, p, p, c)
    x = torch.einsum("nhwpqc->nchpwq", x)
    return x.reshape(b, c, h * p, w * p)


def patchify_channels(imgs: torch.Tensor, patch_size: int) -> torch.Tensor:
    """``[B, C, H, W] -> [B, C*h*w, p*p]`` (channel layout, channel-major)."""
    b, c, height, width = imgs.shape
    return patchify(imgs.reshape(b * c, 1, height, width), patch_size).reshape(b, -1, patch_size**2)


def unpatchify_channels(x: torch.Tensor, patch_size: int, grid: tuple[int, int]) -> torch.Tensor:
    """``[B, C*h*w, p*p] -> [B, C, H, W]``; inverse of :func:`patchify_channels`."""
    b, l, _ = x.shape
    n = grid[0] * grid[1]
    if l % n:
        raise ValueError(f"{l} channel tokens do not split into channels of {n} patches")
    c = l // n
    imgs = unpatchify(x.reshape(b * c, n, patch_size**2), patch_size, grid)
    return imgs.reshape(b, c, *imgs.shape[-2:])
