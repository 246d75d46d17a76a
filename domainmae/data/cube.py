"""xarray / Zarr datacubes as scenes: ``(band, y, x)`` or ``(time, band, y, x)``, read lazily.

A Zarr store opens without dask and without caching, so a window read decodes only the chunks it
touches. The pixel grid comes from the attributes, in this order:

* GeoZarr conventions: ``proj:code`` / ``proj:wkt2`` / ``proj:projjson`` and ``spatial:transform``
  (affine ``a, b, c, d, e, f``), on the array or its group;
* CF / rioxarray: the grid-mapping variable (``grid_mapping`` attribute, usually ``spatial_ref``)
  with ``crs_wkt`` or ``spatial_ref`` and a GDAL-ordered ``GeoTransform``;
* else the transform follows from regular ``x``/``y`` coordinates (pixel centres).

CF ``scale_factor``/``add_offset``/``_FillValue`` are applied by xarray on open; non-finite
values (decoded fill values) and an optional ``nodata`` value are invalid pixels.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from affine import Affine
from rasterio.crs import CRS

from ..validity import fill_invalid, valid_pixels
from .geo import Grid, GridSource
from .radiometry import Radiometry
from .samplers import Window
from .windows import Region

#: Tile size assumed for the tile-aware sampler when an array carries no chunking (in memory).
DEFAULT_BLOCK = (256, 256)


def _crs_from_attrs(attrs: Mapping[str, Any]) -> CRS | None:
    for key in ("proj:wkt2", "proj:code", "proj:projjson", "crs_wkt", "spatial_ref"):
        if attrs.get(key):
            return CRS.from_user_input(attrs[key])
    return None


def _transform_from_coords(array: xr.DataArray, y_dim: str, x_dim: str) -> Affine:
    if x_dim not in array.coords or y_dim not in array.coords:
        raise ValueError(
            f"array {array.name!r} has no spatial:transform, no GeoTransform and no {y_dim}/{x_dim} coordinates; "
            "cannot place it on a grid"
        )
    xs, ys = np.asarray(array[x_dim].values, dtype=np.float64), np.asarray(array[y_dim].values, dtype=np.float64)
    if len(xs) < 2 or len(ys) < 2:
        raise ValueError(f"array {array.name!r}: need at least 2 {x_dim} and {y_dim} coordinates to derive a transform")
    dx, dy = xs[1] - xs[0], ys[1] - ys[0]
    if not (np.allclose(np.diff(xs), dx) and np.allclose(np.diff(ys), dy)):
        raise ValueError(f"array {array.name!r}: {x_dim}/{y_dim} coordinates are not regularly spaced")
    # Coordinates are pixel centres; the transform maps pixel corners.
    return Affine.translation(xs[0] - dx / 2, ys[0] - dy / 2) @ Affine.scale(dx, dy)


def cube_grid(
    array: xr.DataArray, group_attrs: Mapping[str, Any] | None = None, y_dim: str = "y", x_dim: str = "x"
) -> Grid:
    """The :class:`Grid` of ``array`` from GeoZarr or CF/rioxarray attributes, or its coordinates."""
    height, width = array.sizes[y_dim], array.sizes[x_dim]
    attrs = {**(group_attrs or {}), **array.attrs}
    if "spatial:transform" in attrs:
        transform = Affine(*map(float, attrs["spatial:transform"][:6]))
        if attrs.get("spatial:registration", "pixel") == "node":
            # Node registration puts the transform on pixel centres; shift to corners.
            transform = transform @ Affine.translation(-0.5, -0.5)
        return Grid(_crs_from_attrs(attrs), transform, height, width)
    mapping_name = attrs.get("grid_mapping", "spatial_ref")
    mapping = array.coords[mapping_name].attrs if mapping_name in array.coords else {}
    crs = _crs_from_attrs(mapping) or _crs_from_attrs(attrs)
    if "GeoTransform" in mapping:
        transform = Affine.from_gdal(*map(float, str(mapping["GeoTransform"]).split()))
    else:
        transform = _transform_from_coords(array, y_dim, x_dim)
    return Grid(crs, transform, height, width)


def _time_value(value: np.datetime64) -> datetime:
    return np.datetime64(value, "us").item().replace(tzinfo=timezone.utc)


class CubeScene(GridSource):
    """One time step of a cube: ``array`` with dims ``(band, y, x)``, read region by region.

    Band names come from the ``band`` coordinate or ``bands``; ``datetime`` and ``meta`` travel
    into every sample, as for :class:`~domainmae.data.raster.RasterScene`.
    """

    def __init__(
        self,
        array: xr.DataArray,
        grid: Grid,
        *,
        scene_id: str,
        bands: Sequence[str] | None = None,
        band_dim: str = "band",
        y_dim: str = "y",
        x_dim: str = "x",
        nodata: float | None = None,
        radiometry: Radiometry = Radiometry(),
        datetime: datetime | None = None,  # noqa: A002 - the natural name for an acquisition time
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        if set(array.dims) != {band_dim, y_dim, x_dim}:
            raise ValueError(f"cube {scene_id}: expected dims ({band_dim}, {y_dim}, {x_dim}), found {array.dims}")
        self.array = array.transpose(band_dim, y_dim, x_dim)
        if bands is None:
            if band_dim not in array.coords:
                raise ValueError(f"cube {scene_id}: no {band_dim!r} coordinate to name the bands; pass bands=[...]")
            bands = [str(value) for value in array[band_dim].values]
        if len(bands) != array.sizes[band_dim]:
            raise ValueError(f"cube {scene_id} has {array.sizes[band_dim]} bands but {len(bands)} names were given")
        self.channels, self._grid, self.scene_id = tuple(bands), grid, scene_id
        self.y_dim, self.x_dim, self.nodata, self.radiometry = y_dim, x_dim, nodata, radiometry
        self.datetime, self.meta = datetime, dict(meta or {})

    @property
    def name(self) -> str:
        return self.scene_id

    @property
    def grid(self) -> Grid:
        return self._grid

    @property
    def block_shape(self) -> tuple[int, int]:
        """Chunk shape ``(rows, cols)`` on disk (Zarr) or in dask; :data:`DEFAULT_BLOCK` in memory."""
        chunks = self.array.encoding.get("preferred_chunks") or {
            dim: sizes[0] for dim, sizes in (self.array.chunksizes or {}).items()
        }
        return chunks.get(self.y_dim, DEFAULT_BLOCK[0]), chunks.get(self.x_dim, DEFAULT_BLOCK[1])

    def read(self, region: Window) -> Region:
        """Image float32 ``[C, h, w]`` and valid ``[h, w]`` for ``region``; reads only that slice."""
        rows, cols = region.slices()
        raw = self.array.isel({self.y_dim: rows, self.x_dim: cols}).values
        # nodata is a raw value, so it is compared before radiometry; NaN/inf are checked again after it.
        image = self.radiometry.apply(raw)
        valid = fill_invalid(image, valid_pixels(raw, nodata=self.nodata))
        meta = {"scene_id": self.scene_id, "datetime": self.datetime, **self.meta}
        return Region(region, self._grid, image, valid, self.channels, meta)


def open_cube(
    source: str | Path | xr.Dataset | xr.DataArray,
    *,
    variable: str | None = None,
    band_dim: str = "band",
    time_dim: str = "time",
    y_dim: str = "y",
    x_dim: str = "x",
    **scene_kwargs: Any,
) -> list[CubeScene]:
    """Scenes of a cube: one per time step of ``(time, band, y, x)``, or one for ``(band, y, x)``.

    ``source`` is a Zarr path (opened lazily) or an xarray object; a Dataset needs ``variable``
    unless it has exactly one data variable. ``scene_kwargs`` go to :class:`CubeScene`.
    """
    group_attrs: dict[str, Any] = {}
    scene_id = scene_kwargs.pop("scene_id", None)
    if isinstance(source, (str, Path)):
        scene_id = scene_id or Path(source).stem
        # No dask and no in-memory cache: each window read decodes only the chunks it touches.
        source = xr.open_dataset(source, engine="zarr", chunks=None, cache=False)
    if isinstance(source, xr.Dataset):
        group_attrs = dict(source.attrs)
        names = list(source.data_vars)
        if variable is None and len(names) != 1:
            raise ValueError(f"cube has data variables {names}; pass variable= to pick one")
        variable = variable or names[0]
        if variable not in source.data_vars:
            raise KeyError(f"cube has no data variable {variable!r}; it has {names}")
        source = source[variable]
    array = source
    scene_id = scene_id or str(array.name or "cube")
    grid = cube_grid(array, group_attrs, y_dim, x_dim)
    common = dict(band_dim=band_dim, y_dim=y_dim, x_dim=x_dim, **scene_kwargs)
    if time_dim not in array.dims:
        return [CubeScene(array, grid, scene_id=scene_id, **common)]
    times = array[time_dim].values if time_dim in array.coords else [None] * array.sizes[time_dim]
    return [
        CubeScene(
            array.isel({time_dim: t}), grid, scene_id=f"{scene_id}[{t}]",
            datetime=None if value is None else _time_value(value), **common,
        )  # fmt: skip
        for t, value in enumerate(times)
    ]
