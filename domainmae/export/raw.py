"""Raw-pixel baseline features: per-channel statistics of the normalised tiles the model would see.

``embed(..., features="raw")`` writes these in place of embeddings, through the same writers, so that
``evaluate`` can show what a probe learns from intensity statistics alone. For every chosen channel, in
the export's channel order: mean, standard deviation and the 5/25/50/75/95th percentiles of the tile's
valid pixels (a per-patch raster gets them per patch). A tile or patch without a valid pixel in a channel
gets zeros there, the normalised data's centre, so that probes can still take the row; a raster patch with
no valid pixel in any channel is nodata, as the model's embeddings are (:func:`patches_without_data`).
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..validity import expand_valid

STATS = ("mean", "std", "p5", "p25", "p50", "p75", "p95")
PERCENTILES = (5, 25, 50, 75, 95)


def raw_feature_names(channels: Mapping[str, Sequence[str]]) -> list[str]:
    """``"DNA:mean"``, ``"DNA:std"``... per chosen channel; ``"s2/B04:mean"`` when there are several sensors."""
    prefix = len(channels) > 1
    return [f"{sensor + '/' if prefix else ''}{c}:{s}" for sensor, names in channels.items() for c in names for s in STATS]


def with_invalid_as_nan(batch: dict[str, Any]) -> dict[str, Any]:
    """A collated batch whose invalid pixels are NaN (the readers' fill values would count as data)."""
    images, valid = batch["images"], batch["valid"]
    if valid is None:
        return batch

    def masked(image: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if mask is None:
            return image
        return image.float().masked_fill(~expand_valid(mask, image.shape), float("nan"))

    if isinstance(images, dict):
        images = {k: masked(v, valid.get(k)) for k, v in images.items()}
    else:
        images = masked(images, valid)
    return {**batch, "images": images}


def patches_without_data(batch: dict[str, Any], patch_size: int) -> np.ndarray | None:
    """``[B, H/p, W/p]`` bool of a collated batch: the patches where no sensor has a valid pixel in any channel
    (a swath edge, a scene's nodata margin), which a per-patch raster writes as nodata; None when all is valid."""
    images, valid = batch["images"], batch["valid"]
    if valid is None:
        return None
    if not isinstance(images, dict):  # a single-sensor batch
        images, valid = {"": images}, {"": valid}
    found: torch.Tensor | None = None
    for sensor, image in images.items():
        if valid.get(sensor) is None:  # this sensor has data everywhere
            return None
        ok = expand_valid(valid[sensor], image.shape).any(dim=-3)  # [B, H, W]
        b, h, w = ok.shape
        p = patch_size
        ok = ok[:, : h // p * p, : w // p * p].reshape(b, h // p, p, w // p, p).any(dim=4).any(dim=2)
        found = ok if found is None else found | ok
    return (~found).cpu().numpy()


def channel_stats(images: torch.Tensor, patch_size: int | None) -> np.ndarray:
    """``[B, C, H, W]`` (NaN = invalid) -> ``[B, C * 7]`` per tile, or ``[B, H/p, W/p, C * 7]`` per patch."""
    x = images.detach().cpu().double().numpy()
    b, c, h, w = x.shape
    if patch_size is None:
        values = x.reshape(b, c, h * w)
    else:
        p = patch_size
        values = x[:, :, : h // p * p, : w // p * p].reshape(b, c, h // p, p, w // p, p)
        values = values.transpose(0, 2, 4, 1, 3, 5).reshape(b, h // p, w // p, c, p * p)
    with warnings.catch_warnings():  # all-NaN slices: handled below
        warnings.simplefilter("ignore", RuntimeWarning)
        stats = [np.nanmean(values, -1), np.nanstd(values, -1),
                 *np.nanpercentile(values, PERCENTILES, axis=-1)]  # fmt: skip
    out = np.nan_to_num(np.stack(stats, axis=-1), nan=0.0)  # [..., C, 7]
    return out.reshape(*out.shape[:-2], -1).astype(np.float32)


def raw_features(images: Mapping[str, torch.Tensor], patch_size: int | None) -> np.ndarray:
    """``{sensor: [B, C_s, H, W]}`` -> the sensors' statistics side by side (last axis), in their order."""
    return np.concatenate([channel_stats(v, patch_size) for v in images.values()], axis=-1)
