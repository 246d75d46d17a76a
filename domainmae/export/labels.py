"""Per-patch embedding rasters joined with categorical labels (a raster or a vector file), as a table
``evaluate`` can split.

Labels are brought onto the source-pixel grid under the embedding raster (the patch grid divided by the
patch size), so each patch covers ``p x p`` label pixels. A label raster, in any CRS and resolution, is
reprojected there with nearest-neighbour resampling. A vector file (GeoPackage, GeoJSON, Shapefile,
FlatGeobuf, GeoParquet) of polygons or points, in any CRS, is reprojected to the raster's CRS and
rasterised there, its class read from a named column (strings or numbers, kept as they are): see
:func:`fine_vector_labels` for which pixels a geometry labels and what overlaps of classes do. Both give
the same per-pixel classes and validity to one rule: a patch takes the majority class of its valid label
pixels (nodata ignored) when that class holds at least ``purity`` of them; patches with no valid label
pixel, or a mixed one, are left out. Each row is placed like a GeoParquet window (``scene_id``,
``window_row``/``window_col``/``window_height``/``window_width`` in source pixels), so the ``blocks:SIZE``
split works on it unchanged.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
from affine import Affine
from pyogrio.errors import DataSourceError
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.features import rasterize
from rasterio.warp import reproject

from .splits import REACH_COLUMN
from .writers.raster import read_embedding_raster
from .writers.tables import feature_names

LABEL = "label"  # the label column of a joined table
#: Label files read as vectors (geopandas); any other file is opened as a raster.
VECTOR_SUFFIXES = (".gpkg", ".geojson", ".json", ".shp", ".fgb", ".parquet", ".geoparquet")
BURNABLE = ("Polygon", "MultiPolygon", "Point", "MultiPoint")


def patch_majority(fine: np.ndarray, usable: np.ndarray, patch: int, purity: float) -> tuple[np.ndarray, np.ndarray]:
    """``(label [h, w], keep [h, w] bool)`` from ``fine [h * patch, w * patch]`` classes and ``usable`` (same shape,
    bool): each patch's majority class among its usable pixels, kept when it holds at least ``purity`` of them."""
    h, w = fine.shape[0] // patch, fine.shape[1] // patch
    blocks = fine.reshape(h, patch, w, patch).transpose(0, 2, 1, 3).reshape(h, w, patch * patch)
    ok = usable.reshape(h, patch, w, patch).transpose(0, 2, 1, 3).reshape(h, w, patch * patch)
    classes = np.unique(fine[usable])
    counts = np.stack([((blocks == c) & ok).sum(-1) for c in classes]) if len(classes) else np.zeros((1, h, w), int)
    total = ok.sum(-1)
    majority = counts.argmax(0)
    share = np.divide(counts.max(0), total, out=np.zeros((h, w)), where=total > 0)
    return (classes[majority] if len(classes) else majority), (total > 0) & (share >= purity)


def fine_raster_labels(labels: Path, transform: Affine, crs: CRS | None,
                       shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """``(classes [H, W], usable [H, W] bool)`` of a label raster on the grid ``transform``/``crs``/``shape``."""
    with rasterio.open(labels) as src:
        if src.crs is None or crs is None:
            raise ValueError(f"{labels} and the embedding raster both need a CRS to be aligned")
        nodata = src.nodata
        fine = np.zeros(shape, dtype=src.dtypes[0])
        valid = np.zeros(shape, dtype=np.uint8)
        # Nearest keeps classes as they are; the second pass marks the pixels the label raster covers with data.
        kwargs = dict(dst_transform=transform, dst_crs=crs, resampling=Resampling.nearest)
        reproject(rasterio.band(src, 1), fine, **kwargs)
        reproject(src.read_masks(1), valid, src_transform=src.transform, src_crs=src.crs, src_nodata=0, **kwargs)
    return fine, (valid > 0 if nodata is None else (valid > 0) & (fine != nodata))


def read_label_vectors(labels: Path, field: str | None) -> tuple[gpd.GeoSeries, pd.Series]:
    """``(geometries [n], classes [n])``: the rows of ``labels`` with both a geometry and a class, in its CRS.

    ``field`` names the class column; it may be left out when the file has a single non-geometry column.
    """
    try:
        parquet = labels.suffix.lower() in (".parquet", ".geoparquet")
        frame = gpd.read_parquet(labels) if parquet else gpd.read_file(labels, engine="pyogrio")
    except (DataSourceError, OSError, ValueError) as err:
        raise OSError(f"cannot read {labels} as a label vector file: {err}") from err
    if frame.crs is None:
        raise ValueError(f"{labels} has no CRS, so its geometries cannot be placed on the embedding raster")
    columns = [c for c in frame.columns if c != frame.geometry.name]
    if field is None:
        if len(columns) != 1:
            raise ValueError(f"{labels} has the columns {columns}: name its class column with --label-field")
        field = columns[0]
    elif field not in columns:
        raise ValueError(f"label field {field!r} is not a column of {labels}; it has {columns}")
    geometry, classes = frame.geometry, frame[field]
    if classes.map(lambda value: isinstance(value, (list, tuple, dict, np.ndarray))).any():
        raise ValueError(f"label field {field!r} of {labels} holds lists: a label file gives each geometry one "
                         f"class; to score several labels per row, evaluate a table with them (--label {field})")
    kept = geometry.notna() & ~geometry.is_empty & classes.notna()
    if not kept.any():
        raise ValueError(f"{labels} has no row with both a geometry and a {field!r}")
    refused = sorted(set(geometry[kept].geom_type) - set(BURNABLE))
    if refused:
        raise ValueError(f"{labels} holds {', '.join(refused)} geometries; only polygons and points label patches "
                         "(buffer lines into polygons first)")  # fmt: skip
    classes = classes[kept]
    # GDAL reads an integer column with nulls as float64: whole-number classes go back to the integers they were.
    if classes.dtype.kind == "f" and (classes == classes.round()).all():
        classes = classes.astype("int64")
    return geometry[kept], classes


def fine_vector_labels(labels: Path, field: str | None, transform: Affine, crs: CRS | None,
                       shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """``(codes [H, W] int32, usable [H, W] bool, classes [K])`` of a vector label file on the grid
    ``transform``/``crs``/``shape``: ``classes[codes]`` is each usable pixel's class, as the file holds it.

    Polygons burn the pixels whose centre they contain; points (each point of a multipoint) the pixel they
    fall in, so one pixel is one vote however many points of one class it holds. A pixel covered by two or
    more different classes is unusable, like nodata in a raster: the drawing order does not pick its class;
    a patch wholly under such an overlap is left out, one partly under it is judged by its other pixels.
    """
    if crs is None:
        raise ValueError(f"the embedding raster has no CRS to place {labels} on")
    geometry, values = read_label_vectors(labels, field)
    geometry = geometry.to_crs(crs.to_wkt())
    classes = np.unique(values.to_numpy())  # sorted, so a tie goes to the lowest class as in a raster
    codes = np.zeros(shape, np.int32)
    covered = np.zeros(shape, bool)
    clash = np.zeros(shape, bool)
    # One class at a time: a pixel a second class burns is marked as a clash instead of being drawn over.
    for code, value in enumerate(classes):
        shapes = geometry[(values == value).to_numpy()]
        burnt = rasterize(shapes, out_shape=shape, transform=transform, dtype="uint8") > 0
        clash |= covered & burnt
        covered |= burnt
        codes[burnt] = code
    return codes, covered & ~clash, classes


def patch_labels(labels: Path, transform: Affine, crs: CRS | None, shape: tuple[int, int], patch: int,
                 purity: float, field: str | None = None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """``(label [h, w], keep [h, w] bool)``: each patch's majority class and whether it is pure enough.

    ``transform``/``crs``/``shape`` place the patch grid; ``labels`` is a raster, or a vector file
    (:data:`VECTOR_SUFFIXES`) whose class is its column ``field``.
    """
    h, w = shape
    fine_shape, fine_transform = (h * patch, w * patch), transform @ Affine.scale(1 / patch)
    if labels.suffix.lower() in VECTOR_SUFFIXES:
        codes, usable, classes = fine_vector_labels(labels, field, fine_transform, crs, fine_shape)
        label, keep = patch_majority(codes, usable, patch, purity)
        return classes[label], keep
    if field is not None:
        raise ValueError(f"a label field ({field!r}) names a column of a vector label file; {labels} is a raster")
    return patch_majority(*fine_raster_labels(labels, fine_transform, crs, fine_shape), patch, purity)


def raster_table(file: Path, labels: Path, purity: float = 0.5,
                 field: str | None = None) -> tuple[pd.DataFrame, list[str], dict[str, Any]]:  # fmt: skip
    """``(table, feature columns, provenance)``: one row per patch of ``file`` with a pure label in ``labels``
    (a raster, or a vector file whose class column is ``field``)."""
    if not 0 < purity <= 1:
        raise ValueError(f"purity must be in (0, 1], got {purity}")
    values, transform, crs, provenance = read_embedding_raster(file)
    patch = (provenance.get("model_config") or {}).get("patch_size")
    if not patch:
        raise ValueError(f"{file} does not record its patch size (model_config.patch_size in its provenance)")
    label, keep = patch_labels(Path(labels), transform, crs, values.shape[1:], int(patch), purity, field)
    rows, cols = np.nonzero(keep & np.isfinite(values).all(axis=0))  # patches without data (NaN) have no row
    if len(rows) == 0:
        raise ValueError(f"no patch of {file} has a label in {labels} (nodata, no overlap, overlapping classes, "
                         f"or below purity {purity})")  # fmt: skip
    features = feature_names(values.shape[0])
    # A patch's embedding is blended from the encoder windows over it, whose pixels reach this far beyond it:
    # a blocks split keeps that margin around the test patches (rasters from before it was recorded: none).
    reach = int(provenance["window"]) - int(patch) if "window" in provenance else 0
    df = pd.DataFrame({"scene_id": provenance.get("scene_id", file.stem), "window_row": rows * patch,
                       "window_col": cols * patch, "window_height": patch, "window_width": patch,
                       REACH_COLUMN: reach, LABEL: label[rows, cols]})  # fmt: skip
    return pd.concat([df, pd.DataFrame(values[:, rows, cols].T, columns=features)], axis=1), features, provenance
