"""GeoParquet (spec 1.1) of window footprints: one row per window (or scene) with its embedding.

A row holds ``geometry`` = the footprint polygon as WKB in the scenes' CRS (or a given one), plus
``scene_id``, ``sensors``, ``datetime``, ``window_row``/``window_col``/``window_height``/``window_width``
(pixel offsets and size), scene metadata such as BigEarthNet ``labels``, and ``embedding`` as a
fixed-size list of float32. Written with the streaming Parquet writer of :mod:`.tables`; the ``geo``
metadata that geopandas/GDAL/QGIS read is built here because geopandas only writes whole frames.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pyarrow as pa
import shapely
from pyproj import CRS
from pyproj.exceptions import CRSError

from ...data.samplers import span
from ...data.windows import GRID_WINDOWS
from .tables import metadata_table, write_parquet

#: Sample metadata that becomes dedicated columns (or is not a per-window property) rather than copied as is.
#: Footprint edges are projected at most this long as straight lines (see :func:`footprints`).
SEGMENT_METRES = 1_000.0
_OWN_KEYS = {"crs", "transform", "bounds", "window", "files", "scene_id", "scene_ids", "datetime", "field", GRID_WINDOWS}


def scene_name(meta: dict[str, Any]) -> str:
    """The scene a window comes from (``s2_id+s1_id`` for co-registered sensors)."""
    return "+".join(meta["scene_ids"].values()) if "scene_ids" in meta else meta["scene_id"]


def _extra(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return all(isinstance(v, str) for v in value)
    return isinstance(value, (str, int, float, bool))


def chip_rows(groups: Sequence[Sequence[dict[str, Any]]], sensors: list[str]) -> list[dict[str, Any]]:
    """One attribute row per group of window metas (a window, or all windows of a scene)."""
    rows = []
    for metas in groups:
        first = metas[0]
        whole = span([m["window"] for m in metas])
        rows.append({
            "scene_id": scene_name(first), "sensors": sensors, "datetime": first.get("datetime"),
            "window_row": whole.row, "window_col": whole.col, "window_height": whole.height, "window_width": whole.width,
            **{k: v for k, v in first.items() if k not in _OWN_KEYS and _extra(v)},
        })  # fmt: skip
    return rows


def parse_crs(crs: str) -> CRS:
    """The CRS ``crs`` names (``EPSG:4326``, WKT, PROJ); an error naming it and the option when pyproj cannot
    read it, checked before any window is embedded rather than when the footprints are written."""
    try:
        return CRS.from_user_input(crs)
    except CRSError as err:
        raise ValueError(f"--crs {crs!r} (crs=) is not a CRS pyproj knows: {err}") from err


def footprint_crs(scene_crs: Mapping[str, Any], crs: str | None, output: Path) -> CRS:
    """The one CRS of the geometry column: ``crs`` if given, else that of every scene (``{name: CRS}``).

    Raises for a scene without a CRS, and for scenes in several CRSs without ``crs`` (naming them).
    """
    if any(c is None for c in scene_crs.values()):
        raise ValueError(f"scenes without a CRS cannot get footprints: {[n for n, c in scene_crs.items() if c is None]}")
    by_crs: dict[str, list[str]] = {}
    for name, found in scene_crs.items():
        by_crs.setdefault(found.to_string(), []).append(name)
    if crs is None and len(by_crs) > 1:
        listed = "; ".join(f"{c}: {len(names)} scene(s), e.g. {names[0]}" for c, names in sorted(by_crs.items()))
        raise ValueError(f"{output}: the scenes are in {len(by_crs)} CRSs ({listed}), and a GeoParquet geometry "
                         "column has one CRS: pass --crs (crs= in Python), e.g. --crs EPSG:4326, to reproject the "
                         "footprints")  # fmt: skip
    return parse_crs(crs) if crs is not None else CRS.from_user_input(next(iter(scene_crs.values())).to_wkt())


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
        boxes_here = boxes[rows]
        if CRS.from_user_input(source) != crs:  # edges straight in one CRS curve in another: follow them
            boxes_here = shapely.segmentize(boxes_here, _segment_length(CRS.from_user_input(source)))
        out[rows] = gpd.GeoSeries(boxes_here, crs=source).to_crs(crs).to_numpy()
    return gpd.GeoSeries(out, crs=crs)


def _segment_length(crs: CRS) -> float:
    """The longest footprint edge projected as a straight line, in ``crs``'s units: :data:`SEGMENT_METRES`
    (a degree of latitude is ~111 km). Within it, a straight line departs from the curved edge by ~4 cm."""
    if crs.is_geographic:
        return SEGMENT_METRES / 111_000
    return SEGMENT_METRES / crs.axis_info[0].unit_conversion_factor  # metres per unit: 1, or 0.3048 for feet


def geo_metadata(crs: CRS) -> dict[str, Any]:
    """GeoParquet 1.1 file metadata for one WKB polygon column in ``crs``."""
    columns = {"geometry": {"encoding": "WKB", "geometry_types": ["Polygon"], "crs": crs.to_json_dict()}}
    return {"version": "1.1.0", "primary_column": "geometry", "columns": columns}


def chip_table(metas: Sequence[Sequence[dict[str, Any]]], emb: np.ndarray, types: Mapping[str, pa.DataType],
               sensors: list[str], crs: CRS) -> pa.Table:  # fmt: skip
    """One row per group of window metas: attributes (``types`` first), ``embedding`` ``[G, D]`` and footprint."""
    table = metadata_table(chip_rows(metas, sensors), types)
    values = pa.array(emb.astype(np.float32).ravel(), type=pa.float32())
    table = table.append_column("embedding", pa.FixedSizeListArray.from_arrays(values, emb.shape[1]))
    return table.append_column("geometry", pa.array(footprints(metas, crs).to_wkb(), type=pa.binary()))


def write_geoparquet(
    path: Path, groups: Iterable[tuple[list[list[dict[str, Any]]], np.ndarray]], provenance: dict[str, Any], *,
    types: Mapping[str, pa.DataType], sensors: list[str], crs: CRS,
) -> Path:  # fmt: skip
    """Stream grouped batches ``(the window metas of each group, embeddings [G, D])`` into GeoParquet at ``path``.

    ``types``: the attribute columns' Arrow types, known up front (:func:`~.tables.column_types` over every
    scene), so every batch has one schema; ``sensors``: the ``sensors`` cell of every row; ``crs``: the
    geometry column's CRS (:func:`footprint_crs`). Returns ``path``.
    """
    geo = {"geo": json.dumps(geo_metadata(crs))}
    tables = (chip_table(metas, emb, types, sensors, crs).replace_schema_metadata(geo) for metas, emb in groups)
    return write_parquet(path, tables, provenance)
