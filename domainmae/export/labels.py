"""Per-patch embedding rasters joined with a categorical label raster, as a table ``evaluate`` can split.

The label raster may be in any CRS and resolution: it is reprojected with nearest-neighbour resampling
onto the source-pixel grid under the embedding raster (the patch grid divided by the patch size), so each
patch covers ``p x p`` label pixels. A patch takes the majority class of its valid label pixels (nodata
ignored) when that class holds at least ``purity`` of them; patches with no valid label pixel, or a
mixed one, are left out. Each row is placed like a GeoParquet window (``scene_id``, ``window_row``/
``window_col``/``window_height``/``window_width`` in source pixels), so the ``blocks:SIZE`` split works
on it unchanged.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.warp import reproject

from .writers.raster import read_embedding_raster
from .writers.tables import feature_names

LABEL = "label"  # the label column of a joined table


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


def patch_labels(labels: Path, transform: Affine, crs: CRS | None, shape: tuple[int, int], patch: int,
                 purity: float) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """``(label [h, w], keep [h, w] bool)``: each patch's majority class and whether it is pure enough.

    ``transform``/``crs``/``shape`` place the patch grid.
    """
    h, w = shape
    fine_shape, fine_transform = (h * patch, w * patch), transform @ Affine.scale(1 / patch)
    return patch_majority(*fine_raster_labels(labels, fine_transform, crs, fine_shape), patch, purity)


def raster_table(file: Path, labels: Path, purity: float = 0.5) -> tuple[pd.DataFrame, list[str], dict[str, Any]]:
    """``(table, feature columns, provenance)``: one row per patch of ``file`` with a pure label in ``labels``."""
    if not 0 < purity <= 1:
        raise ValueError(f"purity must be in (0, 1], got {purity}")
    values, transform, crs, provenance = read_embedding_raster(file)
    patch = (provenance.get("model_config") or {}).get("patch_size")
    if not patch:
        raise ValueError(f"{file} does not record its patch size (model_config.patch_size in its provenance)")
    label, keep = patch_labels(labels, transform, crs, values.shape[1:], int(patch), purity)
    rows, cols = np.nonzero(keep)
    if len(rows) == 0:
        raise ValueError(f"no patch of {file} has a label in {labels} (nodata, no overlap, or below purity {purity})")
    features = feature_names(values.shape[0])
    df = pd.DataFrame({"scene_id": provenance.get("scene_id", file.stem), "window_row": rows * patch,
                       "window_col": cols * patch, "window_height": patch, "window_width": patch,
                       LABEL: label[rows, cols]})  # fmt: skip
    return pd.concat([df, pd.DataFrame(values[:, rows, cols].T, columns=features)], axis=1), features, provenance
