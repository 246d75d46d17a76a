"""Earth-observation embeddings: GeoParquet of window footprints and per-patch embedding rasters.

* GeoParquet (spec 1.1): one row per window (or scene), ``geometry`` = the footprint polygon as WKB in
  the scene's CRS (or ``crs``), plus ``scene_id``, ``sensors``, ``datetime``, ``window_row``/``window_col``
  (pixel offsets), scene metadata such as BigEarthNet ``labels``, and ``embedding`` as a fixed-size list
  of float32. Written with pyarrow's streaming writer; the ``geo`` metadata that geopandas/GDAL/QGIS read
  is built here because geopandas only writes whole frames.
* Per-patch rasters: ``D`` bands on the patch grid (the scene transform scaled by the patch size), so they
  overlay the source. One engine (:func:`blended_rows`) runs overlapping sliding windows (default stride:
  half a window) and blends them with tent weights that fall towards each window's edge, so window borders
  leave no seams; it hands finished rows to a sink as soon as no later window can touch them, so memory is
  one strip of windows, not the scene. Sinks: cloud-optimised GeoTIFF (tiled, overviews, deflate with a
  predictor) in float32 or int8 with per-band scale/offset,
  and Zarr v3 with GeoZarr and CF/rioxarray georeferencing (readable by :func:`domainmae.data.cube.open_cube`).
  Every sink builds its output beside the target and renames it at the end.
"""
from __future__ import annotations

import json
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import geopandas as gpd
import numpy as np
import pyarrow as pa
import rasterio
import shapely
import zarr
from affine import Affine
from pyproj import CRS
from rasterio.enums import Resampling
from rasterio.shutil import copy as copy_dataset
from rasterio.windows import Window as RioWindow
from tqdm import tqdm
from zarr.errors import ZarrUserWarning

from ..atomic import atomic_dir, atomic_path
from ..data.geo import Grid
from ..data.multisensor import MultiSensorScene
from ..data.samplers import Window, grid_windows
from .profile import consecutive_groups, singletons
from .tables import PROVENANCE_KEY, column_types, feature_names, metadata_table, parquet_stream

if TYPE_CHECKING:
    from torch.utils.data import Dataset

    from ..data.geo import RasterWindowReader
    from ..data.raster import RasterScene
    from .embed import Export

#: Sample metadata that becomes dedicated columns (or is not a per-window property) rather than copied as is.
_OWN_KEYS = {"crs", "transform", "bounds", "window", "files", "scene_id", "scene_ids", "datetime", "field"}
#: Raster suffixes by format; a path without one of them is a folder with one raster per scene.
RASTER_SUFFIXES = {"geotiff": (".tif", ".tiff"), "zarr": (".zarr",)}
BLOCK_ALL_BANDS_BYTES = 4 << 20  # a Zarr chunk / GeoTIFF tile of all bands: a few MiB reads fast, compresses well
BLOCK_BYTES = 32 << 20  # rows quantised at a time by the int8 GeoTIFF sink
OVERVIEW_MIN_SIZE = 256  # overviews halve the grid until its larger side is at most this (as gdaladdo -minsize)
PREDICTORS = {"float32": "FLOATING_POINT", "int8": "STANDARD"}  # TIFF predictor 3 and 2
Strip = tuple[int, np.ndarray]  # (first patch row, [D, rows, W/p]) handed from the blending engine to a sink


def scene_name(meta: dict[str, Any]) -> str:
    """The scene a window comes from (``s2_id+s1_id`` for co-registered sensors)."""
    return "+".join(meta["scene_ids"].values()) if "scene_ids" in meta else meta["scene_id"]


def _extra(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return all(isinstance(v, str) for v in value)
    return isinstance(value, (str, int, float, bool))


def chip_rows(groups: Sequence[Sequence[dict[str, Any]]], sensors: list[str]) -> list[dict[str, Any]]:
    """One attribute row per group of windows (a window, or all windows of a scene)."""
    rows = []
    for metas in groups:
        first = metas[0]
        top, left = min(m["window"][0] for m in metas), min(m["window"][1] for m in metas)
        bottom = max(m["window"][0] + m["window"][2] for m in metas)
        right = max(m["window"][1] + m["window"][3] for m in metas)
        rows.append({
            "scene_id": scene_name(first), "sensors": sensors, "datetime": first.get("datetime"),
            "window_row": top, "window_col": left, "window_height": bottom - top, "window_width": right - left,
            **{k: v for k, v in first.items() if k not in _OWN_KEYS and _extra(v)},
        })  # fmt: skip
    return rows


def scene_meta(scene: RasterScene | MultiSensorScene) -> dict[str, Any]:
    """What every window of ``scene`` carries besides its own place (the first sensor's, for co-registered
    sensors, as :func:`~domainmae.export.embed.row_meta` merges it), placed at a stand-in window."""
    first = next(iter(scene.scenes.values())) if isinstance(scene, MultiSensorScene) else scene
    return {**first.scene_meta, "window": (0, 0, 0, 0)}


def footprints(groups: Sequence[Sequence[dict[str, Any]]], crs: CRS) -> gpd.GeoSeries:
    """Polygons ``[G]`` covering each group's windows, projected to ``crs`` from each group's own CRS.

    A batch can hold windows of scenes in different CRSs (UTM zones), so every group is projected from its
    own; the windows of one group come from one scene.
    """
    bounds = np.array([[min(m["bounds"][0] for m in g), min(m["bounds"][1] for m in g),
                        max(m["bounds"][2] for m in g), max(m["bounds"][3] for m in g)] for g in groups])  # fmt: skip
    boxes, sources = shapely.box(*bounds.T), np.array([g[0]["crs"] for g in groups])
    out = np.empty(len(groups), dtype=object)
    for source in set(sources.tolist()):
        rows = sources == source
        out[rows] = gpd.GeoSeries(boxes[rows], crs=source).to_crs(crs).to_numpy()
    return gpd.GeoSeries(out, crs=crs)


def geo_metadata(crs: CRS) -> dict[str, Any]:
    """GeoParquet 1.1 file metadata for one WKB polygon column in ``crs``."""
    columns = {"geometry": {"encoding": "WKB", "geometry_types": ["Polygon"], "crs": crs.to_json_dict()}}
    return {"version": "1.1.0", "primary_column": "geometry", "columns": columns}


def write_geoparquet(
    export: Export, items: Dataset, output: Path, *, pool: str, level: str, crs: str | None = None
) -> Path:
    """Stream window (``level="tile"``) or scene (``"image"``) embeddings into a GeoParquet file."""
    from .embed import embedding_stream

    readers = items.dataset.readers
    found = {r.scene.name: r.scene.grid.crs for r in readers}
    if any(c is None for c in found.values()):
        raise ValueError(f"scenes without a CRS cannot get footprints: {[n for n, c in found.items() if c is None]}")
    by_crs: dict[str, list[str]] = {}
    for name, scene_crs in found.items():
        by_crs.setdefault(scene_crs.to_string(), []).append(name)
    if crs is None and len(by_crs) > 1:
        listed = "; ".join(f"{c}: {len(names)} scene(s), e.g. {names[0]}" for c, names in sorted(by_crs.items()))
        raise ValueError(f"{output}: the scenes are in {len(by_crs)} CRSs ({listed}), and a GeoParquet geometry "
                         "column has one CRS: pass --crs (crs= in Python), e.g. --crs EPSG:4326, to reproject the "
                         "footprints")  # fmt: skip
    target = CRS.from_user_input(crs if crs is not None else next(iter(found.values())).to_wkt())
    sensors = list(export.channels)
    # Columns typed from every scene up front: a batch of undated scenes then still has a timestamp column.
    prototypes = chip_rows([[scene_meta(r.scene)] for r in readers], sensors)
    types = column_types(prototypes, f"data {export.recipe.data.path}")
    stream = embedding_stream(export, items, pool)
    groups = singletons(stream) if level == "tile" else consecutive_groups(stream, scene_name)
    with parquet_stream(output, export.provenance) as write:
        for metas, emb in groups:
            geometry = footprints(metas, target)
            table = metadata_table(chip_rows(metas, sensors), types)
            values = pa.array(emb.astype(np.float32).ravel(), type=pa.float32())
            table = table.append_column("embedding", pa.FixedSizeListArray.from_arrays(values, emb.shape[1]))
            table = table.append_column("geometry", pa.array(geometry.to_wkb(), type=pa.binary()))
            write(table.replace_schema_metadata({"geo": json.dumps(geo_metadata(target))}))
    return output


def tent(n: int) -> np.ndarray:
    """Blending weights ``[n, n]``: highest in the middle, small but positive at the edges."""
    ramp = np.minimum(np.arange(1, n + 1), np.arange(n, 0, -1)).astype(np.float64)
    return np.outer(ramp, ramp)


def _pop_rows(total: np.ndarray, weights: np.ndarray, count: int) -> np.ndarray:
    """Blend and remove the first ``count`` rows of the strip ``total [D, n, W]`` / ``weights [n, W]``.

    Returns float32 ``[D, count, W]``; the remaining rows move up and fresh zero rows enter at the bottom.
    """
    out = (total[:, :count] / weights[:count]).astype(np.float32)
    keep = total.shape[1] - count
    total[:, :keep], weights[:keep] = total[:, count:], weights[count:]
    total[:, keep:], weights[keep:] = 0.0, 0.0
    return out


def blended_rows(export: Export, reader: RasterWindowReader, normalize: Any, stride: int) -> Iterator[Strip]:
    """Sliding-window ``embed_patches`` of one scene blended on the patch grid, as strips from top to bottom.

    Yields ``(first patch row, float32 [D, rows, W/p])``; together the strips cover every row once, in
    order. A row is yielded as soon as no later window can touch it, so memory is one strip of windows
    (``[D, window/p, W/p]``), not the scene. A last partial patch (< p px) at the right/bottom is left out.
    """
    p, size, scene = export.model.patch_size, reader.size, reader.scene
    rows, cols = scene.grid.height // p, scene.grid.width // p
    windows = grid_windows(rows * p, cols * p, size, stride, what=f"scene {scene.name}")
    n, weight = size // p, tent(size // p)
    total, weights = np.zeros((export.dim, n, cols)), np.zeros((n, cols))
    base = 0  # the patch row of the strip's first row
    for start in tqdm(range(0, len(windows), export.batch_size), disable=not export.progress, unit="batch",
                      desc=scene.name, dynamic_ncols=True):  # fmt: skip
        batch: list[Window] = windows[start : start + export.batch_size]
        emb = export.forward([normalize(reader.window(w)) for w in batch], None)  # [B, n, n, D]
        for window, patches in zip(batch, emb):
            top, left = window.row // p, window.col // p
            if top > base:  # windows come row by row: rows above this window are final
                yield base, _pop_rows(total, weights, top - base)
                base = top
            total[:, top - base : top - base + n, left : left + n] += weight * patches.transpose(2, 0, 1)
            weights[top - base : top - base + n, left : left + n] += weight
    while base < rows:
        count = min(n, rows - base)
        yield base, _pop_rows(total, weights, count)
        base += count


def int8_scaling(low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-band ``(scale, offset)`` ``[D]`` mapping int8 -128..127 onto ``low..high``: value = q * scale + offset.

    A constant band gets scale 1 so that it still round-trips (every q is -128 = ``low``).
    """
    scale = np.where(high > low, (high - low) / 255.0, 1.0)
    return scale, low + 128.0 * scale


def overview_factors(height: int, width: int) -> list[int]:
    """Overview levels 2, 4, ... until the smallest overview's larger side is at most ``OVERVIEW_MIN_SIZE``."""
    factors: list[int] = []
    while -(-max(height, width) // 2 ** len(factors)) > OVERVIEW_MIN_SIZE:
        factors.append(2 ** (len(factors) + 1))
    return factors


def _write_geotiff(path: Path, grid: Grid, dim: int, strips: Iterable[Strip], tags: dict[str, Any],
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
                   BIGTIFF="IF_SAFER")  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{path.name}.", dir=path.parent) as scratch_dir:
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


def _write_int8_geotiff(path: Path, grid: Grid, dim: int, strips: Iterable[Strip], tags: dict[str, Any]) -> None:
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
            low, high = np.minimum(low, strip.min(axis=(1, 2))), np.maximum(high, strip.max(axis=(1, 2)))
        spool.seek(0)
        scale, offset = int8_scaling(low, high)
        step = max(1, BLOCK_BYTES // (4 * dim * grid.width))

        def quantised() -> Iterator[Strip]:
            for base in range(0, grid.height, step):
                block = np.fromfile(spool, np.float32, min(step, grid.height - base) * dim * grid.width)
                block = block.reshape(-1, dim, grid.width).transpose(1, 0, 2)  # [D, rows, W]
                steps = np.rint((block - offset[:, None, None]) / scale[:, None, None])
                yield base, np.clip(steps, -128, 127).astype(np.int8)

        tags = {**tags, "int8_scaling": "per band: min..max of the written values in 256 steps"}
        _write_geotiff(path, grid, dim, quantised(), tags, "int8", (scale, offset))


def block_side(dim: int) -> int:
    """Spatial side of a Zarr chunk or GeoTIFF tile (a power of two, 16..512): ``[D, side, side]`` float32 <= 4 MiB."""
    side = 2 ** int(np.log2(np.sqrt(BLOCK_ALL_BANDS_BYTES / (4 * dim))))
    return int(np.clip(side, 16, 512))


def _write_zarr(path: Path, grid: Grid, dim: int, strips: Iterable[Strip], attrs: dict[str, Any]) -> None:
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
        geo["proj:wkt2"] = mapping["crs_wkt"] = mapping["spatial_ref"] = grid.crs.to_wkt()
    with atomic_dir(path) as tmp:
        group = zarr.open_group(tmp, mode="w", zarr_format=3, attributes={PROVENANCE_KEY: attrs})
        array = group.create_array(
            "embedding", shape=(dim, height, width), chunks=(dim, min(side, height), min(side, width)),
            dtype="float32", dimension_names=("band", "y", "x"),
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


def _write_scene(export: Export, reader: RasterWindowReader, normalize: Any, path: Path, fmt: str, dtype: str,
                 stride: int) -> None:  # fmt: skip
    """One scene's blended per-patch embeddings into ``path``: GeoTIFF (float32 or int8) or Zarr."""
    p, grid, dim = export.model.patch_size, reader.scene.grid, export.dim
    # The patch grid: the scene transform scaled by the patch size, so the raster overlays the source.
    patch_grid = Grid(grid.crs, grid.transform @ Affine.scale(p), grid.height // p, grid.width // p)
    strips = blended_rows(export, reader, normalize, stride)
    attrs = {**export.provenance, "scene_id": reader.scene.name, "stride": stride}
    if fmt == "zarr":
        _write_zarr(path, patch_grid, dim, strips, attrs)
    elif dtype == "int8":
        _write_int8_geotiff(path, patch_grid, dim, strips, attrs)
    else:
        _write_geotiff(path, patch_grid, dim, strips, attrs)


def write_embedding_rasters(export: Export, items: Dataset, output: Path, stride: int | None, *,
                            fmt: str = "geotiff", dtype: str = "float32") -> Path:  # fmt: skip
    """Per-patch embedding raster of each scene: ``output`` (``.tif``/``.zarr``, one scene) or ``output/<scene>.<ext>``.

    ``fmt`` is ``geotiff`` (``dtype`` float32 or int8 with per-band scale/offset) or ``zarr`` (float32).
    """
    windows, normalize = items.dataset, items.transform
    p, size = export.model.patch_size, export.recipe.data.crop_size
    stride = stride if stride is not None else max(p, size // 2 // p * p)
    if stride % p or not 0 < stride <= size:
        raise ValueError(f"raster stride must be a multiple of the patch size {p} between {p} and {size}, got {stride}")
    readers = windows.readers
    if output.suffix.lower() in RASTER_SUFFIXES[fmt]:
        if len(readers) != 1:
            raise ValueError(f"{len(readers)} scenes do not fit in one file {output}; give a folder (no suffix)")
        _write_scene(export, readers[0], normalize, output, fmt, dtype, stride)
        return output
    with atomic_dir(output) as tmp:  # a crash leaves no half-filled folder
        for reader in readers:
            path = tmp / f"{reader.scene.name}{RASTER_SUFFIXES[fmt][0]}"
            _write_scene(export, reader, normalize, path, fmt, dtype, stride)
    return output
