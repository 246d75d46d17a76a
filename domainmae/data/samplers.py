"""Where to cut windows from a field or scene: random crops and deterministic grid tiling.

Readers stay apart from samplers (as in torchgeo): a sampler only knows the field's size and
returns :class:`Window` objects; a reader turns a window into pixels.
"""
from __future__ import annotations

import random
from collections.abc import Sequence
from typing import NamedTuple

import rasterio.windows


class Window(NamedTuple):
    """A pixel window: top-left ``(row, col)`` and size ``height x width``, in that order.

    A named tuple, so that it is hashable, pickles into DataLoader workers and compares equal to the plain
    ``(row, col, height, width)`` tuple it unpacks to. :meth:`to_rasterio` is the one conversion to
    rasterio's column-first ``Window(col_off, row_off, width, height)``, for reads through GDAL.
    """

    row: int
    col: int
    height: int
    width: int

    def slices(self) -> tuple[slice, slice]:
        """``(rows, cols)`` slices for numpy/torch indexing of ``[..., H, W]`` arrays."""
        return slice(self.row, self.row + self.height), slice(self.col, self.col + self.width)

    def shift(self, row: int, col: int) -> Window:
        """The same window relative to a region whose top-left is at ``(row, col)``."""
        return Window(self.row - row, self.col - col, self.height, self.width)

    def to_rasterio(self) -> rasterio.windows.Window:
        """The same pixels as rasterio's ``Window(col_off, row_off, width, height)``."""
        return rasterio.windows.Window(self.col, self.row, self.width, self.height)


def span(windows: Sequence[Window]) -> Window:
    """The smallest window containing all ``windows``."""
    top, left = min(w.row for w in windows), min(w.col for w in windows)
    bottom, right = max(w.row + w.height for w in windows), max(w.col + w.width for w in windows)
    return Window(top, left, bottom - top, right - left)


def _check_fits(height: int, width: int, size: int, what: str) -> None:
    if height < size or width < size:
        raise ValueError(f"{what} of {height}x{width} px is smaller than the {size} px crop")


def _positions(length: int, size: int, stride: int) -> list[int]:
    """Window starts covering ``[0, length)``; the last one is snapped to the edge."""
    starts = list(range(0, length - size + 1, stride))
    if starts[-1] + size < length:
        starts.append(length - size)
    return starts


def grid_windows(height: int, width: int, size: int, stride: int | None = None, what: str = "field") -> list[Window]:
    """Deterministic tiling that covers the whole field, row-major.

    ``stride`` defaults to ``size`` (no overlap); the last row/column of windows is moved
    back to the border so every pixel is covered without padding.
    """
    _check_fits(height, width, size, what)
    stride = size if stride is None else stride
    if stride < 1:
        raise ValueError(f"stride must be positive, got {stride}")
    return [Window(r, c, size, size) for r in _positions(height, size, stride) for c in _positions(width, size, stride)]


def random_windows(
    height: int,
    width: int,
    size: int,
    count: int,
    rng: random.Random,
    block: tuple[int, int] | None = None,
    what: str = "field",
) -> list[Window]:
    """``count`` random ``size x size`` windows, each at a uniform position inside ``height x width``.

    Without ``block`` the positions are independent. With ``block = (rows, cols)``, the tile shape of
    the source, they all fall within the tiles of one ``(block + size - 1)`` px square: decoding
    compressed tiles dominates the cost of a random window, so a reader fetches the span of these
    windows once and cuts every window from it. Window top-left positions are grouped into cells of
    one block; a cell is chosen with probability proportional to the number of positions it holds,
    and the windows are uniform inside it. Every window is therefore still marginally uniform over
    all ``(H - size + 1) x (W - size + 1)`` positions; a block as large as the source gives the
    independent case.
    """
    _check_fits(height, width, size, what)
    n_rows, n_cols = height - size + 1, width - size + 1
    block_h, block_w = (n_rows, n_cols) if block is None else block
    if block_h < 1 or block_w < 1:
        raise ValueError(f"block shape must be positive, got {block}")
    row0 = col0 = 0
    if block_h < n_rows or block_w < n_cols:
        # A uniform anchor picks each cell with probability proportional to its size, which keeps
        # the edge cells (cut short by the source border) from being over-sampled. One cell needs no anchor.
        row0 = rng.randrange(n_rows) // block_h * block_h
        col0 = rng.randrange(n_cols) // block_w * block_w
    row1, col1 = min(row0 + block_h, n_rows), min(col0 + block_w, n_cols)
    return [Window(rng.randrange(row0, row1), rng.randrange(col0, col1), size, size) for _ in range(count)]
