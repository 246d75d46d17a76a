"""Which pixels are valid: one rule for readers, normalisers, the model, scoring and export.

A pixel is invalid when its ``valid`` mask says so (nodata, cloud, padding), when it is NaN or inf (how float
files mark nodata; one such value would make every statistic and loss NaN), or when it equals a ``nodata``
value. A mask comes without the channel axis (one mask for every channel) or with it, of size 1 or C:

* image ``[C, H, W]``: valid ``[H, W]``, ``[1, H, W]`` or ``[C, H, W]``; the result is ``[C, H, W]``;
* image ``[B, C, H, W]``: valid ``[B, H, W]``, ``[B, 1, H, W]`` or ``[B, C, H, W]``; the result is ``[B, C, H, W]``.

A leaf module (numpy and torch only), so that ``data`` and ``models`` can share it without importing each other.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np
import torch

Array = TypeVar("Array", np.ndarray, torch.Tensor)


def expand_valid(valid: Array, shape: Sequence[int], where: str = "") -> Array:
    """``valid`` broadcast to an image of ``shape`` ``[..., C, H, W]``: bool of that shape (a view).

    ``valid`` is the image's shape without the channel axis, or with it of size 1 or C (see the module
    docstring). Anything else raises ``ValueError`` naming both shapes, prefixed by ``where`` (e.g. the sensor).
    """
    shape, given = tuple(shape), tuple(valid.shape)
    if valid.ndim == len(shape) - 1:
        valid = valid[..., None, :, :]  # one mask for every channel
    fits = valid.ndim == len(shape) and valid.shape[-3] in (1, shape[-3]) and (
        tuple(valid.shape[:-3]) == shape[:-3] and tuple(valid.shape[-2:]) == shape[-2:]
    )
    if not fits:
        axes = "BCHW"[-len(shape):]
        raise ValueError(
            f"{where + ': ' if where else ''}valid mask of shape {given} does not fit images {shape}; "
            f"use [{', '.join(axes.replace('C', ''))}] or [{', '.join(axes)}]"
        )
    if isinstance(valid, torch.Tensor):
        return valid.to(torch.bool).expand(shape)
    return np.broadcast_to(np.asarray(valid, dtype=bool), shape)


def valid_pixels(image: Array, valid: torch.Tensor | np.ndarray | None = None, *, nodata: float | None = None) -> Array:
    """The pixels of ``image`` ``[..., C, H, W]`` that may enter statistics and the loss: bool, ``image``'s shape
    and kind (numpy or torch).

    ``valid`` (None = all) is broadcast as :func:`expand_valid` says; ``nodata`` (None = none) is a value
    that marks missing pixels in ``image`` itself.
    """
    if isinstance(image, torch.Tensor):
        ok = torch.isfinite(image)
        mask = None if valid is None else torch.as_tensor(valid, device=image.device)
    else:
        ok = np.isfinite(image)
        mask = None if valid is None else np.asarray(valid)
    if nodata is not None:
        ok &= image != nodata
    if mask is not None:
        ok &= expand_valid(mask, image.shape)
    return ok


def fill_invalid(image: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """For readers: the valid mask ``[H, W]`` of a region read as ``image`` ``[C, H, W]`` float, True where
    every channel is valid (:func:`valid_pixels`); the other pixels of ``image`` are set to 0 in place, so
    that no NaN reaches a normaliser or the model, even through code that ignores the mask.
    """
    keep = valid_pixels(image, valid).all(axis=0)
    image[:, ~keep] = 0.0
    return keep
