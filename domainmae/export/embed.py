"""``embed()``: a trained encoder over every field or scene, streamed into an embeddings file.

The orchestrator: it resolves the checkpoint, recipe, channels and output format, builds the stream
(:mod:`~domainmae.export.stream`), computes what the writer needs up front (column types from the
manifest or scenes, the footprint CRS, the patch grid), and hands the stream to the writer that
:data:`WRITERS` names for the format (:mod:`~domainmae.export.writers`). A new output format is a
writer in ``writers/``, its entries in :mod:`.formats` (``FORMATS``, ``SUFFIXES``; ``PARTITIONED`` if several
torchrun processes can write it in parts: :mod:`~domainmae.export.parts`) and in :data:`WRITERS`.
The data are tiled deterministically (grid windows, no masking, no augmentation) and normalised
exactly as in training (the run's recipe and band statistics).
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import pyarrow as pa
import torch
from affine import Affine

from .. import __version__
from ..atomic import check_not_input
from ..data.geo import Grid
from ..data.loader import TransformedItems
from ..data.remote import is_url
from ..data.windows import WindowDataset
from ..distributed import DistInfo
from ..models import MaskedAutoencoder, create_model
from ..models.mae import POOLS
from ..pipeline import microscopy_fields, normalizer, sentinel_scenes
from ..recipes import Recipe, resolve_recipe
from ..runtime import Trained, load_trained
from .formats import PARTITIONED, RASTERS, SUFFIXES, resolve_format
from .parts import conform, join_processes, owned, write_raster_parts, write_table_parts
from .profile import LEVEL_STRATA, aggregate, apply_steps
from .raw import raw_feature_names
from .stream import (
    Export,
    Features,
    blended_rows,
    consecutive_groups,
    embedding_stream,
    model_channels,
    scene_meta,
    singletons,
)
from .writers.geoparquet import chip_rows, footprint_crs, parse_crs, scene_name, write_geoparquet
from .writers.raster import (
    RASTER_SUFFIXES,
    SceneStrips,
    check_raster_target,
    read_embedding_raster,
    write_geotiff,
    write_int8_geotiff,
    write_zarr,
)
from .writers.tables import (
    column_types,
    feature_columns,
    field_tables,
    manifest_types,
    read_embeddings,
    require_anndata,
    write_embeddings,
    write_h5ad,
    write_parquet,
)

Level = Literal["tile", "image", "well"]
Baseline = Literal["raw", "random"]
#: Format -> writer (``geotiff-int8``: GeoTIFF with ``dtype="int8"``). Table writers take row tables, the
#: GeoParquet writer grouped (metas, embeddings) batches, raster writers one scene's strips: the feeders
#: below (``embed_fields``, ``embed_windows``, ``embed_rasters``) shape the stream for each.
WRITERS: dict[str, Callable[..., Any]] = {
    "parquet": write_parquet, "h5ad": write_h5ad, "geoparquet": write_geoparquet,
    "geotiff": write_geotiff, "geotiff-int8": write_int8_geotiff, "zarr": write_zarr,
}  # fmt: skip


def select_channel_names(
    model: MaskedAutoencoder, data_channels: Mapping[str, Sequence[str]], wanted: Sequence[str] | None
) -> dict[str, list[str]]:
    """``{sensor: names}`` to embed: ``wanted`` (any subset the model knows), else all the data's channels."""
    known = model_channels(model)
    missing = sorted(set(data_channels) - set(known))
    if missing:
        raise ValueError(f"the data has sensor(s) {missing} that the model does not know; it has {list(known)}")
    if wanted is None:
        return {s: list(names) for s, names in data_channels.items()}
    chosen: dict[str, list[str]] = {}
    for name in wanted:
        owners = [s for s, names in known.items() if names is not None and name in names]
        if not owners:
            stacked = [s for s, names in known.items() if names is None]
            hint = f"; sensor(s) {stacked} stack channels and cannot take a subset" if stacked else ""
            raise ValueError(f"channel {name!r} is not known to the model; it knows {known}{hint}")
        if len(owners) > 1:
            raise ValueError(f"channel {name!r} is ambiguous: sensors {owners} all have it")
        if name not in data_channels.get(owners[0], ()):
            raise ValueError(f"channel {name!r} of sensor {owners[0]!r} is not in the data: {dict(data_channels)}")
        chosen.setdefault(owners[0], []).append(name)
    return chosen


def recipe_channels(recipe: Recipe, model: MaskedAutoencoder) -> dict[str, list[str]]:
    """``{sensor: channels}`` the recipe's readers produce."""
    section = recipe.data
    if section.kind == "microscopy":
        (sensor,) = model.sensors
        return {sensor: list(section.channels or [])}
    return {s: [b["name"] if isinstance(b, dict) else b for b in bands] for s, bands in (section.sensors or {}).items()}


def export_sources(recipe: Recipe) -> list[Any]:
    """Every field (microscopy) or scene (EO) of the recipe's data, in order."""
    section = recipe.data
    return microscopy_fields(section) if section.kind == "microscopy" else sentinel_scenes(section)


def export_items(recipe: Recipe, sources: Sequence[Any], stride: int | None) -> TransformedItems:
    """Items (lists of normalised samples) in a fixed order: every grid tile of every field/scene of ``sources``."""
    section = recipe.data
    if section.normalize == "stats" and not section.band_stats:
        raise ValueError(f"recipe {recipe.name!r} has no data.band_stats; the run should have stored them")
    normalize = normalizer(section, section.band_stats)
    tiles = WindowDataset(sources, section.crop_size, sampling="grid", stride=stride, on_error=section.on_error)
    return TransformedItems(tiles, normalize)


def file_sha256(path: Path) -> str:
    """SHA-256 of a weights file, or of a sharded checkpoint folder: its files' names and bytes, in name order."""
    digest = hashlib.sha256()
    folder = path.is_dir()
    for file in sorted(p for p in path.rglob("*") if p.is_file()) if folder else [path]:
        if folder:  # a name ends with NUL, so no file's bytes can pass for another's name
            digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        with open(file, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def build_provenance(trained: Trained, recipe: Recipe, **details: Any) -> dict[str, Any]:
    """What made a file: model config, weights file (checkpoint or safetensors)/hash/step, recipe, export settings."""
    return {
        "domainmae_version": __version__,
        "checkpoint": str(trained.file),
        "checkpoint_sha256": file_sha256(trained.file),
        "step": trained.step,
        "recipe": recipe.name,
        "data_path": recipe.data.path,
        "model_config": trained.model.config.to_dict(),
        **details,
    }


def embed(
    checkpoint: str | Path,
    *,
    output: str | Path,
    data: str | Path | None = None,
    pool: Literal["mean", "cls", "channels"] = "mean",
    level: Level = "tile",
    format: str | None = None,  # noqa: A002 - the CLI's word
    batch_size: int = 64,
    device: str = "auto",
    channels: Sequence[str] | None = None,
    stride: int | None = None,
    crs: str | None = None,
    dtype: Literal["float32", "int8"] = "float32",
    overrides: Iterable[str] = (),
    overwrite: bool = False,
    progress: bool = True,
    features: Features = "model",
    seed: int = 0,
) -> Path:
    """Embed every field (microscopy) or scene (EO) of a run's data with its checkpoint; return ``output``.

    Args:
        checkpoint: run directory, ``.ckpt`` file, or exported model folder (``export_model``) or its Hub id.
        output: ``.parquet``/``.h5ad`` (microscopy: one row per tile/image/well, ``Metadata_*`` + ``emb_XXXX``),
            ``.parquet`` (EO: GeoParquet of window footprints), ``.tif`` or ``.zarr`` (EO: per-patch embedding
            raster ``[D, H/p, W/p]``, nodata where a patch holds no valid pixel; a folder of
            ``<scene>.tif``/``<scene>.zarr`` when there are several scenes, with ``format`` naming the kind).
            ``format`` overrides the suffix. Under torchrun with several processes, a ``.parquet`` output is a
            folder of one part per process plus ``_metadata``, read as one table, and each process writes its own
            scenes' rasters (:mod:`~domainmae.export.parts`); ``.h5ad`` is refused.
        data: dataset path (default: the run's own ``data.path``); ``overrides`` are further recipe
            ``key=value`` settings (e.g. ``data.format=pattern``).
        pool: ``mean`` of patch tokens, the ``cls`` token, or ``channels`` (each chosen channel's token mean,
            side by side: C x D columns) (tables; rasters are per patch).
        level: ``tile`` (one row per window), ``image`` (mean over a field's/scene's tiles) or ``well``
            (mean over a well's images, by ``Metadata_Plate``/``Metadata_Well``; microscopy).
        channels: embed only these channels (any subset the model knows); recorded in the file. When the
            recipe allows channel subsets (``data.allow_channel_subsets``), each field is embedded with those
            of the chosen channels (default: the vocabulary) it has, recorded per row in ``Metadata_Channels``;
            a field with none of them is an error naming it.
        stride: tiling stride in pixels (default: the crop size for tables, half of it for rasters).
        crs: GeoParquet only: reproject footprints to this CRS (e.g. ``EPSG:4326``).
        dtype: GeoTIFF only: ``float32`` or ``int8`` (per-band scale/offset from the min/max of the
            written values, which GDAL/QGIS/rasterio apply when reading; error <= half a step).
        overwrite: replace an existing ``output`` (otherwise a FileExistsError); a folder only when it is an
            earlier raster export (:func:`~.writers.raster.check_raster_target`).
        features: ``model`` (the checkpoint's embeddings), ``raw`` (per chosen channel: mean, std and the
            5/25/50/75/95th percentiles of each normalised tile's valid pixels, or of each patch's in a raster;
            no model forward) or ``random`` (the run's architecture freshly initialised from ``seed``). Baselines
            for ``evaluate``: same rows, order and formats; the provenance records ``features`` (and ``seed``).
            :func:`embed_baselines` makes them for the rows of an existing embeddings file.
    """
    output = Path(output)
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output} already exists; pass overwrite=True (--overwrite) to replace it")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
    if dtype not in ("float32", "int8"):
        raise ValueError(f"dtype must be 'float32' or 'int8', got {dtype!r}")
    if features not in ("model", "raw", "random"):
        raise ValueError(f"features must be 'model', 'raw' or 'random', got {features!r}")
    info = join_processes(device)  # under torchrun: this rank's part; else the whole export
    dev = info.device
    trained = load_trained(checkpoint, dev)
    model = trained.model
    if features == "random":
        with torch.random.fork_rng(devices=[]):  # the caller's random state stays as it was
            torch.manual_seed(seed)
            model = create_model(model.config).to(dev).eval()
    overrides = list(overrides)
    recipe = resolve_recipe(trained.recipe, [*([f"data.path={data}"] if data else []), *overrides])
    kind = recipe.data.kind
    fmt = resolve_format(output, format, kind)
    if fmt == "h5ad":
        require_anndata()  # now, not once every image is embedded
    if info.world > 1 and fmt not in PARTITIONED:
        raise ValueError(f"{output}: {fmt} cannot be written in parts by {info.world} processes (torchrun); write "
                         ".parquet, which becomes a folder of parts read as one table, or run one process")  # fmt: skip
    levels = ("tile", "image", "well") if kind == "microscopy" else ("tile", "image")
    if level not in levels:
        raise ValueError(f"level {level!r} does not fit {kind} data; choose one of {', '.join(levels)}")
    if crs is not None:
        if fmt != "geoparquet":
            raise ValueError(f"crs= reprojects GeoParquet footprints; {fmt} output keeps the source CRS")
        parse_crs(crs)  # now, not when the footprints are written after every window was embedded
    if dtype == "int8" and fmt != "geotiff":
        raise ValueError(f"dtype='int8' is a GeoTIFF option; {fmt} output {output} is float32")
    chosen = select_channel_names(model, recipe_channels(recipe, model), channels)
    raster = fmt in RASTERS
    check_not_input(output, [path for path in (recipe.data.path, checkpoint) if not is_url(path)])
    if raster and overwrite:
        check_raster_target(output)
    widths = "features='raw'" if features == "raw" else "pool='channels'" if pool == "channels" and not raster else None
    if widths and recipe.data.allow_channel_subsets:  # their width is per channel: every row needs the same set
        raise ValueError(f"{widths} needs one channel set for every row of {output}, and recipe "
                         f"{recipe.name!r} allows fields with channel subsets; embed a --channels set every field has")
    # Enough to embed the same rows again (embed_baselines): the source as given, overrides, level, stride.
    source = Path(checkpoint).resolve() if Path(checkpoint).exists() else checkpoint
    extra = {"feature_names": raw_feature_names(chosen)} if features == "raw" else {}
    provenance = build_provenance(trained, recipe, channels=chosen, pool=None if raster else pool,
                                  level="patch" if raster else level, crop_size=recipe.data.crop_size,
                                  stride=stride, format=fmt, dtype=dtype, crs=crs, source=str(source),
                                  overrides=overrides, channels_requested=list(channels) if channels else None,
                                  features=features,
                                  seed=seed if features == "random" else None, **extra)  # fmt: skip
    export = Export(model, recipe, chosen, dev, batch_size, progress and info.is_main, features)

    sources = export_sources(recipe)
    one_file = raster and output.suffix.lower() in RASTER_SUFFIXES[fmt]
    items = export_items(recipe, owned(sources, info, level=level, one_file=one_file), stride)
    write = WRITERS[f"{fmt}-int8" if dtype == "int8" else fmt]
    if raster:
        return embed_rasters(export, items, output, write, provenance, info, stride=stride,
                             suffixes=RASTER_SUFFIXES[fmt])  # fmt: skip
    if kind == "sentinel":
        return embed_windows(export, items, output, write, provenance, info, sources=sources, pool=pool, level=level,
                             crs=crs)  # fmt: skip
    return embed_fields(export, items, output, write, provenance, info, sources=sources, pool=pool, level=level)


def _provenance(path: Path, raster: bool) -> dict[str, Any]:
    """The provenance an embeddings file records (a per-patch raster, or a table)."""
    return read_embedding_raster(path)[3] if raster else read_embeddings(path)[2]


def embed_baselines(
    file: str | Path, names: Sequence[Baseline], folder: str | Path, *, seed: int = 0
) -> dict[str, Path]:
    """Embed the rows of the embeddings ``file`` again as each baseline of ``names`` into ``folder``; return
    ``{name: baseline file}``, for ``evaluate(file, ..., against=files.items())``.

    ``raw`` and ``random`` are ``embed(features=...)`` (``random`` initialised from ``seed``) with the settings
    the file's provenance records (checkpoint, data, pool, level, stride, channels, format), so that they hold
    the same rows in the same order, which ``evaluate`` checks; a per-patch raster's baseline is the same
    scene's raster. A file made by ``profile`` (aggregated and/or normalised) gets baselines through the same
    recorded steps, so they are compared at its level and in its units. Here, not in ``evaluate``: making them
    needs the model and the data, reading them does not.
    """
    unknown = [name for name in names if name not in ("raw", "random")]
    if unknown:
        raise ValueError(f"baselines must be 'raw' and/or 'random', got {unknown}")
    file, folder = Path(file), Path(folder)
    raster = SUFFIXES.get(file.suffix.lower()) in RASTERS
    provenance = _provenance(file, raster)
    source = provenance.get("source") or provenance.get("checkpoint")
    if not source:
        raise ValueError(f"{file} has no 'checkpoint' in its provenance, so its baselines cannot be embedded; "
                         "baselines need a file written by domainmae embed")  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for features in names:
        target = folder / (features if raster else f"{features}{file.suffix}")  # rasters: a folder of scenes
        out = embed(source, output=target, data=provenance.get("data_path"),
                    pool=provenance.get("pool") or "mean", level="tile" if raster else provenance.get("level", "tile"),
                    format=provenance.get("format"), channels=provenance.get("channels_requested"),
                    stride=provenance.get("stride"), crs=provenance.get("crs"),
                    overrides=provenance.get("overrides", ()), dtype=provenance.get("dtype", "float32"),
                    features=features, seed=seed, progress=False)  # fmt: skip
        if raster:
            out = out / f"{provenance.get('scene_id', file.stem)}{file.suffix}"
        elif provenance.get("profile"):  # aggregated and/or normalised by `profile`: the baseline is too
            df, columns, recorded = read_embeddings(out)
            steps = provenance["profile"]
            write_embeddings(out, *apply_steps(df, columns, steps), {**recorded, "profile": steps})
        made = _provenance(out, raster).get("checkpoint_sha256")
        if provenance.get("checkpoint_sha256") not in (None, made):
            raise ValueError(f"{source} is not the checkpoint {file} was embedded with (its SHA-256 differs)")
        files[features] = out
    return files


def embed_fields(export: Export, items: TransformedItems, output: Path, write: Callable[..., Path],
                 provenance: dict[str, Any], info: DistInfo, *, sources: Sequence[Any], pool: str,
                 level: Level) -> Path:  # fmt: skip
    """Microscopy rows at ``level`` (tiles, images or wells) of ``items`` (this rank's fields) as tables, into a
    table writer (Parquet, h5ad); ``sources``: every field of the export, which types the columns."""
    # Typed from the whole manifest up front: a column null in the first batches (or in one rank's part)
    # still gets the right type.
    types = manifest_types((f.meta for f in sources), f"data {export.recipe.data.path}")
    stream = embedding_stream(export, items, pool)
    groups = singletons(stream) if level == "tile" else consecutive_groups(stream, lambda m: m["field"])
    tables: Iterable[pa.Table] = field_tables(groups, types, tile=level == "tile")
    if level == "well":  # wells may span non-adjacent fields: gather the images, then average per well
        tables = conform(info, lambda: well_frame(tables), output)
    return write_table_parts(output, info, write, tables, provenance)


def well_frame(tables: Iterable[pa.Table]) -> pd.DataFrame | None:
    """Image rows -> one row per well (features averaged; columns constant within every well kept); None
    without rows."""
    gathered = list(tables)
    if not gathered:
        return None
    df = pa.concat_tables(gathered).to_pandas()
    return aggregate(df, feature_columns(df.columns), LEVEL_STRATA["well"])


def embed_windows(export: Export, items: TransformedItems, output: Path, write: Callable[..., Path],
                  provenance: dict[str, Any], info: DistInfo, *, sources: Sequence[Any], pool: str, level: Level,
                  crs: str | None) -> Path:  # fmt: skip
    """EO windows (``level="tile"``) or scenes (``"image"``) of ``items`` (this rank's scenes) with their
    footprints, into the GeoParquet writer; ``sources``: every scene, which sets the CRS and column types."""
    target = footprint_crs({scene.name: scene.grid.crs for scene in sources}, crs, output)
    sensors = list(export.channels)
    # Columns typed from every scene up front: a batch of undated scenes then still has a timestamp column.
    types = column_types(chip_rows([[scene_meta(s)] for s in sources], sensors), f"data {export.recipe.data.path}")
    stream = embedding_stream(export, items, pool)
    groups = singletons(stream) if level == "tile" else consecutive_groups(stream, scene_name)
    return write_table_parts(output, info, write, groups, provenance, types=types, sensors=sensors, crs=target)


def embed_rasters(export: Export, items: TransformedItems, output: Path, write: Callable[..., None],
                  provenance: dict[str, Any], info: DistInfo, *, stride: int | None,
                  suffixes: Sequence[str]) -> Path:  # fmt: skip
    """Each scene of ``items`` (this rank's) as blended per-patch embeddings into a raster writer: ``output``
    (one scene) or ``output/<scene>``."""
    p, size = export.model.patch_size, export.recipe.data.crop_size
    stride = stride if stride is not None else max(p, size // 2 // p * p)
    if stride % p or not 0 < stride <= size:
        raise ValueError(f"raster stride must be a multiple of the patch size {p} between {p} and {size}, got {stride}")
    scenes = []
    for reader in items.dataset.readers:
        grid = reader.source.grid
        # The patch grid: the scene transform scaled by the patch size, so the raster overlays the source.
        patches = Grid(grid.crs, grid.transform @ Affine.scale(p), grid.height // p, grid.width // p)
        strips = blended_rows(export, reader, items.transform, stride)  # lazy: a scene is embedded as it is written
        # window: the encoder's input side, how far beyond a patch the pixels that made it reach (evaluate's gap).
        scene_provenance = {**provenance, "scene_id": reader.source.name, "stride": stride, "window": size}
        scenes.append(SceneStrips(reader.source.name, patches, export.dim, strips, scene_provenance))
    return write_raster_parts(output, info, scenes, write, suffixes)
