"""The one error policy every reader and dataset follows for a bad item: raise it, or skip it and say so.

``on_error="raise"`` (the default) lets the first bad item's error propagate unchanged. ``on_error="skip"``
leaves the item out, and a skip is never silent:

* every skip is recorded on the policy (:attr:`ErrorPolicy.skipped`) and logged as a warning when it happens;
* a reader that lists items (rows of a manifest, files of a folder, wells of a plate, scenes, pairs) ends with
  one ``UserWarning`` counting what it left out (:meth:`ErrorPolicy.summarise`), because a list that is
  silently shorter than the data is the mistake a user does not notice.

Datasets that skip reads (crops, windows) only log and record: they run inside DataLoader workers, which have
no end of a scan to summarise at; the training loop summarises the reads it replaced instead.
"""
from __future__ import annotations

import logging
import warnings
import zlib
from typing import Literal

log = logging.getLogger(__name__)

OnError = Literal["raise", "skip"]

# What image libraries raise for a file or chunk they cannot read or decode: OSError/ValueError from tifffile,
# PIL and zarr for a bad header or layout, zlib.error from a deflate stream that does not decompress (stdlib
# zlib, used by tifffile and numcodecs), RuntimeError from the imagecodecs/numcodecs codecs (LZW, zstd, blosc).
DECODE_ERRORS: tuple[type[Exception], ...] = (OSError, ValueError, zlib.error, RuntimeError)


class ErrorPolicy:
    """What to do with a bad manifest row, file, scene or read: ``"raise"`` it, or ``"skip"`` it.

    Pass an instance (instead of the string) to a reader or dataset to read :attr:`skipped` afterwards; one
    instance may serve several readers. DataLoader workers hold copies, so skips made inside workers show
    up in the log, not in the parent's list.
    """

    def __init__(self, mode: OnError = "raise") -> None:
        if mode not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {mode!r}")
        self.mode = mode
        self.skipped: list[str] = []

    def handle(self, err: Exception) -> None:
        """Re-raise ``err`` (mode ``raise``) or record and log it (mode ``skip``)."""
        if self.mode == "raise":
            raise err
        self.skipped.append(str(err))
        log.warning("skipped (%d so far): %s", len(self.skipped), err)

    def summarise(self, since: int, total: int | None, what: str) -> None:
        """One ``UserWarning`` for the skips recorded after the first ``since`` (a reader's own, when the
        policy is shared): ``"skipped N of <total> <what>: <each error>"``; nothing when there were none.

        Readers call it at the end of their scan; ``total`` is how many items the scan looked at (None when
        that is no single count, e.g. wells and fields of a plate).
        """
        skipped = self.skipped[since:]
        if skipped:
            counted = f"{len(skipped)}" if total is None else f"{len(skipped)} of {total}"
            # stacklevel 3: the warning points at the code that called the reader.
            warnings.warn(f"skipped {counted} {what}: " + "; ".join(skipped), stacklevel=3)


def as_policy(on_error: OnError | ErrorPolicy) -> ErrorPolicy:
    """The policy for an ``on_error`` argument given as a string or an :class:`ErrorPolicy`."""
    return on_error if isinstance(on_error, ErrorPolicy) else ErrorPolicy(on_error)
