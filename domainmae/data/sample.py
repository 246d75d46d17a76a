"""The Sample contract every reader yields, and collation into batches.

A single-sensor sample is a dict::

    {"image": float32 Tensor [C, H, W],
     "channels": tuple[str, ...]            # names of the C channels, in order
     "valid": bool Tensor [H, W] or [C, H, W] (optional; False = nodata / cloud / padding)
     "meta": dict                           # source file(s), plate/well/site, CRS, transform, ...}

A multi-sensor sample maps sensor names to such samples on ONE pixel grid, plus shared meta::

    {"s2": Sample, "s1": Sample, "meta": {...}}
"""
from __future__ import annotations

from typing import Any, TypedDict

import torch


class Sample(TypedDict, total=False):
    image: torch.Tensor
    channels: tuple[str, ...]
    valid: torch.Tensor
    meta: dict[str, Any]


def is_multisensor(sample: dict[str, Any]) -> bool:
    """True for ``{sensor: Sample, "meta": ...}``, False for a plain Sample."""
    return "image" not in sample
