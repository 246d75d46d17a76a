"""What ``domainmae inspect PATH`` reports: the layout found at a path and what its reader yields.

Without a recipe the layout is detected, in this order:

* a file: a CellProfiler ``load_data`` manifest (``.csv``/``.parquet``/``.pq``), a georeferenced TIFF
  (GeoTIFF/COG: one multi-band scene), or a multichannel TIFF stack (OME-TIFF, ImageJ, plain ``CYX``/``YXC``);
* a folder: a Zarr store (plain arrays or OME-Zarr image/plate), BigEarthNet S2/S1 patch folders (or the
  ``BigEarthNet-S2-*`` + ``BigEarthNet-S1-*`` roots of BigEarthNet-MM, read as pairs), per-channel microscopy
  images named by a known pattern (:data:`CHANNEL_FILE_PATTERNS`), per-band rasters
  (:data:`~domainmae.data.raster.BAND_FILE_PATTERN`), a folder of TIFF stacks or GeoTIFFs, or a folder
  holding one ``load_data`` manifest.

With a recipe's ``data`` section the path is read exactly as training reads it (same format, channels,
bands and radiometry). Shapes, CRS and value ranges come from a bounded, evenly spaced sample of fields or
scenes (``samples``), each read through a window of at most ``max_side`` px, so inspecting a large dataset
costs a few reads. Values are what the reader yields (float32 after illumination correction or radiometry),
over valid pixels only; dtypes, native shapes, pixel sizes and nodata are those of the files.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import tifffile
import zarr

from .bigearthnet import bigearthnet_pairs, bigearthnet_scenes
from .build import microscopy_fields, sentinel_scenes
from .fields import Field
from .multisensor import MultiSensorScene
from .raster import BAND_FILE_PATTERN, RasterScene, find_scenes
from .samplers import Window
from .tiff import (
    TIFF_SUFFIXES,
    ChannelFilesField,
    TiffStackField,
    _stack_layout,
    load_data_fields,
    pattern_fields,
    stack_fields,
)
from .zarr import ZarrField, zarr_fields

MANIFEST_SUFFIXES = (".csv", ".parquet", ".pq")
GEOTIFF_TAGS = (33550, 33922, 34264, 34735)  # ModelPixelScale, ModelTiepoint, ModelTransformation, GeoKeyDirectory

#: Per-channel file names of common imagers and of the CellProfiler examples, most specific first.
CHANNEL_FILE_PATTERNS = {
    "Opera Phenix / Operetta (Harmony)": (
        r"r(?P<Metadata_Row>\d+)c(?P<Metadata_Col>\d+)f(?P<Metadata_Site>\d+)p(?P<Metadata_Plane>\d+)"
        r"-ch(?P<channel>\d+)sk\d+fk\d+fl\d+(?i:\.tiff?)"
    ),
    "MetaXpress / RxRx": (
        r"(?:(?P<Metadata_Plate>.+)_)?(?P<Metadata_Well>[A-Pa-p]\d{2})_s(?P<Metadata_Site>\d+)"
        r"_w(?P<channel>\d)(?:[0-9A-Fa-f-]{36})?(?i:\.(?:tiff?|png))"
    ),
    "Cellomics (CellProfiler ExampleHuman)": (
        r"(?P<Metadata_Plate>.+)_(?P<Metadata_Well>[A-Pa-p]\d{2})f(?P<Metadata_Site>\d{2})d(?P<channel>\d)(?i:\.tiff?)"
    ),
    "one-letter channel suffix (CellProfiler ExampleFly)": r"(?P<Metadata_Site>.+)_(?P<channel>[A-Za-z])(?i:\.tiff?)",
}


@dataclass
class ChannelReport:
    """One channel or band: ``dtype``, native ``shape`` (H, W) and ``pixel_size`` (x, y) as stored;
    ``min``/``max`` over the valid pixels of the sampled windows, as the reader yields them."""

    name: str
    dtype: str
    shape: tuple[int, int]
    pixel_size: tuple[float, float] | None = None
    nodata: float | None = None
    min: float = float("nan")
    max: float = float("nan")


@dataclass
class GroupReport:
    """Channels read together: the microscopy fields, or the scenes of one sensor.

    ``shapes`` and ``crs`` are the distinct sample shapes ``(H, W)`` and CRS among the ``sampled`` items;
    ``unit`` is the unit of the pixel sizes; ``blocks`` the distinct internal tile shapes of rasters.
    """

    name: str
    count: int
    sampled: int
    channels: list[ChannelReport]
    shapes: list[tuple[int, int]]
    crs: list[str] = field(default_factory=list)
    unit: str | None = None
    blocks: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class Report:
    """What :func:`inspect_path` found: the ``layout``, the ``reader`` function and one group per sensor."""

    path: Path
    layout: str
    reader: str
    groups: list[GroupReport]
    notes: list[str] = field(default_factory=list)


@dataclass
class _Found:
    layout: str
    reader: str
    items: dict[str, list[Any]]  # group name -> fields or scenes
    notes: list[str] = field(default_factory=list)


def inspect_path(path: str | Path, data: Any = None, samples: int = 8, max_side: int = 1024) -> Report:
    """Detect the layout at ``path`` (or read it with a recipe's ``data`` section) and measure a sample.

    ``samples`` fields/scenes (evenly spaced) are opened and read through a centred window of at most
    ``max_side x max_side`` px. Raises ``FileNotFoundError`` for a missing path and ``ValueError`` naming
    what was looked for when no layout is recognised.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if samples < 1 or max_side < 1:
        raise ValueError(f"samples and max_side must be positive, got {samples} and {max_side}")
    found = _with_recipe(path, data) if data is not None else _detect(path)
    groups = [_measure(name, items, samples, max_side) for name, items in found.items.items()]
    return Report(path, found.layout, found.reader, groups, found.notes)


# -- detection ---------------------------------------------------------------------------------
def _with_recipe(path: Path, data: Any) -> _Found:
    section = data.model_copy(update={"path": str(path)})
    layout = f"recipe data section: kind {section.kind}, format {section.format}"
    if section.kind == "microscopy":
        return _Found(layout, "domainmae.data.build.microscopy_fields", {"fields": microscopy_fields(section)})
    scenes = sentinel_scenes(section)
    return _Found(layout, "domainmae.data.build.sentinel_scenes", _by_sensor(scenes, next(iter(section.sensors))))


def _by_sensor(scenes: Sequence[Any], name: str) -> dict[str, list[Any]]:
    """``{sensor: scenes}``; multi-sensor scenes are split into their sensors."""
    if scenes and isinstance(scenes[0], MultiSensorScene):
        return {sensor: [pair.scenes[sensor] for pair in scenes] for sensor in scenes[0].scenes}
    return {name: list(scenes)}


def _by_bands(scenes: Sequence[RasterScene]) -> dict[str, list[RasterScene]]:
    """Scenes grouped by band set: a folder may hold scenes of several sensors (S2 next to S1)."""
    groups: dict[tuple[str, ...], list[RasterScene]] = {}
    for scene in scenes:
        groups.setdefault(scene.channels, []).append(scene)
    if len(groups) == 1:
        return {"scenes": scenes}
    return {f"scenes with {len(bands)} bands {bands[0]}..{bands[-1]}": group for bands, group in groups.items()}


def _unnamed(count: int) -> list[str]:
    # Sources without channel names (plain arrays and stacks) get positional names, as a recipe would give.
    return [f"c{i}" for i in range(count)]


def _is_geotiff(path: Path) -> bool:
    with tifffile.TiffFile(path) as tif:
        return any(tag in tif.pages.first.tags for tag in GEOTIFF_TAGS)


def _geotiff_scene(path: Path) -> RasterScene:
    with rasterio.open(path) as dataset:
        names = list(dataset.descriptions) if all(dataset.descriptions) else [f"band{i}" for i in dataset.indexes]
    return RasterScene.from_file(path, bands=names)


def _stacks(paths: Sequence[Path]) -> list[TiffStackField]:
    """TIFF stack fields; stacks without OME channel names get positional names."""
    with tifffile.TiffFile(paths[0]) as tif:
        series, ome = tif.series[0], tif.ome_metadata if tif.is_ome else None
    if series.ndim == 2:
        raise ValueError(
            f"{paths[0]} is a single-plane TIFF ({series.shape[0]}x{series.shape[1]} {series.dtype}); "
            "inspect its folder to group per-channel files into fields"
        )
    _, count, names = _stack_layout(paths[0], series, ome, None)
    return stack_fields(paths, channels=None if names else _unnamed(count))


def _tiff_files(paths: Sequence[Path]) -> _Found:
    """One or more TIFFs of one kind: GeoTIFF scenes or microscopy stacks."""
    if _is_geotiff(paths[0]):
        kind = "GeoTIFF (multi-band scene)" if len(paths) == 1 else f"folder of {len(paths)} GeoTIFF scenes"
        return _Found(kind, "domainmae.data.RasterScene.from_file", _by_bands([_geotiff_scene(p) for p in paths]))
    with tifffile.TiffFile(paths[0]) as tif:
        kind = "OME-TIFF stack" if tif.is_ome else "multichannel TIFF stack"
    kind = kind if len(paths) == 1 else f"folder of {len(paths)} {kind}s"
    return _Found(kind, "domainmae.data.stack_fields", {"fields": _stacks(paths)})


def _zarr(path: Path) -> _Found:
    node = zarr.open(store=str(path), mode="r")
    ome = {} if isinstance(node, zarr.Array) else node.attrs.get("ome", node.attrs)
    if "plate" in ome:
        return _Found("OME-Zarr HCS plate", "domainmae.data.zarr_fields", {"fields": zarr_fields(path)})
    if "multiscales" in ome:
        return _Found("OME-Zarr image", "domainmae.data.zarr_fields", {"fields": zarr_fields(path)})
    array = node if isinstance(node, zarr.Array) else next((a for _, a in sorted(node.arrays())), None)
    if array is None or array.ndim not in (3, 4):
        shape = None if array is None else array.shape
        raise ValueError(f"Zarr store {path}: expected an [N, C, H, W] or [C, H, W] array or OME metadata, "
                         f"found {'no array' if shape is None else f'an array of shape {shape}'}")  # fmt: skip
    kind = "Zarr array [N, C, H, W]" if array.ndim == 4 else "Zarr array [C, H, W]"
    kind = kind if isinstance(node, zarr.Array) else f"Zarr group of {kind[11:]} arrays"
    return _Found(kind, "domainmae.data.zarr_fields", {"fields": zarr_fields(path, channels=_unnamed(array.shape[-3]))})


def _bigearthnet_root(folder: Path) -> bool:
    return any((d / f"{d.name}_labels_metadata.json").is_file() for d in folder.iterdir() if d.is_dir())


def _bigearthnet(path: Path, subdirs: Sequence[Path]) -> _Found | None:
    roots = {sensor: next((d for d in subdirs if d.name.startswith(f"BigEarthNet-{sensor.upper()}")), None)
             for sensor in ("s2", "s1")}  # fmt: skip
    if roots["s2"] and roots["s1"]:
        pairs = bigearthnet_pairs(roots["s2"], roots["s1"])
        return _Found("BigEarthNet-MM: S2 + S1 patch folders, paired", "domainmae.data.bigearthnet_pairs",
                      _by_sensor(pairs, "s2"))  # fmt: skip
    root = roots["s2"] or roots["s1"] or path
    if not _bigearthnet_root(root):
        return None
    bands = {m["band"] for p in root.rglob("*.tif") if (m := re.search(BAND_FILE_PATTERN, p.name))}
    sensor = "s1" if bands <= {"VV", "VH"} else "s2"
    return _Found(f"BigEarthNet {sensor.upper()} patch folders", "domainmae.data.bigearthnet_scenes",
                  {sensor: bigearthnet_scenes(root, sensor)})  # fmt: skip


def _detect(path: Path) -> _Found:
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in MANIFEST_SUFFIXES:
            layout = f"CellProfiler load_data manifest ({suffix[1:].upper()})"
            return _Found(layout, "domainmae.data.load_data_fields", {"fields": load_data_fields(path)})
        if suffix in TIFF_SUFFIXES:
            return _tiff_files([path])
        raise ValueError(f"{path}: not a recognised file; looked for a load_data manifest "
                         f"({', '.join(MANIFEST_SUFFIXES)}) or a TIFF ({', '.join(sorted(TIFF_SUFFIXES))})")  # fmt: skip
    entries = sorted(path.iterdir())
    if any((path / marker).is_file() for marker in ("zarr.json", ".zgroup", ".zarray")):
        return _zarr(path)
    found = _bigearthnet(path, [d for d in entries if d.is_dir()])
    if found is not None:
        return found
    files = [p for p in entries if p.is_file()]
    manifests = [p for p in files if p.suffix.lower() in MANIFEST_SUFFIXES]
    notes = [f"{p.name} in this folder is a manifest: inspect it directly to read fields as it lists them"
             for p in manifests]  # fmt: skip
    matches = {name: sum(re.fullmatch(pattern, p.name) is not None for p in files)
               for name, pattern in CHANNEL_FILE_PATTERNS.items()}  # fmt: skip
    best = max(matches, key=matches.__getitem__)  # first pattern on ties: the list is most specific first
    if matches[best]:
        fields = pattern_fields(path, CHANNEL_FILE_PATTERNS[best])
        layout = f"folder of per-channel images: {best}, pattern {CHANNEL_FILE_PATTERNS[best]}"
        return _Found(layout, "domainmae.data.pattern_fields", {"fields": fields}, notes)
    if any(re.search(BAND_FILE_PATTERN, p.name) for p in path.rglob("*") if p.suffix.lower() in TIFF_SUFFIXES):
        return _Found("folder of per-band rasters", "domainmae.data.find_scenes", _by_bands(find_scenes(path)))
    tiffs = [p for p in files if p.suffix.lower() in TIFF_SUFFIXES]
    if tiffs:
        return _tiff_files(tiffs)
    if len(manifests) == 1:
        return _Found(f"folder with load_data manifest {manifests[0].name}", "domainmae.data.load_data_fields",
                      {"fields": load_data_fields(manifests[0])})  # fmt: skip
    suffixes = sorted({p.suffix.lower() or p.name for p in entries})
    raise ValueError(
        f"{path}: no known layout found. Looked for a Zarr store (zarr.json/.zgroup/.zarray), BigEarthNet patch "
        f"folders (<patch>/<patch>_labels_metadata.json), per-channel images named like "
        f"{'; '.join(CHANNEL_FILE_PATTERNS)}, per-band rasters matching {BAND_FILE_PATTERN!r}, TIFF stacks or "
        f"GeoTIFFs, and one load_data manifest ({', '.join(MANIFEST_SUFFIXES)}). The folder holds: "
        f"{', '.join(suffixes) or 'nothing'}. Name the layout with --recipe (data.format) instead."
    )


# -- measuring ---------------------------------------------------------------------------------
def _spread(count: int, samples: int) -> list[int]:
    """Up to ``samples`` evenly spaced indices into ``count`` items, first and last included."""
    return sorted(set(np.linspace(0, count - 1, min(count, samples)).round().astype(int).tolist()))


def _centred(height: int, width: int, max_side: int) -> Window:
    rows, cols = min(height, max_side), min(width, max_side)
    return Window((height - rows) // 2, (width - cols) // 2, rows, cols)


def _ome_tiff_pixel_size(tif: tifffile.TiffFile) -> tuple[tuple[float, float] | None, str | None]:
    pixels = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]
    pixels = (pixels[0] if isinstance(pixels, list) else pixels)["Pixels"]
    if "PhysicalSizeX" not in pixels or "PhysicalSizeY" not in pixels:
        return None, None
    unit = pixels.get("PhysicalSizeXUnit", "µm")  # the OME schema's default unit
    return (float(pixels["PhysicalSizeX"]), float(pixels["PhysicalSizeY"])), unit


def _image_header(path: Path) -> tuple[str, tuple[float, float] | None, str | None]:
    """``(dtype, pixel size (x, y) or None, unit)`` of an image file; pixel sizes only from OME metadata."""
    if path.suffix.lower() not in TIFF_SUFFIXES:
        from PIL import Image

        with Image.open(path) as image:  # PIL modes of single-channel images
            dtype = {"1": "bool", "L": "uint8", "I;16": "uint16", "I": "int32", "F": "float32"}.get(image.mode, image.mode)
        return dtype, None, None
    with tifffile.TiffFile(path) as tif:
        dtype = str(tif.series[0].dtype)
        return (dtype, *_ome_tiff_pixel_size(tif)) if tif.is_ome else (dtype, None, None)


def _ome_zarr_pixel_size(item: ZarrField) -> tuple[tuple[float, float] | None, str | None]:
    """Pixel size of an OME-Zarr image's level 0 from its ``scale`` transform; plain arrays have none."""
    parent = item.path.rsplit("/", 1)[0] if "/" in item.path else ""  # the image group holding level 0
    group = zarr.open(store=item.store, path=parent, mode="r")
    multiscales = group.attrs.get("ome", group.attrs).get("multiscales") if isinstance(group, zarr.Group) else None
    if not multiscales:  # a plain array, or a group of them
        return None, None
    multiscale = multiscales[0]
    scale = next((t["scale"] for t in multiscale["datasets"][0].get("coordinateTransformations", [])
                  if t.get("type") == "scale"), None)  # fmt: skip
    if scale is None:
        return None, None
    axes = multiscale.get("axes", [])
    unit = axes[item.axes.index("x")].get("unit") if axes and isinstance(axes[0], dict) else None
    return (float(scale[item.axes.index("x")]), float(scale[item.axes.index("y")])), unit


def _field_channels(item: Field) -> tuple[list[ChannelReport], str | None]:
    """Per-channel dtype, shape and pixel size of a microscopy field, from headers and metadata."""
    shape = item.shape
    if isinstance(item, ChannelFilesField):
        headers = [_image_header(path) for path in item.files]
    elif isinstance(item, TiffStackField):
        headers = [_image_header(item.path)] * len(item.channels)
    elif isinstance(item, ZarrField):
        array = zarr.open_array(store=item.store, path=item.path, mode="r")
        headers = [(str(array.dtype), *_ome_zarr_pixel_size(item))] * len(item.channels)
    else:
        raise TypeError(f"field {item.key}: cannot describe a {type(item).__name__}")
    channels = [ChannelReport(name, dtype, shape, size) for name, (dtype, size, _) in zip(item.channels, headers)]
    return channels, next((unit for _, _, unit in headers if unit), None)


def _scene_channels(scene: RasterScene) -> tuple[list[ChannelReport], str | None]:
    """Per-band dtype, native shape, pixel size and nodata of a raster scene, from the files."""
    channels, unit = [], None
    for band in scene.bands:
        if band.name not in scene.channels:  # mask bands such as SCL only feed the valid mask
            continue
        with rasterio.open(band.path) as dataset:
            nodata = scene.nodata if scene.nodata is not None else dataset.nodatavals[band.index - 1]
            channels.append(ChannelReport(band.name, dataset.dtypes[band.index - 1], (dataset.height, dataset.width),
                                          dataset.res, nodata))  # fmt: skip
            unit = unit or (dataset.crs.linear_units if dataset.crs else None)
    return channels, unit


def _measure(name: str, items: Sequence[Any], samples: int, max_side: int) -> GroupReport:
    """Headers of the first item, then shapes, CRS and value ranges of ``samples`` items."""
    if not items:
        raise ValueError(f"{name}: the reader found no fields or scenes")
    picked = [items[i] for i in _spread(len(items), samples)]
    is_field = isinstance(picked[0], Field)
    channels, unit = _field_channels(picked[0]) if is_field else _scene_channels(picked[0])
    low, high = np.full(len(channels), np.nan), np.full(len(channels), np.nan)
    shapes, crs, blocks = [], [], []
    for item in picked:
        if is_field:
            shape = item.shape
            pixels = item.read(_centred(*shape, max_side))
            values = pixels.reshape(len(pixels), -1)
        else:
            grid = item.grid
            shape = (grid.height, grid.width)
            region = item.read(_centred(*shape, max_side))
            values = region.image[:, region.valid]
            crs.append("none" if grid.crs is None else grid.crs.to_string())
            blocks.append(item.block_shape)
        shapes.append(shape)
        if values.size:  # fmin/fmax skip NaN (float files) without warnings
            low, high = np.fmin(low, np.fmin.reduce(values, axis=1)), np.fmax(high, np.fmax.reduce(values, axis=1))
    for channel, lo, hi in zip(channels, low, high):
        channel.min, channel.max = float(lo), float(hi)
    distinct = [list(dict.fromkeys(values)) for values in (shapes, crs, blocks)]  # in order of appearance
    return GroupReport(name, len(items), len(picked), channels, *distinct[:2], unit, distinct[2])


# -- rendering ---------------------------------------------------------------------------------
def _size(value: tuple[float, float] | None, unit: str | None) -> str:
    if value is None:
        return "-"
    text = f"{value[0]:g}" if value[0] == value[1] else f"{value[0]:g}x{value[1]:g}"
    return f"{text} {unit}" if unit else text


def render_report(report: Report) -> str:
    """The report as aligned text, one block per group with a row per channel."""
    lines = [f"path:    {report.path}", f"layout:  {report.layout}", f"reader:  {report.reader}"]
    for group in report.groups:
        noun = "fields" if group.name == "fields" else "scenes"
        what = f"{noun}: {group.count}" if group.name == noun else f"{group.name}: {group.count} {noun}"
        lines.append(f"{what}, {len(group.channels)} channels; shapes and values (as read, valid pixels only) "
                     f"from {group.sampled}")  # fmt: skip
        lines.append("  shape:   " + ", ".join(f"{h}x{w}" for h, w in group.shapes))
        if group.crs:
            lines.append("  crs:     " + ", ".join(group.crs))
        if group.blocks:
            lines.append("  tiles:   " + ", ".join(f"{h}x{w}" for h, w in group.blocks))
        rows = [("channel", "dtype", "shape", "pixel size", "nodata", "min", "max")] + [
            (c.name, c.dtype, f"{c.shape[0]}x{c.shape[1]}", _size(c.pixel_size, group.unit),
             "-" if c.nodata is None else f"{c.nodata:g}", f"{c.min:.6g}", f"{c.max:.6g}")
            for c in group.channels
        ]  # fmt: skip
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines += ["  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines += [f"note:    {note}" for note in report.notes]
    return "\n".join(lines)
