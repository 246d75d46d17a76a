"""Earth-observation embeddings: GeoParquet of window footprints and per-patch embedding GeoTIFFs.

* GeoParquet (spec 1.1): one row per window (or scene), ``geometry`` = the footprint polygon as WKB in
  the scene's CRS (or ``crs``), plus ``scene_id``, ``sensors``, ``datetime``, ``window_row``/``window_col``
  (pixel offsets), scene metadata such as BigEarthNet ``labels``, and ``embedding`` as a fixed-size list
  of float32. Written with pyarrow's streaming writer; the ``geo`` metadata that geopandas/GDAL/QGIS read
  is built here because geopandas only writes whole frames.
* GeoTIFF: ``D`` float32 bands on the patch grid (the scene transform scaled by the patch size), so it
  overlays the source. Sliding windows overlap (default stride: half a window) and are blended with tent
  weights that fall towards each window's edge, so window borders leave no seams. Rows of the output are
  written as soon as no later window can touch them: memory is one strip of windows, not the scene.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import geopandas as gpd
import numpy as np
import pyarrow as pa
import rasterio
import shapely
from affine import Affine
from pyproj import CRS
from rasterio.windows import Window as RioWindow
from tqdm import tqdm

from ..atomic import atomic_path
from ..data.samplers import Window, grid_windows
from .profile import consecutive_groups, singletons
from .tables import PROVENANCE_KEY, feature_names, parquet_stream

if TYPE_CHECKING:
    from torch.utils.data import Dataset

    from ..data.geo import RasterWindowReader
    from .embed import Export

#: Sample metadata that becomes dedicated columns (or is not a per-window property) rather than copied as is.
_OWN_KEYS = {"crs", "transform", "bounds", "window", "files", "scene_id", "scene_ids", "datetime", "field"}


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


def footprints(groups: Sequence[Sequence[dict[str, Any]]]) -> np.ndarray:
    """Polygons ``[G]`` covering each group's windows, in the windows' CRS."""
    bounds = np.array([[min(m["bounds"][0] for m in g), min(m["bounds"][1] for m in g),
                        max(m["bounds"][2] for m in g), max(m["bounds"][3] for m in g)] for g in groups])  # fmt: skip
    return shapely.box(*bounds.T)


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
    if crs is None and len(set(found.values())) > 1:
        raise ValueError(f"the scenes are in {len(set(found.values()))} CRSs ({ {n: c.to_string() for n, c in found.items()} }); "
                         "one GeoParquet column has one CRS: pass crs= (e.g. 'EPSG:4326') to reproject")  # fmt: skip
    target = CRS.from_user_input(crs if crs is not None else next(iter(found.values())).to_wkt())
    stream = embedding_stream(export, items, pool)
    groups = singletons(stream) if level == "tile" else consecutive_groups(stream, scene_name)
    sensors = list(export.channels)
    with parquet_stream(output, export.provenance) as write:
        for metas, emb in groups:
            geometry = gpd.GeoSeries(footprints(metas), crs=metas[0][0]["crs"]).to_crs(target)
            table = pa.Table.from_pylist(chip_rows(metas, sensors))
            values = pa.array(emb.astype(np.float32).ravel(), type=pa.float32())
            table = table.append_column("embedding", pa.FixedSizeListArray.from_arrays(values, emb.shape[1]))
            table = table.append_column("geometry", pa.array(geometry.to_wkb(), type=pa.binary()))
            write(table.replace_schema_metadata({"geo": json.dumps(geo_metadata(target))}))
    return output


def tent(n: int) -> np.ndarray:
    """Blending weights ``[n, n]``: highest in the middle, small but positive at the edges."""
    ramp = np.minimum(np.arange(1, n + 1), np.arange(n, 0, -1)).astype(np.float64)
    return np.outer(ramp, ramp)


def _write_scene(export: Export, reader: RasterWindowReader, normalize: Any, path: Path, stride: int) -> None:
    """Blend sliding-window ``embed_patches`` of one scene into a ``D``-band GeoTIFF on the patch grid."""
    p, size, scene = export.model.patch_size, reader.size, reader.scene
    grid = scene.grid
    rows, cols = grid.height // p, grid.width // p  # a last partial patch (< p px) is left out
    windows = grid_windows(rows * p, cols * p, size, stride, what=f"scene {scene.name}")
    n, dim = size // p, export.model.embed_dim
    weight = tent(n)
    profile = dict(driver="GTiff", height=rows, width=cols, count=dim, dtype="float32", crs=grid.crs,
                   transform=grid.transform @ Affine.scale(p), compress="deflate", BIGTIFF="IF_SAFER")  # fmt: skip
    # A strip of n output rows starting at patch row `base`: what the current row of windows can touch.
    total = np.zeros((dim, n, cols))
    weights = np.zeros((n, cols))
    base = 0

    def flush(dst: rasterio.io.DatasetWriter, count: int) -> None:
        nonlocal base
        dst.write((total[:, :count] / weights[:count]).astype(np.float32), window=RioWindow(0, base, cols, count))
        total[:, :-count or None], weights[:-count or None] = total[:, count:], weights[count:]
        total[:, n - count :], weights[n - count :] = 0.0, 0.0
        base += count

    with atomic_path(path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        for i, name in enumerate(feature_names(dim), start=1):
            dst.set_band_description(i, name)
        dst.update_tags(**{PROVENANCE_KEY: json.dumps({**export.provenance, "scene_id": scene.name, "stride": stride})})
        for start in tqdm(range(0, len(windows), export.batch_size), disable=not export.progress, unit="batch",
                          desc=scene.name, dynamic_ncols=True):  # fmt: skip
            batch: list[Window] = windows[start : start + export.batch_size]
            emb = export.forward([normalize(reader.window(w)) for w in batch], None)  # [B, n, n, D]
            for window, patches in zip(batch, emb):
                top, left = window.row // p, window.col // p
                if top > base:  # rows above this window row are final
                    flush(dst, top - base)
                total[:, top - base : top - base + n, left : left + n] += weight * patches.transpose(2, 0, 1)
                weights[top - base : top - base + n, left : left + n] += weight
        while base < rows:
            flush(dst, min(n, rows - base))


def write_embedding_rasters(export: Export, items: Dataset, output: Path, stride: int | None) -> Path:
    """Per-patch embedding GeoTIFF of each scene: ``output`` (``.tif``, one scene) or ``output/<scene>.tif``."""
    windows, normalize = items.dataset, items.transform
    p, size = export.model.patch_size, export.recipe.data.crop_size
    stride = stride if stride is not None else max(p, size // 2 // p * p)
    if stride % p or not 0 < stride <= size:
        raise ValueError(f"raster stride must be a multiple of the patch size {p} between {p} and {size}, got {stride}")
    readers = windows.readers
    if output.suffix.lower() in (".tif", ".tiff"):
        if len(readers) != 1:
            raise ValueError(f"{len(readers)} scenes do not fit in one file {output}; give a folder (no .tif suffix)")
        _write_scene(export, readers[0], normalize, output, stride)
        return output
    # A folder: build it beside the target and rename, so a crash leaves no half-filled folder.
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        for reader in readers:
            _write_scene(export, reader, normalize, tmp / f"{reader.scene.name}.tif", stride)
        if output.exists():
            shutil.rmtree(output)
        os.replace(tmp, output)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return output
