"""Profiles from embeddings: aggregation to image/well level and normalisation against negative controls.

The tables are the pycytominer layout (``Metadata_*`` columns plus feature columns), so these steps
and pycytominer's ``aggregate``/``normalize`` are interchangeable; these run on our files without it.

* :func:`aggregate`: mean or median of the features per group (``strata`` columns), keeping every other
  column that is constant within each group (so e.g. ``Metadata_pert_type`` survives well aggregation).
* :func:`normalize`: ``center_scale`` - per batch, subtract the controls' mean and divide by their
  standard deviation; ``tvn`` (typical variation normalisation) - PCA fitted on all controls, whitened,
  then the same per-batch center-scale on the controls (as in the EFAAR / CA-MAE evaluations).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler

from ..atomic import check_output_file
from .writers.tables import IMAGE_COLUMN, check_table_name, read_embeddings, with_embeddings, write_embeddings

log = logging.getLogger(__name__)

Reduce = Literal["mean", "median"]
#: Group columns of the named aggregation levels.
LEVEL_STRATA = {"image": [IMAGE_COLUMN], "well": ["Metadata_Plate", "Metadata_Well"]}
#: How a normalisation step against every row (no controls query) is recorded.
ALL_ROWS = "all rows"


def _columns(df: pd.DataFrame, names: Sequence[str], what: str) -> list[str]:
    missing = [c for c in names if c not in df.columns]
    if missing:
        raise KeyError(f"{what} columns {missing} are not in the table; it has {list(df.columns)}")
    return list(names)


def aggregate(df: pd.DataFrame, features: Sequence[str], strata: Sequence[str], method: Reduce = "mean") -> pd.DataFrame:
    """One row per ``strata`` group: features reduced by ``method``; constant columns kept, others dropped."""
    if method not in ("mean", "median"):
        raise ValueError(f"aggregation method must be 'mean' or 'median', got {method!r}")
    strata = _columns(df, strata, "strata")
    # observed: categorical strata (AnnData reads strings back so) would otherwise make a row for every
    # combination of their categories, wells that do not exist.
    grouped = df.groupby(strata, sort=False, dropna=False, observed=True)
    others = [c for c in df.columns if c not in strata and c not in features]
    counts = df[others].apply(_hashable).groupby([df[s] for s in strata], sort=False, dropna=False,
                                                 observed=True).nunique(dropna=False)  # fmt: skip
    constant = [c for c in others if counts[c].le(1).all()]
    reduced = grouped[list(features)].agg(method).astype(np.float32)
    return grouped[constant].first().join(reduced).reset_index()


def _hashable(column: pd.Series) -> pd.Series:
    """List cells (a GeoParquet chip's ``sensors``, ``labels``) as tuples, so a group can count its values."""
    if column.dtype != object:
        return column
    return column.map(lambda v: tuple(v) if isinstance(v, (list, np.ndarray)) else v)


def normalize(
    df: pd.DataFrame, features: Sequence[str], *, method: Literal["center_scale", "tvn"], controls: str | None = None,
    batch: str | None = None,
) -> tuple[pd.DataFrame, list[str]]:  # fmt: skip
    """Normalise features against the rows selected by the ``controls`` query (pandas ``eval`` syntax), or
    against all rows without one (pycytominer's ``samples="all"``, for plates without negative controls).

    Returns the table with new float32 feature columns and their names: center-scale keeps each feature's
    name; TVN keeps the principal components with non-zero control variance, at most ``min(#controls - 1,
    D)``, numbered from 0 with the input's prefix. A missing batch value is a batch of its own.
    """
    if method not in ("center_scale", "tvn"):
        raise ValueError(f"normalisation must be 'center_scale' or 'tvn', got {method!r}")
    try:
        is_control = np.ones(len(df), bool) if controls is None else np.asarray(df.eval(controls), dtype=bool)
    except Exception as err:  # pandas raises many types for a bad query; name the query
        raise ValueError(f"cannot evaluate the controls query {controls!r} on columns {list(df.columns)}: {err}") from err
    x = df[list(features)].to_numpy(np.float64)
    if not is_control.any():
        raise ValueError(f"the controls query {controls!r} selects no rows")
    if method == "tvn":
        # Keep only directions the controls vary in: n controls span at most n - 1 after centering, and
        # whitening a zero-variance component would divide by ~0.
        variance = PCA().fit(x[is_control]).explained_variance_
        rank = int((variance > variance[0] * 1e-6).sum())
        x = PCA(n_components=rank, whiten=True).fit(x[is_control]).transform(x)
    # factorize keeps NaN as a value (NaN == NaN is False: those rows matched no batch, controls or not).
    codes, values = pd.factorize(df[_columns(df, [batch], "batch")[0]] if batch else np.zeros(len(df)),
                                 use_na_sentinel=False)  # fmt: skip
    out = np.empty_like(x)
    for code, value in enumerate(values):
        rows = codes == code
        if not (rows & is_control).any():
            raise ValueError(f"batch {batch}={value!r} has no control rows ({controls!r}) to normalise against")
        out[rows] = StandardScaler().fit(x[rows & is_control]).transform(x[rows])
    prefix = features[0].rstrip("0123456789")
    names = list(features) if method == "center_scale" else [f"{prefix}{i:04d}" for i in range(out.shape[1])]
    meta = df.drop(columns=list(features))
    return pd.concat([meta, pd.DataFrame(out.astype(np.float32), columns=names, index=df.index)], axis=1), names


def profile(
    input: str | Path,  # noqa: A002 - the CLI's word
    output: str | Path,
    *,
    level: Literal["image", "well"] | None = None,
    strata: Sequence[str] | None = None,
    method: Reduce = "mean",
    normalization: Literal["center_scale", "tvn"] | None = None,
    controls: str | None = None,
    batch: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Aggregate (``level`` or explicit ``strata``) and/or normalise an embeddings file into ``output``.

    Input and output are Parquet or ``.h5ad`` (by suffix). Provenance is carried over with the steps added.
    """
    output = check_table_name(check_output_file(output, overwrite=overwrite))
    steps = profile_steps(level=level, strata=strata, method=method, normalization=normalization, controls=controls,
                          batch=batch)  # fmt: skip
    df, features, provenance = read_embeddings(input)
    df, features = apply_steps(df, features, steps)
    provenance = {**provenance, "profile": [*provenance.get("profile", []), *steps]}
    if output.suffix.lower() != ".h5ad":
        if not any("aggregate" in step for step in steps):  # the same rows: GeoParquet chips keep their footprints
            if written := with_embeddings(input, df[features].to_numpy(), output, provenance):
                return written
        elif provenance.get("format") == "geoparquet":
            log.warning("%s: footprints are not aggregated; %s has no geometry", input, output)
    return write_embeddings(output, df, features, provenance)


def profile_steps(
    *, level: Literal["image", "well"] | None = None, strata: Sequence[str] | None = None, method: Reduce = "mean",
    normalization: Literal["center_scale", "tvn"] | None = None, controls: str | None = None, batch: str | None = None,
) -> list[dict[str, Any]]:  # fmt: skip
    """The steps :func:`profile` takes, as its output's provenance records them (``"profile"``): an
    aggregation and/or a normalisation."""
    if level is not None and strata is not None:
        raise ValueError("give level or strata, not both")
    steps: list[dict[str, Any]] = []
    strata = LEVEL_STRATA[level] if level is not None else strata
    if strata:
        steps.append({"aggregate": list(strata), "method": method})
    if normalization is not None:
        steps.append({"normalize": normalization, "controls": controls or ALL_ROWS, "batch": batch})
    if not steps:
        raise ValueError("nothing to do: give level/strata and/or a normalisation")
    return steps


def apply_steps(df: pd.DataFrame, features: Sequence[str], steps: Sequence[dict[str, Any]]) -> tuple[pd.DataFrame, list[str]]:
    """``df`` through recorded profile ``steps`` in order (:func:`profile_steps`); returns the table and its
    feature columns. ``embed_baselines`` replays a profiled file's steps on its baselines with this."""
    features = list(features)
    for step in steps:
        if "aggregate" in step:
            df = aggregate(df, features, step["aggregate"], step["method"])
        else:
            controls = None if step["controls"] == ALL_ROWS else step["controls"]
            df, features = normalize(df, features, method=step["normalize"], controls=controls, batch=step["batch"])
    return df, features
