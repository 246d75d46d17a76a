"""An export split over the processes of a ``torchrun`` launch: who embeds what, and how the parts become one output.

* :func:`join_processes`: this process's place (rank, world, device) from torchrun's environment, joining
  the process group (the same setup as training, :func:`~domainmae.distributed.setup_distributed`); alone
  without torchrun.
* :func:`owned`: contiguous blocks of the units that own rows (a field, a well, a scene), so that every
  unit, and so every row that averages over it and every per-scene raster, is made by one process, and
  the parts in rank order hold the rows in the single-process order.
* :func:`write_table_parts` / :func:`write_raster_parts`: each rank streams its rows into
  ``part-<rank>.parquet`` (or its scenes' rasters) in one temporary folder beside the output; once every
  rank has succeeded, rank 0 writes the Parquet ``_metadata`` (every part's row groups) and renames the
  folder into place. pyarrow, pandas and geopandas read the folder as one table.
* :func:`on_every_rank`: run a step on every rank, then tell every rank how the others fared, so that a
  failure anywhere raises everywhere at the same step instead of leaving the others waiting in a
  collective, and nothing half-written replaces an existing output.

All ranks must see one filesystem (a shared one across nodes). One process calls the writers directly, so
its output is the same file as without this module.
"""
from __future__ import annotations

import atexit
import itertools
from collections.abc import Callable, Hashable, Iterable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch.distributed as dist

from ..atomic import atomic_dir
from ..distributed import DistInfo, cleanup_distributed, setup_distributed
from .profile import LEVEL_STRATA
from .writers.raster import SceneStrips, write_rasters, write_scenes

T = TypeVar("T")
S = TypeVar("S")
PART, PARTS = "part-{rank:05d}.parquet", "part-*.parquet"
METADATA = "_metadata"  # Parquet's summary file: every part's row groups; readers skip names starting with _


class RankFailed(ChildProcessError):
    """Another process of the launch failed; its error is in the message (and on its own stderr).

    A ``ChildProcessError`` (an ``OSError``) so the CLI prints it as one line like other input errors: the
    traceback that matters, if any, is the failing process's own."""


def join_processes(device: str) -> DistInfo:
    """This process's rank, world size and device; joins torchrun's process group (``WORLD_SIZE`` > 1) unless
    the caller already did, leaving it at exit, so that repeated exports in one process reuse it."""
    joined = dist.is_available() and dist.is_initialized()
    info = setup_distributed(device)
    if not joined and dist.is_available() and dist.is_initialized():
        atexit.register(cleanup_distributed)
    return info


def owned(sources: Sequence[S], info: DistInfo, *, level: str, one_file: bool) -> list[S]:
    """The fields/scenes whose rows this rank makes: contiguous blocks of the units that own rows.

    A unit is the field or scene, the well at ``level="well"`` (its row averages over its fields), or every
    source at once for a ``one_file`` raster (one rank writes it). Units in order of first appearance are cut
    into ``world`` blocks of near-equal count, so the parts in rank order hold the rows in the order one
    process writes them. Balanced by units, not by pixels.
    """
    keys: list[Hashable]
    if one_file:
        keys = [None] * len(sources)
    elif level == "well":
        keys = [tuple(source.meta.get(column) for column in LEVEL_STRATA["well"]) for source in sources]
    else:
        keys = list(range(len(sources)))
    units = list(dict.fromkeys(keys))
    mine = set(units[len(units) * info.rank // info.world : len(units) * (info.rank + 1) // info.world])
    return [source for source, key in zip(sources, keys) if key in mine]


def on_every_rank(info: DistInfo, step: Callable[[], T], what: Path) -> list[T]:
    """``step()`` on every rank; then each learns every rank's result (in rank order) or that one failed.

    A rank whose step raised re-raises its own error; the others raise :class:`RankFailed` naming the
    failed ranks and ``what`` (the output). Every rank therefore leaves at the same step, so the next
    collective is not waited for in vain. Results travel pickled: keep them small (paths, schemas).
    """
    if info.world == 1:
        return [step()]
    value: Any = None
    error: BaseException | None = None
    try:
        value = step()
    except BaseException as err:  # noqa: BLE001 - reported to the other ranks, then re-raised below
        error = err
    outcomes: list[Any] = [None] * info.world
    dist.all_gather_object(outcomes, (None if error is None else f"{type(error).__name__}: {error}", value))
    if error is not None:
        raise error
    failed = {rank: message for rank, (message, _) in enumerate(outcomes) if message is not None}
    if failed:
        listed = "; ".join(f"rank {rank}: {message}" for rank, message in failed.items())
        raise RankFailed(f"{what}: {len(failed)} of {info.world} processes failed ({listed}); {what} was not written")
    return [result for _, result in outcomes]


def write_parts(output: Path, info: DistInfo, write: Callable[[Path], None],
                finish: Callable[[Path], None] = lambda folder: None) -> Path:  # fmt: skip
    """Every rank's ``write(folder)`` into one temporary folder beside ``output``; once all succeeded, rank 0's
    ``finish(folder)``, then the folder replaces ``output``. On any failure the folder is removed and an
    existing ``output`` stays as it was. Returns ``output``."""
    try:
        with ExitStack() as stack:  # rank 0 holds the folder: removed on any exception, renamed by stack.close()
            (folder, *_) = on_every_rank(info, lambda: stack.enter_context(atomic_dir(output)) if info.is_main
                                         else None, output)  # fmt: skip
            on_every_rank(info, lambda: write(folder), output)

            def close() -> None:
                if info.is_main:
                    finish(folder)
                    stack.close()

            on_every_rank(info, close, output)
    except BaseException:
        # Every rank raises at the same step; wait until rank 0 has removed the folder, since torchrun stops the
        # other processes as soon as the failed one exits.
        dist.barrier()
        raise
    return output


def peek(rows: Iterable[T]) -> Iterable[T] | None:
    """``rows`` unchanged, or None when there are none (a rank that owns no unit, or whose units all failed
    to read under ``on_error=skip``), without consuming the stream."""
    rows = iter(rows)
    first = next(rows, None)
    return None if first is None else itertools.chain([first], rows)


def write_table_parts(output: Path, info: DistInfo, write: Callable[..., Path], rows: Iterable[Any],
                      provenance: dict[str, Any], **options: Any) -> Path:  # fmt: skip
    """A table writer (Parquet, GeoParquet) of ``rows``: ``output`` itself for one process, else a folder of
    ``part-<rank>.parquet`` (a rank with no rows writes none) with the same provenance and key-value
    metadata (e.g. GeoParquet's ``geo``) and a ``_metadata`` file. Returns ``output``."""
    if info.world == 1:
        return write(output, rows, provenance, **options)

    def part(folder: Path) -> None:
        mine = peek(rows)
        if mine is not None:
            write(folder / PART.format(rank=info.rank), mine, provenance, **options)

    return write_parts(output, info, part, finish=lambda folder: write_dataset_metadata(folder, output))


def write_dataset_metadata(folder: Path, output: Path) -> None:
    """``folder/_metadata``: the schema (with its key-value metadata) and every part's row groups, as Dask and
    Spark write it; raises, naming the parts, when there are none or their schemas differ."""
    parts = sorted(folder.glob(PARTS))
    if not parts:
        raise ValueError(f"nothing to write to {output}: the data produced no rows")
    footers = [pq.read_metadata(part) for part in parts]
    for part, footer in zip(parts, footers):
        if not footer.schema.equals(footers[0].schema):
            raise ValueError(f"{output}: {part.name} has other columns than {parts[0].name}: {footer.schema}")
        footer.set_file_path(part.name)
    schema = pq.read_schema(parts[0])
    pq.write_metadata(schema, folder / METADATA, metadata_collector=footers)


def conform(info: DistInfo, make: Callable[[], pd.DataFrame | None], output: Path) -> list[pa.Table]:
    """The rows ``make()`` gives this rank (None: none) as a table that the single-process table would hold.

    Only the columns every rank's rows have, each in the type all of them together take (ints beside a
    rank's floats become doubles, an all-null column takes the others' type): well aggregation keeps the
    columns constant within every well, which a rank judges on its own wells only. One process: as made.
    """
    made: list[pd.DataFrame] = []

    def schema() -> pa.Schema | None:
        made.extend(df for df in [make()] if df is not None)
        return pa.Schema.from_pandas(made[0], preserve_index=False) if made else None

    schemas = [s for s in on_every_rank(info, schema, output) if s is not None]
    if not made:
        return []
    (df,) = made
    if info.world == 1:
        return [pa.Table.from_pandas(df, preserve_index=False)]
    common = [name for name in df.columns if all(name in s.names for s in schemas)]
    unified = pa.unify_schemas(schemas, promote_options="permissive")
    target = pa.schema([unified.field(name) for name in common])
    return [pa.Table.from_pandas(df[common], schema=target, preserve_index=False)]


def write_raster_parts(output: Path, info: DistInfo, scenes: Sequence[SceneStrips], write: Callable[..., None],
                       suffixes: Sequence[str]) -> Path:  # fmt: skip
    """Each rank's scenes by the raster sink ``write``: ``output`` itself (one file: one rank owns its one scene,
    see :func:`owned`) or ``<scene>.<ext>`` files in one folder. Returns ``output``."""
    if info.world == 1:
        return write_rasters(output, scenes, write, suffixes)
    if output.suffix.lower() in suffixes:
        on_every_rank(info, lambda: write_rasters(output, scenes, write, suffixes) if scenes else None, output)
        return output
    return write_parts(output, info, lambda folder: write_scenes(folder, scenes, write, suffixes[0]))
