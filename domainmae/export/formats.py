"""Output formats of ``embed``: which formats each kind of data can be written as, and the one an output's
name and ``format=`` (``--format``) choose. Apart from :mod:`.embed` so the CLI reads them without the model."""
from __future__ import annotations

from pathlib import Path

#: Output formats by data kind; the first one is what ``.parquet`` means for that kind.
FORMATS = {"microscopy": ("parquet", "h5ad"), "sentinel": ("geoparquet", "geotiff", "zarr")}
SUFFIXES = {".parquet": "parquet", ".pq": "parquet", ".h5ad": "h5ad", ".tif": "geotiff", ".tiff": "geotiff",
            ".zarr": "zarr"}  # fmt: skip
RASTERS = ("geotiff", "zarr")  # per-patch outputs: no pooling, one value per patch
PARTITIONED = ("parquet", "geoparquet", *RASTERS)  # formats a torchrun launch writes as one part per process


def resolve_format(output: Path, format: str | None, kind: str) -> str:  # noqa: A002 - the CLI's word
    """The output format: ``format`` if given, else from the suffix; checked against the data kind and, for a
    given ``format``, against the suffix (readers go by the suffix: HDF5 in a ``.parquet`` file reads as nothing)."""
    allowed = FORMATS[kind]
    suffix = output.suffix.lower()
    if format is None:
        if suffix not in SUFFIXES:
            raise ValueError(f"cannot tell the format of {output} from its suffix; pass format= one of {allowed}")
        format = SUFFIXES[suffix]
        format = allowed[0] if format == "parquet" else format
    elif suffix in SUFFIXES or format not in RASTERS:  # a raster format may name a folder of scenes, any name
        written = "parquet" if format == "geoparquet" else format  # GeoParquet is Parquet, by its suffix too
        if SUFFIXES.get(suffix) != written:
            names = " or ".join(s for s, f in SUFFIXES.items() if f == written)
            raise ValueError(f"{output}: the suffix {suffix or '(none)'!r} does not fit format {format!r}; name it "
                             f"{names}{' (or a folder)' if format in RASTERS else ''}, or leave out format (--format)")
    if format not in allowed:
        raise ValueError(f"format {format!r} does not fit {kind} data ({output}); choose one of {', '.join(allowed)}")
    return format
