"""Which layout is at a path, and the reader that reads it (:mod:`.inspect` measures what it yields).

Layouts are tried in this order:

* a file: a CellProfiler ``load_data`` manifest (``.csv``/``.parquet``/``.pq``), a georeferenced TIFF
  (GeoTIFF/COG: one multi-band scene), or a multichannel TIFF stack (OME-TIFF, ImageJ, plain ``CYX``/``YXC``);
* a folder: a Zarr store (plain arrays or OME-Zarr image/plate), BigEarthNet S2/S1 patch folders (or the
  ``BigEarthNet-S2-*`` + ``BigEarthNet-S1-*`` roots of BigEarthNet-MM, read as pairs), per-channel microscopy
  images named by a known pattern (:data:`CHANNEL_FILE_PATTERNS`), Sentinel-2 L2A ``.SAFE`` products (a product
  or a folder of them, :mod:`~domainmae.data.safe`), per-band rasters
  (:data:`~domainmae.data.scenes.BAND_FILE_PATTERN`), a folder of TIFF stacks or GeoTIFFs, or a folder
  holding one ``load_data`` manifest.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import rasterio
import tifffile
import zarr

from .bigearthnet import bigearthnet_pairs, bigearthnet_scenes
from .errors import DECODE_ERRORS
from .fields import FieldError
from .multisensor import MultiSensorScene
from .raster import RasterScene
from .safe import MTD_NAME, holds_safe_products, safe_scenes
from .scenes import BAND_FILE_PATTERN, find_scenes
from .tiff import TIFF_SUFFIXES, TiffStackField, load_data_fields, pattern_fields, stack_fields, stack_layout
from .zarr import zarr_fields

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
class Found:
    """A layout at a path: what it is, the dotted name of the reader that reads it, and what that reader
    found, by group (``fields``, or scenes by sensor or band set). The recipe glue builds one from a recipe's
    ``data`` section instead of detecting it."""

    layout: str
    reader: str
    items: dict[str, list[Any]]  # group name -> fields or scenes
    notes: list[str] = field(default_factory=list)


# -- detection ---------------------------------------------------------------------------------
def by_sensor(scenes: Sequence[Any], name: str) -> dict[str, list[Any]]:
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
    """Whether ``path`` holds GeoTIFF tags; the first read of a TIFF, so an unreadable one is named here."""
    try:
        with tifffile.TiffFile(path) as tif:
            return any(tag in tif.pages.first.tags for tag in GEOTIFF_TAGS)
    except IndexError as err:  # tifffile's word for a file whose first page cannot be read: IndexError(0)
        raise FieldError(f"cannot read {path}: no readable TIFF page (a truncated or corrupt file)") from err
    except DECODE_ERRORS as err:  # an empty file, a bad header ("not a TIFF file: header=b''")
        raise FieldError(f"cannot read {path}: {err}") from err


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
    _, count, names = stack_layout(paths[0], series, ome, None)
    return stack_fields(paths, channels=None if names else _unnamed(count))


def _tiff_files(paths: Sequence[Path]) -> Found:
    """One or more TIFFs of one kind: GeoTIFF scenes or microscopy stacks."""
    if _is_geotiff(paths[0]):
        kind = "GeoTIFF (multi-band scene)" if len(paths) == 1 else f"folder of {len(paths)} GeoTIFF scenes"
        return Found(kind, "domainmae.data.RasterScene.from_file", _by_bands([_geotiff_scene(p) for p in paths]))
    with tifffile.TiffFile(paths[0]) as tif:
        kind = "OME-TIFF stack" if tif.is_ome else "multichannel TIFF stack"
    kind = kind if len(paths) == 1 else f"folder of {len(paths)} {kind}s"
    return Found(kind, "domainmae.data.stack_fields", {"fields": _stacks(paths)})


def _zarr(path: Path) -> Found:
    node = zarr.open(store=str(path), mode="r")
    ome = {} if isinstance(node, zarr.Array) else node.attrs.get("ome", node.attrs)
    if "plate" in ome:
        return Found("OME-Zarr HCS plate", "domainmae.data.zarr_fields", {"fields": zarr_fields(path)})
    if "multiscales" in ome:
        return Found("OME-Zarr image", "domainmae.data.zarr_fields", {"fields": zarr_fields(path)})
    array = node if isinstance(node, zarr.Array) else next((a for _, a in sorted(node.arrays())), None)
    if array is None or array.ndim not in (3, 4):
        shape = None if array is None else array.shape
        raise ValueError(f"Zarr store {path}: expected an [N, C, H, W] or [C, H, W] array or OME metadata, "
                         f"found {'no array' if shape is None else f'an array of shape {shape}'}")  # fmt: skip
    kind = "Zarr array [N, C, H, W]" if array.ndim == 4 else "Zarr array [C, H, W]"
    kind = kind if isinstance(node, zarr.Array) else f"Zarr group of {kind[11:]} arrays"
    return Found(kind, "domainmae.data.zarr_fields", {"fields": zarr_fields(path, channels=_unnamed(array.shape[-3]))})


def _bigearthnet_root(folder: Path) -> bool:
    return any((d / f"{d.name}_labels_metadata.json").is_file() for d in folder.iterdir() if d.is_dir())


def _bigearthnet(path: Path, subdirs: Sequence[Path]) -> Found | None:
    roots = {sensor: next((d for d in subdirs if d.name.startswith(f"BigEarthNet-{sensor.upper()}")), None)
             for sensor in ("s2", "s1")}  # fmt: skip
    if roots["s2"] and roots["s1"]:
        pairs = bigearthnet_pairs(roots["s2"], roots["s1"])
        return Found("BigEarthNet-MM: S2 + S1 patch folders, paired", "domainmae.data.bigearthnet_pairs",
                      by_sensor(pairs, "s2"))  # fmt: skip
    root = roots["s2"] or roots["s1"] or path
    if not _bigearthnet_root(root):
        return None
    bands = {m["band"] for p in root.rglob("*.tif") if (m := re.search(BAND_FILE_PATTERN, p.name))}
    sensor = "s1" if bands <= {"VV", "VH"} else "s2"
    return Found(f"BigEarthNet {sensor.upper()} patch folders", "domainmae.data.bigearthnet_scenes",
                  {sensor: bigearthnet_scenes(root, sensor)})  # fmt: skip


def detect(path: Path) -> Found:
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in MANIFEST_SUFFIXES:
            layout = f"CellProfiler load_data manifest ({suffix[1:].upper()})"
            return Found(layout, "domainmae.data.load_data_fields", {"fields": load_data_fields(path)})
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
        return Found(layout, "domainmae.data.pattern_fields", {"fields": fields}, notes)
    if holds_safe_products(path):
        return Found("Sentinel-2 L2A .SAFE products", "domainmae.data.safe_scenes", _by_bands(safe_scenes(path)))
    if any(re.search(BAND_FILE_PATTERN, p.name) for p in path.rglob("*") if p.suffix.lower() in TIFF_SUFFIXES):
        return Found("folder of per-band rasters", "domainmae.data.find_scenes", _by_bands(find_scenes(path)))
    tiffs = [p for p in files if p.suffix.lower() in TIFF_SUFFIXES]
    if tiffs:
        return _tiff_files(tiffs)
    if len(manifests) == 1:
        return Found(f"folder with load_data manifest {manifests[0].name}", "domainmae.data.load_data_fields",
                      {"fields": load_data_fields(manifests[0])})  # fmt: skip
    suffixes = sorted({p.suffix.lower() or p.name for p in entries})
    raise ValueError(
        f"{path}: no known layout found. Looked for a Zarr store (zarr.json/.zgroup/.zarray), BigEarthNet patch "
        f"folders (<patch>/<patch>_labels_metadata.json), per-channel images named like "
        f"{'; '.join(CHANNEL_FILE_PATTERNS)}, Sentinel-2 .SAFE products (*.SAFE or {MTD_NAME}), per-band rasters "
        f"matching {BAND_FILE_PATTERN!r}, TIFF stacks or "
        f"GeoTIFFs, and one load_data manifest ({', '.join(MANIFEST_SUFFIXES)}). The folder holds: "
        f"{', '.join(suffixes) or 'nothing'}. Name the layout with --recipe (data.format) instead."
    )
