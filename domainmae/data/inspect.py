"""What ``domainmae inspect PATH`` reports: the layout found at a path and what its reader yields.

This module measures what a reader found (:class:`~domainmae.data.detect.Found`): the layout detected by
:func:`~domainmae.data.detect.detect`, or the fields/scenes a recipe's ``data`` section reads (the recipe glue
builds that one, reading the path exactly as training does). Shapes, CRS and value ranges
come from a bounded, evenly spaced sample of fields or scenes (``samples``), each read through a window of
at most ``max_side`` px, so inspecting a large dataset costs a few reads. Values are what the reader yields
(float32 after illumination correction or radiometry), over valid pixels only, with the share of invalid
ones (NaN/inf, nodata; what training leaves out); dtypes, native shapes, pixel sizes and nodata are those
of the files.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import rasterio
import tifffile
import torch
import zarr

from ..validity import valid_pixels
from .detect import Found
from .fields import Field
from .raster import RasterScene
from .remote import Location, gdal_env, gdal_path, pure_path, whole_file
from .samplers import Window
from .tiff import TIFF_SUFFIXES, ChannelFilesField, TiffStackField
from .tiffimage import tiff_file
from .zarr import ZarrField


@dataclass
class ChannelReport:
    """One channel or band: ``dtype``, native ``shape`` (H, W) and ``pixel_size`` (x, y) as stored;
    ``min``/``max`` over the valid pixels of the sampled windows, as the reader yields them, and the share
    of ``invalid`` pixels there (NaN/inf, or nodata/masked as the reader marks it)."""

    name: str
    dtype: str
    shape: tuple[int, int]
    pixel_size: tuple[float, float] | None = None
    nodata: float | None = None
    min: float = float("nan")
    max: float = float("nan")
    invalid: float = 0.0


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
    """What :func:`inspect_found` measured: the ``layout``, the ``reader`` function and one group per sensor."""

    path: Location
    layout: str
    reader: str
    groups: list[GroupReport]
    notes: list[str] = field(default_factory=list)


def inspect_found(path: Location, found: Found, samples: int = 8, max_side: int = 1024) -> Report:
    """Measure what a reader ``found`` at ``path``: per group, ``samples`` (>= 1) fields/scenes (evenly
    spaced) are opened and read through a centred window of at most ``max_side x max_side`` px."""
    groups = [_measure(name, items, samples, max_side) for name, items in found.items.items()]
    return Report(path, found.layout, found.reader, groups, found.notes)




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


def _image_header(path: Location) -> tuple[str, tuple[float, float] | None, str | None]:
    """``(dtype, pixel size (x, y) or None, unit)`` of an image file; pixel sizes only from OME metadata."""
    if pure_path(path).suffix.lower() not in TIFF_SUFFIXES:
        from PIL import Image

        with Image.open(whole_file(path)) as image:  # PIL modes of single-channel images
            dtype = {"1": "bool", "L": "uint8", "I;16": "uint16", "I": "int32", "F": "float32"}.get(image.mode, image.mode)
        return dtype, None, None
    with tiff_file(path) as tif:
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
        with gdal_env(band.path), rasterio.open(gdal_path(band.path)) as dataset:
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
    invalid, total = np.zeros(len(channels)), 0
    shapes, crs, blocks = [], [], []
    for item in picked:
        shape = item.shape
        region = item.read(_centred(*shape, max_side))
        image, valid = region.image, region.valid
        if not is_field:
            crs.append("none" if item.grid.crs is None else item.grid.crs.to_string())
            blocks.append(item.block_shape)
        shapes.append(shape)
        # The pixels training keeps (valid_pixels, as the normalisers use it); the rest become NaN, which
        # fmin/fmax skip without warnings.
        mask = valid_pixels(torch.from_numpy(image), valid).numpy().reshape(len(image), -1)
        values = np.where(mask, image.reshape(len(image), -1), np.nan)
        invalid, total = invalid + (~mask).sum(axis=1), total + mask.shape[1]
        if values.size:
            low, high = np.fmin(low, np.fmin.reduce(values, axis=1)), np.fmax(high, np.fmax.reduce(values, axis=1))
    for channel, lo, hi, bad in zip(channels, low, high, invalid):
        channel.min, channel.max, channel.invalid = float(lo), float(hi), float(bad / max(total, 1))
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
        rows = [("channel", "dtype", "shape", "pixel size", "nodata", "min", "max", "invalid")] + [
            (c.name, c.dtype, f"{c.shape[0]}x{c.shape[1]}", _size(c.pixel_size, group.unit),
             "-" if c.nodata is None else f"{c.nodata:g}", f"{c.min:.6g}", f"{c.max:.6g}",
             f"{100 * c.invalid:.3g}%" if c.invalid else "-")
            for c in group.channels
        ]  # fmt: skip
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines += ["  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
        if any(c.invalid for c in group.channels):
            lines.append("  invalid: share of NaN/inf or nodata pixels; training leaves them out of statistics and loss")
    lines += [f"note:    {note}" for note in report.notes]
    return "\n".join(lines)
