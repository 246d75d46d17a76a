"""Georeferenced windows: pixel grids, regions read once, and the window reader over scenes.

Every georeferenced source (a :class:`~domainmae.data.raster.RasterScene`, a
:class:`~domainmae.data.multisensor.MultiSensorScene`, a :class:`~domainmae.data.cube.CubeScene`)
offers the same three things: the ``grid`` its windows live on, the ``block_shape`` of its
internal tiles, and ``read(region)`` returning pixels for a region of that grid. The
:class:`RasterWindowReader` turns any of them into Sample windows, and
:class:`SceneWindows` serves windows of many scenes as a map-style dataset.
"""
from __future__ import annotations

import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal, Protocol

import numpy as np
import torch
from affine import Affine
from rasterio.crs import CRS
from rasterio.transform import array_bounds

from .errors import ErrorPolicy, OnError, as_policy
from .fields import span
from .sample import Sample, is_multisensor
from .samplers import Window, grid_windows, tile_aligned_windows


class RasterReadError(OSError):
    """A raster file is missing, unreadable or corrupt; the message names the file."""


class MissingCRSError(ValueError):
    """A raster has no CRS where co-registration or a footprint needs one; names the file."""


class NoValidWindowError(ValueError):
    """Random windows kept falling below the minimum valid fraction; names the scene."""


@dataclass(frozen=True)
class Grid:
    """A pixel grid: CRS (``None`` for rasters without one), affine transform and size in pixels."""

    crs: CRS | None
    transform: Affine
    height: int
    width: int

    @cached_property
    def crs_string(self) -> str | None:
        """``"EPSG:32633"``, or WKT for a CRS without an authority code; computed once per grid.

        For such a CRS ``to_string()`` first searches the EPSG database (~200 ms), which per window
        would throttle training to a few samples a second.
        """
        return None if self.crs is None else self.crs.to_string()

    def window_meta(self, window: Window) -> dict[str, Any]:
        """What export needs to georeference a window: CRS, its own transform and bounds."""
        transform = self.transform @ Affine.translation(window.col, window.row)
        return {
            "crs": self.crs_string,
            "transform": transform,
            "bounds": array_bounds(window.height, window.width, transform),  # (left, bottom, right, top)
            "window": (window.row, window.col, window.height, window.width),
        }


@dataclass
class Region:
    """Pixels of one region of a scene, read once; windows are cut from it without re-reading.

    ``image`` is float32 ``[C, h, w]`` and ``valid`` bool ``[h, w]`` for the region ``window``
    (in pixels of ``grid``); ``meta`` is the scene-level metadata every cut sample carries.
    """

    window: Window
    grid: Grid
    image: np.ndarray
    valid: np.ndarray
    channels: tuple[str, ...]
    meta: dict[str, Any]

    def crop(self, window: Window) -> Sample:
        """The Sample for ``window`` (grid coordinates), which must lie inside the region."""
        local = window.shift(self.window.row, self.window.col)
        if local.row < 0 or local.col < 0 or local.row + local.height > self.window.height or (
            local.col + local.width > self.window.width
        ):
            raise ValueError(f"window {window} lies outside the region {self.window} that was read")
        rows, cols = local.slices()
        return {
            "image": torch.from_numpy(np.ascontiguousarray(self.image[:, rows, cols])),
            "channels": self.channels,
            "valid": torch.from_numpy(np.ascontiguousarray(self.valid[rows, cols])),
            "meta": {**self.meta, **self.grid.window_meta(window)},
        }


@dataclass
class MultiSensorRegion:
    """Regions of several sensors on one grid; a crop is ``{sensor: Sample, "meta": {...}}``."""

    regions: Mapping[str, Region]
    meta: dict[str, Any] = field(default_factory=dict)

    def crop(self, window: Window) -> dict[str, Any]:
        samples: dict[str, Any] = {name: region.crop(window) for name, region in self.regions.items()}
        grid = next(iter(self.regions.values())).grid
        samples["meta"] = {**self.meta, **grid.window_meta(window)}
        return samples


class WindowSource(Protocol):
    """What the window reader needs from a scene."""

    @property
    def name(self) -> str: ...

    @property
    def grid(self) -> Grid: ...

    @property
    def block_shape(self) -> tuple[int, int]: ...

    def read(self, region: Window) -> Region | MultiSensorRegion: ...


def valid_fraction(sample: Mapping[str, Any]) -> float:
    """Share of valid pixels; for a multi-sensor sample, that of its worst sensor."""
    if is_multisensor(sample):
        return min(valid_fraction(s) for name, s in sample.items() if name != "meta")
    valid = sample.get("valid")
    # numpy, not torch: a tiny torch op can wake torch's thread pool, which then competes with GDAL.
    return 1.0 if valid is None else np.count_nonzero(np.asarray(valid)) / valid.numel()


class RasterWindowReader:
    """Cuts Sample windows of ``size`` px from one scene.

    Random windows are tile-aware: ``windows_per_read`` windows share the tiles of one cell of the
    scene's internal tiling, and one read of their span serves them all, with positions still
    uniform over the scene (:func:`~domainmae.data.samplers.tile_aligned_windows`). Windows whose
    valid fraction is below ``min_valid`` are redrawn from a fresh read; after ``max_redraws``
    rejections in a row :class:`NoValidWindowError` names the scene. ``regions_read`` counts
    reads, for benchmarks.
    """

    def __init__(
        self,
        scene: WindowSource,
        size: int,
        *,
        windows_per_read: int = 8,
        min_valid: float = 0.0,
        max_redraws: int = 32,
    ) -> None:
        if windows_per_read < 1:
            raise ValueError(f"windows_per_read must be >= 1, got {windows_per_read}")
        if not 0.0 <= min_valid <= 1.0:
            raise ValueError(f"min_valid must be in [0, 1], got {min_valid}")
        self.scene, self.size = scene, size
        self.windows_per_read, self.min_valid, self.max_redraws = windows_per_read, min_valid, max_redraws
        self.regions_read = 0

    def _read(self, region: Window) -> Region | MultiSensorRegion:
        self.regions_read += 1
        return self.scene.read(region)

    def random(self, count: int, rng: random.Random) -> Iterator[dict[str, Any]]:
        """``count`` random windows with at least ``min_valid`` valid pixels."""
        grid, what = self.scene.grid, f"scene {self.scene.name}"
        produced, rejected = 0, 0
        while produced < count:
            want = min(self.windows_per_read, count - produced)
            windows = tile_aligned_windows(grid.height, grid.width, self.size, self.scene.block_shape, want, rng, what)
            pixels = self._read(span(windows))  # one window: exactly a plain windowed read
            for window in windows:
                sample = pixels.crop(window)
                fraction = valid_fraction(sample) if self.min_valid > 0 else 1.0
                if fraction < self.min_valid:
                    rejected += 1
                    if rejected > self.max_redraws:
                        raise NoValidWindowError(
                            f"{what}: {rejected} random {self.size} px windows in a row had fewer than "
                            f"{self.min_valid:.0%} valid pixels (last one {fraction:.0%}); "
                            "lower min_valid or drop the scene"
                        )
                    continue
                rejected = 0
                produced += 1
                yield sample

    def window(self, window: Window) -> dict[str, Any]:
        """One given window, read on its own."""
        return self._read(window).crop(window)

    def grid(self, stride: int | None = None) -> Iterator[dict[str, Any]]:
        """Deterministic row-major windows covering the whole scene (for export)."""
        grid = self.scene.grid
        for window in grid_windows(grid.height, grid.width, self.size, stride, what=f"scene {self.scene.name}"):
            yield self.window(window)


class SceneWindows(torch.utils.data.Dataset):
    """Windows of georeferenced scenes; item ``i`` is a list of Samples cut from one read.

    ``sampling="random"``: scene ``i // reads_per_scene`` gives ``windows_per_read`` tile-aware
    windows from one read (positions uniform over the scene, redrawn below ``min_valid``);
    ``reads_per_scene`` items per scene make an epoch. ``sampling="grid"``: item ``i`` is the
    ``i``-th window of the row-major tiling of all scenes (export); the index is built from the
    scenes' grids on first use. Items are lists, as for
    :class:`~domainmae.data.fields.FieldCrops`; random positions draw from torch's RNG, which
    :class:`~domainmae.data.loader.SeededItems` seeds per item. A scene whose files are missing
    or unreadable raises, or with ``on_error="skip"`` is logged, counted and yields no windows;
    a scene without enough valid windows (:class:`NoValidWindowError`) or CRS always raises.
    """

    def __init__(
        self,
        scenes: Sequence[WindowSource],
        size: int,
        *,
        sampling: Literal["random", "grid"] = "random",
        reads_per_scene: int = 1,
        windows_per_read: int = 8,
        stride: int | None = None,
        min_valid: float = 0.0,
        max_redraws: int = 32,
        on_error: OnError | ErrorPolicy = "raise",
    ) -> None:
        if sampling not in ("random", "grid"):
            raise ValueError(f"sampling must be 'random' or 'grid', got {sampling!r}")
        if reads_per_scene < 1:
            raise ValueError(f"reads_per_scene must be at least 1, got {reads_per_scene}")
        options = dict(windows_per_read=windows_per_read, min_valid=min_valid, max_redraws=max_redraws)
        self.readers = [RasterWindowReader(scene, size, **options) for scene in scenes]
        self.sampling, self.reads_per_scene, self.stride = sampling, reads_per_scene, stride
        self.policy = as_policy(on_error)
        self._grid_index: list[tuple[int, Window]] | None = None

    def _windows(self) -> list[tuple[int, Window]]:
        if self._grid_index is None:
            self._grid_index = []
            for i, reader in enumerate(self.readers):
                try:
                    grid = reader.scene.grid
                except OSError as err:  # a scene whose files cannot be opened tiles to nothing
                    self.policy.handle(err)
                    continue
                what = f"scene {reader.scene.name}"
                windows = grid_windows(grid.height, grid.width, reader.size, self.stride, what=what)
                self._grid_index += [(i, window) for window in windows]
        return self._grid_index

    def __len__(self) -> int:
        return len(self.readers) * self.reads_per_scene if self.sampling == "random" else len(self._windows())

    def __getitem__(self, index: int) -> list[dict[str, Any]]:
        try:
            if self.sampling == "grid":
                scene_index, window = self._windows()[index]
                return [self.readers[scene_index].window(window)]
            reader = self.readers[index // self.reads_per_scene]
            rng = random.Random(int(torch.randint(2**62, ()).item()))
            return list(reader.random(reader.windows_per_read, rng))
        except OSError as err:  # RasterReadError, missing files
            self.policy.handle(err)
            return []
