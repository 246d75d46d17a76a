"""Raster scenes read with rasterio: band files, radiometry, nodata and clouds, one pixel grid.

A scene is one multi-band file (:meth:`RasterScene.from_file`) or one file per band (found on disk
by :mod:`domainmae.data.scenes`, as in SAFE/BigEarthNet folders). Reads are windowed: a region of the
scene's grid is fetched band by band, never the whole scene. Bands are put on one grid on read:

* same CRS, pixel lattice through the grid origin, covering the grid: a (fractional) rasterio
  window with ``out_shape`` - GDAL resamples 20 m / 60 m bands to the 10 m grid, bilinear for
  reflectance and nearest for categorical bands such as the Sentinel-2 scene classification (SCL);
* anything else (another CRS, a shifted or rotated grid, a smaller footprint): a
  :class:`rasterio.vrt.WarpedVRT` onto the grid, whose alpha band marks what the source covers.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.shutil
import rasterio.windows
from rasterio.enums import MaskFlags, Resampling
from rasterio.errors import RasterioIOError
from rasterio.io import DatasetReader, MemoryFile
from rasterio.transform import array_bounds
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds

from ..validity import fill_invalid
from . import handles
from .geo import Grid, GridSource, MissingCRSError, RasterReadError, covered_share
from .radiometry import Radiometry
from .remote import Location, as_location, gdal_env, gdal_path, pure_path
from .samplers import Window
from .windows import Region


def datetime_from_name(name: str) -> datetime | None:
    """Acquisition time from a Sentinel-style name (``..._20170613T101031_...``), UTC."""
    match = re.search(r"(?<!\d)(\d{8}T\d{6})(?!\d)", name)
    return None if match is None else datetime.strptime(match[1], "%Y%m%dT%H%M%S").replace(tzinfo=timezone.utc)


@dataclass(frozen=True)
class BandSource:
    """Where a band lives: ``path`` (a file or a URL) and its 1-based band ``index`` in that file.

    ``radiometry``, when set, is what the band's product states about this band alone (a ``.SAFE``'s
    per-band offset) and takes the scene's place for it; the file's own metadata still refines it.
    """

    name: str
    path: Location  # a local Path or a URL string (:mod:`.remote`)
    index: int = 1
    radiometry: Radiometry | None = None


def _snap(value: float) -> float:
    # Windows computed from bounds carry float noise (59.999999); rasterio truncates offsets.
    return float(round(value)) if abs(value - round(value)) < 1e-6 else value


def _rounded(bounds: Sequence[float]) -> tuple[float, ...]:
    return tuple(round(float(v), 1) for v in bounds)


def _on_lattice(dataset: DatasetReader, grid: Grid) -> bool:
    """True when a plain (possibly resampled) window read puts ``dataset`` exactly on ``grid``."""
    src, dst = dataset.transform, grid.transform
    if dataset.crs != grid.crs or src.b or src.d or dst.b or dst.d:
        return False
    if (src.a > 0) != (dst.a > 0) or (src.e > 0) != (dst.e > 0):
        return False
    # The band's pixel corners must pass through the grid origin, or a same-size read would be
    # off by a fraction of a pixel (GDAL only honours fractional offsets when it resamples).
    if _snap((dst.c - src.c) / src.a) % 1 or _snap((dst.f - src.f) / src.e) % 1:
        return False
    left, bottom, right, top = array_bounds(grid.height, grid.width, dst)
    tol_x, tol_y = abs(dst.a) * 1e-6, abs(dst.e) * 1e-6
    src_bounds = dataset.bounds
    return (
        left >= src_bounds.left - tol_x and right <= src_bounds.right + tol_x
        and bottom >= src_bounds.bottom - tol_y and top <= src_bounds.top + tol_y
    )  # fmt: skip


def _declaring_nodata(dataset: DatasetReader, nodata: float) -> DatasetReader:
    """``dataset`` (closed here) seen through a VRT that declares ``nodata`` for every band, so GDAL masks it
    on every (resampled or warped) read.

    The VRT ``vrt://<path>?a_nodata=<value>`` gives, made without that syntax: it takes all after the first
    ``?`` as its options, so a URL with a query (a signed URL) could not be opened. GDAL writes the VRT of
    the open file to memory, takes the nodata value, and the VRT is opened from its XML, so there is no
    in-memory file to remove when the dataset is closed. Its ``name`` is that XML, which holds the file's path
    (where :meth:`~.radiometry.Radiometry.for_band` finds a processing baseline in a product name).
    """
    with dataset, MemoryFile(ext=".vrt") as memory:
        rasterio.shutil.copy(dataset, memory.name, driver="VRT")
        with rasterio.open(memory.name, "r+") as vrt:
            vrt.nodata = nodata
        xml = memory.read().decode()
    return rasterio.open(xml)


class RasterScene(GridSource):
    """One scene: named bands (from one or several files) read on the grid of its finest band.

    ``radiometry`` (the sensor's, or a band's own :attr:`BandSource.radiometry`) converts every
    image band, refined by what each file says about itself
    (:meth:`~domainmae.data.radiometry.Radiometry.for_band`: processing baseline, offsets, scale,
    units). Invalid pixels (``valid`` False, image set to 0 so no NaN reaches a model) are
    nodata - every pixel equal to ``nodata`` when given, else the file's nodata or mask, else
    ``radiometry.nodata`` - non-finite values, and, for each band named in ``invalid_classes``
    (e.g. ``{"SCL": (0, 1, 3, 8, 9, 10)}``), the listed classes; such mask bands are read with
    nearest resampling and are not part of the image. ``categorical`` bands in the image are also
    resampled nearest. GDAL knows the nodata value on every read, so a band resampled onto a finer
    grid averages valid pixels only and never blends nodata into them. ``meta`` (e.g. labels)
    travels into every sample.
    """

    def __init__(
        self,
        bands: Sequence[BandSource],
        *,
        scene_id: str | None = None,
        radiometry: Radiometry = Radiometry(),
        nodata: float | None = None,
        invalid_classes: Mapping[str, Iterable[int]] | None = None,
        categorical: Iterable[str] = ("SCL",),
        datetime: datetime | None = None,  # noqa: A002 - the natural name for an acquisition time
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        if not bands:
            raise ValueError(f"scene {scene_id} has no bands")
        names = [band.name for band in bands]
        if len(set(names)) != len(names):
            raise ValueError(f"scene {scene_id}: duplicate band names {names}")
        self.invalid_classes = {name: tuple(classes) for name, classes in (invalid_classes or {}).items()}
        unknown = set(self.invalid_classes) - set(names)
        if unknown:
            raise ValueError(f"scene {scene_id}: invalid_classes names bands {sorted(unknown)} not among {names}")
        self.bands = tuple(bands)
        self.scene_id = scene_id or pure_path(bands[0].path).parent.name
        self.channels = tuple(name for name in names if name not in self.invalid_classes)
        if not self.channels:
            raise ValueError(f"scene {self.scene_id}: every band is a mask band; no image channels left")
        self.radiometry, self.nodata, self.categorical = radiometry, nodata, frozenset(categorical)
        self.datetime, self.meta = datetime, dict(meta or {})
        self._radiometry: dict[tuple[Location, int], Radiometry] = {}  # per band, from its file's metadata
        self._reference_band: tuple[BandSource, Grid] | None = None

    @classmethod
    def from_file(cls, path: str | Path, bands: Sequence[str] | None = None, **kwargs: Any) -> RasterScene:
        """A multi-band file (GeoTIFF, COG; a local path or a URL, see :mod:`.remote`) as a scene.

        When every band has a description, the descriptions name the bands and ``bands`` selects
        and orders them (default: all); otherwise ``bands`` names every band of the file, in order.
        """
        path = as_location(path)
        try:
            with gdal_env(path), rasterio.open(gdal_path(path)) as dataset:
                count, descriptions = dataset.count, list(dataset.descriptions)
        except RasterioIOError as err:
            raise RasterReadError(f"cannot open raster {path}: {err}") from err
        if all(descriptions) and len(set(descriptions)) == count:
            missing = [name for name in bands or () if name not in descriptions]
            if missing:
                raise ValueError(f"raster {path} has no band described as {missing[0]!r}; its bands are {descriptions}")
            sources = [BandSource(name, path, descriptions.index(name) + 1) for name in bands or descriptions]
        elif bands is None or len(bands) != count:
            given = "no band names were given" if bands is None else f"{len(bands)} band names were given: {list(bands)}"
            raise ValueError(f"raster {path} has {count} bands without (distinct) descriptions; {given}")
        else:
            sources = [BandSource(name, path, i + 1) for i, name in enumerate(bands)]
        kwargs.setdefault("scene_id", pure_path(path).stem)
        kwargs.setdefault("datetime", datetime_from_name(pure_path(path).name))
        return cls(sources, **kwargs)

    @property
    def name(self) -> str:
        return self.scene_id

    @property
    def files(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(str(band.path) for band in self.bands))

    @property
    def scene_meta(self) -> dict[str, Any]:
        """What every region (and window) of this scene carries besides its place."""
        return {"scene_id": self.scene_id, "datetime": self.datetime, "files": self.files, **self.meta}

    # -- opening -----------------------------------------------------------------------------
    # Handles live in the process-wide LRU of domainmae.data.handles, not in the scene: a worker walking
    # hundreds of scenes keeps a bounded number of files open, and a scene holds nothing to pickle.
    def _key(self, path: Location) -> handles.Key:
        # What decides how _open_file opens the file; repr so that a NaN nodata finds its own entry again.
        declared = tuple(None if v is None else repr(float(v)) for v in (self.nodata, self.radiometry.nodata))
        return path, declared

    def _open_file(self, path: Location) -> DatasetReader:
        try:
            with gdal_env(path):
                dataset = rasterio.open(gdal_path(path))
                # The scene's declared nodata for every band; else each band's own (a file declaring nodata for
                # some bands keeps them, band by band); else the sensor's default for every band.
                own = any(value is not None for value in dataset.nodatavals)
                nodata = self.nodata if self.nodata is not None else None if own else self.radiometry.nodata
                if nodata is not None and nodata != dataset.nodata:
                    dataset = _declaring_nodata(dataset, nodata)
            return dataset
        except RasterioIOError as err:
            raise RasterReadError(f"cannot open raster {path} (scene {self.scene_id}): {err}") from err

    def _open(self, path: Location) -> DatasetReader:
        return handles.cache().get(self._key(path), lambda: self._open_file(path))

    def _band_radiometry(self, band: BandSource) -> Radiometry:
        key = (band.path, band.index)
        if key not in self._radiometry:
            radiometry = self.radiometry if band.radiometry is None else band.radiometry
            self._radiometry[key] = radiometry.for_band(self._open(band.path), band.index)
        return self._radiometry[key]

    def _warped(self, path: Location, grid: Grid, resampling: Resampling) -> WarpedVRT:
        def build(dataset: DatasetReader) -> WarpedVRT:
            # Checked once per file and grid, as the VRT is built: a file that covers none of the grid would read
            # as all nodata, which hides a wrong CRS or transform (a band labelled with the wrong UTM zone).
            footprint = transform_bounds(dataset.crs, grid.crs, *dataset.bounds, densify_pts=21)
            target = array_bounds(grid.height, grid.width, grid.transform)
            if covered_share(target, footprint) == 0:
                # Either file may be the mislabelled one: name where the grid comes from too.
                source = f"the scene's own, from {self._reference()[0].path}" if grid == self.grid else "another sensor's"
                raise RasterReadError(
                    f"raster {path} ({dataset.crs}, scene {self.scene_id}) does not overlap the grid it is read onto "
                    f"({grid.crs}, {source}): its bounds there are {_rounded(footprint)}, the grid's "
                    f"{_rounded(target)}; is the CRS or transform of one of them wrong?"
                )  # fmt: skip
            if len({repr(value) for value in dataset.nodatavals}) > 1:
                raise RasterReadError(
                    f"raster {path} (scene {self.scene_id}): its bands declare different nodata values "
                    f"{dataset.nodatavals}, and a read onto another grid takes one for all; give the scene one "
                    "nodata value (one per file, or the same in every band of the stack)"
                )  # fmt: skip
            with gdal_env(path):
                return WarpedVRT(
                    dataset, crs=grid.crs, transform=grid.transform, width=grid.width, height=grid.height,
                    resampling=resampling, add_alpha=True,  # alpha marks what the source covers
                    src_nodata=dataset.nodata,
                )  # fmt: skip

        return handles.cache().derived(self._key(path), lambda: self._open_file(path), (resampling, grid), build)

    def close(self) -> None:
        """Close this scene's files (and VRTs) in this process; a later read reopens them.

        Scenes that open the same files the same way share the handles, so they reopen them too.
        """
        handles.cache().close([self._key(path) for path in dict.fromkeys(band.path for band in self.bands)])

    # -- grid --------------------------------------------------------------------------------
    @property
    def grid(self) -> Grid:
        """The grid of the finest image band (first one on ties); every band is read onto it."""
        return self._reference()[1]

    @property
    def block_shape(self) -> tuple[int, int]:
        """Internal tile shape ``(rows, cols)`` of the band that defines the grid."""
        band = self._reference()[0]
        return self._open(band.path).block_shapes[band.index - 1]

    def _reference(self) -> tuple[BandSource, Grid]:
        if self._reference_band is None:
            best: tuple[float, BandSource, Grid] | None = None
            for band in self.bands:
                if band.name in self.invalid_classes:
                    continue
                dataset = self._open(band.path)
                transform = dataset.transform
                area = abs(transform.a * transform.e - transform.b * transform.d)
                if best is None or area < best[0]:
                    best = (area, band, Grid(dataset.crs, transform, dataset.height, dataset.width))
            assert best is not None  # the constructor guarantees an image band
            self._reference_band = best[1:]
        return self._reference_band

    # -- reading -----------------------------------------------------------------------------
    def _resampling(self, band: BandSource) -> Resampling:
        categorical = band.name in self.categorical or band.name in self.invalid_classes
        return Resampling.nearest if categorical else Resampling.bilinear

    def _read_file(
        self, path: Location, bands: Sequence[BandSource], resampling: Resampling, grid: Grid, region: Window
    ) -> tuple[np.ndarray, np.ndarray]:
        """Raw values ``[n, h, w]`` of ``bands`` (all in ``path``) on ``grid`` for ``region``, valid ``[h, w]``."""
        indexes = [band.index for band in bands]
        shape = (region.height, region.width)
        dataset = self._open(path)
        # GDAL fetches a remote file's tiles when they are read, not on open: its settings must hold here too.
        try:
            with gdal_env(path):
                if _on_lattice(dataset, grid):
                    left, bottom, right, top = grid.window_meta(region)["bounds"]
                    found = rasterio.windows.from_bounds(left, bottom, right, top, transform=dataset.transform)
                    window = rasterio.windows.Window(
                        *(_snap(value) for value in (found.col_off, found.row_off, found.width, found.height))
                    )
                    raw = dataset.read(indexes, window=window, out_shape=(len(indexes), *shape), resampling=resampling)
                    return raw, self._window_valid(dataset, indexes, window, shape)
                if dataset.crs is None or grid.crs is None:
                    raise MissingCRSError(
                        f"raster {path} (bands {[b.name for b in bands]} of scene {self.scene_id}) is not on the "
                        f"target grid and {'it has' if dataset.crs is None else 'the target grid has'} no CRS; "
                        "a CRS is needed to warp it"
                    )
                vrt = self._warped(path, grid, resampling)
                rio = region.to_rasterio()
                return vrt.read(indexes, window=rio), vrt.read(vrt.count, window=rio) > 0
        except RasterioIOError as err:
            names = [band.name for band in bands]
            raise RasterReadError(f"cannot read {region} of bands {names} from raster {path}: {err}") from err

    @staticmethod
    def _window_valid(
        dataset: DatasetReader, indexes: list[int], window: rasterio.windows.Window, shape: tuple[int, int]
    ) -> np.ndarray:
        """Valid ``[h, w]`` for a plain window read of ``shape``: every band has data."""
        masked = [i for i in indexes if MaskFlags.all_valid not in dataset.mask_flag_enums[i - 1]]
        if not masked:
            return np.ones(shape, dtype=bool)
        out_shape = (len(masked), *shape)
        masks = dataset.read_masks(masked, window=window, out_shape=out_shape, resampling=Resampling.nearest)
        return (masks > 0).all(axis=0)

    def read(self, region: Window, grid: Grid | None = None) -> Region:
        """Every band for ``region`` of ``grid`` (default: the scene's own grid), one read per file.

        Returns a :class:`Region` with image float32 ``[C, h, w]`` and valid bool ``[h, w]``.
        """
        grid = self.grid if grid is None else grid
        image = np.empty((len(self.channels), region.height, region.width), dtype=np.float32)
        valid = np.ones((region.height, region.width), dtype=bool)
        groups: dict[tuple[Location, Resampling], list[BandSource]] = {}
        for band in self.bands:
            groups.setdefault((band.path, self._resampling(band)), []).append(band)
        for (path, resampling), bands in groups.items():
            raw, file_valid = self._read_file(path, bands, resampling, grid, region)
            valid &= file_valid
            for band, values in zip(bands, raw, strict=True):
                if band.name in self.invalid_classes:
                    valid &= ~np.isin(values, self.invalid_classes[band.name])
                elif band.name in self.categorical:
                    image[self.channels.index(band.name)] = values
                else:
                    image[self.channels.index(band.name)] = self._band_radiometry(band).apply(values)
        valid = fill_invalid(image, valid)
        return Region(region, grid, image, valid, self.channels, self.scene_meta)
