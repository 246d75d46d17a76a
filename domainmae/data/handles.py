"""Open files per process: one least-recently-used cache shared by every scene and microscopy field.

A scene or field opens its files lazily and reads windows from them many times, so the handles are worth
keeping - but not all of them: a worker that walks hundreds of one-file-per-band scenes would otherwise
hold every file it ever touched (measured on Sentinel-2: 200 scenes, ~1,600 open files, +530 MB RSS per
worker; the common limit of 1,024 open files is reached after ~80 scenes). So each process keeps at most
:func:`max_open_files` handles open (default 128, like torchgeo's per-dataset LRU; enough that a 12-band
scene is never reopened between the reads of one window) and closes the least recently used beyond that.

A handle is whatever reads a file: a rasterio dataset (:class:`~domainmae.data.raster.RasterScene`), a
memory-mapped TIFF or ``.npy`` plane, a :class:`tifffile.TiffFile`, an open ``zarr.Array`` (microscopy
fields). Handles *derived* from one, like a :class:`~rasterio.vrt.WarpedVRT` over a dataset, are kept
with it and closed before it, so none outlives what it reads through. Closing calls a handle's
``close()``; memory maps and Zarr arrays have none and are released with their last reference (reads
return copies, so the cache holds that reference). A handle may be kept with a *stamp* of its file
(:func:`file_stamp`): a file replaced, rewritten or removed since it was opened is reopened (or reported
missing) on its next read rather than read stale - or, through a memory map of a shortened file, crash
the process with SIGBUS.

Set the limit with :func:`set_max_open_files` or the ``DOMAINMAE_MAX_OPEN_FILES`` environment variable
(read when a process opens its first file, so DataLoader workers inherit it either way).

The cache belongs to one process: handles opened before a DataLoader forks belong to the parent (they
share file offsets with it), so a process that finds a cache made under another pid starts a fresh one.
Not thread-safe, like rasterio datasets themselves: DataLoader workers are processes.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from .remote import is_url

DEFAULT_MAX_OPEN_FILES = 128
ENV_VAR = "DOMAINMAE_MAX_OPEN_FILES"

#: ``(path or URL, how the file was opened)``: a scene that declares another nodata value opens the file apart,
#: and a TIFF read by GDAL and by tifffile is two handles.
Key = tuple[Path | str, Hashable]
H = TypeVar("H")
D = TypeVar("D")


def _close(handle: Any) -> None:
    close = getattr(handle, "close", None)
    if close is not None:  # memory maps and Zarr arrays have none: dropping the reference releases them
        close()


def file_stamp(path: Path | str) -> Hashable:
    """What changes when ``path`` is replaced or rewritten; ``FileNotFoundError`` once it is removed.

    One ``stat``: a few microseconds, against ~0.2 ms to reopen a TIFF. ``None`` for a URL: asking a server
    would cost a round trip per read, and objects at a URL are not rewritten in place under a reader
    (nor memory-mapped, so a changed one cannot crash it).
    """
    if is_url(path):
        return None
    status = os.stat(path)
    return status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns


@dataclass
class _Entry:
    handle: Any
    stamp: Hashable = None
    derived: dict[Hashable, Any] = field(default_factory=dict)

    def close(self) -> None:
        for handle in self.derived.values():  # first: they read through the handle
            _close(handle)
        _close(self.handle)


class HandleCache:
    """At most ``max_open`` open handles (and those derived from them), least recently used closed first."""

    def __init__(self, max_open: int) -> None:
        self.max_open = max_open
        self._entries: OrderedDict[Key, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Key, open_: Callable[[], H], stamp: Hashable = None) -> H:
        """The handle under ``key``, opened with ``open_`` unless open already (nothing is kept if it raises).

        A handle kept with another ``stamp`` (see :func:`file_stamp`) is of an older version of the file:
        it is closed and the file opened anew.
        """
        entry = self._entries.get(key)
        if entry is not None and entry.stamp != stamp:
            self.close([key])
        return self._entry(key, open_, stamp).handle

    def derived(self, key: Key, open_: Callable[[], H], derived_key: Hashable, build: Callable[[H], D]) -> D:
        """The handle ``derived_key`` built with ``build`` over the handle under ``key``, unless built already."""
        entry = self._entry(key, open_)
        if derived_key not in entry.derived:
            entry.derived[derived_key] = build(entry.handle)
        return entry.derived[derived_key]

    def _entry(self, key: Key, open_: Callable[[], Any], stamp: Hashable = None) -> _Entry:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
            return entry
        # Make room before opening, so the process never holds more than max_open files, even briefly.
        self._trim(self.max_open - 1)
        entry = self._entries[key] = _Entry(open_(), stamp)
        return entry

    def _trim(self, size: int) -> None:
        while len(self._entries) > size:
            self._entries.popitem(last=False)[1].close()

    def resize(self, max_open: int) -> None:
        self.max_open = max_open
        self._trim(max_open)

    def paths(self) -> list[Path | str]:
        """Paths of the open files, least recently used first (a file opened two ways appears twice)."""
        return [path for path, _ in self._entries]

    def close(self, keys: list[Key] | None = None) -> None:
        """Close the handles under ``keys`` (default: all)."""
        for key in list(self._entries) if keys is None else keys:
            entry = self._entries.pop(key, None)
            if entry is not None:
                entry.close()


_limit: int | None = None  # set by set_max_open_files; None: the environment variable or the default
_cache: HandleCache | None = None
_cache_pid: int | None = None


def max_open_files() -> int:
    """The most files one process keeps open: :func:`set_max_open_files`, else the environment, else 128."""
    if _limit is not None:
        return _limit
    value = os.environ.get(ENV_VAR)
    if value is None:
        return DEFAULT_MAX_OPEN_FILES
    try:
        return _checked(int(value))
    except ValueError as err:
        raise ValueError(f"{ENV_VAR}={value!r}: expected a whole number of files, at least 1") from err


def _checked(limit: int) -> int:
    if limit < 1:
        raise ValueError(f"the open-file limit must be at least 1, got {limit}")
    return limit


def set_max_open_files(limit: int | None) -> None:
    """Keep at most ``limit`` files open per process (``None``: back to the environment or 128).

    Applies at once: files beyond a lowered limit are closed (least recently used first). Set it before
    a DataLoader starts its workers, which then inherit it.
    """
    global _limit
    _limit = None if limit is None else _checked(limit)
    if _cache is not None and _cache_pid == os.getpid():
        _cache.resize(max_open_files())


def cache() -> HandleCache:
    """This process's cache, made on first use and made anew in a forked child."""
    global _cache, _cache_pid
    if _cache is None or _cache_pid != os.getpid():
        # The parent's handles are dropped, never used: the child's copies share file offsets with them.
        _cache, _cache_pid = HandleCache(max_open_files()), os.getpid()
    return _cache


def open_files() -> int:
    """How many files this process holds open (handles in the cache)."""
    return len(cache())


def open_paths() -> list[Path | str]:
    """The files this process holds open, least recently used first."""
    return cache().paths()


def close_all() -> None:
    """Close every file this process holds open (scenes and fields reopen them on their next read).

    Files at URLs read through fsspec (microscopy TIFFs, Zarr) are fetched anew on their next read. A raster
    at a URL may not be: GDAL keeps the bytes it fetched in curl's process-wide cache
    (``CPL_VSIL_CURL_CACHE_SIZE``, :mod:`.remote`), which outlives the handle and which rasterio gives no way
    to clear, so an object replaced at its URL can read stale until the process ends. Read a replaced object
    in a new process (DataLoader workers are, each epoch unless persistent) or under a new URL.
    """
    cache().close()
