"""Per-band mean and standard deviation, streamed over sample windows, valid (and finite) pixels only.

Recipes store these to normalise bands. Statistics merge window by window with the parallel
update of Chan et al. (in float64), so no more than one window is held at a time and the result
does not depend on how the pixels were split into windows.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import islice
from typing import Any

import numpy as np
import torch

from ..validity import valid_pixels
from .sample import is_multisensor


@dataclass(frozen=True)
class BandStats:
    """``mean``/``std`` (population) and valid pixel ``count`` per channel, each ``[C]``."""

    channels: tuple[str, ...]
    mean: np.ndarray
    std: np.ndarray
    count: np.ndarray

    def as_dict(self) -> dict[str, dict[str, float]]:
        """``{channel: {"mean": m, "std": s}}``, plain floats for a recipe file."""
        rows = zip(self.channels, self.mean, self.std, strict=True)
        return {name: {"mean": float(mean), "std": float(std)} for name, mean, std in rows}


class RunningBandStats:
    """Accumulates :class:`BandStats` one sample at a time."""

    def __init__(self) -> None:
        self.channels: tuple[str, ...] | None = None
        self._count = self._mean = self._m2 = np.zeros(0)

    def update(self, sample: Mapping[str, Any]) -> None:
        """Add the valid, finite pixels of a Sample (``image`` ``[C, H, W]``, ``valid`` ``[H, W]`` or ``[C, H, W]``)."""
        channels = tuple(sample["channels"])
        if self.channels is None:
            self.channels = channels
            self._count, self._mean, self._m2 = (np.zeros(len(channels)) for _ in range(3))
        elif channels != self.channels:
            raise ValueError(f"channel set changed between samples: expected {self.channels}, found {channels}")
        image = np.asarray(sample["image"], dtype=np.float64)
        mask = valid_pixels(torch.from_numpy(image), sample.get("valid")).numpy().reshape(len(channels), -1)
        image = np.where(mask, image.reshape(len(channels), -1), 0.0)  # NaN/inf out of every sum below
        count = mask.sum(axis=1).astype(np.float64)
        mean = image.sum(axis=1) / np.maximum(count, 1.0)
        m2 = np.where(mask, (image - mean[:, None]) ** 2, 0.0).sum(axis=1)
        total = self._count + count
        delta = mean - self._mean
        share = np.divide(count, total, out=np.zeros_like(total), where=total > 0)
        self._mean = self._mean + delta * share
        self._m2 = self._m2 + m2 + delta**2 * self._count * share
        self._count = total

    def result(self) -> BandStats:
        if self.channels is None:
            raise ValueError("no samples were seen; cannot compute band statistics")
        empty = [name for name, n in zip(self.channels, self._count, strict=True) if n == 0]
        if empty:
            raise ValueError(f"channels {empty} had no valid pixel in any sample")
        return BandStats(self.channels, self._mean.copy(), np.sqrt(self._m2 / self._count), self._count.copy())


def band_statistics(
    samples: Iterable[Mapping[str, Any]], *, sensor: str | None = None, max_samples: int | None = None
) -> BandStats:
    """Mean/std per band over (at most ``max_samples``) samples, ignoring invalid pixels.

    For multi-sensor samples, ``sensor`` picks whose bands to measure.
    """
    running = RunningBandStats()
    for sample in islice(samples, max_samples):
        if is_multisensor(sample):
            sensors = sorted(name for name in sample if name != "meta")
            if sensor not in sensors:
                raise ValueError(f"multi-sensor samples need sensor= one of {sensors}, got {sensor!r}")
            sample = sample[sensor]
        running.update(sample)
    return running.result()
