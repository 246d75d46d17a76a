"""One TIFF image opened for windowed reads, kept per process in the LRU of open files (:mod:`.handles`).

Opening costs far more than a window (measured on a 1080x1080 uint16 plane in the page cache: ~0.23 ms to parse
the header and map the file, ~0.004 ms to copy a 224 px window out of the map; reads used to parse the header
twice, ~0.47 ms per file and read), so a field's files are opened once per process and kept, like a scene's
rasters.
"""
from __future__ import annotations

import numpy as np
import tifffile
import zarr

from . import handles
from .remote import Location, failures_named, is_url, open_file


def tiff_file(location: Location) -> tifffile.TiffFile:
    """``location`` opened by tifffile: a local file as it always was, a URL through fsspec (byte ranges)."""
    if not is_url(location):
        return tifffile.TiffFile(location)
    with failures_named():
        return tifffile.TiffFile(open_file(location))


def first_series(tif: tifffile.TiffFile) -> tifffile.TiffPageSeries:
    """The first image series; for a file without one tifffile only logs a warning, so raise here."""
    if not tif.series:
        raise ValueError("no image found")
    return tif.series[0]


class TiffImage:
    """The first series of a TIFF file, opened for reading windows.

    Uncompressed contiguous data in a local file is memory-mapped (the header is parsed once and the file
    closed; the map keeps its own descriptor), so a window costs only its own bytes. Otherwise (compressed
    data, or a file at a URL, read through fsspec by byte ranges) the file stays open with a
    Zarr view of its strips/tiles, which decodes only those a window touches; a whole-image read skips it,
    as the plain decoder is many times faster than going through Zarr chunk by chunk.
    """

    def __init__(self, path: Location) -> None:
        tif = tiff_file(path)
        try:
            series = first_series(tif)
            self.shape: tuple[int, ...] = tuple(series.shape)
            self._map: np.ndarray | None = None
            if series.dataoffset is not None and not is_url(path):
                dtype = np.dtype(tif.byteorder + series.dtype.char)  # as tifffile.memmap: the file's byte order
                # Sliced as a plain ndarray: numpy's memmap subclass adds Python-level work to every slice.
                self._map = np.memmap(path, dtype, "r", series.dataoffset, self.shape, "C").view(np.ndarray)
                tif.close()
            else:
                self._tif, self._series, self._store = tif, series, series.aszarr(multiscales=False)
                self._tiles = zarr.open(self._store, mode="r", zarr_format=2)
        except BaseException:
            tif.close()
            raise

    def read(self, selection: tuple[slice, ...]) -> np.ndarray:
        """A copy of ``selection``: never a view into the map, which the cache may release at any time.

        Copying first also makes a later dtype conversion fast: numpy converts a contiguous copy several
        times faster than the strided window of a map (measured: a 224 px window of five 1080 px uint16
        planes to float32 in ~80 us copied first, ~250 us directly).
        """
        if self._map is not None:
            return np.array(self._map[selection])
        if all(part.indices(size) == (0, size, 1) for part, size in zip(selection, self.shape)):
            return self._series.asarray()
        return self._tiles[selection]

    def close(self) -> None:
        """Close the file; a memory map has nothing to close and is unmapped when the cache drops it."""
        if self._map is None:
            self._store.close()
            self._tif.close()


def open_tiff(path: Location) -> TiffImage:
    """``path``'s image, opened once per process (and again after the LRU closed it or the file changed)."""
    return handles.cache().get((path, "tiff"), lambda: TiffImage(path), handles.file_stamp(path))
