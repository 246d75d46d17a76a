"""Per-patch embedding rasters: cloud-optimised GeoTIFF (float32 or int8) and Zarr, one per scene.

A raster holds ``D`` bands on the patch grid (the scene transform scaled by the patch size), so it
overlays the source. Writers take that grid and the embeddings as strips ``(first patch row, [D, rows,
W/p])`` from top to bottom (what :func:`~domainmae.export.stream.blended_rows` yields), so a scene is
never held whole. Sinks: cloud-optimised GeoTIFF (tiled, overviews, deflate with a predictor) in float32
or int8 with per-band scale/offset, and Zarr v3 with GeoZarr and CF/rioxarray georeferencing (readable
by :func:`domainmae.data.cube.open_cube`). Every sink builds its output beside the target and renames it
at the end; :func:`write_rasters` puts one scene in a file, or several in a folder of ``<scene>.<ext>``.
:func:`read_embedding_raster` reads either back.
"""
from __future__ import annotations

import json
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import rasterio
import zarr
from affine import Affine
from rasterio._err import CPLE_BaseError  # GDAL's errors: rasterio.errors re-exports none of them
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.shutil import copy as copy_dataset
from rasterio.windows import Window as RioWindow
from zarr.errors import BaseZarrError, ZarrUserWarning

from ...atomic import atomic_dir, atomic_path, writing
from .tables import PROVENANCE_KEY, feature_names

if TYPE_CHECKING:  # annotations only: domainmae.data loads every reader and torch; reading needs neither
    from ...data.geo import Grid

#: Raster suffixes by format; a path without one of them is a folder with one raster per scene.
RASTER_SUFFIXES = {"geotiff": (".tif", ".tiff"), "zarr": (".zarr",)}
BLOCK_ALL_BANDS_BYTES = 4 << 20  # a Zarr chunk / GeoTIFF tile of all bands: a few MiB reads fast, compresses well
BLOCK_BYTES = 32 << 20  # rows quantised at a time by the int8 GeoTIFF sink
OVERVIEW_MIN_SIZE = 256  # overviews halve the grid until its larger side is at most this (as gdaladdo -minsize)
PREDICTORS = {"float32": "FLOATING_POINT", "int8": "STANDARD"}  # TIFF predictor 3 and 2
#: What a patch without data (:func:`~domainmae.export.raw.patches_without_data`) holds: NaN, or int8's lowest
#: value, which the int8 scaling leaves out (values take -127..127). Declared as the rasters' nodata.
NODATA = {"float32": float("nan"), "int8": -128}
Strip = tuple[int, np.ndarray]  # (first patch row, [D, rows, W/p]), in row order
#: A sink: ``(path, patch grid, D, strips, provenance)`` -> one raster file.
RasterWriter = Callable[[Path, "Grid", int, Iterable[Strip], dict[str, Any]], None]


@dataclass(frozen=True)
class SceneStrips:
    """One scene's per-patch embeddings as they are made: ``strips`` (lazy) of ``dim`` bands on the patch ``grid``."""

    name: str
    grid: Grid
    dim: int
    strips: Iterable[Strip]
    provenance: dict[str, Any]


def int8_scaling(low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-band ``(scale, offset)`` ``[D]`` mapping int8 -127..127 onto ``low..high``: value = q * scale + offset
    (-128 is :data:`NODATA`).

    A constant band gets scale 1 so that it still round-trips (every q is -127 = ``low``); a band without data
    (``low`` > ``high``: no finite value) gets scale 1 and offset 0.
    """
    empty = ~(low <= high)
    low = np.where(empty, -127.0, low)
    scale = np.where(high > low, (high - low) / 254.0, 1.0)
    return scale, low + 127.0 * scale


def overview_factors(height: int, width: int) -> list[int]:
    """Overview levels 2, 4, ... until the smallest overview's larger side is at most ``OVERVIEW_MIN_SIZE``."""
    factors: list[int] = []
    while -(-max(height, width) // 2 ** len(factors)) > OVERVIEW_MIN_SIZE:
        factors.append(2 ** (len(factors) + 1))
    return factors


def write_geotiff(path: Path, grid: Grid, dim: int, strips: Iterable[Strip], tags: dict[str, Any],
                   dtype: str = "float32", scaling: tuple[np.ndarray, np.ndarray] | None = None) -> None:  # fmt: skip
    """Cloud-optimised GeoTIFF sink: ``D`` bands of ``dtype`` on ``grid``, tiled, deflate with a predictor, overviews.

    Strips go into an uncompressed tiled scratch file beside the target (uncompressed, so a strip that
    covers part of a tile is written in place rather than recompressed and appended); overviews are averaged
    there, and GDAL's COG driver copies it, with every IFD before the data, into a temp name renamed to
    ``path`` at the end. GDAL's COG driver interleaves by pixel (before GDAL 3.11), so a tile holds all
    ``D`` bands: tiles are :func:`block_side` square, as Zarr chunks, to stay a few MiB however large ``D``.
    The scratch file interleaves by band: GDAL builds overviews band by band (D = 384, 700 x 690 patches:
    3 s, against 50 s from a pixel-interleaved one).
    """
    side = block_side(dim)
    profile = dict(driver="GTiff", height=grid.height, width=grid.width, count=dim, dtype=dtype, crs=grid.crs,
                   transform=grid.transform, tiled=True, blockxsize=side, blockysize=side, interleave="band",
                   nodata=NODATA[dtype], BIGTIFF="IF_SAFER")  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    with writing(path, RasterioError, CPLE_BaseError), \
            tempfile.TemporaryDirectory(prefix=f".{path.name}.", dir=path.parent) as scratch_dir:
        # GDAL drops the errors of tiles flushed at close: a scratch file cut short by a full disk shows as a
        # failed read of it in the copy, so both sit inside writing() to name the output.
        scratch = Path(scratch_dir) / "strips.tif"
        with rasterio.open(scratch, "w", **profile) as dst:
            for i, name in enumerate(feature_names(dim), start=1):
                dst.set_band_description(i, name)
            if scaling is not None:  # GDAL/QGIS/rasterio unscale with these: value = raw * scale + offset
                dst.scales, dst.offsets = tuple(map(float, scaling[0])), tuple(map(float, scaling[1]))
            dst.update_tags(**{PROVENANCE_KEY: json.dumps(tags)})
            for base, strip in strips:
                dst.write(strip, window=RioWindow(0, base, grid.width, strip.shape[1]))
            dst.build_overviews(overview_factors(grid.height, grid.width), Resampling.average)
        with atomic_path(path) as tmp:
            copy_dataset(scratch, tmp, driver="COG", COMPRESS="DEFLATE", PREDICTOR=PREDICTORS[dtype],
                         BLOCKSIZE=side, OVERVIEWS="FORCE_USE_EXISTING", BIGTIFF="IF_SAFER",
                         NUM_THREADS="ALL_CPUS")  # fmt: skip


def write_int8_geotiff(path: Path, grid: Grid, dim: int, strips: Iterable[Strip], tags: dict[str, Any]) -> None:
    """int8 GeoTIFF sink with per-band scale/offset from the min/max of the values actually written.

    Two passes because the range is only known once every strip is blended: the float32 strips are
    spooled to a scratch file beside the target, row-major (``[rows, D, W]``) so that both passes are
    sequential reads/writes and memory stays one block; then they are quantised block by block.
    A fixed clip range would need a bound on the embeddings, and there is none worth having: the final
    LayerNorm has a learned scale/bias per feature and ViT features have outlier dimensions, so a fixed
    range either clips or wastes most of the 256 levels.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(prefix=f".{path.name}.", suffix=".raw", dir=path.parent) as spool:
        low, high = np.full(dim, np.inf), np.full(dim, -np.inf)
        for _, strip in strips:  # strips arrive in row order, so appending keeps the file in row order
            np.ascontiguousarray(strip.transpose(1, 0, 2)).tofile(spool)
            flat = strip.reshape(dim, -1)  # fmin/fmax skip NaN (patches without data)
            low, high = np.fmin(low, np.fmin.reduce(flat, axis=1)), np.fmax(high, np.fmax.reduce(flat, axis=1))
        spool.seek(0)
        scale, offset = int8_scaling(low, high)
        step = max(1, BLOCK_BYTES // (4 * dim * grid.width))

        def quantised() -> Iterator[Strip]:
            for base in range(0, grid.height, step):
                block = np.fromfile(spool, np.float32, min(step, grid.height - base) * dim * grid.width)
                block = block.reshape(-1, dim, grid.width).transpose(1, 0, 2)  # [D, rows, W]
                steps = np.clip(np.rint((block - offset[:, None, None]) / scale[:, None, None]), -127, 127)
                yield base, np.where(np.isnan(block), NODATA["int8"], steps).astype(np.int8)

        tags = {**tags, "int8_scaling": "per band: min..max of the written values in 256 steps"}
        write_geotiff(path, grid, dim, quantised(), tags, "int8", (scale, offset))


def block_side(dim: int) -> int:
    """Spatial side of a Zarr chunk or GeoTIFF tile (a power of two, 16..512): ``[D, side, side]`` float32 <= 4 MiB."""
    side = 2 ** int(np.log2(np.sqrt(BLOCK_ALL_BANDS_BYTES / (4 * dim))))
    return int(np.clip(side, 16, 512))


def write_zarr(path: Path, grid: Grid, dim: int, strips: Iterable[Strip], attrs: dict[str, Any]) -> None:
    """Zarr v3 sink: ``embedding [D, H/p, W/p]`` float32 in a store built in a temp folder and renamed at the end.

    Chunks hold all ``D`` bands of a square (reading an embedding vector at a place touches one chunk);
    strips are regrouped into whole chunk rows so no chunk is written twice. Georeferencing is written
    twice over, for both kinds of reader: GeoZarr ``proj:wkt2``/``spatial:transform`` on the array, and a
    CF/rioxarray ``spatial_ref`` grid mapping (``crs_wkt`` + GDAL ``GeoTransform``) with ``x``/``y``
    pixel-centre coordinates. Provenance goes into the group's attributes under ``domainmae``.
    """
    height, width = grid.height, grid.width
    side = block_side(dim)
    geo: dict[str, Any] = {"spatial:dimensions": ["y", "x"], "spatial:transform": list(grid.transform)[:6],
                           "spatial:shape": [height, width], "spatial:registration": "pixel"}  # fmt: skip
    mapping = {"GeoTransform": " ".join(map(repr, grid.transform.to_gdal()))}
    if grid.crs is not None:
        # GeoZarr asks for WKT2; the CF grid mapping keeps GDAL's WKT1, which every GDAL reads.
        geo["proj:wkt2"] = grid.crs.to_wkt(version="WKT2_2019")
        mapping["crs_wkt"] = mapping["spatial_ref"] = grid.crs.to_wkt()
    with atomic_dir(path) as tmp:
        group = zarr.open_group(tmp, mode="w", zarr_format=3, attributes={PROVENANCE_KEY: attrs})
        array = group.create_array(
            "embedding", shape=(dim, height, width), chunks=(dim, min(side, height), min(side, width)),
            dtype="float32", dimension_names=("band", "y", "x"), fill_value=NODATA["float32"],
            attributes={**geo, "grid_mapping": "spatial_ref", "coordinates": "spatial_ref"},
        )  # fmt: skip
        group.create_array("spatial_ref", shape=(), dtype="int32", dimension_names=(), attributes=mapping)
        group.create_array("band", shape=(dim,), dtype=str, dimension_names=("band",))[:] = feature_names(dim)
        t = grid.transform
        if t.b == 0 and t.d == 0:  # 1-D x/y coordinates describe only a north-up grid; else GeoTransform alone
            for dim_name, centres in (("x", t.c + t.a * (np.arange(width) + 0.5)),
                                      ("y", t.f + t.e * (np.arange(height) + 0.5))):  # fmt: skip
                coord = group.create_array(dim_name, shape=centres.shape, dtype="float64", dimension_names=(dim_name,))
                coord[:] = centres
        rows_per_chunk, start = array.chunks[1], 0
        pending = np.empty((dim, 0, width), np.float32)
        for _, strip in strips:
            pending = np.concatenate([pending, strip], axis=1)
            ready = pending.shape[1] // rows_per_chunk * rows_per_chunk
            array[:, start : start + ready], pending, start = pending[:, :ready], pending[:, ready:], start + ready
        array[:, start:] = pending  # the last, partial chunk row
        # xarray looks for consolidated metadata first and warns without it; zarr warns that v3 has no spec
        # for it yet, which is true but not the user's concern here.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Consolidated metadata is currently not part", ZarrUserWarning)
            zarr.consolidate_metadata(tmp)


def _written_by_embed(path: Path) -> bool:
    """Whether ``path`` is a GeoTIFF or Zarr store that ``embed`` wrote (it carries domainmae's provenance)."""
    try:
        if path.is_dir() and path.suffix.lower() == ".zarr":
            return PROVENANCE_KEY in zarr.open_group(path, mode="r").attrs
        if path.is_file() and path.suffix.lower() in (".tif", ".tiff"):
            with rasterio.open(path) as src:
                return PROVENANCE_KEY in src.tags()
    except (OSError, ValueError, RasterioError, BaseZarrError):
        return False  # not readable as what its name says: not embed's
    return False


def check_raster_target(output: Path) -> None:
    """Raise unless a raster export may replace what is at ``output``: nothing, a file, a Zarr store ``embed``
    wrote or a folder of nothing but its rasters. Any other folder (the user's, the input data, a run) would be
    deleted whole by the replacement."""
    if not output.is_dir() or output.is_symlink() or _written_by_embed(output):
        return
    if output.suffix.lower() == ".zarr" or not all(_written_by_embed(child) for child in output.iterdir()):
        raise FileExistsError(f"refusing to replace {output}: it is not a folder of embed rasters or a Zarr store "
                              "embed wrote, and replacing it would delete everything in it (nothing was written)")


def write_rasters(output: Path, scenes: Sequence[SceneStrips], write: RasterWriter, suffixes: Sequence[str]) -> Path:
    """Each scene's raster by ``write``: ``output`` itself when it has one of ``suffixes`` (one scene only),
    else a folder ``output/<scene><suffixes[0]>``, built beside the target so a crash leaves no half-filled
    folder. Returns ``output``."""
    if output.suffix.lower() in suffixes:
        if len(scenes) != 1:
            raise ValueError(f"{len(scenes)} scenes do not fit in one file {output}; give a folder (no suffix)")
        (scene,) = scenes
        write(output, scene.grid, scene.dim, scene.strips, scene.provenance)
        return output
    with atomic_dir(output) as tmp:
        write_scenes(tmp, scenes, write, suffixes[0])
    return output


def write_scenes(folder: Path, scenes: Iterable[SceneStrips], write: RasterWriter, suffix: str) -> None:
    """Each scene's raster by ``write`` into ``folder/<scene><suffix>`` (a scene's file appears once complete)."""
    for scene in scenes:
        write(folder / f"{scene.name}{suffix}", scene.grid, scene.dim, scene.strips, scene.provenance)


def read_embedding_raster(path: Path) -> tuple[np.ndarray, Affine, CRS | None, dict[str, Any]]:
    """``(values float32 [D, h, w], patch-grid transform, CRS, provenance)`` of an ``embed`` GeoTIFF or Zarr.

    An int8 GeoTIFF is unscaled with its per-band scale/offset, as GDAL readers do; patches without data
    (:data:`NODATA`) are NaN.
    """
    if not path.exists():
        raise FileNotFoundError(f"embedding raster not found: {path}")
    if path.suffix.lower() == ".zarr":
        group = zarr.open_group(path, mode="r")
        if "embedding" not in group:
            raise ValueError(f"{path} holds no 'embedding' array; is it an embed --format zarr output?")
        array = group["embedding"]
        wkt = array.attrs.get("proj:wkt2")
        transform = Affine(*array.attrs["spatial:transform"])
        provenance = dict(group.attrs.get(PROVENANCE_KEY, {}))
        return np.asarray(array[:], np.float32), transform, CRS.from_wkt(wkt) if wkt else None, provenance
    with rasterio.open(path) as src:
        raw = src.read()
        values = raw.astype(np.float32)
        if src.dtypes[0] == "int8":
            values = values * np.array(src.scales, np.float32)[:, None, None] + np.array(src.offsets, np.float32)[:, None, None]
            values[raw == src.nodata] = np.nan  # None in rasters from before nodata was declared: nothing masked
        provenance = json.loads(src.tags().get(PROVENANCE_KEY, "{}"))
        return values, src.transform, src.crs, provenance
