"""Georeferenced sources: the pixel grid their windows live on, and what such sources share.

Every georeferenced source (a :class:`~domainmae.data.raster.RasterScene`, a
:class:`~domainmae.data.multisensor.MultiSensorScene`, a :class:`~domainmae.data.cube.CubeScene`)
has a ``grid`` (CRS, transform, size) and, through :class:`GridSource`, the size and label the
window engine (:mod:`~domainmae.data.windows`) asks every source for.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from affine import Affine
from rasterio.crs import CRS
from rasterio.transform import array_bounds

from .samplers import Window


class RasterReadError(OSError):
    """A raster file is missing, unreadable or corrupt; the message names the file."""


class MissingCRSError(ValueError):
    """A raster has no CRS where co-registration or a footprint needs one; names the file."""


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
            "window": window,
        }


def covered_share(box: Sequence[float], other: Sequence[float]) -> float:
    """Share of ``box``'s area inside ``other``, both ``(left, bottom, right, top)`` in one CRS; 0 when a bound
    is not finite (a reprojection that failed) or ``box`` has no area."""
    if not all(math.isfinite(v) for v in (*box, *other)):
        return 0.0
    left, bottom, right, top = box
    width = min(right, other[2]) - max(left, other[0])
    height = min(top, other[3]) - max(bottom, other[1])
    area = (right - left) * (top - bottom)
    return max(width, 0.0) * max(height, 0.0) / area if area > 0 else 0.0


class GridSource:
    """What a georeferenced source derives from its ``grid`` for the window engine."""

    name: str
    grid: Grid

    @property
    def label(self) -> str:
        return f"scene {self.name}"

    @property
    def shape(self) -> tuple[int, int]:
        """``(H, W)`` of the grid."""
        return self.grid.height, self.grid.width
