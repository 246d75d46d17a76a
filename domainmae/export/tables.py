"""Microscopy embedding tables: Parquet (streamed) and AnnData ``.h5ad``, in the pycytominer layout.

A row is a tile, an image (field) or a well: ``Metadata_*`` columns (everything scalar the manifest had,
plus ``Metadata_Field`` and, per tile, ``Metadata_TileRow``/``Metadata_TileCol``: the tile's top-left
pixel; with ``data.allow_channel_subsets``, ``Metadata_Channels``: the channels the row was embedded with)
and float32 feature columns ``emb_0000``... (:func:`feature_columns` finds them; pycytominer takes them as
``features=``, since its ``"infer"`` looks for CellProfiler compartments). Provenance (model config, checkpoint hash, recipe,
channels, pooling) is JSON under the Parquet key-value metadata key ``domainmae``, and ``uns["domainmae"]``
in AnnData.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..atomic import atomic_path
from .profile import LEVEL_STRATA, Groups, aggregate, consecutive_groups, singletons

if TYPE_CHECKING:
    from torch.utils.data import Dataset

    from .embed import Export

PREFIX = "emb_"
PROVENANCE_KEY = "domainmae"
ROWS_PER_GROUP = 8192  # Parquet row group size: big enough for fast scans, small enough to stream


def feature_names(dim: int) -> list[str]:
    """The names of ``dim`` embedding features: ``emb_0000``, ``emb_0001``, ... ."""
    return [f"{PREFIX}{i:04d}" for i in range(dim)]


def feature_columns(columns: Iterable[str]) -> list[str]:
    """The embedding feature columns among ``columns`` (a DataFrame iterates over its column names).

    Pass them to pycytominer by name, e.g. ``pycytominer.aggregate(df, features=feature_columns(df))``:
    its ``features="infer"`` looks for CellProfiler compartment measurements (``Cells_``, ``Nuclei_``,
    ``Cytoplasm_``), which embeddings are not (pycytominer names its own DeepProfiler features the same way).
    """
    return [c for c in columns if c.startswith(PREFIX)]


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool, np.generic))


def column_types(rows: Iterable[Mapping[str, Any]], source: str) -> dict[str, pa.DataType]:
    """The Arrow type of every key of ``rows`` (e.g. a manifest's), from all rows' values together.

    Streamed batches each see a few rows; typed from all of them up front, a column that is null or missing
    in one batch and a string in another gets one nullable type, and ints mixed with floats become doubles.
    Raises, naming ``source`` and the key, for values no one column can hold (e.g. numbers and strings).
    """
    values: dict[str, list[Any]] = {}
    for row in rows:
        for key, value in row.items():
            values.setdefault(key, []).append(value)
    types = {}
    for key, column in values.items():
        try:
            types[key] = pa.array(column).type
        except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
            raise ValueError(f"{source}: column {key!r} mixes values no one Parquet column holds: {err}") from err
    return types


def metadata_table(rows: list[dict[str, Any]], types: Mapping[str, pa.DataType]) -> pa.Table:
    """Rows -> a table whose first columns are ``types``' in those types (null where rows lack them),
    then the rows' other keys as Arrow infers them; so every batch of one file has one schema."""
    table = pa.Table.from_pylist(rows)
    typed = [table.column(k).cast(t) if k in table.column_names else pa.nulls(len(rows), t) for k, t in types.items()]
    rest = [k for k in table.column_names if k not in types]
    return pa.Table.from_arrays([*typed, *(table.column(k) for k in rest)], names=[*types, *rest])


def manifest_metadata(meta: Mapping[str, Any]) -> dict[str, Any]:
    """A field's ``Metadata_*`` cells that become columns (scalars: lists and paths do not)."""
    return {k: v for k, v in meta.items() if k.startswith("Metadata_") and _scalar(v)}


def metadata_row(metas: Sequence[dict[str, Any]], tile: bool) -> dict[str, Any]:
    """The ``Metadata_*`` cells of a group of tiles from one field (or one tile when ``tile``)."""
    first = metas[0]
    row = manifest_metadata(first)
    row["Metadata_Field"] = first["field"]
    if tile:
        row["Metadata_TileRow"], row["Metadata_TileCol"] = first["window"].row, first["window"].col
    return row


def feature_table(rows: list[dict[str, Any]], emb: np.ndarray, types: Mapping[str, pa.DataType]) -> pa.Table:
    """Metadata rows (columns ``types`` typed as given) + embeddings ``[N, D]`` -> one table with
    ``emb_XXXX`` float32 columns."""
    meta = metadata_table(rows, types)
    features = emb.astype(np.float32, copy=False)
    return pa.Table.from_arrays([*meta.columns, *features.T], names=[*meta.column_names, *feature_names(emb.shape[1])])


@contextmanager
def parquet_stream(path: Path, provenance: dict[str, Any]) -> Iterator[Callable[[pa.Table], None]]:
    """Yield ``write(table)``; tables are buffered into row groups of ``ROWS_PER_GROUP`` rows and written
    to a temporary file that replaces ``path`` on success (nothing under ``path`` on failure)."""
    with atomic_path(path) as tmp:
        writer: pq.ParquetWriter | None = None
        buffered: list[pa.Table] = []

        def flush() -> None:
            nonlocal writer, buffered
            table = pa.concat_tables(buffered)
            buffered = []
            if writer is None:
                meta = {**(table.schema.metadata or {}), PROVENANCE_KEY: json.dumps(provenance)}
                writer = pq.ParquetWriter(tmp, table.schema.with_metadata(meta))
            writer.write_table(table, row_group_size=ROWS_PER_GROUP)

        def write(table: pa.Table) -> None:
            if buffered and table.schema != buffered[0].schema:
                try:
                    table = table.cast(buffered[0].schema)
                except (pa.ArrowInvalid, ValueError) as err:
                    raise ValueError(f"{path}: a batch's columns {table.schema} do not match the file's: {err}") from err
            buffered.append(table)
            if sum(t.num_rows for t in buffered) >= ROWS_PER_GROUP:
                flush()

        try:
            yield write
            if buffered:
                flush()
            if writer is None:
                raise ValueError(f"nothing to write to {path}: the data produced no rows")
        finally:
            if writer is not None:
                writer.close()


def _anndata() -> Any:
    try:
        import anndata
    except ImportError as err:
        raise ImportError(f"{err}: .h5ad files need anndata; pip install 'domainmae[h5ad]'") from err
    return anndata


def write_h5ad(path: Path, df: pd.DataFrame, features: Sequence[str], provenance: dict[str, Any]) -> Path:
    """AnnData with ``obs`` = the non-feature columns, ``X`` = features float32, ``uns["domainmae"]`` = provenance
    (a JSON string: provenance holds None values, which HDF5 attributes cannot)."""
    obs = df.drop(columns=list(features)).reset_index(drop=True)
    for column in obs.columns:
        if obs[column].map(lambda v: isinstance(v, (list, tuple, np.ndarray))).any():
            raise ValueError(f"obs column {column!r} holds lists, which h5ad cannot store; write {path.stem}.parquet")
    anndata = _anndata()
    obs.index = obs.index.astype(str)
    adata = anndata.AnnData(X=df[list(features)].to_numpy(np.float32), obs=obs,
                            var=pd.DataFrame(index=list(features)), uns={PROVENANCE_KEY: json.dumps(provenance)})  # fmt: skip
    with atomic_path(path) as tmp:
        # pandas 3 stores text as nullable string arrays; anndata writes them only when asked to.
        with anndata.settings.override(allow_write_nullable_strings=True):
            adata.write_h5ad(tmp)
    return path


def write_embeddings(path: str | Path, df: pd.DataFrame, features: Sequence[str], provenance: dict[str, Any]) -> Path:
    """Write a whole table (features as columns) to Parquet or ``.h5ad``, by suffix."""
    path = Path(path)
    if path.suffix.lower() == ".h5ad":
        return write_h5ad(path, df, features, provenance)
    with parquet_stream(path, provenance) as write:
        write(pa.Table.from_pandas(df, preserve_index=False))
    return path


def read_embeddings(path: str | Path) -> tuple[pd.DataFrame, list[str], dict[str, Any]]:
    """``(table, feature column names, provenance)`` of a Parquet, GeoParquet or ``.h5ad`` embeddings file.

    A GeoParquet ``embedding`` list column is spread into ``emb_XXXX`` columns (geometry is left out).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"embeddings file not found: {path}")
    if path.suffix.lower() == ".h5ad":
        adata = _anndata().read_h5ad(path)
        features = list(map(str, adata.var_names))
        x = pd.DataFrame(np.asarray(adata.X, dtype=np.float32), columns=features, index=adata.obs.index)
        provenance = json.loads(adata.uns.get(PROVENANCE_KEY, "{}"))
        return pd.concat([adata.obs, x], axis=1).reset_index(drop=True), features, provenance
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise ValueError(f"cannot read embeddings file {path}: {err}") from err
    provenance = json.loads((table.schema.metadata or {}).get(PROVENANCE_KEY.encode(), b"{}"))
    if "embedding" in table.column_names:
        emb = np.stack(table.column("embedding").to_numpy(zero_copy_only=False)).astype(np.float32)
        features = feature_names(emb.shape[1])
        meta = table.drop_columns([c for c in ("embedding", "geometry") if c in table.column_names]).to_pandas()
        return pd.concat([meta, pd.DataFrame(emb, columns=features)], axis=1), features, provenance
    features = feature_columns(table.column_names)
    if not features:
        raise ValueError(f"{path} has no feature columns ({PREFIX}XXXX) and no 'embedding' column")
    return table.to_pandas(), features, provenance


def write_microscopy(export: Export, items: Dataset, output: Path, *, pool: str, fmt: str, level: str) -> Path:
    """Stream microscopy embeddings at ``level`` into Parquet, or gather them into ``.h5ad``."""
    from .embed import embedding_stream

    types = column_types((manifest_metadata(f.meta) for f in items.dataset.fields), f"data {export.recipe.data.path}")
    stream = embedding_stream(export, items, pool)
    groups: Groups = singletons(stream) if level == "tile" else consecutive_groups(stream, lambda m: m["field"])
    tables = (feature_table([metadata_row(g, level == "tile") for g in metas], emb, types) for metas, emb in groups)
    if fmt == "parquet" and level != "well":
        with parquet_stream(output, export.provenance) as write:
            for table in tables:
                write(table)
        return output
    # AnnData writes whole arrays, and wells may span non-adjacent fields: gather (tiles or images) here.
    df = pa.concat_tables(tables).to_pandas()
    features = feature_columns(df.columns)
    if level == "well":
        df = aggregate(df, features, LEVEL_STRATA["well"])
    return write_embeddings(output, df, features, export.provenance)
