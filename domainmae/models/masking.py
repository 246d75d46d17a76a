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

Every sampler is tensor ops over the whole batch (no loop over samples or channels) and draws on
the generator's device, so a training loop that keys a generator on its GPU gets the masks there
without a host round trip (issue 12: serial CPU sampling took as long as a GPU step at batch 4096).
Nothing is read back to the host either (``block`` runs a fixed number of rounds, not rounds until
every sample is done), but for ``channel``/``sensor`` checking that the groups fit to name the error.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

STRATEGIES = ("random", "independent", "tied", "block", "grid", "channel", "sensor")
BLOCK_ATTEMPTS = 10  # rectangles tried per round before a sample stops adding blocks (as BEiT)


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


def _inverse(perm: torch.Tensor) -> torch.Tensor:
    """Inverse of every permutation along the last dim (``[..., L]``).

    A scatter, linear in ``L``, where the reference's second ``argsort`` sorts again.
    """
    places = torch.arange(perm.shape[-1], device=perm.device).expand_as(perm)
    return torch.empty_like(perm).scatter_(-1, perm, places)


def _ranks(scores: torch.Tensor) -> torch.Tensor:
    """Rank of each entry along the last dim (0 = lowest)."""
    return _inverse(torch.argsort(scores, dim=-1))


def _masking(ids_shuffle: torch.Tensor, ids_restore: torch.Tensor, keep: int) -> Masking:
    # A token's place in the shuffle says whether it is kept: the mask without a gather.
    return Masking(ids_shuffle[:, :keep], ids_restore, (ids_restore >= keep).float())


def masking_from_scores(scores: torch.Tensor, keep: int) -> Masking:
    """Keep the ``keep`` lowest-scoring tokens of each sample (``scores``: ``[B, L]``)."""
    ids_shuffle = torch.argsort(scores, dim=1)
    return _masking(ids_shuffle, _inverse(ids_shuffle), keep)


def _interleave(cell_scores: torch.Tensor, channel_scores: torch.Tensor) -> torch.Tensor:
    """Each token's place in a shuffle that deals the cells out to the channels in turn: ``[B, C*N]``.

    Args:
        cell_scores: ``[B, C, N]`` per channel, or ``[B, 1, N]`` shared by every channel.
        channel_scores: ``[B, C]``, the order in which channels take their turn.

    Place = rank of the cell within its channel * C + rank of the channel, so the shuffle takes the
    best cell of every channel, then the second best, ...: the kept budget is split evenly (to within
    one token) and, with shared cell scores, the same cells are kept in every channel. The places
    are already a permutation, so unlike scores they need no sort over all ``C*N`` tokens.
    """
    b, c = channel_scores.shape
    return (_ranks(cell_scores) * c + _ranks(channel_scores).unsqueeze(-1)).reshape(b, -1)


def block_rounds(masked: int) -> int:
    """Rounds of block placement for ``masked`` cells: ``min(masked, 2 * masked.bit_length())``.

    A fixed count from ints, so that block masking is one kernel sequence whatever is drawn. A block's
    area is uniform up to what is left to cover, so a round covers about half of it: ~log2(masked)
    rounds, and about as many again for the small blocks at the end and the rounds that overlaps
    waste. Every round adds at least one cell, so more than ``masked`` never help. Measured with
    20,000 samples on 4 x 6 to 28 x 28 grids at ratios 0.5-0.9: the cap leaves at most 0.25% of the
    masked cells more to random filling than BEiT's unbounded loop (0.01 cells per sample on 14 x 14
    at 0.75, where 16 rounds finish 99.6% of the samples).
    """
    return min(masked, 2 * masked.bit_length())


def _block_cells(
    grid: tuple[int, int], masked: int, batch: int, generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """BEiT blockwise masks on an ``h x w`` grid: ``[B, h*w]`` bool, True for masked cells.

    Per sample as BEiT: up to :data:`BLOCK_ATTEMPTS` rectangles of area uniform in
    ``[min(min_area, room), room]`` (``room``: cells still to cover), log-uniform aspect ratio in
    [0.3, 1/0.3] and uniform position are tried; the first that adds between 1 and ``room`` new cells
    is painted. A sample stops when ``masked`` cells are covered, when a round adds nothing, or after
    :func:`block_rounds` rounds; the caller fills any remainder at random.

    Every round runs on every sample (one that has stopped has ``room`` 0, so no attempt fits and it
    does not change) and the uniforms of all rounds are one ``[rounds, 4, attempts, B]`` draw: the
    same ops on the same shapes whatever is drawn, nothing read back to the host. On CUDA the whole
    draw is queued without waiting for the device (issue 12: a sync per round took ~20 ms per step).
    The attempts' arithmetic has the batch as its last dim, so that on the CPU it runs over contiguous
    rows of ``B`` values (over ``[B, attempts, 2]`` it took half the time); the grid keeps the batch
    first, where the CPU's cumsum and gather are 3-5x faster.
    """
    h, w = grid
    min_area = max(1, min(16, (h * w) // 12))  # BEiT uses 16 on a 14x14 grid
    u = torch.rand(block_rounds(masked), 4, BLOCK_ATTEMPTS, batch, generator=generator, device=device)
    # Built from aranges: a tensor from a Python list would be a host->device copy, and a sync.
    pair = torch.arange(2, device=device)  # (row, column) of a block, or (start, end) of a span
    sign = (1 - 2 * pair).view(2, 1, 1)  # [1, -1]
    extent = (h + (w - h) * pair).float().view(2, 1, 1)  # [h, w]
    # (height, width) = sqrt(area * aspect), sqrt(area / aspect): the per-attempt factors, for all rounds.
    aspect = torch.exp(math.log(0.3) * (1 - 2 * u[:, 1:2]) * sign)  # [rounds, 2, attempts, B]
    corner_sign = (sign.view(2, 1, 1, 1) * sign).float()  # [2, 2, 1, 1]: inclusion-exclusion over the table's corners
    # Cell (i, j) lives at (i + 1, j + 1) of a zero-bordered float grid: its cumsums are the summed-area
    # table without a pad per round, and float cumsums run ~5x faster than int64 ones on the CPU.
    span = (torch.arange(max(h, w) + 1, device=device) - 1).view(1, -1, 1)  # cell index of a padded row / col
    cells = torch.zeros(batch, h + 1, w + 1, device=device)
    room = torch.full((batch,), float(masked), device=device)  # cells still to cover; 0 once stopped
    for r in range(u.shape[0]):
        area = torch.lerp(room.clamp(max=min_area), room, u[r, 0])  # [attempts, B]
        # torch.round is half-to-even, as Python's round in BEiT's loop.
        size = torch.sqrt(area * aspect[r]).round().clamp(min=1)  # [(height, width), attempts, B]
        fits = (size <= extent).all(0)
        size = size.minimum(extent)  # in range for the lookups below; `fits` rejects them
        start = (u[r, 2:] * (extent + 1 - size)).floor()  # uniform over the extent - size + 1 positions
        bounds = torch.stack([start, start + size], 1).long()  # [(row, col), (start, end), attempts, B]
        # Cells already masked inside every candidate, from the summed-area table [B, (h+1)*(w+1)].
        table = cells.cumsum(1).cumsum(2).flatten(1)
        corners = bounds[0, :, None] * (w + 1) + bounds[1, None, :]  # [2, 2, attempts, B]
        sums = table.gather(1, corners.flatten(0, 2).t()).t().reshape(corners.shape)
        inside = (sums * corner_sign).sum((0, 1))
        new = size.prod(0) - inside  # [attempts, B]
        ok = fits & (new > 0) & (new <= room)
        added, first = ok.max(0)  # max returns the first of equal maxima: the first attempt that fits
        chosen = bounds.gather(2, first.expand(2, 2, 1, batch)).squeeze(2)  # [(row, col), (start, end), B]
        within = (span >= chosen[:, None, 0]) & (span < chosen[:, None, 1])  # [(row, col), max(h, w) + 1, B]
        rows = (within[0, : h + 1] & added).t()  # [B, h + 1]; a sample that adds nothing paints no row
        cells.masked_fill_(rows.unsqueeze(2) & within[1, : w + 1].t().unsqueeze(1), 1.0)
        room = torch.where(added, room - new.gather(0, first.unsqueeze(0)).squeeze(0), 0)
    return cells[:, 1:, 1:].reshape(batch, -1) > 0


def _grid_cells(
    grid: tuple[int, int], ratio: float, batch: int, generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """``[B, h*w]`` with 0 on one cell of every ``s x s`` (random phase per sample), else 1."""
    s = round(1.0 / math.sqrt(1.0 - ratio))
    h, w = grid
    if abs((1.0 - 1.0 / s**2) - ratio) > 1e-6:
        raise ValueError(f"grid masking keeps one cell of every s x s: ratio must be 1 - 1/s^2 (0.75, 0.888..), got {ratio}")
    if h % s or w % s:
        raise ValueError(f"grid masking with stride {s} needs a patch grid divisible by {s}, got {h}x{w}")
    phase = torch.randint(0, s, (batch, 2), generator=generator, device=device)
    rows = torch.arange(h, device=device).reshape(1, h, 1)
    cols = torch.arange(w, device=device).reshape(1, 1, w)
    keep = ((rows % s) == phase[:, 0, None, None]) & ((cols % s) == phase[:, 1, None, None])
    return (~keep).float().reshape(batch, -1)


def _hidden_channels(
    batch: int,
    num_channels: int,
    cells: int,
    budget: int,
    groups: Sequence[int] | None,
    num_drop: int,
    generator: torch.Generator | None,
    device: torch.device,
) -> torch.Tensor:
    """``[B, C]`` with 1 on the channels of ``num_drop`` randomly hidden groups per sample.

    Groups are taken in a random order per sample, each one that still fits the masking ``budget``
    (tokens to remove) until ``num_drop`` are hidden. Taking, ``num_drop`` times, the first group in
    that order that is not hidden yet and fits what is left of the budget is the same rule: a group
    passed over does not fit, and the budget only shrinks.
    """
    groups = list(range(num_channels)) if groups is None else list(groups)
    if len(groups) != num_channels:
        raise ValueError(f"groups has {len(groups)} entries for {num_channels} channels")
    names, group_of = torch.unique(torch.tensor(groups), return_inverse=True)
    sizes = torch.bincount(group_of) * cells  # tokens per group
    order = torch.rand(batch, len(names), generator=generator, device=device)
    sizes_on, group_on = sizes.to(device), group_of.to(device)
    hidden = torch.zeros(batch, len(names), dtype=torch.bool, device=device)
    room = torch.full((batch,), budget, device=device)
    found = torch.ones(batch, dtype=torch.bool, device=device)
    for _ in range(num_drop):  # a loop over picks (one or two), each over every sample and group at once
        candidates = order.masked_fill(hidden | (sizes_on > room.unsqueeze(1)), math.inf)
        first, pick = candidates.min(1)
        found &= first.isfinite()
        hidden.scatter_(1, pick.unsqueeze(1), True)
        room -= sizes_on[pick]
    if not bool(found.all()):  # the one host sync, only to name the error
        raise ValueError(
            f"cannot hide {num_drop} whole group(s) within a budget of {budget} masked tokens "
            f"(tokens per group: {dict(zip(names.tolist(), sizes.tolist()))}); raise the mask ratio or lower num_drop"
        )
    return hidden.gather(1, group_on.expand(batch, -1)).float()


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
        generator: ``torch.Generator`` for reproducible masks. The masks are drawn on its device (a
            generator on the training device keeps sampling off the host), else on ``device``.
        device: where the returned masks live (default: where they were drawn).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown masking strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    c, n = num_channels, grid[0] * grid[1]
    keep = num_keep(c * n, ratio)
    on = generator.device if generator is not None else torch.device(device or "cpu")

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator, device=on)

    if strategy == "random":
        masking = masking_from_scores(rand(batch, c * n), keep)
    elif strategy in ("channel", "sensor"):
        if strategy == "sensor" and groups is None:
            raise ValueError("sensor masking needs groups: the sensor of every channel")
        hidden = _hidden_channels(batch, c, n, c * n - keep, groups, num_drop, generator, on)
        masking = masking_from_scores((rand(batch, c, n) + hidden.unsqueeze(2)).reshape(batch, -1), keep)
    else:
        if strategy == "independent":
            cell_scores = rand(batch, c, n)
        elif strategy == "tied":
            cell_scores = rand(batch, 1, n)
        else:  # block / grid: their masked cells rank after every visible one; noise orders the rest
            cells = (_block_cells(grid, round(n * ratio), batch, generator, on) if strategy == "block"
                     else _grid_cells(grid, ratio, batch, generator, on))  # fmt: skip
            cell_scores = (cells + rand(batch, n)).unsqueeze(1)
        places = _interleave(cell_scores, rand(batch, c))
        masking = _masking(_inverse(places), places, keep)
    return masking.to(device) if device is not None else masking
