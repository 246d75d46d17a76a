"""Reconstruction baselines: what a masked patch looks like without a network.

Each baseline takes images ``[B, C, H, W]`` and the pixels it may look at, ``visible`` ``[B, C, H, W]``
bool (the patches the encoder sees, valid pixels only), and returns ``[B, C, H, W]`` with every masked
pixel predicted. A pixel it has no basis for is NaN, so a score can say "not applicable" instead of
inventing a number.
Channels of several sensors on one pixel grid are simply concatenated (S1 can then predict S2).

* :func:`mean_of_visible`: each channel's mean over its visible pixels (NaN for a channel never seen).
* :func:`interpolate_visible`: per channel, harmonic (membrane) interpolation: masked pixels solve
  Laplace's equation with the visible pixels held fixed and the image border reflecting, so each is
  the mean of its neighbours. Exact for a linear ramp in a region enclosed by visible pixels; smooth
  and bounded by the visible values elsewhere. NaN for a channel never seen.
* :func:`linear_from_channels`: per-pixel least squares of a masked channel on the channels visible at
  that pixel (+ an intercept; the intercept alone, the reference mean, where none is visible). Fitted
  on reference images with every channel known (:func:`channel_gram`), as the model learned its
  cross-channel mapping from training crops: a masked image has no visible pixel of a hidden channel
  to fit on, so a per-image fit could never rebuild it (S1 -> S2, DNA -> other stains).
"""
from __future__ import annotations

import numpy as np
import torch
from scipy import sparse
from scipy.sparse.linalg import spsolve

from ..validity import valid_pixels

BASELINES = ("mean", "interpolation", "linear")


def mean_of_visible(images: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` filled with each (sample, channel)'s mean over its visible pixels."""
    v = visible.to(images.dtype)
    total = torch.where(visible, images, 0.0).sum(dim=(-2, -1), keepdim=True)
    count = v.sum(dim=(-2, -1), keepdim=True)
    mean = torch.where(count > 0, total / count.clamp(min=1), float("nan"))
    return mean.expand_as(images).clone()


def _interpolate_plane(values: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """One channel ``[H, W]``: visible pixels kept, the rest solving Laplace's equation around them.

    Every hidden pixel equals the mean of its 4 neighbours inside the image (one sparse linear system).
    A hidden region always touches a visible pixel when any is visible, so the system is regular.
    """
    h, w = seen.shape
    out = np.where(seen, values, 0.0).astype(np.float64)
    ys, xs = np.nonzero(~seen)
    n = len(ys)
    if not n:
        return out
    index = np.full((h, w), -1)
    index[ys, xs] = np.arange(n)
    degree, rhs, rows, cols = np.zeros(n), np.zeros(n), [np.arange(n)], [np.arange(n)]
    for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        ny, nx = ys + dy, xs + dx
        inside = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
        i, ny, nx = np.arange(n)[inside], ny[inside], nx[inside]
        degree[i] += 1  # one neighbour per pixel per direction: no repeated index
        j = index[ny, nx]
        rows.append(i[j >= 0])
        cols.append(j[j >= 0])
        rhs[i[j < 0]] += out[ny[j < 0], nx[j < 0]]
    off = sum(len(r) for r in rows[1:])
    data = np.concatenate([degree, -np.ones(off)])
    system = sparse.csr_matrix((data, (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))
    out[ys, xs] = spsolve(system, rhs)
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
    ok = valid_pixels(images, valid).all(dim=1)
    x = images.double().movedim(1, -1)[ok]  # [pixels, C]
    x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype, device=x.device)], dim=1)
    return x.T @ x


def linear_from_channels(images: torch.Tensor, visible: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]``: each masked pixel of a channel predicted from the channels visible at it.

    The least-squares fit of the channel on exactly those channels (and an intercept) comes from
    ``gram``; where no other channel is visible that is the intercept alone, the reference mean.
    Visible pixels are kept as they are.

    Args:
        gram: :func:`channel_gram` of reference images with the same ``C`` channels.
    """
    b, c, h, w = images.shape
    if gram.shape != (c + 1, c + 1):
        raise ValueError(f"a channel Gram matrix of shape {tuple(gram.shape)} does not fit {c} channels")
    gram = gram.to(images.device)
    x = torch.where(visible, images, 0.0).double().movedim(1, -1).reshape(-1, c)  # [pixels, C]
    x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype, device=x.device)], dim=1)
    out = x[:, :c].clone()
    # Pixels with the same visible channels share one regression (one solve for all hidden channels).
    patterns, inverse = torch.unique(visible.movedim(1, -1).reshape(-1, c), dim=0, return_inverse=True)
    groups = torch.argsort(inverse).split(torch.bincount(inverse, minlength=len(patterns)).tolist())
    for pattern, at in zip(patterns.tolist(), groups):
        rows = [j for j in range(c) if pattern[j]] + [c]
        hidden = [j for j in range(c) if not pattern[j]]
        if hidden:
            # pinv: channels that are exact linear functions of each other make the Gram singular.
            coef = torch.linalg.pinv(gram[rows][:, rows]) @ gram[rows][:, hidden]
            out[at.unsqueeze(1), torch.tensor(hidden)] = x[at][:, rows] @ coef
    return out.reshape(b, h, w, c).movedim(-1, 1).to(images.dtype)
