"""Windows per read: distinct tile cells per batch, design effect and effective samples/s (issue 13).

    PYTHONPATH=. python benchmarks/sampling.py               # ~2 min on a 2-core CPU
    PYTHONPATH=. python benchmarks/sampling.py --no-speed    # the statistics alone (~1 min)

``WindowReader.random`` cuts ``windows_per_read`` (k) windows from one read: ``random_windows(...,
block=...)`` puts them inside one tile cell, so one read of their span serves all k. That is faster per
window (benchmarks/README.md, Loader (b)/(c)), but the k windows of a read are neighbours: a batch of 32
holds ~32/k places instead of ~32. For k = 1, 2, 4, 8, 16 this prints what that costs:

1. distinct tile cells per batch of 32 and of 256 windows on a 10980 x 10980 px scene (a Sentinel-2 tile
   at 10 m) with 512 px tiles, counted on the windows of the real ``random_windows``. A batch is
   batch/k independent reads, each of one scene drawn uniformly from S, as a shuffled DataLoader over
   ``WindowDataset`` items (one read each) makes it; for S > 1 also the distinct scenes per batch.
2. the design effect DE(k) = Var(batch mean | k per read) / Var(batch mean | 1 per read) of a scene-level
   statistic, the mean of the windows' mean values, on a synthetic spatially correlated field: Gaussian-
   filtered white noise (correlation 1/e at 100 px = 1 km) plus a smooth trend, each of unit variance;
   and the effective batch 32 / DE. Reads are independent, so DE does not depend on the batch size
   (printed for 32 and 256 as a check). The field is simulated at 3/8 scale (4118 px scene, 192 px
   blocks, 84 / 48 px windows, 37.5 px correlation: every ratio as at full scale) so that window means
   come from a summed-area table in memory. Two variants bracket the answer: the texture alone (no
   trend), and S = 4 scenes that also differ in their mean (offset sd 1), where a read shares its scene
   too.
3. samples/s of ``WindowReader`` per k on a generated tiled GeoTIFF (10 bands uint16, 512 px tiles,
   deflate, as Loader (b)), and effective samples/s = samples/s / DE.

Seeded: the statistics are deterministic; the timings are not.
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from domainmae.data.samplers import random_windows

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is a folder of scripts, not a package
from loader import write_raster  # noqa: E402

KS = (1, 2, 4, 8, 16)
SCENE, BLOCK, SIZES, CORRELATION = 10980, 512, (224, 128), 100  # px at full scale (10 m)
SCALE = 3 / 8  # of the simulated field: keeps block, window and correlation lengths integral or near it


# --------------------------------------------------------------------------- window positions
def draw_reads(
    scenes: int, side: int, size: int, block: int, k: int, reads: int, rng: random.Random
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scene, row and column of ``reads`` reads of ``k`` windows, each ``[reads, k]``.

    As ``WindowDataset`` items: a scene per read, then the real tile-aware sampler inside it.
    """
    scene, rows, cols = (np.empty((reads, k), dtype=np.int64) for _ in range(3))
    for i in range(reads):
        scene[i] = rng.randrange(scenes)
        windows = random_windows(side, side, size, k, rng, block=(block, block))
        rows[i] = [w.row for w in windows]
        cols[i] = [w.col for w in windows]
    return scene, rows, cols


def distinct_per_batch(ids: np.ndarray, batch: int) -> float:
    """Mean number of distinct values per consecutive ``batch`` of the flattened ``ids``."""
    flat = np.sort(ids.reshape(-1, batch), axis=1)
    return float(np.mean(1 + np.count_nonzero(np.diff(flat, axis=1), axis=1)))


def cells_table(args: argparse.Namespace) -> dict[tuple[int, int, int, int], tuple[float, float]]:
    """(size, k, scenes, batch) -> mean distinct (scene, tile cell) and distinct scenes per batch."""
    radix = SCENE // BLOCK + 1  # at least the cells per side of window positions, for any window size
    out = {}
    for size in SIZES:
        for scenes in args.scenes:
            for k in KS:
                rng = random.Random(f"{args.seed}-cells-{size}-{k}-{scenes}")
                scene, rows, cols = draw_reads(scenes, SCENE, size, BLOCK, k, args.cell_windows // k, rng)
                cell = (scene * radix + rows // BLOCK) * radix + cols // BLOCK
                for batch in (32, 256):
                    out[size, k, scenes, batch] = distinct_per_batch(cell, batch), distinct_per_batch(scene, batch)
    return out


# --------------------------------------------------------------------------- the synthetic field
def texture(side: int, correlation: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian-filtered white noise of unit variance whose correlation falls to 1/e at ``correlation`` px.

    A Gaussian filter of sd s gives the autocorrelation exp(-d^2 / 4 s^2), so s = correlation / 2. The
    filter runs in the Fourier domain on a larger periodic grid that is then cropped, so that its
    wrap-around does not correlate opposite edges of the scene.
    """
    sigma = correlation / 2
    n = -(-int(side + 8 * sigma) // 512) * 512  # a multiple of 512: a fast FFT size
    freq, half = np.fft.fftfreq(n), np.fft.rfftfreq(n)
    gain = np.exp(-2 * np.pi**2 * sigma**2 * (freq[:, None] ** 2 + half[None, :] ** 2))
    field = np.fft.irfft2(np.fft.rfft2(rng.standard_normal((n, n))) * gain, s=(n, n))[:side, :side]
    return (field - field.mean()) / field.std()


def trend(side: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth scene-wide variation of unit variance (relief, a coast, a land-use gradient).

    A plane of random direction plus a sinusoid of random direction and phase with a wavelength of half the
    scene, so that it varies across tile cells but hardly within one.
    """
    axis = np.arange(side) / side - 0.5
    a, b, phase = rng.uniform(0, 2 * np.pi, 3)
    plane = np.cos(a) * axis[None, :] + np.sin(a) * axis[:, None]
    wave = np.sin(4 * np.pi * (np.cos(b) * axis[None, :] + np.sin(b) * axis[:, None]) + phase)
    field = plane / plane.std() + wave / wave.std()
    return (field - field.mean()) / field.std()


def summed_area(field: np.ndarray) -> np.ndarray:
    """Summed-area table with a zero first row and column: any window sum in four look-ups."""
    table = np.zeros((field.shape[0] + 1, field.shape[1] + 1))
    table[1:, 1:] = field.cumsum(0).cumsum(1)
    return table


def window_means(table: np.ndarray, scene: np.ndarray, rows: np.ndarray, cols: np.ndarray, size: int) -> np.ndarray:
    """Mean value of each ``size`` px window; ``table`` is ``[scenes, H + 1, W + 1]``."""
    r, c = rows + size, cols + size
    sums = table[scene, r, c] - table[scene, rows, c] - table[scene, r, cols] + table[scene, rows, cols]
    return sums / size**2


def batch_variance(values: np.ndarray, batch: int) -> float:
    """Variance over batches of the batch mean; ``values`` is ``[reads, k]``, batch/k reads a batch."""
    return float(np.var(values.reshape(-1, batch).mean(axis=1), ddof=1))


def design_effects(args: argparse.Namespace) -> dict[tuple[str, int, int, int], float]:
    """(field, size, k, batch) -> DE; field is "trend" (texture + trend), "texture" or "scenes" (S = 4)."""
    side, block = round(SCENE * SCALE), round(BLOCK * SCALE)
    rng = np.random.default_rng(args.seed)
    base = texture(side, CORRELATION * SCALE, rng)
    texture_only = summed_area(base)[None]  # scene 0 without its trend
    # Standardised, so that the S scene means spread by exactly --offset and not by what S draws happen to give.
    offsets = rng.standard_normal(args.de_scenes)
    offsets = args.offset * (offsets - offsets.mean()) / (offsets.std() or 1.0)
    tables = np.empty((args.de_scenes, side + 1, side + 1))
    for s in range(args.de_scenes):
        base = base if s == 0 else texture(side, CORRELATION * SCALE, rng)
        tables[s] = summed_area(base + args.trend * trend(side, rng) + offsets[s])
    del base
    correlation = CORRELATION * SCALE
    lag = round(correlation)
    check = np.diff(np.diff(texture_only[0], axis=0), axis=1)  # the texture back from its table
    print(f"texture: correlation at {lag} px = {np.corrcoef(check[:-lag].ravel(), check[lag:].ravel())[0, 1]:.3f} "
          f"(target exp(-(lag / {correlation:g})^2) = {np.exp(-((lag / correlation) ** 2)):.3f})")  # fmt: skip
    del check
    variances = {}
    for size in (round(s * SCALE) for s in SIZES):
        for k in KS:
            for field, scenes in (("trend", 1), ("scenes", args.de_scenes)):
                rng_w = random.Random(f"{args.seed}-de-{size}-{k}-{scenes}")
                scene, rows, cols = draw_reads(scenes, side, size, block, k, args.windows // k, rng_w)
                means = {field: window_means(tables, scene, rows, cols, size)}
                if scenes == 1:  # the same draws on the texture alone
                    means["texture"] = window_means(texture_only, scene, rows, cols, size)
                for name, values in means.items():
                    for batch in (32, 256):
                        variances[name, size, k, batch] = batch_variance(values, batch)
    return {(f, round(s / SCALE), k, b): v / variances[f, s, 1, b] for (f, s, k, b), v in variances.items()}


# --------------------------------------------------------------------------- speed
def samples_per_s(path: Path, size: int, k: int, seconds: float, seed: int) -> float:
    """Windows/s of ``WindowReader.random`` at ``k`` windows per read, after one untimed warm-up read."""
    from domainmae.data import RasterScene, WindowReader

    scene = RasterScene.from_file(path, bands=[f"b{i}" for i in range(1, 11)])
    reader, rng = WindowReader(scene, size, windows_per_read=k), random.Random(seed)
    sum(1 for _ in reader.random(k, rng))
    made, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        made += sum(1 for _ in reader.random(k, rng))
    return made / elapsed


def speeds(args: argparse.Namespace) -> dict[tuple[int, int], float]:
    """(size, k) -> samples/s of one process on a generated ``--cog-size`` px COG-like file."""
    with tempfile.TemporaryDirectory(prefix="sampling-bench-") as tmp:
        path = Path(tmp) / "cog.tif"
        start = time.perf_counter()
        write_raster(path, args.cog_size, 10)
        print(f"wrote a {args.cog_size}^2 x 10 band COG-like file in {time.perf_counter() - start:.0f} s")
        return {(size, k): samples_per_s(path, size, k, args.seconds, args.seed) for size in SIZES for k in KS}


# --------------------------------------------------------------------------- driver
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--windows", type=int, default=409_600, help="windows per k in the design-effect simulation")
    p.add_argument("--cell-windows", type=int, default=64_000, help="windows per k and S in the cell counts")
    p.add_argument("--scenes", type=int, nargs="+", default=[1, 10, 100], help="scene counts S of the cell counts")
    p.add_argument("--de-scenes", type=int, default=4, help="scenes of the multi-scene design effect")
    p.add_argument("--trend", type=float, default=1.0, help="sd of the smooth trend (the texture's sd is 1)")
    p.add_argument("--offset", type=float, default=1.0, help="sd of the scene means between scenes")
    p.add_argument("--no-speed", action="store_true", help="skip the timed reads")
    p.add_argument("--cog-size", type=int, default=4096, help="side of the timed COG-like file in px")
    p.add_argument("--seconds", type=float, default=2.0, help="timed seconds per (size, k)")
    args = p.parse_args()
    if args.windows % 256 or args.cell_windows % 256:
        p.error("--windows and --cell-windows must be multiples of 256 (whole batches of 256 for every k)")
    # Loader (b) caps GDAL's block cache at 64 MB for an 8192 px file; the same share of a smaller file keeps
    # cache hits between random reads as rare. Set before GDAL's first block I/O, which fixes it per process.
    os.environ["GDAL_CACHEMAX"] = str(max(1, round(64 * (args.cog_size / 8192) ** 2)))

    start = time.perf_counter()
    cells = cells_table(args)
    de = design_effects(args)
    rate = {} if args.no_speed else speeds(args)
    print(f"total {time.perf_counter() - start:.0f} s\n")

    print(f"{SCENE}^2 px scene, {BLOCK} px tiles; DE on texture (1/e at {CORRELATION} px) + trend, 1 scene; "
          f"'texture': no trend; '{args.de_scenes} scenes': scene means differ by sd {args.offset:g}")  # fmt: skip
    n = args.windows // 32, args.windows // 256
    # A variance from n batch means has a relative sd of ~sqrt(2 / (n - 1)); DE is the ratio of two of them.
    print("sampling error of DE: ~" + ", ".join(f"{100 * (4 / (b - 1)) ** 0.5:.0f}% at {w}" for b, w in zip(n, (32, 256)))
          + f" ({n[0]} batches of 32, {n[1]} of 256 per k)")  # fmt: skip
    sc = f"{args.de_scenes}sc"
    for size in SIZES:
        print(f"\n{size} px windows")
        print(f"{'k':>3} {'cells/32':>9} {'cells/256':>9} {'DE':>6} {'DE@256':>7} {'eff.32':>7} {'samp/s':>8} "
              f"{'eff/s':>7} {'DE tex':>7} {'eff/s tex':>9} {'DE ' + sc:>7} {'eff/s ' + sc:>9}")  # fmt: skip
        for k in KS:
            d, r = de["trend", size, k, 32], rate.get((size, k), float("nan"))
            tex, scenes = de["texture", size, k, 32], de["scenes", size, k, 32]
            print(f"{k:>3} {cells[size, k, 1, 32][0]:>9.1f} {cells[size, k, 1, 256][0]:>9.1f} {d:>6.2f} "
                  f"{de['trend', size, k, 256]:>7.2f} {32 / d:>7.1f} {r:>8.1f} {r / d:>7.1f} {tex:>7.2f} "
                  f"{r / tex:>9.1f} {scenes:>7.2f} {r / scenes:>9.1f}")  # fmt: skip
    size = SIZES[0]
    print(f"\nS scenes, {size} px windows: distinct (scene, cell) / distinct scenes per batch of 32 and of 256")
    print(f"{'k':>3} " + " ".join(f"{f'S={s}: 32':>14} {'256':>14}" for s in args.scenes))
    for k in KS:
        line = (f"{cells[size, k, s, b][0]:>6.1f} / {cells[size, k, s, b][1]:>5.1f}" for s in args.scenes for b in (32, 256))
        print(f"{k:>3} " + " ".join(line))


if __name__ == "__main__":
    main()
