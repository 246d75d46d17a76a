"""Zarr microscopy readers: plain arrays and OME-Zarr (NGFF) images and HCS plates, zarr 3.x API.

Layouts recognised at a path:

- an array ``[N, C, H, W]`` (one field per ``n``) or ``[C, H, W]`` (one field);
- a group of ``[C, H, W]`` arrays, one field per array (sorted by name);
- an OME-Zarr image (``multiscales``; level 0 is read) or HCS plate (``plate`` -> wells -> fields).

OME metadata sits in the group attributes: top level for NGFF 0.4 (``.zattrs``, Zarr v2), under
``attributes["ome"]`` of ``zarr.json`` for 0.5 (Zarr v3); zarr opens both formats. Channel names come
from ``omero.channels[].label``. A store may be a URL (``https://``, ``s3://``; :mod:`.remote`), read through
fsspec. Arrays and OME-Zarr images and plates name their members in their metadata; a group of plain arrays is
listed, which plain HTTP allows only where the server lists folders (object stores do not: consolidate its
metadata, ``zarr.consolidate_metadata``). Reads index only the chunks a window touches; each array is opened
once per process and kept in the LRU of open files (:mod:`.handles`), as reopening it costs about as much as a
crop.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr
import zarr.errors

from . import handles
from .errors import DECODE_ERRORS, ErrorPolicy, OnError, as_policy
from .fields import Field, FieldError, resolve_channels
from .remote import is_url, join, require_fsspec, storage_options
from .samplers import Window


def _options(store: str) -> dict[str, Any] | None:
    """fsspec's options for a store at a URL (:func:`~.remote.storage_options`); zarr refuses any for a folder."""
    return storage_options(store) if is_url(store) else None


class ZarrField(Field):
    """A field inside a Zarr array.

    ``axes`` names each array dimension (``c``, ``y``, ``x``, or any other letter for an axis fixed at the
    index ``fixed[letter]``: the ``n`` of ``[N, C, H, W]``, a singleton ``t`` or ``z``); ``c`` must come
    before ``y`` and ``x``. ``index`` picks the channels read, so unused channels' chunks stay on disk.
    """

    def __init__(self, key: str, channels: tuple[str, ...], meta: dict[str, Any], store: str, path: str,
                 axes: str, fixed: Mapping[str, int], index: Sequence[int]) -> None:
        super().__init__(key, channels, meta)
        self.store, self.path, self.axes, self.fixed, self.index = store, path, axes, dict(fixed), list(index)
        # Consecutive channels (the usual case: all of them) as a slice, so a read is a basic selection, which
        # zarr serves in about two thirds of the time of an orthogonal one with a channel list.
        first = self.index[0] if self.index else 0
        consecutive = self.index == list(range(first, first + len(self.index)))
        self._channels = slice(first, first + len(self.index)) if consecutive else self.index

    def _open(self) -> zarr.Array:
        # The process-wide cache holds the array, not the field, so fields stay small to pickle.
        return handles.cache().get((join(self.store, self.path), "zarr"), self._open_array)

    def _open_array(self) -> zarr.Array:
        try:
            return zarr.open_array(store=self.store, path=self.path, mode="r", storage_options=_options(self.store))
        except (OSError, ValueError) as err:
            raise FieldError(f"cannot open Zarr array {self.path!r} in {self.store} ({self.key}): {err}") from err

    def _shape(self) -> tuple[int, int]:
        shape = self._open().shape
        return shape[self.axes.index("y")], shape[self.axes.index("x")]

    def _read(self, window: Window) -> np.ndarray:
        rows, cols = window.slices()
        pick = {"c": self._channels, "y": rows, "x": cols}
        selection = tuple(pick[axis] if axis in pick else self.fixed[axis] for axis in self.axes)
        try:
            pixels = self._open()[selection]  # zarr reads a channel list as an orthogonal selection
        except DECODE_ERRORS as err:  # a chunk missing its bytes or failing to decompress
            raise FieldError(f"cannot read Zarr array {self.path!r} in {self.store} ({self.key}): {err}") from err
        return pixels if "c" in self.axes else pixels[None]


def zarr_fields(
    path: str | Path,
    channel_map: Mapping[str, str] | None = None,
    channels: Sequence[str] | None = None,
    on_error: OnError | ErrorPolicy = "raise",
    subsets: bool = False,
) -> list[ZarrField]:
    """Fields of a Zarr store or OME-Zarr image/plate at ``path`` (see the module docstring for layouts).

    OME channel names (omero labels) are renamed by ``channel_map`` and selected/ordered by ``channels``;
    plain arrays carry no names, so ``channels`` must name their channels in array order. A well or field
    listed in plate metadata but absent from the store raises, or is skipped with ``on_error="skip"``.
    With ``subsets``, ``channels`` is a vocabulary: each named image holds any of them.
    """
    path = str(path)
    if is_url(path):
        require_fsspec(path)  # zarr opens URLs through fsspec
    try:
        node = zarr.open(store=path, mode="r", storage_options=_options(path))
    except zarr.errors.NodeNotFoundError as err:  # what a URL without a store gives; a missing folder says so
        raise FileNotFoundError(f"no Zarr array or group at {path}") from err
    naming = {"channel_map": channel_map, "channels": channels, "subsets": subsets}
    if isinstance(node, zarr.Array):
        return _plain_fields(path, node, naming)
    ome = node.attrs.get("ome", node.attrs)  # 0.5 nests OME metadata under "ome"; 0.4 keeps it top level
    if "plate" in ome:
        policy = as_policy(on_error)
        since = len(policy.skipped)
        fields = _plate_fields(path, node, ome["plate"], naming, policy)
        policy.summarise(since, None, f"wells or fields of OME-Zarr plate {path}")
        return fields
    if "multiscales" in ome:
        return [_image_field(path, "", node, {}, naming)]
    arrays = sorted(node.arrays(), key=lambda item: item[0])
    if not arrays:
        raise ValueError(f"{path}: no array, OME multiscales or plate metadata found")
    return [field for _, array in arrays for field in _plain_fields(path, array, naming)]


def _plain_fields(store: str, array: zarr.Array, naming: Mapping[str, Any]) -> list[ZarrField]:
    """One field per ``n`` of an ``[N, C, H, W]`` array, or the field of a ``[C, H, W]`` array."""
    where = f"Zarr array {array.path or '/'} in {store}"
    if array.ndim not in (3, 4):
        raise ValueError(f"{where} has shape {array.shape}; expected [N, C, H, W] or [C, H, W]")
    names, index = resolve_channels(array.shape[-3], where, **naming)
    if array.ndim == 3:
        return [ZarrField(where, names, {"source": f"{store}/{array.path}"}, store, array.path, "cyx", {}, index)]
    return [
        ZarrField(f"{where}[{n}]", names, {"source": f"{store}/{array.path}", "index": n}, store, array.path,
                  "ncyx", {"n": n}, index)
        for n in range(array.shape[0])
    ]


def _image_field(store: str, prefix: str, group: zarr.Group, meta: dict[str, Any],
                 naming: Mapping[str, Any]) -> ZarrField:
    """The field of an OME-Zarr image group, read at resolution level 0."""
    where = f"OME-Zarr image {prefix or '/'} in {store}"
    ome = group.attrs.get("ome", group.attrs)
    multiscale = ome["multiscales"][0]
    level0 = multiscale["datasets"][0]["path"]
    array = _child(store, group, level0)
    # NGFF 0.4+ lists axes as {"name": ...}; 0.3 as strings; before that images were always tczyx.
    axes = "".join((axis["name"] if isinstance(axis, dict) else axis)[0].lower()
                   for axis in multiscale.get("axes", "tczyx"[-array.ndim:]))
    if not ("y" in axes and "x" in axes) or len(axes) != array.ndim:
        raise ValueError(f"{where}: axes {axes!r} do not fit level 0 of shape {array.shape}")
    fixed = {axis: 0 for axis in axes if axis not in "cyx"}
    stacked = [f"{axis}={array.shape[axes.index(axis)]}" for axis in fixed if array.shape[axes.index(axis)] > 1]
    if stacked:
        raise ValueError(f"{where}: only single-plane images are supported, found {', '.join(stacked)}")
    count = array.shape[axes.index("c")] if "c" in axes else 1
    labels = [channel.get("label") for channel in ome.get("omero", {}).get("channels", [])]
    if labels and len(labels) != count:
        raise ValueError(f"{where}: omero metadata names {len(labels)} channels {labels}, level 0 has {count}")
    found = labels if labels and all(labels) else count
    names, index = resolve_channels(found, where, **naming)
    array_path = f"{prefix}/{level0}" if prefix else level0
    return ZarrField(where, names, {**meta, "source": f"{store}/{array_path}"}, store, array_path, axes, fixed, index)


def _plate_fields(store: str, root: zarr.Group, plate: Mapping[str, Any], naming: Mapping[str, Any],
                  policy: ErrorPolicy) -> list[ZarrField]:
    """Every field of every well of an OME-Zarr HCS plate, with plate/well/site in ``Metadata_*`` keys."""
    fields = []
    for well in plate["wells"]:
        row, column = well["path"].split("/")
        try:
            well_group = _child(store, root, well["path"])
        except OSError as err:
            policy.handle(err)
            continue
        for image in well_group.attrs.get("ome", well_group.attrs)["well"]["images"]:
            site = image["path"]
            meta = {"Metadata_Plate": plate.get("name", store), "Metadata_Well": f"{row}{column}",
                    "Metadata_Row": row, "Metadata_Column": column, "Metadata_Site": site}
            try:
                group = _child(store, well_group, site)
                fields.append(_image_field(store, f"{well['path']}/{site}", group, meta, naming))
            except OSError as err:
                policy.handle(err)
    return fields


def _child(store: str, group: zarr.Group, path: str) -> zarr.Group | zarr.Array:
    """``group[path]``, with a missing member reported as a missing file naming the store and path."""
    try:
        return group[path]
    except KeyError as err:
        raise FileNotFoundError(f"{store}: {group.path}/{path} is listed in the OME metadata but missing") from err
