"""Microscopy fields and the dataset that cuts crops from fields.

A *field* (a site, one imaging position) is one multichannel image ``[C, H, W]`` that knows how to read
itself whole or by window. Readers (``tiff.py``, ``zarr.py``) only build lists of fields from a manifest, a
folder or a store; :class:`FieldCrops` visits a field, reads the region its crops need ONCE and cuts the
crops from it.
"""
from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

# ErrorPolicy, OnError and as_policy are re-exported here, where they lived before errors.py.
from .errors import ErrorPolicy, OnError, as_policy
from .sample import Sample
from .samplers import Window, grid_windows, random_windows


class FieldError(OSError):
    """A field's file is unreadable or inconsistent with the rest of the field.

    An ``OSError`` (like the ``FileNotFoundError`` raised for missing files) so that one ``except OSError``
    covers every per-field data problem that ``on_error="skip"`` may skip.
    """


def resolve_channels(
    found: Sequence[str] | int,
    where: str,
    channel_map: Mapping[str, str] | None = None,
    channels: Sequence[str] | None = None,
    subsets: bool = False,
) -> tuple[tuple[str, ...], list[int]]:
    """Output channel names and the source positions they are read from.

    ``found`` is the source's own channel names (manifest column suffixes, regex tokens, OME/omero labels)
    or, for a source without names, its channel count. ``channel_map`` renames found names (its keys are
    found names; an unknown key is an error, so a typo cannot silently keep the old name). ``channels`` are
    the channels expected, in output order: a named source is matched by name (this selects and reorders),
    an unnamed one by position (so the counts must agree).

    With ``subsets``, ``channels`` is a vocabulary instead: a named source may hold any of its channels and
    gets those it has, in vocabulary order; a found name outside the vocabulary is an error, since nothing
    else would catch a misspelt channel (it would just look absent).
    """
    if isinstance(found, int):
        if channels is None:
            raise ValueError(f"{where} has {found} unnamed channels; pass channels=[...] to name them")
        if channel_map:
            raise ValueError(f"{where} has no channel names for channel_map to rename; name them with channels=")
        if len(channels) != found:
            raise ValueError(f"{where}: expected {len(channels)} channels {list(channels)}, found {found}")
        return tuple(channels), list(range(found))
    unknown = sorted(set(channel_map or {}) - set(found))
    if unknown:
        raise ValueError(f"{where}: channel_map keys {unknown} are not among its channels {list(found)}")
    names = [(channel_map or {}).get(name, name) for name in found]
    if len(set(names)) != len(names):
        raise ValueError(f"{where}: duplicate channel names {names}")
    if channels is None:
        return tuple(names), list(range(len(names)))
    if subsets:
        unknown = [name for name in names if name not in channels]
        if unknown:
            raise ValueError(
                f"{where}: channels {unknown} are not in the vocabulary {list(channels)}; add them to the "
                "channels or rename them with channel_map"
            )
        return tuple(c for c in channels if c in names), [names.index(c) for c in channels if c in names]
    missing = [name for name in channels if name not in names]
    if missing:
        raise ValueError(
            f"{where}: expected channels {list(channels)}, found {names} (missing {missing}); set data.channels "
            "to the channels the data has, rename them with data.channel_map, or allow data.allow_channel_subsets"
        )
    return tuple(channels), [names.index(name) for name in channels]


class Field(ABC):
    """One multichannel field ``[C, H, W]``, read whole or by window.

    ``key`` names the field in errors (e.g. ``row 3 of load_data.csv``); ``meta`` travels into every
    sample cut from it. Subclasses reopen their files on each read, so fields stay small and pickle
    cheaply into DataLoader workers.
    """

    def __init__(self, key: str, channels: tuple[str, ...], meta: dict[str, Any]) -> None:
        self.key = key
        self.channels = channels
        self.meta = meta

    @abstractmethod
    def _shape(self) -> tuple[int, int]:
        """``(H, W)`` from file headers or array metadata, without reading pixels."""

    @abstractmethod
    def _read(self, window: Window) -> np.ndarray:
        """Pixels ``[C, h, w]`` of ``window`` (any numeric dtype)."""

    @cached_property
    def shape(self) -> tuple[int, int]:
        """``(H, W)`` of the field."""
        return self._shape()

    def read(self, window: Window | None = None) -> np.ndarray:
        """Pixels ``[C, h, w]`` as float32; the whole field when ``window`` is None."""
        height, width = self.shape
        window = window or Window(0, 0, height, width)
        if window.row < 0 or window.col < 0 or window.row + window.height > height or window.col + window.width > width:
            raise ValueError(f"{window} lies outside field {self.key} of {height}x{width} px")
        image = self._read(window)
        expected = (len(self.channels), window.height, window.width)
        if image.shape != expected:
            raise FieldError(f"field {self.key}: read an array of shape {image.shape}, expected {expected}")
        return image.astype(np.float32, copy=False)

    def sample(self, window: Window | None = None) -> Sample:
        """The field (or one window of it) as a Sample."""
        window = window or Window(0, 0, *self.shape)
        return self.crop(self.read(window), window, window)

    def crop(self, pixels: np.ndarray, region: Window, window: Window) -> Sample:
        """The Sample for ``window``, cut from ``pixels`` ``[C, h, w]`` already read for ``region``."""
        image = pixels[(slice(None), *window.shift(region.row, region.col).slices())]
        # A copy, so a crop does not keep the whole region alive (and torch gets contiguous memory).
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image)),
            "channels": self.channels,
            "meta": {**self.meta, "field": self.key, "window": window},
        }


def span(windows: Sequence[Window]) -> Window:
    """The smallest window containing all ``windows``."""
    top, left = min(w.row for w in windows), min(w.col for w in windows)
    bottom, right = max(w.row + w.height for w in windows), max(w.col + w.width for w in windows)
    return Window(top, left, bottom - top, right - left)


class FieldCrops(Dataset):
    """Crops of microscopy fields: item ``i`` is the list of crops of field ``i``, cut from one read.

    ``tiling="random"`` gives ``crops_per_field`` crops of ``size x size`` at uniform positions (training);
    ``tiling="grid"`` gives deterministic tiles ``stride`` apart that cover every pixel (export). A visit
    reads the region spanning its crops once: one crop is a windowed read, many crops cost one read
    instead of many. Items are lists, so a loader's collate should concatenate them (``batch_size``
    then counts fields); normalisation and augmentation wrap the dataset
    (:class:`~domainmae.data.loader.TransformedItems`). Random positions come from torch's RNG, so
    :class:`~domainmae.data.loader.SeededItems` makes every item a pure function of its key.

    A field whose files are missing or unreadable raises, or with ``on_error="skip"`` is logged, counted
    and yields no crops. A field smaller than ``size`` always raises, naming the field.
    """

    def __init__(
        self,
        fields: Sequence[Field],
        size: int,
        tiling: Literal["random", "grid"] = "random",
        crops_per_field: int = 1,
        stride: int | None = None,
        on_error: OnError | ErrorPolicy = "raise",
    ) -> None:
        if tiling not in ("random", "grid"):
            raise ValueError(f"tiling must be 'random' or 'grid', got {tiling!r}")
        if crops_per_field < 1:
            raise ValueError(f"crops_per_field must be at least 1, got {crops_per_field}")
        self.fields = list(fields)
        self.size = size
        self.tiling = tiling
        self.crops_per_field = crops_per_field
        self.stride = stride
        self.policy = as_policy(on_error)

    def __len__(self) -> int:
        return len(self.fields)

    def windows(self, field: Field) -> list[Window]:
        """Where this visit cuts crops from ``field``."""
        height, width = field.shape
        what = f"field {field.key}"
        if self.tiling == "grid":
            return grid_windows(height, width, self.size, self.stride, what=what)
        rng = random.Random(int(torch.randint(2**62, ()).item()))
        return random_windows(height, width, self.size, self.crops_per_field, rng, what=what)

    def __getitem__(self, index: int) -> list[Sample]:
        field = self.fields[index]
        try:
            windows = self.windows(field)
            region = span(windows)
            pixels = field.read(region)
        except OSError as err:
            self.policy.handle(err)
            return []
        return [field.crop(pixels, region, window) for window in windows]
