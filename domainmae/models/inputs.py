"""Checking a batch against a model's sensors and splitting it per sensor.

Kept apart from :mod:`.mae` so the algorithm reads top to bottom; every error names the
sensor, the channels or the shapes at fault.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from ..validity import expand_valid
from .embed import ChannelLike, ChannelSpec


@dataclass
class SensorInput:
    """One sensor's part of a batch.

    Attributes:
        images: ``[B, C, H, W]`` float.
        channels: the C channel names/specs, or None for a stacked (standard MAE) sensor.
        valid: ``[B, C, H, W]`` bool (False = nodata/cloud, left out of the loss) or None.
    """

    name: str
    images: torch.Tensor
    channels: tuple[ChannelLike, ...] | None
    valid: torch.Tensor | None

    @property
    def token_channels(self) -> int:
        """Tokens per grid cell: 1 for stacked sensors, C for channel tokens."""
        return 1 if self.channels is None else len(self.channels)


def _per_sensor(value, sensors: Mapping, what: str) -> dict:
    """Turn a tensor/list meant for a single-sensor model into ``{sensor: value}``."""
    if value is None:
        return {}
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - set(sensors))
        if unknown:
            raise KeyError(f"{what} for unknown sensor(s) {unknown}; this model's sensors are {list(sensors)}")
        return dict(value)
    if len(sensors) > 1:
        raise TypeError(f"this multi-sensor model takes {what} as {{sensor: ...}} with sensors {list(sensors)}")
    return {next(iter(sensors)): value}


def sensor_inputs(
    sensors: Mapping[str, int | Sequence[ChannelSpec]],
    images: torch.Tensor | Mapping[str, torch.Tensor],
    channels: Sequence[ChannelLike] | Mapping[str, Sequence[ChannelLike]] | None,
    valid: torch.Tensor | Mapping[str, torch.Tensor] | None,
) -> list[SensorInput]:
    """Validate a batch and return one :class:`SensorInput` per given sensor, in model order."""
    images = _per_sensor(images, sensors, "images")
    channels = _per_sensor(channels, sensors, "channels")
    valid = _per_sensor(valid, sensors, "valid")
    if not images:
        raise ValueError(f"no images given; this model's sensors are {list(sensors)}")
    out = []
    for name, spec in sensors.items():
        if name not in images:
            continue
        x = images[name]
        if x.dim() != 4:
            raise ValueError(f"sensor {name!r}: images must be [B, C, H, W], got shape {tuple(x.shape)}")
        names = channels.get(name)
        if isinstance(spec, int):
            if names is not None:
                raise ValueError(f"sensor {name!r} stacks {spec} channels (standard MAE) and takes no channel names")
        else:
            if names is None:
                if x.shape[1] != len(spec):
                    raise ValueError(
                        f"sensor {name!r}: images have {x.shape[1]} channels, the vocabulary {len(spec)} "
                        f"({', '.join(s.name for s in spec)}); pass channels= to say which"
                    )
                names = spec
            names = tuple(names)
            if len(names) != x.shape[1]:
                raise ValueError(f"sensor {name!r}: images have {x.shape[1]} channels but {len(names)} channel names were given")
        v = valid.get(name)
        # Only the given mask: NaN pixels the mask leaves valid are the caller's (readers and normalisers fill them).
        out.append(SensorInput(name, x, names, None if v is None else expand_valid(v, x.shape, f"sensor {name!r}")))
    batches = {inp.images.shape[0] for inp in out}
    if len(batches) > 1:
        raise ValueError(f"sensors have different batch sizes: { {i.name: i.images.shape[0] for i in out} }")
    return out


def split_tokens(x: torch.Tensor, inputs: Sequence[SensorInput], grid: tuple[int, int]) -> dict[str, torch.Tensor]:
    """The whole sequence's ``[B, L, ...]`` (masks, decoded tokens) -> ``{sensor: [B, L_s, ...]}``.

    Tokens are sensor-major in ``inputs`` order, each sensor ``token_channels * h * w`` long.
    """
    sizes = [inp.token_channels * grid[0] * grid[1] for inp in inputs]
    return dict(zip((inp.name for inp in inputs), x.split(sizes, dim=1)))
