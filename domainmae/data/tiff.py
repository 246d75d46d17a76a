"""TIFF microscopy readers: CellProfiler ``load_data`` manifests, per-channel files by pattern, TIFF stacks.

Each reader returns a list of :class:`~domainmae.data.fields.Field`; pixels are read later, by window.
TIFF windows are memory-mapped when the data is uncompressed, else decoded through tifffile's Zarr view
(only the strips or tiles a window touches); each TIFF and illumination ``.npy`` is opened once per process
and kept in the LRU of open files (:mod:`.handles`, :mod:`.tiffimage`), so fields themselves hold no handles
and pickle cheaply. PNG/JPEG channel files (e.g. RxRx) are decoded whole. Manifests, their files and stacks may be
URLs (:mod:`.remote`): TIFFs are then read by byte ranges through fsspec, other files fetched whole.
"""
from __future__ import annotations

import csv
import io
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from PIL import Image

from . import handles
from .errors import DECODE_ERRORS, ErrorPolicy, OnError, as_policy
from .fields import Field, FieldError, resolve_channels
from .remote import Location, as_location, is_url, join, parent, pure_path, whole_file
from .samplers import Window
from .tiffimage import first_series, open_tiff, tiff_file

log = logging.getLogger(__name__)

TIFF_SUFFIXES = {".tif", ".tiff"}


@contextmanager
def _reading(path: Location, where: str) -> Iterator[None]:
    """Re-raise a library's error on ``path`` with the file and its origin (manifest row, field) named."""
    try:
        yield
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{path} ({where}) does not exist") from err
    except DECODE_ERRORS as err:
        raise FieldError(f"cannot read {path} ({where}): {err}") from err


def _is_tiff(path: Location) -> bool:
    return pure_path(path).suffix.lower() in TIFF_SUFFIXES


def _plane_shape(path: Location, where: str) -> tuple[int, int]:
    """``(H, W)`` of a single-channel image file, from its header."""
    with _reading(path, where):
        if _is_tiff(path):
            shape = open_tiff(path).shape  # opened here for the reads to come
        else:
            with Image.open(whole_file(path)) as image:
                bands = len(image.getbands())
                shape = (image.height, image.width) + ((bands,) if bands > 1 else ())
    if len(shape) != 2:
        raise FieldError(f"{path} ({where}) should hold one single-channel plane, found shape {shape}")
    return shape


def _read_plane(path: Location, window: Window, where: str) -> np.ndarray:
    """Pixels ``[h, w]`` of ``window`` from a single-channel image file."""
    with _reading(path, where):
        if _is_tiff(path):
            return open_tiff(path).read(window.slices())
        with Image.open(whole_file(path)) as image:
            return np.asarray(image)[window.slices()]


def _illumination(path: Location) -> np.ndarray:
    """An illumination function ``[H, W]``, memory-mapped once per process (loaded whole from a URL): a window
    reads only its rows, and the one file a plate's rows share is not reopened for every field."""
    def load() -> np.ndarray:  # a memory map can only be of a local file
        return np.load(whole_file(path)) if is_url(path) else np.load(path, mmap_mode="r")

    return handles.cache().get((path, "npy"), load, handles.file_stamp(path))


class ChannelFilesField(Field):
    """A field stored as one image file per channel, optionally divided by illumination functions.

    ``files[k]`` holds channel ``channels[k]``; ``illum[k]`` is its illumination function (a ``.npy``
    ``[H, W]`` array, memory-mapped so a window reads only its rows) or None.
    """

    def __init__(self, key: str, channels: tuple[str, ...], meta: dict[str, Any], files: Sequence[Location],
                 illum: Sequence[Location | None]) -> None:
        super().__init__(key, channels, meta)
        self.files = tuple(files)
        self.illum = tuple(illum)

    def _where(self, k: int) -> str:
        return f"channel {self.channels[k]}, {self.key}"

    def _shape(self) -> tuple[int, int]:
        shapes = {path: _plane_shape(path, self._where(k)) for k, path in enumerate(self.files)}
        for k, path in enumerate(self.illum):
            if path is not None:
                with _reading(path, self._where(k)):
                    shapes[path] = _illumination(path).shape
        if len(set(shapes.values())) > 1:
            listing = ", ".join(f"{pure_path(path).name}: {shape}" for path, shape in shapes.items())
            raise FieldError(f"field {self.key}: channel files differ in shape ({listing})")
        return next(iter(shapes.values()))

    def _read(self, window: Window) -> np.ndarray:
        # Each plane is converted into its place in the float32 result: at one small window per read, a float
        # copy per plane and then a stack of them cost about as much as the memory-mapped read itself.
        image = np.empty((len(self.files), window.height, window.width), np.float32)
        for k, (path, illum) in enumerate(zip(self.files, self.illum)):
            plane = _read_plane(path, window, self._where(k))
            if plane.shape != image.shape[1:]:  # the file changed since its shape was read; never broadcast
                raise FieldError(f"{path} ({self._where(k)}): read a plane of shape {plane.shape}, expected "
                                 f"{image.shape[1:]}")
            image[k] = plane
            if illum is not None:
                with _reading(illum, self._where(k)):
                    image[k] /= _illumination(illum)[window.slices()].astype(np.float32)
        return image


def _read_table(manifest: Location) -> tuple[list[str], list[dict[str, Any]]]:
    """Column names and rows of a CSV or Parquet manifest (a file or a URL).

    CSV cells stay strings (so plate barcodes like ``"000123"`` keep their zeros); Parquet keeps its types.
    """
    if pure_path(manifest).suffix.lower() in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        table = pq.read_table(whole_file(manifest))
        return table.column_names, table.to_pylist()
    url = is_url(manifest)
    # utf-8-sig: a byte-order mark (Excel's "CSV UTF-8") is dropped, not read into the first column's name.
    text = {"newline": "", "encoding": "utf-8-sig"}
    with io.TextIOWrapper(whole_file(manifest), **text) if url else open(manifest, **text) as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def load_data_fields(
    manifest: str | Path,
    channel_map: Mapping[str, str] | None = None,
    channels: Sequence[str] | None = None,
    illum: bool = True,
    on_error: OnError | ErrorPolicy = "raise",
    subsets: bool = False,
) -> list[ChannelFilesField]:
    """Fields of a CellProfiler ``load_data`` manifest (``.csv``, or ``.parquet``/``.pq``), one per row.

    Every ``FileName_<X>`` with a matching ``PathName_<X>`` column is a channel. Its name is ``<X>`` without
    a leading ``Orig`` (``FileName_OrigDNA`` -> ``DNA``; ``FileName_DNA`` -> ``DNA``); ``channel_map``
    renames these names (``{"DNA": "Hoechst"}``) and ``channels`` selects and orders them (see
    :func:`~domainmae.data.fields.resolve_channels`). With ``illum``, a ``FileName_Illum<name>`` /
    ``PathName_Illum<name>`` pair gives channel ``<name>`` an illumination function (``.npy``) that the
    image is divided by. Relative ``PathName`` values are resolved against the manifest's folder. The manifest
    and its ``PathName`` values may be URLs (:mod:`.remote`); files at URLs are not checked for existence
    here (a request per file) but raise naming the URL on their first read.
    All ``Metadata_*`` columns go to ``meta`` as they are, with ``manifest``, ``row`` (1-based, header not
    counted) and the ``files``/``illum`` paths per channel. A row whose file is missing raises
    ``FileNotFoundError`` naming the file and row, or is skipped with ``on_error="skip"`` (see
    :mod:`~domainmae.data.errors`).
    With ``subsets``, ``channels`` is a vocabulary (see :func:`~domainmae.data.fields.resolve_channels`)
    and a row with an empty ``FileName_<X>`` cell is a field without channel ``<X>``.
    """
    manifest = as_location(manifest)
    policy = as_policy(on_error)
    since = len(policy.skipped)
    columns, rows = _read_table(manifest)
    suffixes = [c.removeprefix("FileName_") for c in columns if c.startswith("FileName_")]
    suffixes = [s for s in suffixes if f"PathName_{s}" in columns]
    images = [s for s in suffixes if not s.startswith("Illum")]
    if not images:
        raise ValueError(f"manifest {manifest} has no FileName_<channel>/PathName_<channel> column pairs")
    found = [s.removeprefix("Orig") for s in images]
    names, index = resolve_channels(found, f"manifest {manifest}", channel_map, channels, subsets)
    used = [(images[i], f"Illum{found[i]}" if illum and f"Illum{found[i]}" in suffixes else None) for i in index]

    fields, checked = [], set()
    for number, row in enumerate(rows, start=1):
        key = f"row {number} of {manifest}"
        # Without subsets every channel is required, so an empty cell stays an error in _locate.
        present = [k for k, (image, _) in enumerate(used) if not subsets or row[f"FileName_{image}"]]
        row_names = tuple(names[k] for k in present)
        try:
            if not present:
                raise FieldError(f"{key} has no file for any of the channels {list(names)}")
            files = [_locate(manifest, row, used[k][0], names[k], key, checked) for k in present]
            illums = [_locate(manifest, row, used[k][1], names[k], key, checked) if used[k][1] else None
                      for k in present]
        except OSError as err:
            policy.handle(err)
            continue
        meta = {k: v for k, v in row.items() if k.startswith("Metadata_")}
        meta.update(manifest=str(manifest), row=number, files=dict(zip(row_names, map(str, files))))
        if any(illums):
            meta["illum"] = {name: str(path) for name, path in zip(row_names, illums) if path}
        fields.append(ChannelFilesField(key, row_names, meta, files, illums))
    policy.summarise(since, len(rows), f"rows of {manifest}")
    return fields


def _locate(manifest: Location, row: Mapping[str, Any], suffix: str, channel: str, key: str,
            checked: set[Location]) -> Location:
    """The file that ``FileName_<suffix>``/``PathName_<suffix>`` of ``row`` point to; a local one must exist."""
    name, folder = row[f"FileName_{suffix}"], row[f"PathName_{suffix}"]
    if not name:
        raise FileNotFoundError(f"{key} has no FileName_{suffix} (channel {channel})")
    # An absolute PathName replaces the manifest folder, and a URL replaces either.
    path = join(parent(manifest), str(folder or ""), str(name))
    # Illumination files repeat on every row of a plate: stat each path once.
    if path not in checked and not is_url(path):
        if not path.is_file():
            raise FileNotFoundError(f"{path} (FileName_{suffix}, channel {channel}, {key}) does not exist")
        checked.add(path)
    return path


def pattern_fields(
    folder: str | Path,
    pattern: str,
    channel_map: Mapping[str, str] | None = None,
    channels: Sequence[str] | None = None,
    recursive: bool = False,
    on_error: OnError | ErrorPolicy = "raise",
    subsets: bool = False,
) -> list[ChannelFilesField]:
    """Fields from per-channel image files grouped by a regex with named groups.

    ``pattern`` must match a file's path relative to ``folder`` (its name, unless ``recursive``) in full and
    have a ``channel`` group; all other named groups together identify the field and go to ``meta`` under
    their group names, e.g. ``r"(?P<field>.+)_(?P<channel>[DFR])\\.TIF"`` or RxRx's
    ``r"(?P<Metadata_Well>\\w+)_s(?P<Metadata_Site>\\d)_w(?P<channel>\\d)\\.png"``. Files that do not match
    are ignored. Channel tokens are sorted; ``channel_map`` renames them (``{"D": "DNA"}``) and ``channels``
    selects and orders them. A field lacking a channel raises (or is skipped with ``on_error="skip"``),
    unless ``subsets`` makes ``channels`` a vocabulary: then a field holds the channels it has files for.
    """
    folder, regex, policy = Path(folder), re.compile(pattern), as_policy(on_error)
    since = len(policy.skipped)
    if "channel" not in regex.groupindex:
        raise ValueError(f"pattern {pattern!r} has no (?P<channel>...) group")
    groups: dict[tuple[tuple[str, str], ...], dict[str, Path]] = {}
    for path in sorted(folder.rglob("*") if recursive else folder.iterdir()):
        match = regex.fullmatch(path.relative_to(folder).as_posix())
        if match is None or not path.is_file():
            continue
        ident = tuple((name, value) for name, value in match.groupdict().items() if name != "channel")
        by_channel = groups.setdefault(ident, {})
        token = match["channel"]
        if token in by_channel:
            raise ValueError(f"{by_channel[token]} and {path} both match {pattern!r} as channel {token} of one field")
        by_channel[token] = path
    if not groups:
        raise ValueError(f"no file in {folder} matches {pattern!r}")
    tokens = sorted({token for by_channel in groups.values() for token in by_channel})
    names, index = resolve_channels(tokens, f"files matching {pattern!r} in {folder}", channel_map, channels, subsets)

    fields = []
    for ident, by_channel in groups.items():
        key = ", ".join(f"{name}={value}" for name, value in ident) + f" in {folder}"
        missing = [f"{tokens[i]} ({name})" for i, name in zip(index, names) if tokens[i] not in by_channel]
        if missing and not subsets:
            policy.handle(FieldError(f"field {key} has no file for channel(s) {', '.join(missing)}"))
            continue
        have = [(by_channel[tokens[i]], name) for i, name in zip(index, names) if tokens[i] in by_channel]
        files, field_names = [path for path, _ in have], tuple(name for _, name in have)
        meta = {**dict(ident), "files": dict(zip(field_names, map(str, files)))}
        fields.append(ChannelFilesField(key, field_names, meta, files, [None] * len(files)))
    policy.summarise(since, len(groups), f"fields in {folder}")
    return fields


class TiffStackField(Field):
    """A field stored as one multichannel TIFF, ``CYX`` or ``YXC``; ``index`` picks the channels read."""

    def __init__(self, key: str, channels: tuple[str, ...], meta: dict[str, Any], path: Location, axes: str,
                 index: Sequence[int]) -> None:
        super().__init__(key, channels, meta)
        self.path, self.axes, self.index = path, axes, list(index)

    def _shape(self) -> tuple[int, int]:
        with _reading(self.path, self.key):
            shape = open_tiff(self.path).shape
        return shape[self.axes.index("Y")], shape[self.axes.index("X")]

    def _read(self, window: Window) -> np.ndarray:
        rows, cols = window.slices()
        selection = (slice(None), rows, cols) if self.axes == "CYX" else (rows, cols, slice(None))
        with _reading(self.path, self.key):
            pixels = open_tiff(self.path).read(selection)
        pixels = pixels if self.axes == "CYX" else pixels.transpose(2, 0, 1)
        return pixels[self.index]


def stack_layout(path: Location, series: tifffile.TiffPageSeries, ome_xml: str | None,
                  axes: str | None) -> tuple[str, int, list[str] | None]:
    """``("CYX"|"YXC", channel count, OME channel names or None)`` of a stack's first ``series``."""
    # tifffile calls samples-per-pixel "S" (RGB-like YXS) and axes it cannot name "Q" (plain shaped stacks).
    file_axes = (axes or series.axes).upper().replace("S", "C")
    if "Q" in file_axes or len(file_axes) != len(series.shape):
        raise ValueError(f"{path}: axes {series.axes} of shape {series.shape} are ambiguous; say the layout with "
                         f"data.axes (axes= in Python): CYX or YXC")  # fmt: skip
    if file_axes not in ("CYX", "YXC"):
        raise ValueError(f"{path}: axes {file_axes} of shape {series.shape} unsupported; expected CYX or YXC (data.axes "
                         f"CYX reads pages as channels)")  # fmt: skip
    count = series.shape[file_axes.index("C")]
    names = None
    if ome_xml:
        pixels = tifffile.xml2dict(ome_xml)["OME"]["Image"]
        pixels = (pixels[0] if isinstance(pixels, list) else pixels)["Pixels"]
        entries = pixels.get("Channel", [])
        entries = entries if isinstance(entries, list) else [entries]
        names = [str(entry["Name"]) for entry in entries if entry.get("Name") is not None] or None
        if names is not None and len(names) != count:
            raise ValueError(f"{path}: OME metadata names {len(names)} channels {names}, the image has {count}")
    return file_axes, count, names


def stack_fields(
    paths: Sequence[str | Path],
    axes: str | None = None,
    channel_map: Mapping[str, str] | None = None,
    channels: Sequence[str] | None = None,
    on_error: OnError | ErrorPolicy = "raise",
    subsets: bool = False,
) -> list[TiffStackField]:
    """One field per multichannel TIFF (``CYX`` or ``YXC``; OME-TIFF, ImageJ or plain), each a file or a URL.

    The layout comes from the file (OME/ImageJ axes, or RGB-like samples) or from ``axes`` when the file
    does not say (plain shaped stacks). Channel names come from the OME metadata when present; otherwise
    ``channels`` must name the channels in file order. ``channel_map``/``channels`` rename and select named
    channels as in :func:`~domainmae.data.fields.resolve_channels` (``subsets``: each stack holds any of
    the ``channels``).
    """
    policy = as_policy(on_error)
    since = len(policy.skipped)
    fields = []
    for path in map(as_location, paths):
        try:
            with _reading(path, "TIFF stack"), tiff_file(path) as tif:
                series, ome_xml = first_series(tif), tif.ome_metadata if tif.is_ome else None
                others = len(tif.series) - 1
        except OSError as err:
            policy.handle(err)
            continue
        if others:  # a multi-position acquisition, or a slide scanner's label and macro images
            log.warning("%s holds %d image series; its first, %s %s, is the field, the other %d are not read",
                        path, others + 1, series.axes, series.shape, others)  # fmt: skip
        layout, count, found = stack_layout(path, series, ome_xml, axes)
        names, index = resolve_channels(found or count, str(path), channel_map, channels, subsets)
        meta = {"files": {"stack": str(path)}, "axes": layout}
        fields.append(TiffStackField(str(path), names, meta, path, layout, index))
    policy.summarise(since, len(paths), "TIFF stacks")
    return fields
