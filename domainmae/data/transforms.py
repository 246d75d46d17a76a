"""Normalisation and augmentation of Samples (plain and multi-sensor).

Normalisers work per channel, on uint8/uint16/float ``[C, H, W]`` arrays or tensors: per-image
self-standardisation, percentile clipping, or stored per-band statistics. Invalid pixels (marked so in
``valid``, or NaN/inf, the nodata of float TIFFs and rasters) are left out of the statistics, set to 0 in the
output and marked invalid in the normalised Sample, so the loss skips them too. :class:`Augment` wraps
albumentations so that one random geometric transform moves every channel of every sensor and the ``valid``
masks together.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import albumentations as A
import numpy as np
import torch

from ..validity import valid_pixels
from .sample import Sample, is_multisensor


def as_float_tensor(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``image`` ``[C, H, W]`` (uint8, uint16, any float) as a float32 tensor."""
    if isinstance(image, np.ndarray):
        # numpy converts every dtype (uint16 included, which torch supports only partly) without overflow.
        return torch.from_numpy(np.asarray(image, dtype=np.float32))
    return image.float()


def _per_channel(
    image: np.ndarray | torch.Tensor,
    valid: torch.Tensor | None,
    fit: Callable[[torch.Tensor], Callable[[torch.Tensor], torch.Tensor]],
) -> torch.Tensor:
    """``[C, H, W]`` -> each channel mapped by ``fit(its valid pixel values)``; invalid pixels, and
    channels without any valid pixel, become 0."""
    x = as_float_tensor(image)
    mask = valid_pixels(x, valid)
    out = torch.zeros_like(x)
    for c in range(x.shape[0]):
        values = x[c][mask[c]]
        if values.numel():
            out[c] = torch.where(mask[c], fit(values)(x[c]), 0.0)
    return out


def self_standardize(image: np.ndarray | torch.Tensor, valid: torch.Tensor | None = None,
                     eps: float = 1e-6) -> torch.Tensor:
    """Per-channel zero mean and unit variance over the image's own valid pixels: ``[C, H, W]``.

    A constant channel (std below ``eps``) becomes all zeros instead of NaN/inf; invalid pixels are set to
    0 (the mean) so nodata does not reach the model as extreme values.
    """

    def fit(values: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        std, mean = torch.std_mean(values, correction=0)
        return lambda channel: (channel - mean) / std.clamp_min(eps)

    return _per_channel(image, valid, fit)


def percentile_clip(image: np.ndarray | torch.Tensor, low: float = 1.0, high: float = 99.0,
                    valid: torch.Tensor | None = None, eps: float = 1e-6) -> torch.Tensor:
    """Per-channel rescale of the ``[low, high]`` percentiles to ``[0, 1]``, clipped: ``[C, H, W]``.

    Pixels at or below the low percentile map to 0 and at or above the high one to 1, so a constant
    channel becomes all zeros. Percentiles use valid pixels only; invalid pixels are set to 0.
    """
    if not 0 <= low < high <= 100:
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got low={low}, high={high}")

    def fit(values: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        # numpy: torch.quantile refuses inputs over 2**24 elements (one 4096x4096 channel).
        lo, hi = (float(v) for v in np.percentile(values.numpy(), [low, high]))
        return lambda channel: ((channel - lo) / max(hi - lo, eps)).clamp(0.0, 1.0)

    return _per_channel(image, valid, fit)


def _parts(sample: dict) -> list[str | None]:
    """Keys of the single-sensor Samples inside ``sample``: its sensors, or ``[None]`` for a plain Sample."""
    return [key for key in sample if key != "meta"] if is_multisensor(sample) else [None]


def _get(sample: dict, key: str | None) -> Sample:
    return sample if key is None else sample[key]


def _put(sample: dict, parts: dict[str | None, Sample]) -> dict:
    return parts[None] if None in parts else {**sample, **parts}


def _normalise(sample: dict, fn: Callable[[str | None, Sample], torch.Tensor]) -> dict:
    """``sample`` with each sensor's image replaced by ``fn(sensor, part)`` (sensor None for a plain Sample).

    ``fn`` gets the part with its image as a float tensor and ``valid`` as :func:`valid_pixels` ``[C, H, W]``,
    and must set invalid pixels to a finite value. The result keeps those pixels marked invalid, so the loss
    skips them: ``valid`` is ``[H, W]`` when every channel agrees (as readers give it), else ``[C, H, W]``
    (NaN in one channel only), and absent when every pixel is valid and the part had no mask.
    """

    def one(key: str | None) -> Sample:
        part = _get(sample, key)
        image = as_float_tensor(part["image"])
        valid = valid_pixels(image, part.get("valid"))
        out = {**part, "image": fn(key, {**part, "image": image, "valid": valid})}
        if part.get("valid") is not None or not valid.all():
            out["valid"] = valid[0] if (valid == valid[:1]).all() else valid
        return out

    return _put(sample, {key: one(key) for key in _parts(sample)})


class SelfStandardize:
    """Sample transform: :func:`self_standardize` of each sensor's image over its valid pixels."""

    def __init__(self, eps: float = 1e-6) -> None:
        self.eps = eps

    def _standardize(self, _: str | None, part: Sample) -> torch.Tensor:
        return self_standardize(part["image"], part.get("valid"), self.eps)

    def __call__(self, sample: dict) -> dict:
        return _normalise(sample, self._standardize)


class PercentileClip:
    """Sample transform: :func:`percentile_clip` of each sensor's image over its valid pixels."""

    def __init__(self, low: float = 1.0, high: float = 99.0) -> None:
        self.low, self.high = low, high

    def _clip(self, _: str | None, part: Sample) -> torch.Tensor:
        return percentile_clip(part["image"], self.low, self.high, part.get("valid"))

    def __call__(self, sample: dict) -> dict:
        return _normalise(sample, self._clip)


class BandStandardize:
    """Sample transform: ``(x - mean) / std`` per channel with stored statistics; invalid (and NaN/inf) pixels
    set to 0.

    ``stats`` is ``{sensor: {channel: {"mean": m, "std": s}}}``, as recipes store it (see ``stats.py``);
    channels are looked up by name, so any subset or order works. A plain Sample uses the only sensor's
    statistics.
    """

    def __init__(self, stats: Mapping[str, Mapping[str, Mapping[str, float]]], eps: float = 1e-6) -> None:
        self.stats, self.eps = stats, eps

    def _standardize(self, sensor: str | None, part: Sample) -> torch.Tensor:
        if sensor is None and len(self.stats) != 1:
            raise ValueError(f"a single-sensor sample needs statistics for one sensor, found {list(self.stats)}")
        sensor = next(iter(self.stats)) if sensor is None else sensor
        if sensor not in self.stats:
            raise ValueError(f"no band statistics for sensor {sensor!r}; have {list(self.stats)}")
        table = self.stats[sensor]
        missing = [name for name in part["channels"] if name not in table]
        if missing:
            raise ValueError(f"no band statistics for channels {missing} of sensor {sensor!r}; have {list(table)}")
        mean = torch.tensor([table[name]["mean"] for name in part["channels"]]).view(-1, 1, 1)
        std = torch.tensor([table[name]["std"] for name in part["channels"]]).view(-1, 1, 1).clamp_min(self.eps)
        return torch.where(part["valid"], (part["image"] - mean) / std, 0.0)

    def __call__(self, sample: dict) -> dict:
        return _normalise(sample, self._standardize)


class Augment:
    """Random flips, 90-degree rotations and an optional random resized crop, identical for all channels,
    all sensors and the ``valid`` masks of a Sample or multi-sensor Sample.

    All sensors' channels are stacked into one ``H x W x sum(C)`` image (albumentations works on HWC numpy
    arrays and handles any channel count) and all valid masks into one ``mask``, so a single call draws one
    set of random parameters for everything; the result is split back. ``crop_size`` enables
    ``RandomResizedCrop`` to ``crop_size x crop_size`` (masks are resized with nearest neighbour).
    """

    def __init__(self, hflip: float = 0.5, vflip: float = 0.5, rot90: float = 0.5, crop_size: int | None = None,
                 crop_scale: tuple[float, float] = (0.2, 1.0),
                 crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> None:
        steps = [A.HorizontalFlip(p=hflip), A.VerticalFlip(p=vflip), A.RandomRotate90(p=rot90)]
        if crop_size is not None:
            steps.append(A.RandomResizedCrop(size=(crop_size, crop_size), scale=crop_scale, ratio=crop_ratio))
        self.pipeline = A.Compose(steps)

    def __call__(self, sample: dict) -> dict:
        keys = _parts(sample)
        parts = [_get(sample, key) for key in keys]
        sizes = {key: tuple(part["image"].shape[-2:]) for key, part in zip(keys, parts)}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"sensors must share one pixel grid to be augmented together, found sizes {sizes}")
        images = [as_float_tensor(part["image"]).numpy() for part in parts]
        masks = [_mask_stack(part["valid"]) for part in parts if part.get("valid") is not None]
        data = {"image": np.concatenate(images).transpose(1, 2, 0)}
        if masks:
            data["mask"] = np.concatenate(masks).transpose(1, 2, 0).astype(np.uint8)
        # albumentations draws from its own generators, which DataLoader workers would copy and replay in
        # lockstep; seeding them from torch ties augmentation to torch.manual_seed and the per-worker seeds.
        # One seed per transform: Compose.set_random_seed hands its one seed to every transform, and transforms
        # seeded alike draw alike (the flips and the rotation fired together, so nothing was ever mirrored).
        for transform, seed in zip(self.pipeline.transforms, torch.randint(2**31 - 1, (len(self.pipeline.transforms),))):
            transform.set_random_seed(int(seed))
        out = self.pipeline(**data)
        new_images = _split(out["image"], [len(image) for image in images])
        new_masks = iter(_split(out["mask"], [len(mask) for mask in masks]) if masks else [])
        result = {}
        for key, part, image in zip(keys, parts, new_images):
            result[key] = {**part, "image": torch.from_numpy(image)}
            if part.get("valid") is not None:
                valid = torch.from_numpy(next(new_masks).astype(bool))
                result[key]["valid"] = valid if part["valid"].ndim == 3 else valid[0]
        return _put(sample, result)


def _mask_stack(valid: torch.Tensor) -> np.ndarray:
    """A valid mask ``[H, W]`` or ``[C, H, W]`` as ``[k, H, W]`` numpy."""
    valid = np.asarray(valid)
    return valid[None] if valid.ndim == 2 else valid


def _split(hwc: np.ndarray, counts: Sequence[int]) -> list[np.ndarray]:
    """An ``H x W x sum(counts)`` array back into contiguous ``[count, H, W]`` pieces."""
    hwc = hwc.reshape(*hwc.shape[:2], -1)  # albumentations may drop a trailing axis of size 1
    bounds = np.cumsum([0, *counts])
    return [np.ascontiguousarray(hwc[..., a:b].transpose(2, 0, 1)) for a, b in zip(bounds[:-1], bounds[1:])]
