"""Reconstruction baselines: what a masked patch looks like without a network.

Each baseline takes images ``[B, C, H, W]`` and the pixels it may look at, ``visible`` ``[B, C, H, W]``
bool (the patches the encoder sees, valid pixels only), and predicts every pixel ``[B, C, H, W]``. A
pixel it has no basis for is NaN, so a score can say "not applicable" instead of inventing a number.
Channels of several sensors on one pixel grid are simply concatenated (S1 can then predict S2).

* :func:`mean_of_visible`: each channel's mean over its visible pixels (NaN for a channel never seen).
* :func:`interpolate_visible`: per channel, piecewise-linear interpolation over the Delaunay
  triangulation of its visible pixels (``scipy.interpolate.griddata``), the nearest visible pixel
  outside their convex hull; exact for a linear ramp inside the hull. NaN for a channel never seen.
* :func:`linear_from_channels`: per-pixel least squares of a channel on the other channels, fitted on
  reference images with every channel known (:func:`channel_gram`), as the model learned its
  cross-channel mapping from training crops. A masked image has no visible pixels of a hidden channel
  to fit on, so a per-image fit could not rebuild it; the reference fit can. At a pixel where a
  predictor channel is itself masked its value is interpolated from its visible neighbours, and a
  channel with no visible pixel in the image is left out of the regression.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.interpolate import griddata
from scipy.spatial import QhullError

BASELINES = ("mean", "interpolation", "linear")


def mean_of_visible(images: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` filled with each (sample, channel)'s mean over its visible pixels."""
    v = visible.to(images.dtype)
    total = torch.where(visible, images, 0.0).sum(dim=(-2, -1), keepdim=True)
    count = v.sum(dim=(-2, -1), keepdim=True)
    mean = torch.where(count > 0, total / count.clamp(min=1), float("nan"))
    return mean.expand_as(images).clone()


def _interpolate_plane(values: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """One channel ``[H, W]``: visible pixels kept, the rest interpolated from them."""
    points = np.argwhere(seen).astype(np.float64)
    known = values[seen].astype(np.float64)
    grid = np.argwhere(np.ones_like(seen)).astype(np.float64)
    try:
        filled = griddata(points, known, grid, method="linear")
    except QhullError:  # fewer than 3 points, or all on one line: no triangle to interpolate in
        filled = np.full(len(grid), np.nan)
    outside = np.isnan(filled)
    if outside.any():
        filled[outside] = griddata(points, known, grid[outside], method="nearest")
    out = filled.reshape(seen.shape)
    out[seen] = values[seen]
    return out


def interpolate_visible(images: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]``: every channel interpolated from its own visible pixels (see module docstring)."""
    values, seen = images.detach().cpu().double().numpy(), visible.cpu().numpy()
    out = np.full(values.shape, np.nan)
    for b, c in np.ndindex(*values.shape[:2]):
        if seen[b, c].any():
            out[b, c] = _interpolate_plane(values[b, c], seen[b, c])
    return torch.from_numpy(out).to(images.dtype).to(images.device)


def channel_gram(images: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Sufficient statistics of every per-pixel regression between channels: ``[C+1, C+1]`` float64,
    ``sum x x^T`` over pixels with every channel valid and finite, ``x = (channel values..., 1)``.

    Args:
        images: reference ``[B, C, H, W]`` with all channels known.
        valid: ``[B, H, W]`` or ``[B, C, H, W]`` bool, or None.
    """
    ok = images.isfinite().all(dim=1)
    if valid is not None:
        ok &= valid.all(dim=1) if valid.dim() == 4 else valid
    x = images.double().movedim(1, -1)[ok]  # [pixels, C]
    x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype, device=x.device)], dim=1)
    return x.T @ x


def linear_from_channels(
    images: torch.Tensor, visible: torch.Tensor, gram: torch.Tensor, fill: torch.Tensor | None = None
) -> torch.Tensor:
    """``[B, C, H, W]``: each channel predicted pixel by pixel from the other channels of its image.

    Args:
        gram: :func:`channel_gram` of reference images with the same ``C`` channels.
        fill: predictor values where a predictor is not visible (default :func:`interpolate_visible`).
    """
    b, c = images.shape[:2]
    if gram.shape != (c + 1, c + 1):
        raise ValueError(f"a channel Gram matrix of shape {tuple(gram.shape)} does not fit {c} channels")
    fill = interpolate_visible(images, visible) if fill is None else fill
    x = torch.where(visible, images, fill).double()
    ones = torch.ones_like(x[:, :1])
    out = torch.full(images.shape, float("nan"), dtype=torch.float64, device=images.device)
    seen = visible.flatten(2).any(dim=-1)  # [B, C]
    gram = gram.to(x.device)
    for i in range(b):
        for t in range(c):
            predictors = [k for k in range(c) if k != t and seen[i, k]]
            if not predictors:
                continue
            rows = predictors + [c]  # + intercept
            # pinv: channels that are exact linear functions of each other make the Gram singular.
            coef = torch.linalg.pinv(gram[rows][:, rows]) @ gram[rows, t]
            out[i, t] = torch.einsum("khw,k->hw", torch.cat([x[i, predictors], ones[i]]), coef)
    return out.to(images.dtype)
