"""Train/test splits for ``evaluate`` that do not leak: random, by a group column, or by spatial blocks.

Neighbouring windows of one scene look alike, so a random split of a window table measures how well a
probe interpolates between neighbours rather than how well the features transfer. ``blocks:SIZE`` cuts
every scene into squares of ``SIZE`` x ``SIZE`` source pixels (by each window's top-left pixel,
``window_row``/``window_col``), holds out whole blocks, and drops training windows that come within
``gap`` pixels of a held-out window (default: one window), so no training window overlaps or touches
the test area. Windows of a GeoParquet table are cut into blocks and kept apart on the ground, by their
footprints, across scenes: two dates of one tile, overlapping tiles and adjacent patches are not
independent (:func:`with_ground_boxes`). Rows that are patches of an embedding raster (a label raster's
table) carry how far beyond the patch the encoder windows that made them reach (``window_reach``); the gap
is kept between those reaches, and its default is the encoder window. How many were dropped is reported.
``COLUMN=VALUE[,VALUE...]`` names the held-out groups instead of drawing them (leave-one-field-out, a
fixed test plate). A random split of a window table warns.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import NamedTuple

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from sklearn.model_selection import GroupShuffleSplit, train_test_split

#: The GeoParquet columns a blocks split reads (``embed`` writes them for every window).
WINDOW_COLUMNS = ("scene_id", "window_row", "window_col", "window_height", "window_width")
#: Pixels beyond its window that a row's embedding depends on (patches of a raster; 0 without the column).
REACH_COLUMN = "window_reach"
#: Each window's footprint in metres (:func:`with_ground_boxes`): blocks and the gap on the ground.
GROUND_COLUMNS = ("ground_left", "ground_bottom", "ground_right", "ground_top")


class Split(NamedTuple):
    """Row indices of a split; ``dropped`` training rows were left out for being too near the test rows.
    ``groups``: every row's group (what the split keeps on one side: the split column's value, or the
    window's block), None for a random split; cross-validation inside the training rows
    (``evaluate(tune=True)``) folds by it, so it does not leak between groups either."""

    train: np.ndarray
    test: np.ndarray
    dropped: int = 0
    groups: np.ndarray | None = None


def split_rows(
    df: pd.DataFrame, y: np.ndarray, split: str, test_size: float, seed: int, multilabel: bool,
    gap: int | None = None,
) -> Split:  # fmt: skip
    """Train and test row indices: ``"random"``, ``"blocks:SIZE"``, ``"COLUMN=VALUE[,VALUE...]"`` (those groups
    held out), or grouped by the column named ``split`` (groups drawn by ``seed``)."""
    rows = np.arange(len(df))
    if split == "random":
        if all(c in df.columns for c in WINDOW_COLUMNS):
            warnings.warn(f"a random split of {len(df)} windows from {df['scene_id'].nunique()} scenes puts windows "
                          "next to (or overlapping) test windows in training, so the test score is partly measured on "
                          "neighbours of the training rows; --split blocks:SIZE (or scene_id) holds out whole areas",
                          stacklevel=2)  # fmt: skip
        counts = pd.Series(list(map(str, y)) if multilabel else y).value_counts()
        stratify = None if multilabel or counts.min() < 2 else y
        return Split(*train_test_split(rows, test_size=test_size, random_state=seed, stratify=stratify))
    if split.startswith("blocks:"):
        size = split.removeprefix("blocks:")
        if not size.isdigit() or int(size) < 1:
            raise ValueError(f"split {split!r}: blocks:SIZE takes a block size in source pixels, e.g. blocks:1024")
        return block_split(df, int(size), gap, test_size, seed)
    if "=" in split:
        return held_out(df, *split.split("=", 1))
    if split not in df.columns:
        raise KeyError(f"split column {split!r} is not in the table; it has {list(df.columns)}")
    groups = df[split].astype(str).to_numpy()
    return Split(*grouped(rows, groups, test_size, seed, f"split column {split!r}"), groups=groups)


def grouped(rows: np.ndarray, groups: np.ndarray, test_size: float, seed: int, what: str) -> tuple[np.ndarray, ...]:
    """Train and test rows with no group on both sides."""
    if len(set(groups)) < 2:
        raise ValueError(f"{what} has a single group; a grouped split needs at least two")
    return next(GroupShuffleSplit(n_splits=1, test_size=test_size, random_state=seed).split(rows, groups=groups))


def held_out(df: pd.DataFrame, column: str, values: str) -> Split:
    """The rows whose ``column`` holds one of the comma-separated ``values`` are the test set."""
    if column not in df.columns:
        raise KeyError(f"split column {column!r} is not in the table; it has {list(df.columns)}")
    groups = df[column].astype(str).to_numpy()
    present = set(groups)
    wanted = [v for v in values.split(",") if v]
    missing = [v for v in wanted if v not in present]
    if not wanted or missing:
        raise ValueError(f"split {column}={values}: {missing or 'no value'} not among the values of {column!r}: "
                         f"{sorted(present)}")  # fmt: skip
    test = np.isin(groups, wanted)
    if test.all():
        raise ValueError(f"split {column}={values} holds out every row; nothing is left to train on")
    return Split(np.flatnonzero(~test), np.flatnonzero(test), groups=groups)


def window_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Chebyshev gaps ``[A, B]`` in pixels between window boxes ``[A, 4]`` and ``[B, 4]`` (row, col, height,
    width): 0 for windows that touch, negative for windows that overlap."""
    a, b = a[:, None, :], b[None, :, :]
    rows = np.maximum(b[..., 0] - (a[..., 0] + a[..., 2]), a[..., 0] - (b[..., 0] + b[..., 2]))
    cols = np.maximum(b[..., 1] - (a[..., 1] + a[..., 3]), a[..., 1] - (b[..., 1] + b[..., 3]))
    return np.maximum(rows, cols)


def with_ground_boxes(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    """``df``, the rows of ``path`` in order, with each footprint's bounds in metres (:data:`GROUND_COLUMNS`) when
    ``path`` is GeoParquet: in its CRS when that is projected, else in the UTM zone of the whole file's centre
    (geopandas' estimate; footprints zones away turn a little there, so their bounds and the gap grow a little).
    Other files: ``df`` as it is."""
    try:
        footprints = gpd.read_parquet(path, columns=["geometry"])
    except (ValueError, KeyError, TypeError, OSError):  # not GeoParquet: no footprints to cut blocks from
        return df
    if footprints.crs is None or len(footprints) != len(df):
        return df
    if footprints.crs.is_geographic:
        footprints = footprints.to_crs(footprints.estimate_utm_crs())
    return df.assign(**dict(zip(GROUND_COLUMNS, footprints.bounds.to_numpy().T)))


def block_labels(df: pd.DataFrame, size: int) -> np.ndarray:
    """Each window's block: ``scene/row/col`` of the ``size`` x ``size`` px square holding its top-left pixel, or
    with footprints (:data:`GROUND_COLUMNS`) ``cell/row/col`` of that square on the ground, in the scene's own
    pixels, whatever the scene (dates of one tile, adjacent patches of one resolution share blocks)."""
    missing = [c for c in WINDOW_COLUMNS if c not in df.columns]
    if missing:
        raise KeyError(f"split 'blocks:{size}' needs the window columns {list(WINDOW_COLUMNS)} of a GeoParquet "
                       f"window table (embed --level tile); the table lacks {missing}")  # fmt: skip
    if all(c in df.columns for c in GROUND_COLUMNS):
        ground, scale = _ground(df)
        # A scene's own pixel size (the median of its windows'), so dates of one tile lay the same grid; the
        # cell size is part of the key, as grids of other sizes (places, resolutions) do not line up.
        cell = size * pd.Series(scale).groupby(df["scene_id"].astype(str).to_numpy()).transform("median").to_numpy()
        keys = zip(np.char.mod("%.6g", cell), np.floor(-ground[:, 3] / cell).astype(np.int64),
                   np.floor(ground[:, 0] / cell).astype(np.int64))  # fmt: skip
    else:
        rows, cols = (df[c].to_numpy(np.int64) // size for c in ("window_row", "window_col"))
        keys = zip(df["scene_id"].astype(str), rows, cols)
    return np.array(["/".join(map(str, key)) for key in keys])


def _ground(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """``(footprints [N, 4] left, bottom, right, top, units per pixel [N])``: each window's own pixel size in the
    footprints' units, which is what a pixel measures there (Web Mercator units grow towards the poles, a UTM
    zone's away from its meridian), so a gap or block in pixels is converted where it lies."""
    ground = df[list(GROUND_COLUMNS)].to_numpy(np.float64)
    return ground, (ground[:, 2] - ground[:, 0]) / df["window_width"].to_numpy(np.float64)


def default_gap(df: pd.DataFrame) -> int:
    """The largest window side in pixels, a raster patch's reach included: one encoder window."""
    reach = df[REACH_COLUMN].to_numpy(np.int64) if REACH_COLUMN in df else 0
    return int((df[["window_height", "window_width"]].to_numpy(np.int64).max(axis=1) + reach).max())


def too_near(df: pd.DataFrame, ours: np.ndarray, theirs: np.ndarray, gap: int) -> np.ndarray:
    """Which rows ``ours`` come nearer than ``gap`` px to a row of ``theirs`` (bool, one per row of ``ours``): their
    footprints on the ground when the table has them, whatever the scene; else their windows, within a scene,
    each widened by its reach (a raster patch's encoder windows)."""
    near = np.zeros(len(ours), dtype=bool)
    if all(c in df.columns for c in GROUND_COLUMNS):
        ground, scale = _ground(df)
        # Candidate pairs from a spatial index (footprints grown by the widest gap either side could ask), then
        # the exact Chebyshev gap against the pair's gap in the larger of its two pixel sizes.
        reach = gap * np.maximum(scale[ours], scale[theirs].max(initial=0.0))
        grown = ground[ours] + np.array([-1, -1, 1, 1]) * reach[:, None]
        mine, held = shapely.STRtree(shapely.box(*ground[theirs].T)).query(shapely.box(*grown.T), predicate="intersects")
        a, b = ground[ours[mine]], ground[theirs[held]]
        apart = np.maximum(np.maximum(b[:, 0] - a[:, 2], a[:, 0] - b[:, 2]), np.maximum(b[:, 1] - a[:, 3], a[:, 1] - b[:, 3]))
        near[mine[apart < (gap - 1e-6) * np.maximum(scale[ours[mine]], scale[theirs[held]])]] = True
        return near
    scenes = df["scene_id"].astype(str).to_numpy()
    boxes = df[list(WINDOW_COLUMNS[1:])].to_numpy(np.int64)
    reach = df[REACH_COLUMN].to_numpy(np.int64) if REACH_COLUMN in df else np.zeros(len(df), np.int64)
    for scene in np.unique(scenes[theirs]):  # only windows of one scene can be neighbours
        mine, held = scenes[ours] == scene, theirs[scenes[theirs] == scene]
        apart = window_distance(boxes[ours[mine]], boxes[held]) - reach[ours[mine], None] - reach[None, held]
        near[mine] = (apart < gap).any(axis=1)
    return near


def block_split(df: pd.DataFrame, size: int, gap: int | None, test_size: float, seed: int) -> Split:
    """Whole ``size`` x ``size`` px blocks held out (:func:`block_labels`); training windows nearer than ``gap``
    px to a test window dropped (:func:`too_near`; ``gap`` default: :func:`default_gap`)."""
    blocks = block_labels(df, size)  # first: it names missing window columns
    gap = default_gap(df) if gap is None else gap
    if gap < 0:
        raise ValueError(f"gap must be at least 0 pixels, got {gap}")
    train, test = grouped(np.arange(len(df)), blocks, test_size, seed, f"split 'blocks:{size}'")
    near = too_near(df, train, test, gap)
    return Split(train[~near], test, int(near.sum()), blocks)
