"""Deterministic, resumable, distributed data order for training, and collation into batches.

Every training item is addressed by a key ``(index, seed)``: which field/scene region, and the seed
its random crops and augmentation draw from. Keys are a pure function of (run seed, epoch,
position), so the stream of batches does not depend on the number of workers or processes, and a
resumed run continues exactly where it stopped.

The global batch of an optimiser step is split into ``micro`` chunks; process ``rank`` of
``world`` takes chunks ``j * world + rank`` for its micro-steps ``j`` (see :func:`chunk_rows`).
Items may belong to groups (fields of one channel set): then every global batch holds one group,
so all processes and micro-batches of a step see the same channels. An unreadable item skipped under
``on_error="skip"`` is replaced by a stand-in keyed the same way (see :class:`SeededItems`), so a
batch keeps its size and the stream stays deterministic.
"""
from __future__ import annotations

import random
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from .errors import ErrorPolicy, OnError, as_policy
from .fields import FieldError
from .sample import Sample, is_multisensor


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """A 63-bit seed for the item at ``position`` of ``epoch`` in run ``seed``."""
    return int(np.random.SeedSequence([seed, epoch, position]).generate_state(1, np.uint64)[0]) >> 1


def spread_picks(n: int, count: int, seed: int, stream: int) -> list[int]:
    """``count`` indices of ``n`` items in an order shuffled by ``seed`` and ``stream``, each once before any
    twice: a sample of reads that represents the data, where the first items of a sorted listing (one plate
    row, one tile's patches) would not."""
    order = np.random.default_rng([seed, stream]).permutation(n)
    return [int(order[i % n]) for i in range(count)]


def chunk_rows(micro_step: int, world: int, rank: int, rows_per_chunk: int) -> slice:
    """Rows of the global batch that ``rank`` handles in its ``micro_step``-th forward pass."""
    chunk = micro_step * world + rank
    return slice(chunk * rows_per_chunk, (chunk + 1) * rows_per_chunk)


def group_items(groups: Sequence[Hashable] | None, num_items: int) -> dict[Hashable, np.ndarray]:
    """Item indices of each group, groups in order of first appearance; all items form one group
    (keyed None) when ``groups`` (one id per item) is None."""
    if groups is None:
        return {None: np.arange(num_items)}
    if len(groups) != num_items:
        raise ValueError(f"{len(groups)} group ids for {num_items} items")
    members: dict[Hashable, list[int]] = {}
    for index, group in enumerate(groups):
        members.setdefault(group, []).append(index)
    return {group: np.asarray(indices) for group, indices in members.items()}


REPLACE_ATTEMPTS = 32  # stand-ins tried for one unreadable item before the data is declared unreadable
SKIPPED = "skipped"  # meta key of the failed reads an item stands in for


def replacement_key(key: tuple[int, int], attempt: int, candidates: np.ndarray) -> tuple[int, int]:
    """The key read in place of ``key`` after its ``attempt``-th failed read: one of ``candidates`` (item
    indices) and a fresh seed. A pure function of the key, whose seed already encodes (run seed, epoch,
    position), and of the attempt, like the keys themselves: every process and a resumed run read the
    same stand-in."""
    pick, seed = np.random.SeedSequence([*key, attempt, 0x534B4950]).generate_state(2, np.uint64)
    return int(candidates[int(pick) % len(candidates)]), int(seed) >> 1


def skipped_reads(batch: dict[str, Any]) -> list[str]:
    """The failed reads that items of a collated ``batch`` stand in for (one entry per failed read)."""
    return [failure for meta in batch["meta"] for failure in meta.get(SKIPPED, ())]


class SeededItems(Dataset):
    """Wraps a dataset whose items draw from the global torch/numpy/python RNGs: item ``(i, seed)``
    reseeds them (and ``reseed(seed)``, e.g. an albumentations pipeline) before reading item ``i``.

    An item that fails to read (``OSError``: a missing or corrupt file) raises, or with ``on_error="skip"``
    is logged and replaced, so that a batch keeps the size its masks were drawn for: by the stand-ins of
    :func:`replacement_key`, drawn from the item's group (its channel set, as ``groups`` gives one per
    item), at most ``REPLACE_ATTEMPTS`` of them. The failed reads travel in the item's first sample's
    ``meta["skipped"]`` (see :func:`skipped_reads`). When every attempt fails, one error names the files.
    """

    def __init__(
        self, dataset: Dataset, reseed: Callable[[int], None] | None = None, *,
        on_error: OnError | ErrorPolicy = "raise", groups: Sequence[Hashable] | None = None,
    ) -> None:  # fmt: skip
        self.dataset = dataset
        self.reseed = reseed
        self.policy = as_policy(on_error)
        self.groups = groups
        self.members = group_items(groups, len(dataset))

    def __len__(self) -> int:
        return len(self.dataset)

    def _read(self, index: int, seed: int) -> Any:
        # Only the CPU generator, which readers and transforms draw from: torch.manual_seed also seeds every
        # accelerator's generators (initialising them lazily), ~200x the cost per item for the same CPU stream.
        torch.default_generator.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        if self.reseed is not None:
            self.reseed(seed)
        return self.dataset[index]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        candidates = self.members[None if self.groups is None else self.groups[key[0]]]
        failures: list[str] = []
        read = key
        for attempt in range(1, REPLACE_ATTEMPTS + 2):
            try:
                item = self._read(*read)
            except OSError as err:
                self.policy.handle(err)  # raises unless skipping
                failures.append(str(err))
                read = replacement_key(key, attempt, candidates)
                continue
            if failures:  # noted once per item (not per crop), so counts are counts of failed reads
                first = item[0] if isinstance(item, list) else item
                first["meta"] = {**first.get("meta", {}), SKIPPED: tuple(failures)}
            return item
        distinct = list(dict.fromkeys(failures))
        more = f" (and {len(distinct) - 5} more)" if len(distinct) > 5 else ""
        raise FieldError(
            f"item {key[0]} and {REPLACE_ATTEMPTS} stand-ins for it all failed to read, so most of the data seems "
            f"unreadable; data.on_error=skip replaces unreadable items but needs readable ones. Failures: "
            + "; ".join(distinct[:5]) + more
        )


class TransformedItems(Dataset):
    """Applies a Sample transform to every sample of an item (a Sample or a list of crops)."""

    def __init__(self, dataset: Dataset, transform: Callable[[dict], dict]) -> None:
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        item = self.dataset[index]
        return [self.transform(s) for s in item] if isinstance(item, list) else self.transform(item)


class StepBatchSampler(Sampler[list[tuple[int, int]]]):
    """Yields this process's micro-batches of item keys, optimiser step by step.

    Args:
        num_items: items (fields, regions) in the dataset.
        items_per_step: items in one global batch (all processes, all micro-batches).
        micro: forward passes per step and process (gradient accumulation).
        start_step / total_steps: the steps to cover (resume starts mid-run).
        groups: a group id per item (e.g. its channel set); every global batch is cut from one group.

    Each epoch permutes every group, cuts it into full global batches (each group drops its own
    remainder) and, with several groups, shuffles the order of those batches, all from the epoch's
    RNG. With one group this is the plain permutation of all items.
    """

    def __init__(
        self, num_items: int, items_per_step: int, *, micro: int = 1, world: int = 1, rank: int = 0,
        seed: int = 0, start_step: int = 0, total_steps: int, groups: Sequence[Hashable] | None = None,
    ) -> None:  # fmt: skip
        if items_per_step % (micro * world):
            raise ValueError(f"{items_per_step} items per step do not split into {micro} micro-batches x {world} processes")
        self.members = group_items(groups, num_items)
        short = {group: len(m) for group, m in self.members.items() if len(m) < items_per_step}
        if short:
            what = "the dataset" if groups is None else f"group(s) {short}"
            raise ValueError(f"{what} has fewer items than the {items_per_step} one step needs; lower the batch size")
        self.items_per_step = items_per_step
        self.micro, self.world, self.rank, self.seed = micro, world, rank, seed
        self.start_step, self.total_steps = start_step, total_steps
        self.steps_per_epoch = sum(len(m) // items_per_step for m in self.members.values())

    def __len__(self) -> int:
        return (self.total_steps - self.start_step) * self.micro

    def _order(self, epoch: int) -> list[int]:
        """The items of ``epoch``'s full global batches, batch after batch."""
        rng = np.random.default_rng([self.seed, epoch])
        batches = []
        for members in self.members.values():
            # members[permutation(n)] equals permutation(n) for the single group of all items.
            shuffled = members[rng.permutation(len(members))]
            full = len(members) // self.items_per_step
            batches.extend(np.split(shuffled[: full * self.items_per_step], full))
        if len(self.members) > 1:  # interleave the groups; one group needs no second draw
            batches = [batches[b] for b in rng.permutation(len(batches))]
        return np.concatenate(batches).tolist()

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        per_chunk = self.items_per_step // (self.micro * self.world)
        epoch, order = -1, []
        for step in range(self.start_step, self.total_steps):
            if step // self.steps_per_epoch != epoch:
                epoch = step // self.steps_per_epoch
                order = self._order(epoch)
            first = (step % self.steps_per_epoch) * self.items_per_step
            for j in range(self.micro):
                rows = chunk_rows(j, self.world, self.rank, per_chunk)
                positions = range(first + rows.start, first + rows.stop)
                yield [(order[p], sample_seed(self.seed, epoch, p)) for p in positions]


def _stack_sensor(samples: Sequence[Sample], sensor: str) -> tuple[torch.Tensor, tuple[str, ...], torch.Tensor | None]:
    channels = samples[0]["channels"]
    for s in samples[1:]:
        if tuple(s["channels"]) != tuple(channels):
            raise ValueError(
                f"{sensor}: samples in one batch have different channels {tuple(channels)} and {tuple(s['channels'])}; "
                "give the reader the channels to use so every sample has the same set, or set "
                "data.allow_channel_subsets to group batches by channel set"
            )
    images = torch.stack([s["image"] for s in samples])
    masks = [s.get("valid") for s in samples]
    if all(mask is None for mask in masks):
        return images, tuple(channels), None
    # [B, H, W], or [B, C, H, W] once one sample has a per-channel mask (NaN in some channels only).
    shape = images.shape[1:] if any(mask is not None and mask.dim() == 3 for mask in masks) else images.shape[2:]
    valid = torch.stack([torch.ones(shape, dtype=torch.bool) if mask is None else mask.expand(shape) for mask in masks])
    return images, tuple(channels), valid


def collate_samples(items: Sequence[Sample | Sequence[Sample]]) -> dict[str, Any]:
    """Items (a Sample, a multi-sensor sample, or a list of crops from one read) -> one batch::

        {"images": [B, C, H, W] | {sensor: [B, C_s, H, W]}, "channels": names | {sensor: names},
         "valid": [B, H, W] or [B, C, H, W] bool | {sensor: ...} | None, "meta": [dict] * B}
    """
    samples: list[dict[str, Any]] = []
    for item in items:
        samples.extend(item if isinstance(item, (list, tuple)) else [item])
    if not samples:
        raise ValueError("empty batch: every item of this batch was skipped")
    if not is_multisensor(samples[0]):
        images, channels, valid = _stack_sensor(samples, "image")
        return {"images": images, "channels": channels, "valid": valid, "meta": [s.get("meta", {}) for s in samples]}
    sensors = [k for k in samples[0] if k != "meta"]
    stacked = {k: _stack_sensor([s[k] for s in samples], k) for k in sensors}
    valid = {k: v[2] for k, v in stacked.items() if v[2] is not None}
    return {
        "images": {k: v[0] for k, v in stacked.items()},
        "channels": {k: v[1] for k, v in stacked.items()},
        "valid": valid or None,
        "meta": [s.get("meta", {}) for s in samples],
    }
