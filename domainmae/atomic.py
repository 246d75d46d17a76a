"""Atomic file writes: write beside the target, then rename, so a crash never leaves a torn file."""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from fnmatch import fnmatch
from pathlib import Path

#: What a write that runs out of room fails with: a full disk, a quota, a file-size limit.
NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


class WriteError(OSError):
    """A write of ``path`` failed for ``reason``; an ``OSError``, so the CLI prints it without a traceback."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"cannot write {path}: {reason}")
        self.path, self.reason = Path(path), reason


def _reason(err: BaseException) -> str:
    """The innermost cause's text: a writer library's outer error says only that a write failed ("see previous
    exception"), GDAL's first error what went wrong; an ``OSError``'s, its ``strerror`` (without "[Errno N]")."""
    while err.__cause__ is not None:
        err = err.__cause__
    return (err.strerror if isinstance(err, OSError) and err.strerror else str(err)) or type(err).__name__


@contextmanager
def writing(path: str | Path, *errors: type[Exception]) -> Iterator[None]:
    """Raise the failures of a write of ``path`` as :class:`WriteError` naming it: an ``OSError`` for lack of
    room (:data:`NO_ROOM`; libraries name their temporary file or nothing) and any of ``errors``, a writer
    library's own (GDAL's, safetensors'), which are no ``OSError`` and would reach the user as a traceback.
    A nested write's error is named again by the outer ``path``: the output the user gave, not a temporary."""
    try:
        yield
    except WriteError as err:
        if err.path == Path(path):
            raise
        raise WriteError(path, err.reason) from err.__cause__
    except Exception as err:
        if isinstance(err, errors) or (isinstance(err, OSError) and err.errno in NO_ROOM):
            raise WriteError(path, _reason(err)) from err
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_file_target(path: str | Path) -> None:
    """Raise if a file cannot replace what is at ``path``: a folder, unless it is a table written in parts
    (``part-*.parquet`` beside Parquet's ``_metadata``, as a torchrun export writes), which would be deleted."""
    path = Path(path)
    if not path.is_dir() or path.is_symlink():
        return
    names = [child.name for child in path.iterdir()]
    if "_metadata" not in names or not all(fnmatch(n, "part-*.parquet") for n in names if n != "_metadata"):
        raise IsADirectoryError(f"{path} is a folder; the output is one file: give a file name (nothing was written)")


def check_not_input(output: str | Path, inputs: Iterable[str | Path | None]) -> None:
    """Refuse an existing ``output`` that is one of ``inputs`` or lies in an input folder (a run directory, a data
    folder, a Zarr store), even with ``overwrite``: writing it would destroy what the command reads (``None``
    among ``inputs`` is skipped; local paths only)."""
    output = Path(output)
    if not output.exists():
        return
    for source in filter(None, inputs):
        if output.resolve().is_relative_to(Path(source).resolve()):
            raise ValueError(f"{output} is an input of this command ({source}); write the output elsewhere")


def check_output_file(output: str | Path, *, overwrite: bool, inputs: Iterable[str | Path | None] = ()) -> Path:
    """Refuse the file ``output`` before any work is done: when it is one of the command's ``inputs`` (or lies in
    an input folder: a run directory, a Zarr store), even with ``overwrite``, since writing it would destroy what
    the command reads; when it is a folder (:func:`check_file_target`); when it exists and not ``overwrite``."""
    output = Path(output)
    check_not_input(output, inputs)
    check_file_target(output)
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output} already exists; pass overwrite=True (--overwrite) to replace it")
    return output


def _replace(path: Path, new: Path) -> None:
    """Rename ``new`` (a file or folder beside ``path``) to ``path``. A file is renamed over in one step; a
    folder at ``path`` (or a folder replacing a file) cannot be, so what is there is first renamed aside and
    deleted only once ``new`` is in place: a kill at any moment leaves the old output or the new one whole (for
    the instant between the two renames, under a hidden name beside ``path``), never one half-deleted."""
    aside = None
    if (path.is_dir() and not path.is_symlink()) or (new.is_dir() and os.path.lexists(path)):
        aside = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent)) / path.name
        os.replace(path, aside)
    os.replace(new, path)
    if aside is not None:
        shutil.rmtree(aside.parent)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success it replaces ``path`` atomically (an earlier
    table in parts at ``path`` is removed first; any other folder there is refused: :func:`check_file_target`).

    On any exception the temporary file is removed and an existing ``path`` is left untouched.
    """
    path = Path(path)
    check_file_target(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; the final file gets the usual permissions
    try:
        with writing(path):
            yield Path(tmp)
            _replace(path, Path(tmp))
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


@contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it replaces ``path`` (on failure it is removed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; the final folder gets the usual permissions
    try:
        with writing(path):
            yield tmp
            _replace(path, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
