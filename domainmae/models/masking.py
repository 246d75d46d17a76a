"""Mask samplers: which tokens the encoder sees.

Every sampler returns the same :class:`Masking` contract as the MAE reference (argsort of a
per-token score, lowest scores kept) with exactly ``round(L * (1 - ratio))`` tokens kept in
every sample, so batches stay rectangular and the encoder never sees padding.

Tokens are laid out channel-major on one patch grid: ``L = C * h * w`` and token
``c * h*w + i*w + j`` is channel ``c`` at cell ``(i, j)`` (``C = 1`` for a standard MAE).

Strategies (MAE paper ablation, CA-MAE, SatMAE):

* ``random``      uniform noise over all tokens (the paper's best; CA-MAE's independent
                  masking when ``C > 1`` without per-channel balance).
* ``independent`` every channel masked on its own, the kept budget split evenly over channels.
* ``tied``        the same grid cells kept in every channel (SatMAE "consistent").
* ``block``       BEiT-style rectangles on the grid (tied across channels).
* ``grid``        keep one cell of every ``s x s`` (ratio must be ``1 - 1/s**2``), random phase.
* ``channel``     hide ``num_drop`` whole channels per sample, the rest of the masking budget
                  random: trains prediction of a missing channel.
* ``sensor``      the same with ``groups`` = the sensor of each channel: hide whole sensors
                  (cross-sensor reconstruction). Only groups that fit the budget are drawn.
"""
from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

STRATEGIES = ("random", "independent", "tied", "block", "grid", "channel", "sensor")


@dataclass(frozen=True)
class Masking:
    """Which tokens are visible.

    Attributes:
        ids_keep: ``[B, K]`` indices of the visible tokens, in shuffled order.
        ids_restore: ``[B, L]`` position of every token in the shuffled order
            (``argsort`` of the shuffle), used to unshuffle decoder tokens.
        mask: ``[B, L]`` float, 1 for removed (to be reconstructed), 0 for visible.
    """

    ids_keep: torch.Tensor
    ids_restore: torch.Tensor
    mask: torch.Tensor

    @property
    def num_keep(self) -> int:
        return self.ids_keep.shape[1]

    def rows(self, index: slice) -> "Masking":
        """The masking of a subset of the samples (e.g. one process's micro-batch)."""
        return Masking(self.ids_keep[index], self.ids_restore[index], self.mask[index])

    def to(self, device: torch.device | str) -> "Masking":
        return Masking(self.ids_keep.to(device), self.ids_restore.to(device), self.mask.to(device))


def num_keep(num_tokens: int, ratio: float) -> int:
    """Tokens kept at a mask ratio: ``round(L * (1 - ratio))``, at least 1 and at most L - 1."""
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"mask ratio must be in (0, 1), got {ratio}")
    keep = round(num_tokens * (1.0 - ratio))
    if not 1 <= keep < num_tokens:
        raise ValueError(f"mask ratio {ratio} keeps {keep} of {num_tokens} tokens; need at least one kept and one masked")
    return keep


def masking_from_scores(scores: torch.Tensor, keep: int) -> Masking:
    """Keep the ``keep`` lowest-scoring tokens of each sample (``scores``: ``[B, L]``)."""
    ids_shuffle = torch.argsort(scores, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = torch.ones_like(scores, dtype=torch.float32)
    mask[:, :keep] = 0
    return Masking(ids_shuffle[:, :keep], ids_restore, torch.gather(mask, 1, ids_restore))


def _ranks(scores: torch.Tensor) -> torch.Tensor:
    """Rank of each entry along the last dim (0 = lowest)."""
    return torch.argsort(torch.argsort(scores, dim=-1), dim=-1)


def _balance(per_channel: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Integer scores from per-channel ``[B, C, N]`` scores that interleave channels.

    Token score = rank within its channel * C + a random rank of its channel, so sorting takes
    the best cell of every channel, then the second best, ...: the kept budget is split evenly
    (to within one token) and, when all channels carry the same scores, the same cells are kept.
    """
    b, c, _ = per_channel.shape
    channel_rank = _ranks(torch.rand(b, c, 1, generator=generator, device=per_channel.device))
    return (_ranks(per_channel) * c + channel_rank).reshape(b, -1).float()


def _block_cells(grid: tuple[int, int], masked: int, rng: random.Random) -> torch.Tensor:
    """BEiT blockwise mask of one sample on an ``h x w`` grid: ``[h*w]``, 1 for masked cells.

    Rectangles of log-uniform aspect ratio in [0.3, 1/0.3] are added until ``masked`` cells are
    covered or no rectangle fits; the caller fills any remainder at random.
    """
    h, w = grid
    cells = torch.zeros(h, w)
    min_area = max(1, min(16, (h * w) // 12))  # BEiT uses 16 on a 14x14 grid
    count = 0
    while count < masked:
        room = masked - count
        added = 0
        for _ in range(10):
            area = rng.uniform(min(min_area, room), room)
            aspect = math.exp(rng.uniform(math.log(0.3), math.log(1 / 0.3)))
            bh = max(1, round(math.sqrt(area * aspect)))
            bw = max(1, round(math.sqrt(area / aspect)))
            if bh > h or bw > w:
                continue
            top, left = rng.randint(0, h - bh), rng.randint(0, w - bw)
            new = bh * bw - int(cells[top : top + bh, left : left + bw].sum())
            if 0 < new <= room:
                cells[top : top + bh, left : left + bw] = 1
                added = new
                break
        if not added:
            break
        count += added
    return cells.reshape(-1)


def _grid_cells(grid: tuple[int, int], ratio: float, batch: int, generator: torch.Generator | None) -> torch.Tensor:
    """``[B, h*w]`` with 0 on one cell of every ``s x s`` (random phase per sample), else 1."""
    s = round(1.0 / math.sqrt(1.0 - ratio))
    h, w = grid
    if abs((1.0 - 1.0 / s**2) - ratio) > 1e-6:
        raise ValueError(f"grid masking keeps one cell of every s x s: ratio must be 1 - 1/s^2 (0.75, 0.888..), got {ratio}")
    if h % s or w % s:
        raise ValueError(f"grid masking with stride {s} needs a patch grid divisible by {s}, got {h}x{w}")
    phase = torch.randint(0, s, (batch, 2), generator=generator)
    rows = torch.arange(h).reshape(1, h, 1)
    cols = torch.arange(w).reshape(1, 1, w)
    keep = ((rows % s) == phase[:, 0, None, None]) & ((cols % s) == phase[:, 1, None, None])
    return (~keep).float().reshape(batch, -1)


def sample_masking(
    strategy: str,
    batch: int,
    num_channels: int,
    grid: tuple[int, int],
    ratio: float,
    *,
    groups: Sequence[int] | None = None,
    num_drop: int = 1,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Masking:
    """Draw a :class:`Masking` for ``batch`` samples of ``num_channels x h x w`` tokens.

    Args:
        strategy: one of :data:`STRATEGIES`.
        groups: for ``channel``/``sensor``, the group (sensor) of each channel, ``[C]``; whole
            groups are hidden. Default: every channel its own group.
        num_drop: groups hidden per sample by ``channel``/``sensor``.
        generator: CPU ``torch.Generator`` for reproducible masks.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown masking strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    c, n = num_channels, grid[0] * grid[1]
    keep = num_keep(c * n, ratio)

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator)

    if strategy == "random":
        scores = rand(batch, c * n)
    elif strategy == "independent":
        scores = _balance(rand(batch, c, n), generator)
    elif strategy == "tied":
        scores = _balance(rand(batch, 1, n).expand(batch, c, n), generator)
    elif strategy == "block":
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        rng = random.Random(seed)
        cells = torch.stack([_block_cells(grid, round(n * ratio), rng) for _ in range(batch)])
        scores = _balance((cells + rand(batch, n)).unsqueeze(1).expand(batch, c, n), generator)
    elif strategy == "grid":
        cells = _grid_cells(grid, ratio, batch, generator)
        scores = _balance((cells + rand(batch, n)).unsqueeze(1).expand(batch, c, n), generator)
    else:  # channel / sensor
        if strategy == "sensor" and groups is None:
            raise ValueError("sensor masking needs groups: the sensor of every channel")
        scores = rand(batch, c, n) + _hidden_channels(batch, c, n, c * n - keep, groups, num_drop, generator)[:, :, None]
        scores = scores.reshape(batch, -1)
    masking = masking_from_scores(scores, keep)
    return masking.to(device) if device is not None else masking


def _hidden_channels(
    batch: int,
    num_channels: int,
    cells: int,
    budget: int,
    groups: Sequence[int] | None,
    num_drop: int,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """``[B, C]`` with 1 on the channels of ``num_drop`` randomly hidden groups per sample.

    Only groups whose tokens fit in the masking ``budget`` (tokens to remove) can be hidden.
    """
    groups = list(range(num_channels)) if groups is None else list(groups)
    if len(groups) != num_channels:
        raise ValueError(f"groups has {len(groups)} entries for {num_channels} channels")
    group_ids = sorted(set(groups))
    sizes = {g: groups.count(g) * cells for g in group_ids}
    eligible = [g for g in group_ids if sizes[g] <= budget]
    hidden = torch.zeros(batch, num_channels)
    group_of = torch.tensor(groups)
    for b in range(batch):
        order = torch.randperm(len(eligible), generator=generator).tolist()
        chosen, used = [], 0
        for k in order:
            g = eligible[k]
            if len(chosen) < num_drop and used + sizes[g] <= budget:
                chosen.append(g)
                used += sizes[g]
        if len(chosen) < num_drop:
            raise ValueError(
                f"cannot hide {num_drop} whole group(s) within a budget of {budget} masked tokens "
                f"(tokens per group: {sizes}); raise the mask ratio or lower num_drop"
            )
        hidden[b] = torch.isin(group_of, torch.tensor(chosen)).float()
    return hidden
