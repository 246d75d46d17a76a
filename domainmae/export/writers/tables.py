"""Embedding tables: Parquet (streamed) and AnnData ``.h5ad`` in the pycytominer layout, and reading them back.

A row is a tile, an image (field) or a well: ``Metadata_*`` columns (everything scalar the manifest had,
plus ``Metadata_Image``: the image's source, its file or manifest row, and per tile ``Metadata_TileRow``/
``Metadata_TileCol``: the tile's top-left pixel; with ``data.allow_channel_subsets``, ``Metadata_Channels``:
the channels the row was embedded with)
and float32 feature columns ``emb_0000``... (:func:`feature_columns` finds them; pycytominer takes them as
``features=``, since its ``"infer"`` looks for CellProfiler compartments). Provenance (model config, checkpoint hash, recipe,
channels, pooling) is JSON under the Parquet key-value metadata key ``domainmae``, and ``uns["domainmae"]``
in AnnData. The writers :func:`write_parquet` and :func:`write_h5ad` take batches of rows as Arrow tables
(:func:`field_tables` lays out grouped stream batches); :func:`write_embeddings` writes a whole DataFrame.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ...atomic import atomic_path
from ...deps import require

PREFIX = "emb_"
PROVENANCE_KEY = "domainmae"
ROWS_PER_GROUP = 8192  # Parquet row group size: big enough for fast scans, small enough to stream
TABLE_SUFFIXES = (".parquet", ".pq", ".h5ad")  # what write_embeddings writes, by suffix


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


def manifest_types(metas: Iterable[Mapping[str, Any]], source: str) -> dict[str, pa.DataType]:
    """:func:`column_types` of the fields' manifest cells (:func:`manifest_metadata`); a manifest column that
    the export writes itself (the image key, tile position, channels) is refused, naming ``source``."""
    types = column_types((manifest_metadata(meta) for meta in metas), source)
    if taken := [c for c in (IMAGE_COLUMN, *TILE_COLUMNS, CHANNELS_COLUMN) if c in types]:
        raise ValueError(f"{source}: its column {taken[0]!r} is one the export writes itself; rename it in the manifest")
    return types


def metadata_table(rows: list[dict[str, Any]], types: Mapping[str, pa.DataType]) -> pa.Table:
    """Rows -> a table whose first columns are ``types``' in those types (null where rows lack them),
    then the rows' other keys as Arrow infers them; so every batch of one file has one schema."""
    table = pa.Table.from_pylist(rows)
    typed = [table.column(k).cast(t) if k in table.column_names else pa.nulls(len(rows), t) for k, t in types.items()]
    rest = [k for k in table.column_names if k not in types]
    return pa.Table.from_arrays([*typed, *(table.column(k) for k in rest)], names=[*types, *rest])


#: Each row's image (its file or manifest row): the key image-level rows are grouped by. Not ``Metadata_Field``,
#: which CellProfiler manifests often use for the site.
IMAGE_COLUMN = "Metadata_Image"
TILE_COLUMNS = ("Metadata_TileRow", "Metadata_TileCol")
CHANNELS_COLUMN = "Metadata_Channels"  # per-row channel names, only when fields hold channel subsets


def manifest_metadata(meta: Mapping[str, Any]) -> dict[str, Any]:
    """A field's ``Metadata_*`` cells that become columns (scalars: lists and paths do not)."""
    return {k: v for k, v in meta.items() if k.startswith("Metadata_") and _scalar(v)}


def metadata_row(metas: Sequence[dict[str, Any]], tile: bool) -> dict[str, Any]:
    """The ``Metadata_*`` cells of a group of tiles from one field (or one tile when ``tile``)."""
    first = metas[0]
    row = manifest_metadata(first)
    row[IMAGE_COLUMN] = first["field"]
    if tile:
        row.update(zip(TILE_COLUMNS, (first["window"].row, first["window"].col)))
    return row


def field_tables(groups: Iterable[tuple[list[list[dict[str, Any]]], np.ndarray]], types: Mapping[str, pa.DataType],
                 *, tile: bool) -> Iterator[pa.Table]:  # fmt: skip
    """Grouped batches ``(the sample metas of each group, embeddings [G, D])`` -> one table of rows each: a
    group's ``Metadata_*`` cells (:func:`metadata_row`; ``types`` for the manifest's columns) and features."""
    for metas, emb in groups:
        yield feature_table([metadata_row(group, tile) for group in metas], emb, types)


def feature_table(rows: list[dict[str, Any]], emb: np.ndarray, types: Mapping[str, pa.DataType]) -> pa.Table:
    """Metadata rows (columns ``types`` typed as given) + embeddings ``[N, D]`` -> one table with
    ``emb_XXXX`` float32 columns."""
    meta = metadata_table(rows, types)
    features = emb.astype(np.float32, copy=False)
    return pa.Table.from_arrays([*meta.columns, *features.T], names=[*meta.column_names, *feature_names(emb.shape[1])])


def write_parquet(path: Path, tables: Iterable[pa.Table], provenance: dict[str, Any]) -> Path:
    """Stream ``tables`` (batches of rows, one schema) into one Parquet file with ``provenance``; return ``path``.

    Tables are buffered into row groups of ``ROWS_PER_GROUP`` rows, so memory holds one row group;
    the file is built under a temporary name that replaces ``path`` on success (nothing under ``path``
    on failure, including a failure of whatever produces ``tables``).
    """
    with atomic_path(path) as tmp:
        writer: pq.ParquetWriter | None = None
        buffered: list[pa.Table] = []
        try:
            for table in tables:
                if buffered and table.schema != buffered[0].schema:
                    try:
                        table = table.cast(buffered[0].schema)
                    except (pa.ArrowInvalid, ValueError) as err:
                        raise ValueError(f"{path}: a batch's columns {table.schema} do not match the file's: {err}") from err
                buffered.append(table)
                if sum(t.num_rows for t in buffered) >= ROWS_PER_GROUP:
                    writer = _write_row_group(writer, tmp, buffered, provenance)
                    buffered = []
            if buffered:
                writer = _write_row_group(writer, tmp, buffered, provenance)
            if writer is None:
                raise ValueError(f"nothing to write to {path}: the data produced no rows")
        finally:
            if writer is not None:
                writer.close()
    return path


def _write_row_group(
    writer: pq.ParquetWriter | None, path: Path, tables: list[pa.Table], provenance: dict[str, Any]
) -> pq.ParquetWriter:
    """Write ``tables`` as one row group, opening the writer (schema of the first batch + provenance) if needed."""
    table = pa.concat_tables(tables)
    if writer is None:
        meta = {**(table.schema.metadata or {}), PROVENANCE_KEY: json.dumps(provenance)}
        writer = pq.ParquetWriter(path, table.schema.with_metadata(meta))
    writer.write_table(table, row_group_size=ROWS_PER_GROUP)
    return writer


def require_anndata() -> Any:
    """anndata, or a :class:`~domainmae.deps.MissingDependencyError` that names the extra to install."""
    return require("anndata", ".h5ad files", "pip install 'domainmae[h5ad]'")


def write_h5ad(path: Path, tables: Iterable[pa.Table], provenance: dict[str, Any]) -> Path:
    """Gather ``tables`` (batches of rows) into one AnnData file (:func:`write_anndata`); return ``path``.

    AnnData writes whole arrays, so the rows are gathered here; the feature columns are the ``emb_XXXX`` ones.
    """
    df = pa.concat_tables(tables).to_pandas()
    return write_anndata(path, df, feature_columns(df.columns), provenance)


def write_anndata(path: Path, df: pd.DataFrame, features: Sequence[str], provenance: dict[str, Any]) -> Path:
    """AnnData with ``obs`` = the non-feature columns, ``X`` = features float32, ``uns["domainmae"]`` = provenance
    (a JSON string: provenance holds None values, which HDF5 attributes cannot)."""
    obs = df.drop(columns=list(features)).reset_index(drop=True)
    for column in obs.columns:
        if obs[column].map(lambda v: isinstance(v, (list, tuple, np.ndarray))).any():
            raise ValueError(f"obs column {column!r} holds lists, which h5ad cannot store; write {path.stem}.parquet")
    anndata = require_anndata()
    obs.index = obs.index.astype(str)
    adata = anndata.AnnData(X=df[list(features)].to_numpy(np.float32), obs=obs,
                            var=pd.DataFrame(index=list(features)), uns={PROVENANCE_KEY: json.dumps(provenance)})  # fmt: skip
    with atomic_path(path) as tmp:
        # pandas 3 stores text as nullable string arrays; anndata writes them only when asked to.
        with anndata.settings.override(allow_write_nullable_strings=True):
            adata.write_h5ad(tmp)
    return path


def check_table_name(path: str | Path) -> Path:
    """``path`` if its suffix names a table format :func:`write_embeddings` writes (it goes by the suffix: ``.h5ad``
    is AnnData and anything else Parquet, so ``prof.csv`` would hold Parquet); else an error naming both."""
    path = Path(path)
    if path.suffix.lower() not in TABLE_SUFFIXES:
        raise ValueError(f"{path}: embeddings are written as Parquet or AnnData, not {path.suffix or '(no suffix)'!r}; "
                         "name the output .parquet or .h5ad")
    return path


def write_embeddings(path: str | Path, df: pd.DataFrame, features: Sequence[str], provenance: dict[str, Any]) -> Path:
    """Write a whole table (features as columns) to Parquet or ``.h5ad``, by suffix."""
    path = Path(path)
    if path.suffix.lower() == ".h5ad":
        return write_anndata(path, df, features, provenance)
    return write_parquet(path, [pa.Table.from_pandas(df, preserve_index=False)], provenance)


def with_embeddings(source: str | Path, emb: np.ndarray, output: Path, provenance: dict[str, Any]) -> Path | None:
    """``source``'s rows with ``emb`` ``[N, D]`` (in its row order) as their ``embedding``, footprints and CRS
    kept, written as GeoParquet to ``output``; None when ``source`` is no GeoParquet file (no footprints)."""
    if Path(source).suffix.lower() == ".h5ad":
        return None
    table = pq.read_table(source)
    geo = (table.schema.metadata or {}).get(b"geo")
    if geo is None or "embedding" not in table.column_names:
        return None
    values = pa.FixedSizeListArray.from_arrays(pa.array(emb.astype(np.float32).ravel(), type=pa.float32()), emb.shape[1])
    table = table.set_column(table.column_names.index("embedding"), "embedding", values)
    return write_parquet(output, [table.replace_schema_metadata({"geo": geo})], provenance)


def read_embeddings(path: str | Path) -> tuple[pd.DataFrame, list[str], dict[str, Any]]:
    """``(table, feature column names, provenance)`` of a Parquet, GeoParquet or ``.h5ad`` embeddings file, or of
    a folder of Parquet parts (``embed`` under torchrun: its parts in order, one table).

    A GeoParquet ``embedding`` list column is spread into ``emb_XXXX`` columns (geometry is left out).
    """
    path = Path(path)
    if not (path.is_file() or (path.is_dir() and (path / "_metadata").is_file())):
        raise FileNotFoundError(f"embeddings file (or folder of Parquet parts with a _metadata file) not found: {path}")
    if path.suffix.lower() == ".h5ad":
        adata = require_anndata().read_h5ad(path)
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
