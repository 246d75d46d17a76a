"""Reconstruction losses on masked tokens.

All functions take per-token pixel tensors ``[B, L, P]`` (``P = p*p*C`` stacked or ``p*p`` per
channel token), the token mask ``[B, L]`` (1 = removed) and an optional per-pixel ``valid``
``[B, L, P]`` (False on nodata / cloud pixels). Invalid pixels never enter a loss or a
norm-pix statistic, and tokens without any valid pixel drop out of the mean.

A loss is the sum over the scored tokens (:func:`token_weight`) divided by their number, or by a
given ``count``: a micro-batch or process holding part of a batch divides by the whole batch's count
per part, so averaging the parts' losses gives the whole batch's mean (rows hold uneven numbers of
scored tokens, and the mean of the parts' own means would weigh a token by how few its part holds).
"""
from __future__ import annotations

import torch


def normalize_patches(target: torch.Tensor, valid: torch.Tensor | None = None, eps: float = 1e-6) -> torch.Tensor:
    """Norm-pix target: every patch to zero mean and unit variance over its (valid) pixels.

    ``var`` is the unbiased variance, as in the MAE reference (``Tensor.var``).
    """
    if valid is None:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
    else:
        v = valid.to(target.dtype)
        count = v.sum(dim=-1, keepdim=True)
        mean = (target * v).sum(dim=-1, keepdim=True) / count.clamp(min=1)
        var = (((target - mean) * v) ** 2).sum(dim=-1, keepdim=True) / (count - 1).clamp(min=1)
    return (target - mean) / (var + eps) ** 0.5


def token_weight(mask: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """The tokens a loss scores, ``[B, L]``: 1 where masked (``mask`` ``[B, L]``) and holding at least one
    valid pixel (``valid`` ``[B, L, P]``); its sum is the count the loss divides by."""
    return mask if valid is None else mask * valid.any(dim=-1).to(mask.dtype)


def _masked_mean(per_token: torch.Tensor, weight: torch.Tensor, count: torch.Tensor | None) -> torch.Tensor:
    """Sum of ``per_token`` ``[B, L]`` over the weighted tokens divided by ``count`` (default: their number);
    0 (still differentiable) when there is nothing to count, as the sum is then 0 too."""
    count = weight.sum() if count is None else count
    return (per_token * weight).sum() / torch.where(count > 0, count, 1)


def masked_mse(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    valid: torch.Tensor | None = None,
    count: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean over masked tokens of the per-token MSE over valid pixels (reference MAE loss); the sum over them
    divided by ``count`` when given."""
    sq = (pred - target) ** 2
    if valid is None:
        per_token = sq.mean(dim=-1)
    else:
        v = valid.to(sq.dtype)
        per_token = (sq * v).sum(dim=-1) / v.sum(dim=-1).clamp(min=1)
    return _masked_mean(per_token, token_weight(mask, valid), count)


def fourier_l1(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    patch_size: int,
    valid: torch.Tensor | None = None,
    count: torch.Tensor | None = None,
) -> torch.Tensor:
    """L1 between the 2-D Fourier magnitudes of predicted and target patches, masked tokens only (averaged as
    :func:`masked_mse`, over the same tokens and ``count``).

    Pixels are in ``(p, q, c)`` order (see :mod:`.patches`); invalid pixels are zeroed in both
    tensors before the transform so they contribute no difference.
    """
    if valid is not None:
        v = valid.to(pred.dtype)
        pred, target = pred * v, target * v
    b, l, d = pred.shape
    shape = (b, l, patch_size, patch_size, d // patch_size**2)
    mag = lambda x: torch.fft.fft2(x.float().reshape(shape), dim=(2, 3)).abs()  # noqa: E731
    per_token = (mag(pred) - mag(target)).abs().mean(dim=(2, 3, 4))
    return _masked_mean(per_token, token_weight(mask, valid), count)


def reconstruction_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    *,
    patch_size: int,
    valid: torch.Tensor | None = None,
    norm_pix: bool = False,
    fourier_weight: float = 0.0,
    count: torch.Tensor | None = None,
) -> torch.Tensor:
    """MSE on masked tokens (+ ``fourier_weight`` x Fourier L1; CA-MAE used 0.01), each summed over the scored
    tokens and divided by ``count`` (default: their number, a mean)."""
    if valid is not None:
        # Weights of 0 do not cancel NaN/inf (0 * NaN = NaN): invalid targets must be finite to be ignored.
        target = target.masked_fill(~valid, 0.0)
    if norm_pix:
        target = normalize_patches(target, valid)
    loss = masked_mse(pred, target, mask, valid, count)
    if fourier_weight:
        loss = loss + fourier_weight * fourier_l1(pred, target, mask, patch_size, valid, count)
    return loss
