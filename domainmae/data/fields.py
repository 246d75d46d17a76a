"""Microscopy fields: one multichannel image per imaging position, read whole or by window.

A *field* (a site, one imaging position) is one multichannel image ``[C, H, W]`` that knows how to read
itself whole or by window. Readers (``tiff.py``, ``zarr.py``) only build lists of fields from a manifest, a
folder or a store; the window engine (:class:`~domainmae.data.windows.WindowDataset`) reads the region
its crops need once and cuts them from it, as it does for georeferenced scenes.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import Any

import numpy as np

from .samplers import Window
from .windows import Region


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
    """One multichannel field ``[C, H, W]``, a window source (:mod:`~domainmae.data.windows`).

    ``key`` names the field in errors (e.g. ``row 3 of load_data.csv``); ``meta`` travels into every
    sample cut from it, with ``"field"`` (the key). Subclasses keep their open files in the per-process
    cache of :mod:`~domainmae.data.handles`, not in the object, so fields stay small and pickle cheaply
    into DataLoader workers, where each worker opens the files it reads once.
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

    @property
    def label(self) -> str:
        return f"field {self.key}"

    @cached_property
    def shape(self) -> tuple[int, int]:
        """``(H, W)`` of the field."""
        return self._shape()

    @property
    def block_shape(self) -> tuple[int, int]:
        """The whole field: the random windows of one read are independent and uniform over it, and the
        read fetches their span."""
        return self.shape

    def pixels(self, window: Window | None = None) -> np.ndarray:
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

    def read(self, region: Window) -> Region:
        """``region`` read once, for cutting windows (:meth:`Region.crop`); every pixel is valid."""
        return Region(region, None, self.pixels(region), None, self.channels, {**self.meta, "field": self.key})
