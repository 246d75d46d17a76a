"""Remote reads (issue 12, item 4): windows/s from local files vs the same files over loopback HTTP.

    PYTHONPATH=. python benchmarks/remote.py                 # about 40 s on a 2-core CPU
    PYTHONPATH=. python benchmarks/remote.py --seconds 1     # quicker

Cases, each timed for ``--seconds`` of random 224 px windows after one warm-up window:

* COG: a 4-band uint16 COG (2048 px, 512 px deflate tiles, overviews) made by tiling a bundled multispectral
  sample, read through :class:`~domainmae.data.raster.RasterScene` from disk and from a URL (GDAL /vsicurl/ with
  :data:`~domainmae.data.remote.GDAL_REMOTE_OPTIONS`);
* Zarr: the bundled ExampleFly fields as one ``[3, 3, 1006, 1000]`` uint8 array in 256 px chunks, read through
  :class:`~domainmae.data.zarr.ZarrField` from disk and from a URL (zarr over fsspec/aiohttp);
* opening the COG: HTTP requests and time for one open, with GDAL's defaults and with the remote settings,
  each against a fresh server so that GDAL's per-URL cache cannot answer.

Requests per window are counted by the server: GDAL keeps fetched ranges (``VSI_CACHE``,
``CPL_VSIL_CURL_CACHE_SIZE``), so once a scene's tiles have been read, its windows cost no request (the
COG row); zarr over fsspec caches nothing and fetches every chunk a window touches on every read.

The server is ``tests/httpserver.py`` (Python's threaded http.server with byte ranges) in its own process on
127.0.0.1: no network latency or bandwidth limit, so the remote numbers are the cost of HTTP and the client
libraries, a floor for real object stores, where each request adds a round trip (tens of ms).
"""
from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import rasterio
import tifffile
import zarr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/httpserver.py, with PYTHONPATH unset too

from domainmae.data import handles, remote  # noqa: E402
from domainmae.data.raster import RasterScene  # noqa: E402
from domainmae.data.samplers import Window  # noqa: E402
from domainmae.data.zarr import zarr_fields  # noqa: E402
from tests.httpserver import serve  # noqa: E402

SAMPLES = Path(__file__).resolve().parents[1] / "datasets" / "samples"
SIDE, WINDOW = 2048, 224


def make_cog(folder: Path) -> Path:
    """A tiled COG of real reflectances: one 120 px sample tiled to ``SIDE`` px (tags and band names kept)."""
    with rasterio.open(sorted((SAMPLES / "multispectral").glob("*.tif"))[0]) as source:
        data = np.tile(source.read(), (1, SIDE // 120 + 1, SIDE // 120 + 1))[:, :SIDE, :SIDE]
        profile = {key: source.profile[key] for key in ("dtype", "count", "crs", "transform", "nodata")}
        descriptions = source.descriptions
    path = folder / "scene.tif"
    with rasterio.open(path, "w", driver="COG", width=SIDE, height=SIDE, blocksize=512, compress="deflate",
                       **profile) as cog:  # fmt: skip
        cog.write(data)
        cog.descriptions = descriptions
    return path


def make_zarr(folder: Path) -> Path:
    fields = [[tifffile.imread(path) for path in sorted((SAMPLES / "examplefly").glob(f"01_POS{site}_*.TIF"))]
              for site in ("002", "076", "218")]  # fmt: skip
    path = folder / "fly.zarr"
    zarr.create_array(path, data=np.asarray(fields), chunks=(1, 1, 256, 256))
    return path


def windows_per_second(read: Callable[[Window], object], shape: tuple[int, int], seconds: float,
                       requests: Callable[[], int]) -> tuple[float, float]:
    """Random windows read per second, and HTTP requests per window (``requests()``: answered so far)."""
    rng = random.Random(0)

    def window() -> Window:
        return Window(rng.randrange(shape[0] - WINDOW), rng.randrange(shape[1] - WINDOW), WINDOW, WINDOW)

    read(window())  # opens the file and fills GDAL's and fsspec's first caches, as any reader's first window does
    count, before, start = 0, requests(), time.perf_counter()
    while time.perf_counter() - start < seconds:
        read(window())
        count += 1
    return count / (time.perf_counter() - start), (requests() - before) / count


def open_requests(folder: Path, name: str, settings: bool, repeats: int = 3) -> tuple[int, float]:
    """HTTP requests and median seconds for GDAL to open ``name`` and read its metadata, with or without the
    settings; each open against a fresh server (a new port, so a new URL for GDAL's cache)."""
    counts, times = set(), []
    for _ in range(repeats):
        with serve(folder) as served:
            url = f"{served.url}/{name}"
            start = time.perf_counter()
            with remote.gdal_env(url) if settings else rasterio.Env(), rasterio.open(remote.gdal_path(url)) as data:
                _ = data.transform, data.descriptions, data.block_shapes
            times.append(time.perf_counter() - start)
            counts.add(served.count())
    (count,) = counts  # GDAL asks the same every time
    return count, float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0, help="time per case")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        cog, store = make_cog(folder), make_zarr(folder)
        rows = []
        with serve(folder) as served:
            for where, location in (("local", cog), ("loopback HTTP", f"{served.url}/{cog.name}")):
                scene = RasterScene.from_file(location)
                rate = windows_per_second(scene.read, (SIDE, SIDE), args.seconds, served.count)
                rows.append(("COG 4 x 2048 px, 512 px tiles", where, *rate))
                handles.close_all()
            for where, location in (("local", store), ("loopback HTTP", f"{served.url}/{store.name}")):
                field = zarr_fields(location, channels=["DNA", "PH3", "Actin"])[0]
                rate = windows_per_second(field.read, field.shape, args.seconds, served.count)
                rows.append(("Zarr 3 x 1006 x 1000, 256 px chunks", where, *rate))
                handles.close_all()
        print(f"| data | read from | {WINDOW} px windows/s | HTTP requests per window |\n| --- | --- | ---: | ---: |")
        for data, where, rate, per_window in rows:
            print(f"| {data} | {where} | {rate:.1f} | {per_window:.2f} |")
        print("\n| opening the COG over HTTP | requests | seconds (median of 3) |\n| --- | ---: | ---: |")
        for label, settings in (("GDAL defaults", False), ("remote settings (GDAL_REMOTE_OPTIONS)", True)):
            count, seconds = open_requests(folder, cog.name, settings)
            print(f"| {label} | {count} | {seconds:.3f} |")


if __name__ == "__main__":
    main()
