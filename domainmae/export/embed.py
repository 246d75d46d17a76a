"""``embed()``: a trained encoder over every field or scene, streamed into an embeddings file.

The data are tiled deterministically (grid windows, no masking, no augmentation) and normalised
exactly as in training (the run's recipe and band statistics). Samples are batched across fields,
embedded under ``torch.inference_mode`` (bf16 autocast on CUDA only) and handed to a writer batch by
batch, so memory holds one batch and one field's tiles, not the dataset. Every writer writes to a
temporary name beside the output and renames it at the end.

A batch never mixes channel sets: when fields hold different subsets of the channel vocabulary
(``data.allow_channel_subsets``), each field is embedded with the chosen channels it has, and every row
records them in a ``Metadata_Channels`` column (e.g. ``"DNA,PH3"``).
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .. import __version__
from ..data.fields import FieldCrops
from ..data.geo import SceneWindows
from ..data.loader import TransformedItems, collate_samples
from ..models import MaskedAutoencoder, create_model
from ..models.mae import POOLS
from ..pipeline import microscopy_fields, normalizer, sentinel_scenes
from ..recipes import Recipe, resolve_recipe
from ..runtime import Trained, load_trained, resolve_device
from .raw import STATS, raw_feature_names, raw_features, with_invalid_as_nan

Level = Literal["tile", "image", "well"]
#: What a row holds: the trained model's embedding, raw-pixel statistics, or the same architecture at random init.
Features = Literal["model", "raw", "random"]
#: Output formats by data kind; the first one is what ``.parquet`` means for that kind.
FORMATS = {"microscopy": ("parquet", "h5ad"), "sentinel": ("geoparquet", "geotiff", "zarr")}
SUFFIXES = {".parquet": "parquet", ".pq": "parquet", ".h5ad": "h5ad", ".tif": "geotiff", ".tiff": "geotiff",
            ".zarr": "zarr"}  # fmt: skip
RASTERS = ("geotiff", "zarr")  # per-patch outputs: no pooling, one value per patch
CHANNELS_COLUMN = "Metadata_Channels"  # per-row channel names, only when fields hold channel subsets


@dataclass
class Export:
    """What writers need to know about one export run."""

    model: MaskedAutoencoder
    recipe: Recipe
    channels: dict[str, list[str]]  # {sensor: channel names given to the model; with subsets, the most it gets}
    device: torch.device
    batch_size: int
    provenance: dict[str, Any]
    progress: bool = True
    features: Features = "model"  # "raw": channel statistics instead of the model's forward (model: the grid)

    @property
    def dim(self) -> int:
        """Features per row (or per patch): the embedding width, or 7 statistics per chosen channel."""
        if self.features == "raw":
            return len(STATS) * sum(len(names) for names in self.channels.values())
        return self.model.embed_dim

    @property
    def subsets(self) -> bool:
        """Whether fields may hold different subsets of the channel vocabulary (microscopy only)."""
        return bool(self.recipe.data.allow_channel_subsets)

    def batch_channels(self, samples: Sequence[dict[str, Any]]) -> dict[str, list[str]]:
        """``{sensor: names}`` to embed a batch of one channel set with: the chosen channels or, when fields
        hold channel subsets, those of them that the batch's field(s) have (in the chosen order)."""
        if not self.subsets:
            return self.channels
        # The recipe allows subsets for microscopy only: one sensor, samples with "image"/"channels".
        ((sensor, wanted),) = self.channels.items()
        field, have = samples[0]["meta"]["field"], samples[0]["channels"]
        used = [c for c in wanted if c in have]
        if not used:
            raise ValueError(f"field {field} has channels {list(have)}, none of the chosen {wanted}")
        return {sensor: used}

    def forward(self, samples: Sequence[dict[str, Any]], pool: str | None) -> np.ndarray:
        """Samples -> pooled embeddings ``[B, D]`` (``pool`` "mean"/"cls"; "channels": ``[B, C * D]``) or
        per-patch ``[B, h, w, D]`` (None); per patch ``D`` is :attr:`dim`."""
        batch = collate_samples(samples)
        if self.features == "raw":
            images, _ = select_channels(with_invalid_as_nan(batch), self.batch_channels(samples), self.model)
            return raw_features(images, None if pool else self.model.patch_size)
        images, channels = select_channels(batch, self.batch_channels(samples), self.model)
        images = {k: v.to(self.device, non_blocking=True) for k, v in images.items()}
        cuda = self.device.type == "cuda"
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            if pool is None:
                out = self.model.embed_patches(images, channels)
            else:
                out = self.model.embed(images, channels, pool=pool)
        return out.float().cpu().numpy()


def resolve_format(output: Path, format: str | None, kind: str) -> str:  # noqa: A002 - the CLI's word
    """The output format: ``format`` if given, else from the suffix; checked against the data kind."""
    allowed = FORMATS[kind]
    if format is None:
        if output.suffix.lower() not in SUFFIXES:
            raise ValueError(f"cannot tell the format of {output} from its suffix; pass format= one of {allowed}")
        format = SUFFIXES[output.suffix.lower()]
        format = allowed[0] if format == "parquet" else format
    if format not in allowed:
        raise ValueError(f"format {format!r} does not fit {kind} data ({output}); choose one of {', '.join(allowed)}")
    return format


def model_channels(model: MaskedAutoencoder) -> dict[str, list[str] | None]:
    """``{sensor: channel names}`` the model knows (None for a stacked sensor, which has no names)."""
    return {s: None if isinstance(spec, int) else [c.name for c in spec] for s, spec in model.sensors.items()}


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


def select_channels(
    batch: dict[str, Any], chosen: Mapping[str, Sequence[str]], model: MaskedAutoencoder
) -> tuple[dict[str, torch.Tensor], dict[str, tuple[str, ...] | None]]:
    """A collated batch -> ``({sensor: [B, C', H, W]}, {sensor: names})`` with only the chosen channels."""
    images, names = batch["images"], batch["channels"]
    if not isinstance(images, dict):  # a single-sensor batch
        (sensor,) = model.sensors
        images, names = {sensor: images}, {sensor: names}
    known = model_channels(model)
    out_images, out_names = {}, {}
    for sensor, wanted in chosen.items():
        have = list(names[sensor])
        if known[sensor] is None:  # stacked channels go in as they are, in the data's order
            out_images[sensor], out_names[sensor] = images[sensor], None
            continue
        missing = [c for c in wanted if c not in have]
        if missing:
            raise ValueError(f"channels {missing} of sensor {sensor!r} are missing from the data's {have}")
        out_images[sensor] = images[sensor][:, [have.index(c) for c in wanted]]
        out_names[sensor] = tuple(wanted)
    return out_images, out_names


def recipe_channels(recipe: Recipe, model: MaskedAutoencoder) -> dict[str, list[str]]:
    """``{sensor: channels}`` the recipe's readers produce."""
    section = recipe.data
    if section.kind == "microscopy":
        (sensor,) = model.sensors
        return {sensor: list(section.channels or [])}
    return {s: [b["name"] if isinstance(b, dict) else b for b in bands] for s, bands in (section.sensors or {}).items()}


def export_items(recipe: Recipe, stride: int | None) -> Dataset:
    """Items (lists of normalised samples) in a fixed order: every grid tile of every field/scene."""
    section = recipe.data
    if section.normalize == "stats" and not section.band_stats:
        raise ValueError(f"recipe {recipe.name!r} has no data.band_stats; the run should have stored them")
    normalize = normalizer(section, section.band_stats)
    if section.kind == "microscopy":
        tiles = FieldCrops(microscopy_fields(section), section.crop_size, tiling="grid", stride=stride,
                           on_error=section.on_error)  # fmt: skip
    else:
        tiles = SceneWindows(sentinel_scenes(section), section.crop_size, sampling="grid", stride=stride,
                             on_error=section.on_error)  # fmt: skip
    return TransformedItems(tiles, normalize)


def _as_is(item: Any) -> Any:
    return item


def channel_set(sample: dict[str, Any]) -> tuple[Any, ...]:
    """The channels a sample holds: its names, or ``((sensor, names), ...)`` for a multi-sensor sample."""
    if "image" in sample:
        return tuple(sample["channels"])
    return tuple((k, tuple(v["channels"])) for k, v in sample.items() if k != "meta")


def sample_batches(export: Export, items: Dataset, unit: str) -> Iterator[list[dict[str, Any]]]:
    """Samples of all items, in order, in batches of ``export.batch_size`` of one channel set each.

    A batch is shorter at the end and where the channel set changes (fields holding different channel
    subsets), since a model call takes one set of channels; rows stay in data order. Reading runs in the
    recipe's DataLoader workers; only one batch plus one item is held here.
    """
    workers = export.recipe.data.num_workers
    loader = DataLoader(items, batch_size=None, shuffle=False, num_workers=workers, collate_fn=_as_is,
                        prefetch_factor=2 if workers else None)  # fmt: skip
    pending: list[dict[str, Any]] = []
    with tqdm(total=len(items), unit=unit, disable=not export.progress, dynamic_ncols=True) as bar:
        for item in loader:
            # An item is one field's (or region's) samples, so they share one channel set.
            if item and pending and channel_set(item[0]) != channel_set(pending[0]):
                yield pending
                pending = []
            pending.extend(item)
            bar.update()
            while len(pending) >= export.batch_size:
                yield pending[: export.batch_size]
                pending = pending[export.batch_size :]
    if pending:
        yield pending


def row_meta(sample: dict[str, Any]) -> dict[str, Any]:
    """A sample's metadata; for a multi-sensor sample, the first (reference) sensor's, then the shared one."""
    if "image" in sample:
        return sample["meta"]
    first = next(k for k in sample if k != "meta")
    return {**sample[first].get("meta", {}), **sample["meta"]}


def embedding_stream(export: Export, items: Dataset, pool: str) -> Iterator[tuple[list[dict[str, Any]], np.ndarray]]:
    """``(metas, embeddings [B, D] float32)`` per batch, in data order; with channel subsets every meta
    also names the channels its row was embedded with (``Metadata_Channels``, comma-separated)."""
    unit = "field" if export.recipe.data.kind == "microscopy" else "window"
    for samples in sample_batches(export, items, unit):
        metas = [row_meta(s) for s in samples]
        if export.subsets:
            (used,) = export.batch_channels(samples).values()
            metas = [{**meta, CHANNELS_COLUMN: ",".join(used)} for meta in metas]
        yield metas, export.forward(samples, pool)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
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
            raster ``[D, H/p, W/p]``; a folder of ``<scene>.tif``/``<scene>.zarr`` when there are several
            scenes, with ``format`` naming the kind). ``format`` overrides the suffix.
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
        overwrite: replace an existing ``output`` (otherwise a FileExistsError).
        features: ``model`` (the checkpoint's embeddings), ``raw`` (per chosen channel: mean, std and the
            5/25/50/75/95th percentiles of each normalised tile's valid pixels, or of each patch's in a raster;
            no model forward) or ``random`` (the run's architecture freshly initialised from ``seed``). Baselines
            for ``evaluate``: same rows, order and formats; the provenance records ``features`` (and ``seed``).
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
    dev = resolve_device(device)
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
    levels = ("tile", "image", "well") if kind == "microscopy" else ("tile", "image")
    if level not in levels:
        raise ValueError(f"level {level!r} does not fit {kind} data; choose one of {', '.join(levels)}")
    if crs is not None and fmt != "geoparquet":
        raise ValueError(f"crs= reprojects GeoParquet footprints; {fmt} output keeps the source CRS")
    if dtype == "int8" and fmt != "geotiff":
        raise ValueError(f"dtype='int8' is a GeoTIFF option; {fmt} output {output} is float32")
    chosen = select_channel_names(model, recipe_channels(recipe, model), channels)
    raster = fmt in RASTERS
    widths = "features='raw'" if features == "raw" else "pool='channels'" if pool == "channels" and not raster else None
    if widths and recipe.data.allow_channel_subsets:  # their width is per channel: every row needs the same set
        raise ValueError(f"{widths} needs one channel set for every row of {output}, and recipe "
                         f"{recipe.name!r} allows fields with channel subsets; embed a --channels set every field has")
    # Enough to embed the same rows again (evaluate's baselines): the source as given, overrides, level, stride.
    source = Path(checkpoint).resolve() if Path(checkpoint).exists() else checkpoint
    extra = {"feature_names": raw_feature_names(chosen)} if features == "raw" else {}
    provenance = build_provenance(trained, recipe, channels=chosen, pool=None if raster else pool,
                                  level="patch" if raster else level, crop_size=recipe.data.crop_size,
                                  stride=stride, format=fmt, dtype=dtype, crs=crs, source=str(source),
                                  overrides=overrides, channels_requested=list(channels) if channels else None,
                                  features=features,
                                  seed=seed if features == "random" else None, **extra)  # fmt: skip
    export = Export(model, recipe, chosen, dev, batch_size, provenance, progress, features)

    if raster:
        from .geo import write_embedding_rasters

        return write_embedding_rasters(export, export_items(recipe, stride), output, stride, fmt=fmt, dtype=dtype)
    items = export_items(recipe, stride)
    if fmt == "geoparquet":
        from .geo import write_geoparquet

        return write_geoparquet(export, items, output, pool=pool, level=level, crs=crs)
    from .tables import write_microscopy

    return write_microscopy(export, items, output, pool=pool, fmt=fmt, level=level)
