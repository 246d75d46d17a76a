"""The one window engine: read a region of a source once, cut windows from it, at random or on a grid.

A *window source* is anything with a size, an internal tile shape and a region read: a microscopy
:class:`~domainmae.data.fields.Field` (TIFF, Zarr), a :class:`~domainmae.data.raster.RasterScene`,
a :class:`~domainmae.data.multisensor.MultiSensorScene` or a :class:`~domainmae.data.cube.CubeScene`
(:class:`WindowSource`). A read returns a :class:`Region`: pixels of a span of windows, from which
:meth:`Region.crop` cuts each window's Sample without touching the file again.

* :class:`WindowReader` cuts Sample windows from one source: random windows that share one read
  (tile-aware, redrawn below a minimum valid fraction), or a deterministic grid read row by row.
* :class:`WindowDataset` serves them from many sources as a map-style dataset whose items are lists
  of Samples cut from one read: ``sampling="random"`` for training, ``"grid"`` for export.

Every Sample's ``meta`` holds the source's own metadata and ``"window"``: the
:class:`~domainmae.data.samplers.Window` it was cut at, in pixels of its source; a georeferenced
source adds its CRS, the window's affine transform and its bounds (:meth:`Grid.window_meta`).
"""
from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
import torch

from .errors import ErrorPolicy, OnError, as_policy
from .geo import Grid
from .sample import Sample, is_multisensor
from .samplers import Window, grid_windows, random_windows, span


class NoValidWindowError(ValueError):
    """Random windows kept falling below the minimum valid fraction; names the source."""


@dataclass
class Region:
    """Pixels of one region of a source, read once; windows are cut from it without re-reading.

    ``image`` is float32 ``[C, h, w]`` for the region ``window`` (in pixels of the source), ``valid``
    bool ``[h, w]`` or None when every pixel is valid (microscopy); ``grid`` is the georeferenced
    source's pixel grid, None for sources without one; ``meta`` is the source-level metadata every
    cut sample carries.
    """

    window: Window
    grid: Grid | None
    image: np.ndarray
    valid: np.ndarray | None
    channels: tuple[str, ...]
    meta: dict[str, Any]

    def crop(self, window: Window) -> Sample:
        """The Sample for ``window`` (source coordinates), which must lie inside the region."""
        local = window.shift(self.window.row, self.window.col)
        if local.row < 0 or local.col < 0 or local.row + local.height > self.window.height or (
            local.col + local.width > self.window.width
        ):
            raise ValueError(f"window {window} lies outside the region {self.window} that was read")
        rows, cols = local.slices()
        place = {"window": window} if self.grid is None else self.grid.window_meta(window)
        # Copies, so a crop does not keep the whole region alive (and torch gets contiguous memory).
        sample: Sample = {
            "image": torch.from_numpy(np.ascontiguousarray(self.image[:, rows, cols])),
            "channels": self.channels,
            "meta": {**self.meta, **place},
        }
        if self.valid is not None:
            sample["valid"] = torch.from_numpy(np.ascontiguousarray(self.valid[rows, cols]))
        return sample


@dataclass
class MultiSensorRegion:
    """Regions of several sensors on one grid; a crop is ``{sensor: Sample, "meta": {...}}``."""

    regions: Mapping[str, Region]
    meta: dict[str, Any] = field(default_factory=dict)

    def crop(self, window: Window) -> dict[str, Any]:
        samples: dict[str, Any] = {name: region.crop(window) for name, region in self.regions.items()}
        grid = next(iter(self.regions.values())).grid
        samples["meta"] = {**self.meta, **(grid.window_meta(window) if grid else {"window": window})}
        return samples


class WindowSource(Protocol):
    """What the window engine needs from a field or scene."""

    @property
    def label(self) -> str:
        """How errors name the source: ``"field row 3 of load_data.csv"``, ``"scene S2A_..."``."""
        ...

    @property
    def shape(self) -> tuple[int, int]:
        """``(H, W)`` in pixels, from headers only."""
        ...

    @property
    def block_shape(self) -> tuple[int, int]:
        """Internal tile/chunk shape ``(rows, cols)``: random windows of one read share one such cell."""
        ...

    def read(self, region: Window) -> Region | MultiSensorRegion: ...


def valid_fraction(sample: Mapping[str, Any]) -> float:
    """Share of valid pixels; for a multi-sensor sample, that of its worst sensor."""
    if is_multisensor(sample):
        return min(valid_fraction(s) for name, s in sample.items() if name != "meta")
    valid = sample.get("valid")
    # numpy, not torch: a tiny torch op can wake torch's thread pool, which then competes with GDAL.
    return 1.0 if valid is None else np.count_nonzero(np.asarray(valid)) / valid.numel()


#: Meta key of a grid window: how many windows its source tiles into.
GRID_WINDOWS = "grid_windows"


class WindowReader:
    """Cuts Sample windows of ``size`` px from one source.

    Random windows are tile-aware: ``windows_per_read`` windows share the tiles of one cell of the
    source's internal tiling (a microscopy field is one cell), and one read of their span serves
    them all, with positions still uniform over the source
    (:func:`~domainmae.data.samplers.random_windows`). Windows whose valid fraction is below
    ``min_valid`` are redrawn from a fresh read; after ``max_redraws`` rejections in a row
    :class:`NoValidWindowError` names the source. Grid windows are read one row of windows at a
    time. ``regions_read`` counts reads, for benchmarks.
    """

    def __init__(
        self,
        source: WindowSource,
        size: int,
        *,
        windows_per_read: int = 1,
        min_valid: float = 0.0,
        max_redraws: int = 32,
    ) -> None:
        if windows_per_read < 1:
            raise ValueError(f"windows_per_read must be >= 1, got {windows_per_read}")
        if not 0.0 <= min_valid <= 1.0:
            raise ValueError(f"min_valid must be in [0, 1], got {min_valid}")
        self.source, self.size = source, size
        self.windows_per_read, self.min_valid, self.max_redraws = windows_per_read, min_valid, max_redraws
        self.regions_read = 0

    def cut(self, windows: Sequence[Window]) -> list[dict[str, Any]]:
        """Samples of ``windows``, cut from one read of their span (one window: a plain windowed read)."""
        self.regions_read += 1
        pixels = self.source.read(span(windows))
        return [pixels.crop(window) for window in windows]

    def random(self, count: int, rng: random.Random) -> Iterator[dict[str, Any]]:
        """``count`` random windows with at least ``min_valid`` valid pixels."""
        (height, width), what = self.source.shape, self.source.label
        produced, rejected = 0, 0
        while produced < count:
            want = min(self.windows_per_read, count - produced)
            windows = random_windows(height, width, self.size, want, rng, self.source.block_shape, what)
            for sample in self.cut(windows):
                fraction = valid_fraction(sample) if self.min_valid > 0 else 1.0
                if fraction < self.min_valid:
                    rejected += 1
                    if rejected > self.max_redraws:
                        raise NoValidWindowError(
                            f"{what}: {rejected} random {self.size} px windows in a row had fewer than "
                            f"{self.min_valid:.0%} valid pixels (last one {fraction:.0%}); "
                            "lower min_valid or drop the source"
                        )
                    continue
                rejected = 0
                produced += 1
                yield sample

    def window(self, window: Window) -> dict[str, Any]:
        """One given window, read on its own."""
        return self.cut([window])[0]

    def grid_rows(self, stride: int | None = None) -> list[list[Window]]:
        """The row-major tiling that covers the whole source (:func:`grid_windows`), one list per row."""
        height, width = self.source.shape
        rows: dict[int, list[Window]] = {}
        for window in grid_windows(height, width, self.size, stride, what=self.source.label):
            rows.setdefault(window.row, []).append(window)
        return list(rows.values())

    def grid(self, stride: int | None = None) -> Iterator[dict[str, Any]]:
        """Deterministic row-major windows covering the whole source (for export), one read per row."""
        for row in self.grid_rows(stride):
            yield from self.cut(row)


class WindowDataset(torch.utils.data.Dataset):
    """Windows of many fields or scenes; item ``i`` is a list of Samples cut from one read.

    ``sampling="random"`` (training): an item is ``windows_per_read`` tile-aware windows of one
    source from one read (positions uniform over the source, redrawn below ``min_valid``);
    ``reads_per_source`` items per source make an epoch, the same number for every source or one
    per source (:func:`proportional_reads`: a few large scenes then train as well as many small
    patches). ``sampling="grid"`` (export): item ``i`` is the ``i``-th row of windows ``stride``
    apart of the row-major tiling of all sources, read as one strip; the index is built from the
    sources' headers on first use.

    Items are lists, so a loader's collate concatenates them (``batch_size`` then counts reads);
    normalisation and augmentation wrap the dataset
    (:class:`~domainmae.data.loader.TransformedItems`). Random positions draw from torch's RNG,
    which :class:`~domainmae.data.loader.SeededItems` seeds per item, so an item is a pure function
    of its key. A source whose files are missing or unreadable raises, or with ``on_error="skip"``
    is logged, counted and yields no windows; a source smaller than ``size``, one without enough
    valid windows (:class:`NoValidWindowError`) or without a CRS where one is needed always raises.
    """

    def __init__(
        self,
        sources: Sequence[WindowSource],
        size: int,
        *,
        sampling: Literal["random", "grid"] = "random",
        reads_per_source: int | Sequence[int] = 1,
        windows_per_read: int = 1,
        stride: int | None = None,
        min_valid: float = 0.0,
        max_redraws: int = 32,
        on_error: OnError | ErrorPolicy = "raise",
    ) -> None:
        if sampling not in ("random", "grid"):
            raise ValueError(f"sampling must be 'random' or 'grid', got {sampling!r}")
        if isinstance(reads_per_source, int):
            if reads_per_source < 1:
                raise ValueError(f"reads_per_source must be at least 1, got {reads_per_source}")
            reads_per_source = [reads_per_source] * len(sources)
        if len(reads_per_source) != len(sources) or min(reads_per_source, default=0) < 0:
            raise ValueError(f"reads_per_source needs one count >= 0 per source ({len(sources)}), got {reads_per_source}")
        options = dict(windows_per_read=windows_per_read, min_valid=min_valid, max_redraws=max_redraws)
        self.readers = [WindowReader(source, size, **options) for source in sources]
        self.sampling, self.stride = sampling, stride
        self._ends = list(itertools.accumulate(reads_per_source))  # random item i reads source bisect(ends, i)
        self.policy = as_policy(on_error)
        self._grid_index: list[tuple[int, list[Window]]] | None = None
        self._grid_windows: dict[int, int] = {}  # source -> windows in its grid

    @property
    def sources(self) -> list[WindowSource]:
        """The fields or scenes, in order."""
        return [reader.source for reader in self.readers]

    def _grid(self) -> list[tuple[int, list[Window]]]:
        if self._grid_index is None:
            self._grid_index, self._grid_windows = [], {}
            for i, reader in enumerate(self.readers):
                try:
                    rows = reader.grid_rows(self.stride)
                except OSError as err:  # a source whose files cannot be opened tiles to nothing
                    self.policy.handle(err)
                    continue
                self._grid_index += [(i, row) for row in rows]
                self._grid_windows[i] = sum(map(len, rows))
        return self._grid_index

    def __len__(self) -> int:
        if self.sampling == "grid":
            return len(self._grid())
        return self._ends[-1] if self._ends else 0

    def source_index(self, index: int) -> int:
        """The source that random item ``index`` reads."""
        return bisect.bisect_right(self._ends, index)

    def __getitem__(self, index: int) -> list[dict[str, Any]]:
        try:
            if self.sampling == "grid":
                source_index, row = self._grid()[index]
                # Each window says how many its source tiles into, so that a reduction over the source (an
                # image row) can tell whether a row of windows was skipped.
                total = self._grid_windows[source_index]
                samples = self.readers[source_index].cut(row)
                return [{**s, "meta": {**s.get("meta", {}), GRID_WINDOWS: total}} for s in samples]
            reader = self.readers[self.source_index(index)]
            rng = random.Random(int(torch.randint(2**62, ()).item()))
            return list(reader.random(reader.windows_per_read, rng))
        except OSError as err:  # unreadable or missing files: FieldError, RasterReadError, FileNotFoundError
            self.policy.handle(err)
            return []


def proportional_reads(
    sources: Sequence[WindowSource],
    size: int,
    reads: int,
    *,
    probes: int = 4,
    seed: int = 0,
    on_error: OnError | ErrorPolicy = "raise",
) -> list[int]:
    """``reads`` reads spread over ``sources`` in proportion to their valid area, as whole numbers.

    A source's weight is its number of ``size`` px window positions times its valid fraction,
    estimated from ``probes`` random windows (each its own read; ``probes=0``: every pixel valid,
    for sources without nodata such as microscopy fields). Counts are rounded by largest remainder,
    so they sum to ``reads`` exactly; a source of no valid area gets none. Probe positions come from
    ``seed`` and the source's place in the list, so the split is the same in every process. A source
    that cannot be read is handled by ``on_error`` (skipped: weight 0).
    """
    policy = as_policy(on_error)
    weights = []
    for i, source in enumerate(sources):
        try:
            height, width = source.shape
            positions = max(height - size + 1, 0) * max(width - size + 1, 0)
            reader, rng = WindowReader(source, size), random.Random(seed * 1_000_003 + i)
            valid = [valid_fraction(next(reader.random(1, rng))) for _ in range(probes)] if positions else []
        except OSError as err:
            policy.handle(err)
            weights.append(0.0)
            continue
        weights.append(positions * (float(np.mean(valid)) if valid else 1.0))
    total = sum(weights)
    if total <= 0:
        raise NoValidWindowError(f"none of the {len(sources)} fields/scenes has a valid {size} px window to sample")
    quotas = [reads * w / total for w in weights]
    counts = [int(q) for q in quotas]
    by_remainder = sorted(range(len(quotas)), key=lambda i: (counts[i] - quotas[i], i))
    for i in by_remainder[: reads - sum(counts)]:
        counts[i] += 1
    return counts
