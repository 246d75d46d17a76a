"""The model side of an export: a trained encoder over a dataset, as a stream of embeddings.

* :func:`embedding_stream` yields ``(metas, embeddings [B, D])`` per batch, in data order: pooled
  embeddings of grid tiles (or windows), with each sample's metadata. :func:`singletons` and
  :func:`consecutive_groups` turn it into batches of groups (a tile each, or all tiles of a field/scene
  reduced to one row), which is what the table writers take.
* :func:`blended_rows` is the per-patch engine behind embedding rasters: overlapping sliding windows
  (default stride: half a window) blended with tent weights that fall towards each window's edge, so
  window borders leave no seams; finished rows leave as strips as soon as no later window can touch them,
  so memory is one strip of windows, not the scene.

Samples are batched across fields, embedded under ``torch.inference_mode`` (bf16 autocast on CUDA only);
memory holds one batch and one row of tiles, not the dataset. A batch never mixes channel sets: when
fields hold different subsets of the channel vocabulary (``data.allow_channel_subsets``), each field is
embedded with the chosen channels it has, and every row records them in ``Metadata_Channels``
(e.g. ``"DNA,PH3"``). Nothing here writes files: the writers (:mod:`~domainmae.export.writers`) do.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..data.loader import collate_samples
from ..data.multisensor import MultiSensorScene
from ..data.raster import RasterScene
from ..data.samplers import Window, grid_windows
from ..data.windows import GRID_WINDOWS, WindowReader
from ..models import MaskedAutoencoder
from ..recipes import Recipe
from .raw import STATS, patches_without_data, raw_features, with_invalid_as_nan
from .writers.tables import CHANNELS_COLUMN

#: What a row holds: the trained model's embedding, raw-pixel statistics, or the same architecture at random init.
Features = Literal["model", "raw", "random"]
Batch = tuple[list[dict[str, Any]], np.ndarray]  # (a meta per row, embeddings [B, D])
Groups = Iterator[tuple[list[list[dict[str, Any]]], np.ndarray]]  # (the metas of each group, [G, D])

log = logging.getLogger(__name__)


@dataclass
class Export:
    """The model and settings one export runs with: what turns samples into embeddings."""

    model: MaskedAutoencoder
    recipe: Recipe
    channels: dict[str, list[str]]  # {sensor: channel names given to the model; with subsets, the most it gets}
    device: torch.device
    batch_size: int
    progress: bool = True
    features: Features = "model"  # "raw": channel statistics instead of the model's forward (model: the grid)

    @property
    def dim(self) -> int:
        """Features per patch of a per-patch raster: the embedding width, or 7 statistics per chosen channel
        (pooled rows may be wider: ``pool="channels"`` gives C x D)."""
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

    def inputs(
        self, batch: dict[str, Any], samples: Sequence[dict[str, Any]]
    ) -> tuple[dict[str, torch.Tensor], dict[str, tuple[str, ...] | None]]:
        """The collated ``batch`` of ``samples`` as the model takes it: ``{sensor: [B, C, H, W]}`` on the device,
        chosen channels only, and ``{sensor: channel names}`` (also what ``align --unfreeze`` trains through)."""
        images, channels = select_channels(batch, self.batch_channels(samples), self.model)
        return {k: v.to(self.device, non_blocking=True) for k, v in images.items()}, channels

    def forward(self, samples: Sequence[dict[str, Any]], pool: str | None) -> np.ndarray:
        """Samples -> pooled embeddings ``[B, D]`` (``pool`` "mean"/"cls"; "channels": ``[B, C * D]``) or
        per-patch ``[B, h, w, D]`` (None); per patch ``D`` is :attr:`dim`. NaN where there is no valid pixel:
        a patch's, or a sample's whole row (:func:`tiles_without_data`)."""
        batch = collate_samples(samples)
        if self.features == "raw":
            images, _ = select_channels(with_invalid_as_nan(batch), self.batch_channels(samples), self.model)
            out = raw_features(images, None if pool else self.model.patch_size)
        else:
            images, channels = self.inputs(batch, samples)
            cuda = self.device.type == "cuda"
            with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                if pool is None:
                    embedded = self.model.embed_patches(images, channels)
                else:
                    embedded = self.model.embed(images, channels, pool=pool)
            out = embedded.float().cpu().numpy()
        # The model saw zero-filled input where there is no data: not an embedding of anything. Per patch, NaN
        # (nodata in a raster); pooled, a tile without any data is a NaN row, which gets no row in a table.
        empty = patches_without_data(batch, self.model.patch_size)
        if empty is not None:
            out[empty if pool is None else empty.all(axis=(1, 2))] = np.nan
        return out


def model_channels(model: MaskedAutoencoder) -> dict[str, list[str] | None]:
    """``{sensor: channel names}`` the model knows (None for a stacked sensor, which has no names)."""
    return {s: None if isinstance(spec, int) else [c.name for c in spec] for s, spec in model.sensors.items()}


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


def _as_is(item: Any) -> Any:
    return item


def channel_set(sample: dict[str, Any]) -> tuple[Any, ...]:
    """The channels a sample holds: its names, or ``((sensor, names), ...)`` for a multi-sensor sample."""
    if "image" in sample:
        return tuple(sample["channels"])
    return tuple((k, tuple(v["channels"])) for k, v in sample.items() if k != "meta")


def sample_batches(export: Export, items: Dataset) -> Iterator[list[dict[str, Any]]]:
    """Samples of all items, in order, in batches of ``export.batch_size`` of one channel set each.

    A batch is shorter at the end and where the channel set changes (fields holding different channel
    subsets), since a model call takes one set of channels; rows stay in data order. Reading runs in the
    recipe's DataLoader workers; only one batch plus one item is held here.
    """
    workers = export.recipe.data.num_workers
    loader = DataLoader(items, batch_size=None, shuffle=False, num_workers=workers, collate_fn=_as_is,
                        prefetch_factor=2 if workers else None)  # fmt: skip
    pending: list[dict[str, Any]] = []
    with tqdm(total=len(items), unit="row", disable=not export.progress, dynamic_ncols=True) as bar:
        for item in loader:
            # An item is one row of windows of one field/scene, so its samples share one channel set.
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


def scene_meta(scene: RasterScene | MultiSensorScene) -> dict[str, Any]:
    """What every window of ``scene`` carries besides its own place (the first sensor's, for co-registered
    sensors, as :func:`row_meta` merges it), placed at a stand-in window."""
    first = next(iter(scene.scenes.values())) if isinstance(scene, MultiSensorScene) else scene
    return {**first.scene_meta, "window": Window(0, 0, 0, 0)}


def embedding_stream(export: Export, items: Dataset, pool: str) -> Iterator[Batch]:
    """``(metas, embeddings [B, D] float32)`` per batch, in data order; with channel subsets every meta
    also names the channels its row was embedded with (``Metadata_Channels``, comma-separated)."""
    for samples in sample_batches(export, items):
        metas = [row_meta(s) for s in samples]
        if export.subsets:
            (used,) = export.batch_channels(samples).values()
            metas = [{**meta, CHANNELS_COLUMN: ",".join(used)} for meta in metas]
        yield metas, export.forward(samples, pool)


def tiles_without_data(samples: Sequence[dict[str, Any]], patch_size: int) -> np.ndarray:
    """``[B]`` bool: the samples where no sensor has a valid pixel (a window beyond a swath edge); they get no
    row in a table, as their patches are nodata in a raster."""
    empty = patches_without_data(collate_samples(samples), patch_size)
    return np.zeros(len(samples), bool) if empty is None else empty.all(axis=(1, 2))


def _with_data(rows: np.ndarray) -> np.ndarray:
    """``[N]`` bool: the rows of ``[N, D]`` that are embeddings, not the NaN rows of windows without data."""
    return ~np.isnan(rows).all(axis=1)


def singletons(stream: Iterator[Batch]) -> Groups:
    """Tile level: every row its own group, ``([[meta], ...], [B, D])``; windows without data have none."""
    left_out = 0
    for metas, emb in stream:
        kept = _with_data(emb)
        left_out += int((~kept).sum())
        if kept.any():
            yield [[m] for m, k in zip(metas, kept) if k], emb[kept]
    if left_out:
        log.warning("%d windows hold no valid pixel (nodata only): they have no row", left_out)


def consecutive_groups(stream: Iterator[Batch], key: Callable[[dict[str, Any]], Hashable]) -> Groups:
    """Average runs of rows with the same ``key`` (the tiles of one field/scene come in a row).

    Yields ``(group metas, [G, D] mean embeddings)`` as groups complete; holds one group's rows. A group with
    fewer tiles than its source's grid (rows of windows skipped as unreadable under ``on_error=skip``) is
    left out with a warning: its mean would stand for the whole field or scene. Tiles without data (NaN rows)
    count as read but not in the mean; a group of only such tiles is left out too.
    """
    metas: list[dict[str, Any]] = []
    rows: list[np.ndarray] = []

    def whole() -> bool:
        expected = metas[0].get(GRID_WINDOWS, len(metas))
        if len(metas) < expected:
            log.warning("%s: %d of its %d tiles could not be read; it has no row at this level", key(metas[0]),
                        expected - len(metas), expected)  # fmt: skip
        elif not _with_data(np.stack(rows)).any():
            log.warning("%s: no tile holds a valid pixel (nodata only); it has no row at this level", key(metas[0]))
            return False
        return len(metas) >= expected

    def mean() -> np.ndarray:
        stacked = np.stack(rows)
        return stacked[_with_data(stacked)].mean(axis=0)

    for batch_metas, emb in stream:
        done_metas, done = [], []
        for meta, row in zip(batch_metas, emb):
            if metas and key(meta) != key(metas[0]):
                if whole():
                    done_metas.append(metas)
                    done.append(mean())
                metas, rows = [], []
            metas.append(meta)
            rows.append(row)
        if done:
            yield done_metas, np.stack(done).astype(np.float32)
    if metas and whole():
        yield [metas], mean()[None].astype(np.float32)


def tent(n: int) -> np.ndarray:
    """Blending weights ``[n, n]``: highest in the middle, small but positive at the edges."""
    ramp = np.minimum(np.arange(1, n + 1), np.arange(n, 0, -1)).astype(np.float64)
    return np.outer(ramp, ramp)


def _pop_rows(total: np.ndarray, weights: np.ndarray, count: int) -> np.ndarray:
    """Blend and remove the first ``count`` rows of the strip ``total [D, n, W]`` / ``weights [n, W]``.

    Returns float32 ``[D, count, W]``, NaN where no window had data; the remaining rows move up and fresh zero
    rows enter at the bottom.
    """
    out = np.divide(total[:, :count], weights[:count], out=np.full_like(total[:, :count], np.nan),
                    where=weights[:count] > 0).astype(np.float32)  # fmt: skip
    keep = total.shape[1] - count
    total[:, :keep], weights[:keep] = total[:, count:], weights[count:]
    total[:, keep:], weights[keep:] = 0.0, 0.0
    return out


def blended_rows(
    export: Export, reader: WindowReader, normalize: Callable[[dict[str, Any]], dict[str, Any]], stride: int
) -> Iterator[tuple[int, np.ndarray]]:
    """Sliding-window ``embed_patches`` of one scene blended on the patch grid, as strips from top to bottom.

    Yields ``(first patch row, float32 [D, rows, W/p])``, the strips a raster writer takes; together
    they cover every row once, in order. A row is yielded as soon as no later window can touch it, so
    memory is one strip of windows (``[D, window/p, W/p]``), not the scene. A last partial patch (< p px)
    at the right/bottom is left out.
    """
    p, size, scene = export.model.patch_size, reader.size, reader.source
    rows, cols = scene.grid.height // p, scene.grid.width // p
    windows = grid_windows(rows * p, cols * p, size, stride, what=f"scene {scene.name}")
    n, weight = size // p, tent(size // p)
    total, weights = np.zeros((export.dim, n, cols)), np.zeros((n, cols))
    base = 0  # the patch row of the strip's first row
    for start in tqdm(range(0, len(windows), export.batch_size), disable=not export.progress, unit="batch",
                      desc=scene.name, dynamic_ncols=True):  # fmt: skip
        batch: list[Window] = windows[start : start + export.batch_size]
        emb = export.forward([normalize(reader.window(w)) for w in batch], None)  # [B, n, n, D]
        for window, patches in zip(batch, emb):
            top, left = window.row // p, window.col // p
            if top > base:  # windows come row by row: rows above this window are final
                yield base, _pop_rows(total, weights, top - base)
                base = top
            # A patch without data (NaN) takes no weight: the windows that have data there decide, else it stays NaN.
            present = weight * np.isfinite(patches[..., 0])
            values = np.nan_to_num(patches.transpose(2, 0, 1))
            total[:, top - base : top - base + n, left : left + n] += present * values
            weights[top - base : top - base + n, left : left + n] += present
    while base < rows:
        count = min(n, rows - base)
        yield base, _pop_rows(total, weights, count)
        base += count
