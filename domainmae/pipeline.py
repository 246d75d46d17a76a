"""A recipe's ``data`` section -> readers, the training dataset and its loader; ``inspect`` with a recipe.

The only module that knows both the recipe schema (:mod:`domainmae.recipes`) and the readers
(:mod:`domainmae.data`): the readers take plain arguments and know nothing of recipes.

Microscopy: fields from a plate manifest, a file pattern, TIFF stacks or Zarr/OME-Zarr, random crops
(several per field read). Earth observation: BigEarthNet S2(+S1) patches, per-band scene folders
(Sentinel-2 ``.SAFE`` products among them) or stacked multi-band rasters, each sensor's radiometry
applied, tile-aware random windows. Both: normalise, then one augmentation for all channels and sensors.
Items are keyed ``(index, seed)`` (:class:`~domainmae.data.loader.SeededItems`) so the data stream is
deterministic and resumable.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader, Dataset

from .data.bigearthnet import bigearthnet_pairs, bigearthnet_scenes
from .data.detect import Found, by_sensor, detect
from .data.fields import Field
from .data.inspect import Report, inspect_found
from .data.loader import (
    SeededItems,
    StepBatchSampler,
    TransformedItems,
    collate_samples,
    group_items,
    sample_seed,
    spread_picks,
)
from .data.multisensor import MultiSensorScene
from .data.radiometry import Radiometry
from .data.raster import RasterScene
from .data.remote import Location, as_location, is_url
from .data.safe import holds_safe_products, safe_scenes
from .data.scenes import find_scenes, stacked_scenes
from .data.stats import band_statistics
from .data.tiff import load_data_fields, pattern_fields, stack_fields
from .data.transforms import Augment, BandStandardize, PercentileClip, SelfStandardize
from .data.windows import WindowDataset, proportional_reads
from .data.zarr import zarr_fields
from .recipes import DataSection, Recipe, existing_or_bundled

MICROSCOPY_FORMATS = ("manifest", "pattern", "stack", "zarr", "ome-zarr")
SENTINEL_FORMATS = ("bigearthnet", "scene", "stack")
# Windows measured when a recipe has no band statistics yet. On the mitosis benchmark's crops (4 fields of two
# species) the actin sd came out 13.5-22.5 over three seeds with 64, 15.1-19.3 with 256.
STATS_SAMPLES = 256
STATS_STREAM = 2**32 - 1  # the "epoch" of the statistics windows' seeds: one no training run reaches
VALID_PROBES = 4  # random windows per scene that estimate its valid fraction for data.windows_per_epoch


@dataclass
class TrainingData:
    """What the engine needs: keyed items, crops per item, and the model's channels or sensors."""

    dataset: SeededItems
    crops_per_item: int
    channels: list[str] | None = None  # channel-agnostic microscopy model (the vocabulary, with subsets)
    sensors: dict[str, list[Any]] | None = None  # multi-sensor EO model: bands as listed (names or {name, wavelength})
    band_stats: dict[str, dict[str, dict[str, float]]] | None = None  # {sensor: {band: {mean, std}}}
    channel_sets: list[tuple[str, ...]] | None = None  # per item, when fields hold channel subsets

    def steps_per_epoch(self, items_per_step: int) -> int:
        """Full global batches of ``items_per_step`` items in one epoch (each channel set fills its own).

        A channel set with fewer fields than one step needs could never be trained on: that is an error
        naming the set, rather than a warning a long run would bury.
        """
        members = group_items(self.channel_sets, len(self.dataset))
        k = self.crops_per_item
        need = f"one step needs {items_per_step} ({items_per_step * k} crops / {k} per read)"
        for channels, items in members.items():
            if len(items) < items_per_step:
                what = "the data has" if channels is None else f"channel set {list(channels)} has"
                raise ValueError(f"{what} {len(items)} fields/regions but {need}; lower train.batch_size "
                                 "or draw more per epoch with data.windows_per_epoch")  # fmt: skip
        return sum(len(items) // items_per_step for items in members.values())


#: Formats whose ``data.path`` may be a URL (:mod:`.data.remote`); the others find their files by listing folders.
URL_FORMATS = ("manifest", "stack", "zarr", "ome-zarr")
#: Formats whose ``data.path`` must be a folder: they find their files by name in it.
FOLDER_FORMATS = ("bigearthnet", "pattern", "scene")


def _path(section: DataSection) -> Location:
    if not section.path:
        raise ValueError("data.path is not set: pass --data PATH (or set data.path in the recipe)")
    if is_url(section.path):
        if section.format not in URL_FORMATS:
            raise ValueError(f"data.path {section.path} is a URL, which format {section.format!r} cannot read (it "
                             f"lists folders); formats that read URLs: {', '.join(URL_FORMATS)}")  # fmt: skip
        return section.path
    path = existing_or_bundled(Path(section.path))
    if not path.exists():
        raise FileNotFoundError(f"data.path {path} does not exist")
    if section.format in FOLDER_FORMATS and not path.is_dir():
        raise NotADirectoryError(f"data.path {path} is a file, but format {section.format!r} reads a folder (it finds "
                                 "its files by name there); --data replaces the path only, not the recipe's format")
    return path


def microscopy_fields(section: DataSection) -> list[Field]:
    """Fields of a microscopy ``data`` section, channels selected and ordered as the recipe says."""
    kw = {"channel_map": section.channel_map or None, "channels": section.channels, "on_error": section.on_error,
          "subsets": section.allow_channel_subsets}
    path = _path(section)
    if section.format == "manifest":
        if isinstance(path, Path) and path.is_dir():
            tables = sorted(p.name for p in path.iterdir() if p.suffix.lower() in (".csv", ".parquet", ".pq"))
            found = f" (it holds {', '.join(tables[:5])})" if tables else ""
            raise ValueError(f"data.path {path} is a folder; data.format manifest reads a load_data manifest file: "
                             f"pass the file{found}, or set data.format to pattern or stack for a folder of images")  # fmt: skip
        return load_data_fields(path, **kw)
    if section.format == "pattern":
        if not section.pattern:
            raise ValueError("data.pattern is needed for format 'pattern' (a regex with a 'channel' group)")
        return pattern_fields(path, section.pattern, **kw)
    if section.format == "stack":
        folder = not is_url(path) and path.is_dir()
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in (".tif", ".tiff")) if folder else [path]
        return stack_fields(files, axes=section.axes, **kw)
    if section.format in ("zarr", "ome-zarr"):
        return zarr_fields(str(path), **kw)
    raise ValueError(f"data.format {section.format!r} is not a microscopy format; choose one of {', '.join(MICROSCOPY_FORMATS)}")


def sensor_radiometry(section: DataSection, sensor: str) -> Radiometry:
    """The radiometry ``data.radiometry.<sensor>`` sets (from ``configs/sensors``); none: values as stored."""
    config = (section.radiometry or {}).get(sensor)
    return Radiometry() if config is None else Radiometry.from_config(config.model_dump())


def sentinel_scenes(section: DataSection) -> list[RasterScene] | list[MultiSensorScene]:
    """Scenes of an EO ``data`` section: BigEarthNet S2 (+S1 pairs on the S2 grid), or one sensor's
    per-band files (``scene``: Sentinel-2 ``.SAFE`` products, or band files named ``..._B02.tif``) or
    stacked multi-band rasters (``stack``) under any sensor name. Two scenes of one name are an error: rasters
    and GeoParquet rows are named by it."""
    scenes = _sentinel_scenes(section)
    names = Counter(scene.name for scene in scenes)
    if shared := [name for name, count in names.items() if count > 1]:
        # A pair of co-registered scenes is named by its first sensor's scene.
        firsts = [scene if isinstance(scene, RasterScene) else next(iter(scene.scenes.values())) for scene in scenes]
        files = [first.files[0] for scene, first in zip(scenes, firsts) if scene.name == shared[0]]
        raise ValueError(f"{names[shared[0]]} scenes are named {shared[0]!r} ({', '.join(map(str, files))}): outputs "
                         "are named by scene, so rename the files or give them from folders named apart")  # fmt: skip
    return scenes


def _sentinel_scenes(section: DataSection) -> list[RasterScene] | list[MultiSensorScene]:
    sensors = list(section.sensors or {})
    bands = {sensor: [b["name"] if isinstance(b, dict) else b for b in listed] for sensor, listed in section.sensors.items()}
    radiometry = {sensor: sensor_radiometry(section, sensor) for sensor in sensors}
    path = _path(section)
    if section.format == "bigearthnet":
        if not sensors or sensors[0] != "s2" or set(sensors) - {"s2", "s1"}:
            raise ValueError(f"data.sensors must be s2, optionally followed by s1, for format 'bigearthnet'; got {sensors}")
        s2_root, s1_root = path / "BigEarthNet-S2-Example", path / "BigEarthNet-S1-Example"
        s2_root = s2_root if s2_root.is_dir() else path
        if "s1" in sensors:
            if not s1_root.is_dir():
                raise FileNotFoundError(f"no S1 patches next to the S2 ones: expected {s1_root}")
            return bigearthnet_pairs(s2_root, s1_root, bands=bands, radiometry=radiometry, on_error=section.on_error)
        return bigearthnet_scenes(s2_root, "s2", bands=bands["s2"], radiometry=radiometry["s2"], on_error=section.on_error)
    if section.format not in SENTINEL_FORMATS:
        raise ValueError(f"data.format {section.format!r} is not an EO format; choose one of {', '.join(SENTINEL_FORMATS)}")
    if len(sensors) != 1:
        raise ValueError(f"format {section.format!r} reads one sensor, but data.sensors has {sensors}; "
                         "use 'bigearthnet' for S2+S1 pairs")  # fmt: skip
    (sensor,) = sensors
    kwargs = {"bands": bands[sensor], "radiometry": radiometry[sensor], "on_error": section.on_error}
    if section.format == "stack":
        return stacked_scenes(path, **kwargs)
    # Sentinel-2 products as ESA ships them need no renaming: their bands are found by the SAFE layout.
    return (safe_scenes if holds_safe_products(path) else find_scenes)(path, **kwargs)


def _compose(steps: Sequence[Callable[[dict], dict]]) -> Callable[[dict], dict]:
    def apply(sample: dict) -> dict:
        for step in steps:
            sample = step(sample)
        return sample

    return apply


def _augment(section: DataSection) -> Augment:
    a = section.augment
    crop = None if a.resized_crop_scale is None else section.crop_size
    return Augment(hflip=0.5 * a.hflip, vflip=0.5 * a.vflip, rot90=0.5 * a.rot90, crop_size=crop,
                   crop_scale=a.resized_crop_scale or (0.2, 1.0))  # fmt: skip


def normalizer(section: DataSection, stats: dict | None) -> Callable[[dict], dict]:
    """The normalisation a data section asks for; training and export must use the same one."""
    if section.normalize == "standardize":
        return SelfStandardize()
    if section.normalize == "percentile":
        return PercentileClip()
    return BandStandardize(stats)


def _measure_stats(
    reads: Dataset, per_read: int, sensors: Sequence[str], seed: int, on_error: str
) -> dict[str, dict[str, dict[str, float]]]:
    """Per-band mean/std over a fixed sample of random crops/windows (valid pixels only), from reads spread
    over the data (:func:`~.data.loader.spread_picks`).

    ``reads`` is a windowed dataset whose items are lists of ``per_read`` samples (fields or scenes).
    """
    items = SeededItems(reads, on_error=on_error)
    # Each read of a pick is seeded apart, so a small dataset (one scene: one read an epoch) read again gives
    # other windows: the sample is STATS_SAMPLES windows however few the reads.
    picks = spread_picks(len(reads), max(1, STATS_SAMPLES // per_read), seed, STATS_STREAM)
    samples = [s for i, index in enumerate(picks) for s in items[(index, sample_seed(seed, STATS_STREAM, i))]]
    single = len(sensors) == 1
    return {s: band_statistics([x[s] for x in samples] if not single else samples).as_dict() for s in sensors}


def _band_stats(section: DataSection, reads: Dataset, sensors: Sequence[str], seed: int) -> dict | None:
    """The recipe's band statistics, measured on the data when ``normalize: stats`` has none yet."""
    if section.normalize != "stats" or section.band_stats:
        return section.band_stats
    return _measure_stats(reads, section.crops_per_read, sensors, seed, section.on_error)


def build_training_data(section: DataSection, seed: int = 0) -> TrainingData:
    """Dataset of keyed items for a recipe's ``data`` section (see module docstring)."""
    k = section.crops_per_read
    if section.kind == "microscopy" and not section.channels:
        raise ValueError("data.channels must list the channels the model is trained on")
    sources = microscopy_fields(section) if section.kind == "microscopy" else sentinel_scenes(section)
    reads: int | list[int] = 1
    if section.windows_per_epoch:
        # Microscopy fields have no nodata: their weight is their area, with nothing to probe.
        probes = 0 if section.kind == "microscopy" else VALID_PROBES
        reads = proportional_reads(sources, section.crop_size, -(-section.windows_per_epoch // k), probes=probes,
                                   seed=seed, on_error=section.on_error)  # fmt: skip
    # Read errors reach SeededItems, which under on_error=skip reads a stand-in so the batch keeps its size.
    windows = WindowDataset(sources, section.crop_size, reads_per_source=reads, windows_per_read=k,
                            min_valid=section.min_valid_fraction)  # fmt: skip
    # A channel-agnostic microscopy model has one sensor, named as the model names its only one.
    sensors = {"image": list(section.channels)} if section.kind == "microscopy" else {
        name: list(bands) for name, bands in section.sensors.items()
    }
    stats = _band_stats(section, windows, list(sensors), seed)
    items = TransformedItems(windows, _compose([normalizer(section, stats), _augment(section)]))
    if section.kind != "microscopy":
        return TrainingData(SeededItems(items, on_error=section.on_error), k, sensors=sensors, band_stats=stats)
    sets = [sources[windows.source_index(i)].channels for i in range(len(windows))] if section.allow_channel_subsets else None
    return TrainingData(SeededItems(items, on_error=section.on_error, groups=sets), k, channels=list(section.channels),
                        channel_sets=sets, band_stats=stats)  # fmt: skip


def training_loader(
    data: TrainingData, recipe: Recipe, *, rank: int, world: int, pin_memory: bool, start_step: int, total_steps: int,
    micro: int,
) -> DataLoader:
    """The DataLoader of process ``rank``'s micro-batches (of ``world`` processes) from ``start_step`` on.

    A batch is :func:`~domainmae.data.loader.collate_samples` of ``B = train.batch_size / (world * micro)``
    crops: ``images`` ``[B, C, crop, crop]``, or ``{sensor: [B, C_s, crop, crop]}``. ``pin_memory``: the
    process trains on CUDA (the caller knows its device; the data stream does not need to).
    """
    t = recipe.train
    k = data.crops_per_item
    sampler = StepBatchSampler(len(data.dataset), t.batch_size // k, micro=micro, world=world, rank=rank,
                               seed=t.seed, start_step=start_step, total_steps=total_steps,
                               groups=data.channel_sets)  # fmt: skip
    workers = recipe.data.num_workers
    return DataLoader(
        data.dataset, batch_sampler=sampler, collate_fn=collate_samples, num_workers=workers,
        persistent_workers=workers > 0, pin_memory=pin_memory, prefetch_factor=4 if workers > 0 else None,
    )  # fmt: skip


# -- inspect ------------------------------------------------------------------------------------
def recipe_layout(path: Location, section: DataSection) -> Found:
    """The fields or scenes at ``path`` read exactly as training reads them with ``section``."""
    section = section.model_copy(update={"path": str(path)})
    layout = f"recipe data section: kind {section.kind}, format {section.format}"
    if section.kind == "microscopy":
        return Found(layout, "domainmae.pipeline.microscopy_fields", {"fields": microscopy_fields(section)})
    scenes = sentinel_scenes(section)
    return Found(layout, "domainmae.pipeline.sentinel_scenes", by_sensor(scenes, next(iter(section.sensors))))


def inspect_path(path: str | Path, data: DataSection | None = None, samples: int = 8, max_side: int = 1024) -> Report:
    """What ``domainmae inspect`` reports: the layout detected at ``path`` (or read with a recipe's ``data``
    section), measured on ``samples`` fields/scenes through a centred window of at most ``max_side`` px.

    Raises ``FileNotFoundError`` for a missing path and ``ValueError`` naming what was looked for when no
    layout is recognised. A URL needs ``data``: detecting a layout probes and lists files, which URLs cannot.
    """
    path = as_location(path)
    path = path if is_url(path) else existing_or_bundled(path)
    if is_url(path) and data is None:
        raise ValueError(f"{path} is a URL: name its layout with a recipe (--recipe, data.format one of "
                         f"{', '.join(URL_FORMATS)}); detection lists files, which a URL cannot")  # fmt: skip
    if not is_url(path) and not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if samples < 1 or max_side < 1:
        raise ValueError(f"samples and max_side must be positive, got {samples} and {max_side}")
    found = recipe_layout(path, data) if data is not None else detect(path)
    return inspect_found(path, found, samples, max_side)
