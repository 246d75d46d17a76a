"""Loader throughput (samples/s, one process = one worker) and peak RSS, against baselines in the same run.

    python benchmarks/loader.py                        # defaults: ~5-6 min on a 2-core CPU
    python benchmarks/loader.py --cog-size 4096 --fields 4 --seconds 2     # quicker
    python benchmarks/loader.py --only handles         # (d) alone: ~2 min
    python benchmarks/loader.py --only fields          # (a) alone: ~2.5 min

(a) microscopy: 5-channel uint16 1080x1080 fields as per-channel TIFFs (uncompressed, as microscopes write
    them; and deflate-compressed in strips of 16 rows, which must be decoded) vs one Zarr array [N, 5, H, W]
    (256x256 chunks, zstd); 224 px crops through WindowDataset, 1 crop per field read vs several (``--crops``); baseline: read every channel file whole, then crop; plain baselines at one crop
    per read, what the libraries give with the files kept open: a slice of ``tifffile.memmap`` per channel
    file, and a plain zarr slice ``array[n, :, rows, cols]``, each stacked/converted to float32 [C, h, w] like
    the readers' output, timed in turns with WindowDataset in one process (:func:`run_paired_case`).
(b) a tiled multi-band COG-like GeoTIFF (10 bands uint16, 512 px tiles, deflate, pixel-interleaved as GDAL
    writes COGs); random 128/224 px windows through WindowReader, tile-aware with several windows per
    read, and one window per read; baseline 1: read the whole file, then crop; baseline 2: plain per-window
    rasterio reads with the file kept open.
(c) one file per band at mixed resolution, like Sentinel-2 (4 bands at 10 m, 6 at 20 m, 2 at 60 m; coarse
    bands resampled to the 10 m grid on read).
Peak RSS as the dataset grows 10x: fields (N vs 10N) and COG area (side/sqrt(10) vs side).
(d) open files: N small one-file-per-band scenes (12 band files each, as in (c)), a random window read from
    each in turn, twice over (N = 20 and 200): the most file descriptors the process held and peak RSS, with
    the per-process LRU of open files (domainmae.data.handles, 128) vs a cache made unbounded (1e6), and
    whether a walk fits under the common soft limit of 1,024 open files.

Every case runs in its own process, so each peak RSS belongs to that case alone. Files are generated in a
temporary folder and are in the page cache when read, so the numbers measure decoding, not the disk. GDAL's
block cache is capped (``--gdal-cache-mb``) so that repeated windows over one test file cannot turn into
cache hits that a training run over many scenes would not get.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import rasterio
import tifffile
import zarr
from affine import Affine
from rasterio.windows import Window as RioWindow

CHANNELS = ["DNA", "ER", "RNA", "AGP", "Mito"]
FIELD_SIDE, CROP = 1080, 224
S2_BANDS = {10: ["B02", "B03", "B04", "B08"], 20: ["B05", "B06", "B07", "B8A", "B11", "B12"], 60: ["B01", "B09"]}


# --------------------------------------------------------------------------- data generation
def _texture(rng: np.random.Generator, rows: np.ndarray, cols: np.ndarray, scale: float) -> np.ndarray:
    """Smooth structure plus sensor noise, so compression ratios are image-like, not noise-like."""
    smooth = 2000 + 800 * np.sin(rows[:, None] / (300 * scale)) + 800 * np.cos(cols[None, :] / (170 * scale))
    return (smooth + rng.integers(0, 256, smooth.shape)).astype(np.uint16)


def write_fields(root: Path, count: int) -> None:
    """``count`` fields as per-channel TIFFs ``f<i>_<channel>.tif`` (uncompressed, and deflate-compressed under
    ``deflate/``) and as ``fields.zarr`` [N, 5, H, W]."""
    rng = np.random.default_rng(0)
    axis = np.arange(FIELD_SIDE)
    (root / "deflate").mkdir()
    store = zarr.create_array(root / "fields.zarr", shape=(count, len(CHANNELS), FIELD_SIDE, FIELD_SIDE),
                              dtype="uint16", chunks=(1, 1, 256, 256))  # fmt: skip
    for i in range(count):
        field = np.stack([_texture(rng, axis + 97 * i, axis + 13 * c, 0.2) for c in range(len(CHANNELS))])
        for channel, plane in zip(CHANNELS, field):
            tifffile.imwrite(root / f"f{i:03d}_{channel}.tif", plane)
            tifffile.imwrite(root / "deflate" / f"f{i:03d}_{channel}.tif", plane, compression="zlib", rowsperstrip=16)
        store[i] = field


def write_raster(path: Path, side: int, bands: int, pixel: float = 10.0) -> None:
    """A tiled (512 px), deflate-compressed GeoTIFF of ``bands`` uint16 bands, written strip by strip."""
    rng = np.random.default_rng(1)
    profile = dict(driver="GTiff", width=side, height=side, count=bands, dtype="uint16", crs="EPSG:32633",
                   transform=Affine(pixel, 0, 500000, 0, -pixel, 5000000), tiled=True, blockxsize=512,
                   blockysize=512, compress="deflate", NUM_THREADS="ALL_CPUS", BIGTIFF="IF_SAFER")  # fmt: skip
    cols = np.arange(side)
    with rasterio.open(path, "w", **profile) as dst:
        for top in range(0, side, 512):
            rows = np.arange(top, min(top + 512, side))
            strip = np.stack([_texture(rng, rows, cols, 10 / pixel) + 50 * b for b in range(bands)])
            dst.write(strip, window=RioWindow(0, top, side, len(rows)))


def write_s2_like(root: Path, side: int, name: str = "S2X_MSIL2A_20200101T000000_T33UUP") -> None:
    """One scene folder with a file per band at 10/20/60 m on a common origin (``side`` px at 10 m)."""
    scene = root / name
    scene.mkdir(parents=True)
    for metres, names in S2_BANDS.items():
        for name in names:
            write_raster(scene / f"{scene.name}_{name}.tif", side * 10 // metres, 1, pixel=metres)


# --------------------------------------------------------------------------- one case (child process)
def _rate(produce: Callable[[], int], seconds: float) -> tuple[float, int]:
    """Samples/s of ``produce`` (one call returns the samples it made) after one untimed warm-up call."""
    produce()
    made, start = 0, time.perf_counter()
    while True:
        made += produce()
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return made / elapsed, made


def _field_case(case: dict, rng: random.Random) -> Callable[[], int]:
    from domainmae.data import WindowDataset, pattern_fields, zarr_fields

    root, count = Path(case["root"]), case["fields"]
    if case["format"] == "zarr":
        fields = zarr_fields(root / "fields.zarr", channels=CHANNELS)[:count]
    else:
        folder = root / "deflate" if case["format"] == "tiff-deflate" else root
        fields = pattern_fields(folder, r"(?P<field>f\d+)_(?P<channel>\w+)\.tif", channels=CHANNELS)[:count]
    position = iter(range(10**9))
    if case["mode"] in ("plain", "field"):
        return _one_crop_case(case, rng, fields)
    if case["mode"] == "whole":  # baseline: every channel file read whole, then one crop
        def produce() -> int:
            field = fields[next(position) % count]
            image = np.stack([tifffile.imread(path) for path in field.files]).astype(np.float32)
            r, c = rng.randrange(FIELD_SIDE - CROP + 1), rng.randrange(FIELD_SIDE - CROP + 1)
            np.ascontiguousarray(image[:, r:r + CROP, c:c + CROP])
            return 1
        return produce
    crops = WindowDataset(fields, CROP, windows_per_read=case["k"])
    return lambda: len(crops[next(position) % count])


def _one_crop_case(case: dict, rng: random.Random, fields: list) -> Callable[[], int]:
    """One crop per call, files kept open: plain library reads, float32 ``[C, h, w]`` like the readers' (mode
    "plain", the speed a reader should reach), or a field's own window read without WindowDataset ("field")."""
    from domainmae.data import Window

    span, position = FIELD_SIDE - CROP + 1, iter(range(10**9))
    if case["mode"] == "field":
        def read(n: int, r: int, c: int) -> object:
            return fields[n].read(Window(r, c, CROP, CROP))
    elif case["format"] == "zarr":
        array = zarr.open_array(Path(case["root"]) / "fields.zarr", mode="r")

        def read(n: int, r: int, c: int) -> object:
            return array[n, :, r:r + CROP, c:c + CROP].astype(np.float32)
    else:
        maps = [[tifffile.memmap(path, mode="r") for path in field.files] for field in fields]

        def read(n: int, r: int, c: int) -> object:  # the slices, copied out of the maps by the stack
            return np.stack([plane[r:r + CROP, c:c + CROP] for plane in maps[n]]).astype(np.float32)

    def produce() -> int:
        read(next(position) % len(fields), rng.randrange(span), rng.randrange(span))
        return 1
    return produce


def _raster_case(case: dict, rng: random.Random) -> Callable[[], int]:
    from domainmae.data import RasterScene, Window, WindowReader, find_scenes

    size, mode = case["size"], case["mode"]
    if mode == "plain":  # baseline 2: rasterio reads one window at a time, file kept open
        dataset = rasterio.open(case["path"])
        span = dataset.height - size + 1

        def produce() -> int:
            dataset.read(window=RioWindow(rng.randrange(span), rng.randrange(span), size, size))
            return 1
        return produce
    if case["kind"] == "cog":
        with rasterio.open(case["path"]) as dataset:
            scene = RasterScene.from_file(case["path"], bands=[f"b{i}" for i in dataset.indexes])
    else:
        (scene,) = find_scenes(case["path"])
    if mode == "whole":  # baseline 1: the whole scene read, then one window cut
        grid = scene.grid
        whole = Window(0, 0, grid.height, grid.width)

        def produce() -> int:
            region = scene.read(whole)
            region.crop(Window(rng.randrange(grid.height - size + 1), rng.randrange(grid.width - size + 1), size, size))
            return 1
        return produce
    reader = WindowReader(scene, size, windows_per_read=case["k"])
    return lambda: sum(1 for _ in reader.random(case["k"], rng))


def _rss_mb() -> float:
    """Current resident set size (Linux ``/proc``)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _open_fds() -> int:
    """File descriptors the process holds (GDAL keeps one per open raster file)."""
    return len(os.listdir("/proc/self/fd"))


def run_handles_case(case: dict) -> dict:
    """A random window from each of ``scenes`` scenes in turn, ``passes`` times: most open files, peak RSS.

    Written against RasterScene.read and find_scenes only, not the window readers built on them. Sentinel-2
    radiometry declares nodata 0, so each band is opened through a VRT declaring it, as in training.
    """
    from domainmae.data import RasterReadError, Window, find_scenes, set_max_open_files
    from domainmae.data.radiometry import SENTINEL2_L2A

    if case["nofile"]:  # the soft limit most systems start a process with
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(case["nofile"], hard), hard))
    set_max_open_files(case["max_open"])
    scenes = find_scenes(case["root"], radiometry=SENTINEL2_L2A)[: case["scenes"]]
    rng, size, most, failed, reads = random.Random(0), case["size"], 0, None, 0
    setup, start = _rss_mb(), time.perf_counter()
    for i in [i for _ in range(case["passes"]) for i in range(len(scenes))]:
        try:
            grid = scenes[i].grid
            window = Window(rng.randrange(grid.height - size + 1), rng.randrange(grid.width - size + 1), size, size)
            scenes[i].read(window)
            most = max(most, _open_fds())  # listing /proc/self/fd takes a descriptor too
        except (RasterReadError, OSError) as err:  # out of file descriptors: the failure this case is about
            failed = f"failed at scene {reads + 1}: {str(err).splitlines()[0][-90:]}"
            break
        reads += 1
    elapsed = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {**case, "samples_per_s": reads / elapsed, "samples": reads, "peak_rss_mb": peak,
            "read_mb": max(peak - setup, 0.0), "open_fds": most, "failed": failed}  # fmt: skip


def run_paired_case(case: dict) -> dict:
    """WindowDataset at one crop per read, the field's own read and the plain baseline in one process, taking
    short turns, so that load from other jobs on a shared machine falls on all alike: their ratios are far
    steadier than those of separate runs (on a 2-core machine shared with another job, those put Zarr at 0.5x
    and 1.4x)."""
    rng = random.Random(0)
    sides = {mode: _field_case({**case, "mode": mode, "k": 1}, rng) for mode in ("crops", "field", "plain")}
    made, spent = dict.fromkeys(sides, 0), dict.fromkeys(sides, 0.0)
    for _ in range(case["turns"]):
        for name, produce in sides.items():
            rate, count = _rate(produce, case["seconds"] / case["turns"])
            made[name] += count
            spent[name] += count / rate
    return {**case, **{f"{mode}_per_s": made[mode] / spent[mode] for mode in sides}}


def run_case(case: dict) -> dict:
    """Throughput and memory of one case; ``read_mb`` is the peak above the RSS of imports and setup."""
    if case["kind"] == "handles":
        return run_handles_case(case)
    if case["kind"] == "paired":
        return run_paired_case(case)
    rng = random.Random(0)
    produce = _field_case(case, rng) if case["kind"] == "fields" else _raster_case(case, rng)
    setup = _rss_mb()
    rate, made = _rate(produce, case["seconds"])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {**case, "samples_per_s": rate, "samples": made, "peak_rss_mb": peak, "read_mb": max(peak - setup, 0.0)}


# --------------------------------------------------------------------------- driver
def measure(case: dict, gdal_cache_mb: int) -> dict:
    env = {**os.environ, "GDAL_CACHEMAX": str(gdal_cache_mb), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, __file__, "--one", json.dumps(case)], check=True, capture_output=True,
                         text=True, env=env)  # fmt: skip
    return json.loads(out.stdout.splitlines()[-1])


def row(label: str, result: dict) -> dict:
    print(f"  {label:<52} {result['samples_per_s']:>9.1f} {result['peak_rss_mb']:>8.0f} {result['read_mb']:>8.0f}",
          flush=True)
    return result


def verdict(name: str, value: float, target: float, unit: str) -> None:
    print(f"  -> {name}: {value:.3g}{unit} (target >= {target:g}{unit}): {'met' if value >= target else 'NOT met'}")


PLAIN = {"tiff": "tifffile.memmap slices, files kept open", "zarr": "zarr slice, array kept open"}


def fields_section(args: argparse.Namespace, root: Path) -> None:
    """(a) microscopy fields: WindowDataset on per-channel TIFFs and Zarr vs plain library reads and whole reads."""
    for name, count in (("fields", args.fields), ("fields10", 10 * args.fields)):
        (root / name).mkdir()
        write_fields(root / name, count)
    print(f"{'case':<54} {'samples/s':>9} {'peak MB':>8} {'read MB':>8}   (read MB: peak above imports+setup)")
    print(f"(a) {args.fields} fields x 5 ch uint16 {FIELD_SIDE}^2, {CROP} px crops")
    fields = dict(kind="fields", root=str(root / "fields"), fields=args.fields, seconds=args.seconds)
    a = {(fmt, k): row(f"{fmt} WindowDataset, {k} crop(s) per field read", measure({**fields, "format": fmt,
         "mode": "crops", "k": k}, args.gdal_cache_mb))
         for fmt in ("tiff", "tiff-deflate", "zarr") for k in (1, *args.crops)}  # fmt: skip
    whole = row("baseline: tiff read whole, then 1 crop", measure({**fields, "format": "tiff", "mode": "whole"},
                                                                   args.gdal_cache_mb))  # fmt: skip
    for fmt in ("tiff", "zarr"):
        r = measure({**fields, "kind": "paired", "format": fmt, "seconds": 2 * args.seconds, "turns": 10},
                    args.gdal_cache_mb)  # fmt: skip
        ms = {mode: f"{1e3 / r[f'{mode}_per_s']:.3f}" for mode in ("crops", "field", "plain")}
        print(f"  {fmt}, ms per crop, taking turns in one process: WindowDataset 1 crop/read {ms['crops']}, "
              f"field.read {ms['field']}, plain ({PLAIN[fmt]}) {ms['plain']}")
        verdict(f"{fmt}, 1 crop/read vs plain", r["crops_per_s"] / r["plain_per_s"], 0.9, "x")
    verdict("zarr, 1 crop/read", a["zarr", 1]["samples_per_s"], 200, " samples/s")
    most = max(args.crops)  # the RSS and whole-read comparisons use the most crops per read
    verdict(f"zarr, {most} crops/read", a["zarr", most]["samples_per_s"], 200, " samples/s")
    print(f"  -> tiff {most} crops/read vs whole-read baseline: "
          f"{a['tiff', most]['samples_per_s'] / whole['samples_per_s']:.1f}x")
    big = {fmt: row(f"{fmt} WindowDataset, {most} crops, {10 * args.fields} fields (RSS growth)",
                    measure({**fields, "root": str(root / "fields10"), "fields": 10 * args.fields, "format": fmt,
                             "mode": "crops", "k": most}, args.gdal_cache_mb)) for fmt in ("tiff", "zarr")}  # fmt: skip
    for fmt in ("tiff", "zarr"):
        growth = big[fmt]["peak_rss_mb"] / a[fmt, most]["peak_rss_mb"]
        print(f"  -> {fmt} peak RSS, 10x fields: {growth:.2f}x ({'flat' if growth <= 1.25 else 'NOT flat'})")


def handles_section(args: argparse.Namespace, root: Path) -> None:
    """(d) open files and RSS over many one-file-per-band scenes: the LRU of open files vs unbounded."""
    most = max(args.scenes)
    for i in range(most):
        write_s2_like(root / "many", args.scene_size, f"S2X_MSIL2A_20200101T000000_T33UUP_{i:03d}")
    print(f"(d) N S2-like scenes of 12 band files ({args.scene_size}^2 at 10 m), a random {args.handles_window} px "
          "window from each in turn, 2 passes")
    print(f"  {'':<52} {'reads/s':>9} {'peak MB':>8} {'read MB':>8} {'max fds':>8}")
    base = dict(kind="handles", root=str(root / "many"), size=args.handles_window, passes=2)
    unbounded = 10**6
    for count in args.scenes:
        for limit, nofile in ((128, 1024), (unbounded, None), (unbounded, 1024)):
            if nofile and limit == unbounded and 12 * count < 1000:
                continue  # fits under the limit anyway
            label = f"N={count}, " + ("LRU of 128 open files" if limit == 128 else "unbounded (baseline)")
            label += ", soft limit 1024 files" if nofile else ""
            r = measure({**base, "scenes": count, "max_open": limit, "nofile": nofile}, args.gdal_cache_mb)
            print(f"  {label:<52} {r['samples_per_s']:>9.1f} {r['peak_rss_mb']:>8.0f} {r['read_mb']:>8.0f} "
                  f"{r['open_fds']:>8}" + (f"\n    -> {r['failed']}" if r["failed"] else ""), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fields", type=int, default=8, help="fields in the throughput runs; 10x for the RSS run")
    p.add_argument("--crops", type=int, nargs="+", default=[8], help="crops per field read (each vs 1)")
    p.add_argument("--cog-size", type=int, default=8192, help="side of the large COG in px (10 bands)")
    p.add_argument("--s2-size", type=int, default=6144, help="side of the S2-like scene at 10 m (multiple of 6)")
    p.add_argument("--windows", type=int, default=16, help="windows per tile-aligned read")
    p.add_argument("--seconds", type=float, default=3.0, help="timed seconds per case (after one warm-up call)")
    p.add_argument("--scenes", type=int, nargs="+", default=[20, 200], help="scene counts of the open-files case")
    p.add_argument("--scene-size", type=int, default=480, help="side of those scenes at 10 m (multiple of 6)")
    p.add_argument("--handles-window", type=int, default=128, help="window side in the open-files case")
    p.add_argument("--only", choices=["fields", "handles"], help="run this section only: (a) fields or (d) open files")
    p.add_argument("--gdal-cache-mb", type=int, default=64)
    p.add_argument("--one", help=argparse.SUPPRESS)  # child process: one case as JSON
    args = p.parse_args()
    if args.one:
        print(json.dumps(run_case(json.loads(args.one)), default=str))
        return
    if args.s2_size % 6 or args.scene_size % 6:
        p.error("--s2-size and --scene-size must be multiples of 6 (60 m bands)")
    if args.only:
        with tempfile.TemporaryDirectory(prefix="loader-bench-") as tmp:
            {"fields": fields_section, "handles": handles_section}[args.only](args, Path(tmp))
        return
    t = args.seconds
    with tempfile.TemporaryDirectory(prefix="loader-bench-") as tmp:
        root = Path(tmp)
        small_side = round(args.cog_size / math.sqrt(10))
        start = time.perf_counter()
        write_raster(root / "cog.tif", args.cog_size, 10)
        write_raster(root / "cog_small.tif", small_side, 10)
        write_s2_like(root / "s2", args.s2_size)
        print(f"generated test data in {time.perf_counter() - start:.0f} s under {root}")

        fields_section(args, root)

        print(f"(b) COG {args.cog_size}^2 x 10 bands uint16, 512 px tiles, deflate")
        for size in (128, 224):
            cog = dict(kind="cog", path=str(root / "cog.tif"), size=size, seconds=t)
            tile = row(f"{size} px tile-aware, {args.windows} windows/read",
                       measure({**cog, "mode": "tile", "k": args.windows}, args.gdal_cache_mb))
            row(f"{size} px WindowReader, 1 window/read", measure({**cog, "mode": "tile", "k": 1}, args.gdal_cache_mb))
            plain = row(f"{size} px baseline 2: plain rasterio per-window reads", measure({**cog, "mode": "plain"}, args.gdal_cache_mb))
            verdict(f"{size} px tile-aware vs plain per-window", tile["samples_per_s"] / plain["samples_per_s"], 3, "x")
        sizes = {"small": (root / "cog_small.tif", small_side), "large": (root / "cog.tif", args.cog_size)}
        rss = {}
        for mode in ("whole", "tile", "plain"):
            for name, (path, side) in sizes.items():
                case = dict(kind="cog", path=str(path), size=224, seconds=t if mode != "whole" else 0.0, mode=mode,
                            k=args.windows)  # fmt: skip
                label = {"whole": "baseline 1: whole file read, then crop", "tile": "tile-aware",
                         "plain": "plain per-window"}[mode]  # fmt: skip
                rss[mode, name] = row(f"224 px {label}, {side}^2", measure(case, args.gdal_cache_mb))
            growth = rss[mode, "large"]["peak_rss_mb"] / rss[mode, "small"]["peak_rss_mb"]
            print(f"  -> {mode} peak RSS, 10x area: {growth:.2f}x ({'flat' if growth <= 1.25 else 'NOT flat'})")

        print(f"(c) S2-like scene, one file per band: 4 @ {args.s2_size}^2 (10 m), 6 @ 20 m, 2 @ 60 m, 224 px windows")
        s2 = dict(kind="bands", path=str(root / "s2"), size=224, seconds=t)
        tile = row(f"tile-aware, {args.windows} windows/read", measure({**s2, "mode": "tile", "k": args.windows}, args.gdal_cache_mb))
        one = row("WindowReader, 1 window/read (files kept open)", measure({**s2, "mode": "tile", "k": 1}, args.gdal_cache_mb))
        full = row("baseline 1: whole scene read (resampled), then crop", measure({**s2, "mode": "whole", "seconds": 0.0},
                                                                                  args.gdal_cache_mb))  # fmt: skip
        verdict("tile-aware vs 1 window/read", tile["samples_per_s"] / one["samples_per_s"], 3, "x")
        print(f"  -> tile-aware vs whole-scene baseline: {tile['samples_per_s'] / full['samples_per_s']:.0f}x")
        handles_section(args, root)
        print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
