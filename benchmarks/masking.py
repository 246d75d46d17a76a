"""Mask sampling: ms per call of every strategy, the loop-based sampler before issue 12 vs today's.

    PYTHONPATH=. python benchmarks/masking.py                 # ~2 min on a 2-core CPU, 1 thread
    PYTHONPATH=. python benchmarks/masking.py --device cuda   # today's sampler on the GPU (baseline: CPU + copy)
    PYTHONPATH=. python benchmarks/masking.py --strategies block   # one strategy's rows

Token layouts as the recipes train them: Cell Painting, 5 channels on a 14 x 14 grid (224 px crops, patch
16), and the sentinel recipe's 14 bands on 8 x 8 (128 px crops, patch 16) with its groups [12 S2, 2 S1] for
``sensor`` at its ratio 0.9. Masks are drawn for the whole global batch, as the training loop does.

The baseline is a copy of ``domainmae/models/masking.py`` before issue 12 (section below; docstrings and
argument checks left out), kept only here so that both are measured in the same run on the same machine.
One thread by default: on a shared, loaded CPU two threads mostly measure waits at OpenMP barriers (small
ops took 1000x longer).
"""
from __future__ import annotations

import argparse
import math
import random
import statistics
import time
from collections.abc import Callable, Sequence

import torch

from domainmae.models.masking import Masking, sample_masking

CELLPAINTING = {"channels": 5, "grid": (14, 14), "ratio": 0.75, "groups": None}
SENTINEL = {"channels": 14, "grid": (8, 8), "ratio": 0.9, "groups": [0] * 12 + [1] * 2}
CASES = [(s, "cellpainting 5x14x14", CELLPAINTING) for s in ("random", "independent", "tied", "block", "grid", "channel")]
CASES += [("sensor", "sentinel 14x8x8", SENTINEL)]


# --------------------------------------------------------------------------- baseline (before issue 12)
def baseline_masking_from_scores(scores: torch.Tensor, keep: int) -> Masking:
    ids_shuffle = torch.argsort(scores, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = torch.ones_like(scores, dtype=torch.float32)
    mask[:, :keep] = 0
    return Masking(ids_shuffle[:, :keep], ids_restore, torch.gather(mask, 1, ids_restore))


def _baseline_ranks(scores: torch.Tensor) -> torch.Tensor:
    return torch.argsort(torch.argsort(scores, dim=-1), dim=-1)


def _baseline_balance(per_channel: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    b, c, _ = per_channel.shape
    channel_rank = _baseline_ranks(torch.rand(b, c, 1, generator=generator, device=per_channel.device))
    return (_baseline_ranks(per_channel) * c + channel_rank).reshape(b, -1).float()


def _baseline_block_cells(grid: tuple[int, int], masked: int, rng: random.Random) -> torch.Tensor:
    h, w = grid
    cells = torch.zeros(h, w)
    min_area = max(1, min(16, (h * w) // 12))
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


def _baseline_grid_cells(grid: tuple[int, int], ratio: float, batch: int, generator: torch.Generator | None) -> torch.Tensor:
    s = round(1.0 / math.sqrt(1.0 - ratio))
    h, w = grid
    phase = torch.randint(0, s, (batch, 2), generator=generator)
    rows = torch.arange(h).reshape(1, h, 1)
    cols = torch.arange(w).reshape(1, 1, w)
    keep = ((rows % s) == phase[:, 0, None, None]) & ((cols % s) == phase[:, 1, None, None])
    return (~keep).float().reshape(batch, -1)


def _baseline_hidden_channels(
    batch: int, num_channels: int, cells: int, budget: int, groups: Sequence[int] | None, num_drop: int,
    generator: torch.Generator | None,
) -> torch.Tensor:  # fmt: skip
    groups = list(range(num_channels)) if groups is None else list(groups)
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
        hidden[b] = torch.isin(group_of, torch.tensor(chosen)).float()
    return hidden


def baseline_sample_masking(
    strategy: str, batch: int, num_channels: int, grid: tuple[int, int], ratio: float, *,
    groups: Sequence[int] | None = None, num_drop: int = 1, generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Masking:  # fmt: skip
    c, n = num_channels, grid[0] * grid[1]
    keep = round(c * n * (1.0 - ratio))

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator)

    if strategy == "random":
        scores = rand(batch, c * n)
    elif strategy == "independent":
        scores = _baseline_balance(rand(batch, c, n), generator)
    elif strategy == "tied":
        scores = _baseline_balance(rand(batch, 1, n).expand(batch, c, n), generator)
    elif strategy == "block":
        rng = random.Random(int(torch.randint(0, 2**62, (1,), generator=generator)))
        cells = torch.stack([_baseline_block_cells(grid, round(n * ratio), rng) for _ in range(batch)])
        scores = _baseline_balance((cells + rand(batch, n)).unsqueeze(1).expand(batch, c, n), generator)
    elif strategy == "grid":
        cells = _baseline_grid_cells(grid, ratio, batch, generator)
        scores = _baseline_balance((cells + rand(batch, n)).unsqueeze(1).expand(batch, c, n), generator)
    else:
        hidden = _baseline_hidden_channels(batch, c, n, c * n - keep, groups, num_drop, generator)
        scores = (rand(batch, c, n) + hidden[:, :, None]).reshape(batch, -1)
    masking = baseline_masking_from_scores(scores, keep)
    return masking.to(device) if device is not None else masking


# --------------------------------------------------------------------------- timing
def ms_per_call(sample: Callable[..., Masking], on: torch.device, call: dict, repeats: int, device: torch.device) -> float:
    """Median ms of ``repeats`` calls ``sample(**call)`` (after one warm-up), each with a generator on ``on``
    seeded by its step, as the training loop keys one per step; the masks end on ``device``."""
    def draw(step: int) -> Masking:
        return sample(**call, generator=torch.Generator(on).manual_seed(step), device=device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    draw(0)
    times = []
    for step in range(1, repeats + 1):
        sync()
        start = time.perf_counter()
        draw(step)
        sync()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, nargs="+", default=[256, 1024, 4096])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="where today's sampler draws (the baseline draws on the CPU)")
    p.add_argument("--strategies", nargs="+", choices=[s for s, _, _ in CASES], help="only these (default: all)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), today's sampler on {device}")
    print("| strategy | layout | batch | before (ms) | now (ms) | speed-up |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for strategy, layout, shape in CASES:
        if args.strategies and strategy not in args.strategies:
            continue
        for batch in args.batches:
            call = {"strategy": strategy, "batch": batch, "num_channels": shape["channels"], "grid": shape["grid"],
                    "ratio": shape["ratio"], "groups": shape["groups"]}  # fmt: skip
            old = ms_per_call(baseline_sample_masking, torch.device("cpu"), call, args.repeats, device)
            new = ms_per_call(sample_masking, device, call, args.repeats, device)
            print(f"| {strategy} | {layout} | {batch} | {old:.1f} | {new:.1f} | {old / new:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
