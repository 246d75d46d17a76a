"""Open raster files are bounded per process (domainmae.data.handles): one LRU shared by every scene."""
from __future__ import annotations

import math
import multiprocessing
import os
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from rasterio.warp import transform_bounds

from domainmae.data import handles, raster
from domainmae.data.raster import BandSource, RasterScene
from domainmae.data.samplers import Window
from domainmae.data.scenes import find_scenes

from .test_data_raster import ORIGIN, write_tif

LIMIT = 4
WINDOW = Window(4, 8, 16, 16)
linux_only = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts descriptors in /proc, forks")


@pytest.fixture(autouse=True)
def _small_cache():
    # Below one scene's worth of files times a few scenes, so every test crosses the limit.
    handles.set_max_open_files(LIMIT)
    yield
    handles.set_max_open_files(None)
    handles.close_all()


def open_fds() -> int:
    """File descriptors this process holds (GDAL opens one per raster file)."""
    return len(os.listdir("/proc/self/fd"))


def make_scenes(root: Path, count: int) -> list[RasterScene]:
    """``count`` scene folders of 3 band files each: B02, B03 at 10 m and B05 at 20 m (resampled on read)."""
    rng = np.random.default_rng(0)
    root.mkdir(exist_ok=True)
    for i in range(count):
        folder = root / f"S{i:02d}"
        folder.mkdir()
        for name in ("B02", "B03"):
            write_tif(folder / f"S{i:02d}_{name}.tif", rng.integers(1, 10000, (1, 32, 32), dtype=np.uint16))
        write_tif(folder / f"S{i:02d}_B05.tif", rng.integers(1, 10000, (1, 16, 16), dtype=np.uint16), res=20.0)
    return find_scenes(root)


def warped_scene(root: Path) -> RasterScene:
    """B02 on a 10 m UTM 33N grid and B8A at 20 m in UTM 32N: B8A is read through a WarpedVRT."""
    b02 = write_tif(root / "W_B02.tif", np.random.default_rng(1).integers(1, 10000, (1, 32, 32), dtype=np.uint16))
    left, top = ORIGIN
    west, south, east, north = transform_bounds("EPSG:32633", "EPSG:32632", left, top - 320, left + 320, top)
    shape = (1, math.ceil((north - south) / 20), math.ceil((east - west) / 20))  # covers the 10 m grid
    data = np.random.default_rng(2).integers(1, 10000, shape, dtype=np.uint16)
    b8a = write_tif(root / "W_B8A.tif", data, crs="EPSG:32632", origin=(west, north), res=20.0)
    return RasterScene([BandSource("B02", b02), BandSource("B8A", b8a)])


@linux_only
def test_open_files_stay_bounded_across_scenes(tmp_path):
    scenes = make_scenes(tmp_path, 12)
    settled = 0
    for i, scene in enumerate(scenes):
        scene.read(WINDOW)
        assert handles.open_files() <= LIMIT
        if i == 1:  # the cache is full from here on; GDAL's own files (drivers, PROJ) are open by now
            settled = open_fds()
    assert open_fds() <= settled  # not 3 more descriptors per scene


def test_bounded_reads_equal_unbounded_reads(tmp_path):
    scenes = make_scenes(tmp_path, 10)
    order = [*range(10), 0, 5, 9, 3]  # revisits scenes whose files were evicted
    bounded = [scenes[i].read(WINDOW) for i in order]
    handles.set_max_open_files(1000)
    handles.close_all()
    unbounded = [scenes[i].read(WINDOW) for i in order]
    assert handles.open_files() == 30
    for ours, theirs in zip(bounded, unbounded, strict=True):
        np.testing.assert_array_equal(ours.image, theirs.image)
        np.testing.assert_array_equal(ours.valid, theirs.valid)


def test_evicted_scene_reopens_transparently(tmp_path):
    first, *others = make_scenes(tmp_path, 3)
    before = first.read(WINDOW)
    for scene in others:
        scene.read(WINDOW)
    assert not set(first.files) & {str(path) for path in handles.open_paths()}
    after = first.read(WINDOW)
    np.testing.assert_array_equal(after.image, before.image)
    assert set(first.files) <= {str(path) for path in handles.open_paths()}


def test_warped_band_reads_after_eviction(tmp_path, monkeypatch):
    built = []

    class RecordedVRT(raster.WarpedVRT):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            built.append(self)

    monkeypatch.setattr(raster, "WarpedVRT", RecordedVRT)
    scene = warped_scene(tmp_path)
    before = scene.read(WINDOW)
    assert len(built) == 1 and before.valid.any()
    for other in make_scenes(tmp_path / "others", 2):
        other.read(WINDOW)
    # Evicting a file closes the VRTs built on it too: none outlives its dataset.
    assert built[0].closed and built[0].src_dataset.closed
    after = scene.read(WINDOW)
    assert len(built) == 2 and not built[1].closed
    np.testing.assert_array_equal(after.image, before.image)
    np.testing.assert_array_equal(after.valid, before.valid)


def test_scenes_share_handles_and_close_only_their_own(tmp_path):
    handles.set_max_open_files(8)
    a, b = make_scenes(tmp_path, 2)
    a.read(WINDOW), b.read(WINDOW)
    twin = RasterScene(a.bands)  # the same files with the same nodata: the same handles
    twin.read(WINDOW)
    assert handles.open_files() == 6
    a.close()
    assert sorted(str(path) for path in handles.open_paths()) == sorted(b.files)
    np.testing.assert_array_equal(twin.read(WINDOW).image, a.read(WINDOW).image)
    # Another nodata declaration is another handle (GDAL masks the declared value on every read).
    RasterScene(a.bands, nodata=1).read(WINDOW)
    assert handles.open_files() == 8


def test_shrinking_the_limit_closes_the_oldest_files(tmp_path):
    handles.set_max_open_files(8)
    a, b = make_scenes(tmp_path, 2)
    a.read(WINDOW), b.read(WINDOW)
    handles.set_max_open_files(2)
    assert [str(path) for path in handles.open_paths()] == list(b.files[1:])


def test_limit_from_the_environment(monkeypatch):
    handles.set_max_open_files(None)
    monkeypatch.delenv(handles.ENV_VAR, raising=False)
    assert handles.max_open_files() == handles.DEFAULT_MAX_OPEN_FILES == 128
    monkeypatch.setenv(handles.ENV_VAR, "7")
    assert handles.max_open_files() == 7
    monkeypatch.setenv(handles.ENV_VAR, "none")
    with pytest.raises(ValueError, match="DOMAINMAE_MAX_OPEN_FILES"):
        handles.max_open_files()
    with pytest.raises(ValueError, match="at least 1"):
        handles.set_max_open_files(0)


def read_in_forked_worker(read: Callable[[], np.ndarray]) -> tuple[int, np.ndarray, int]:
    """``read()`` in a forked child, as in a DataLoader worker: handles open in the child before the read, the
    pixels, handles open after it."""
    context = multiprocessing.get_context("fork")
    results = context.Queue()

    def worker() -> None:
        inherited = handles.open_files()
        results.put((inherited, read(), handles.open_files()))

    child = context.Process(target=worker)
    child.start()
    found = results.get(timeout=60)
    child.join(timeout=60)
    assert child.exitcode == 0
    return found


@linux_only
def test_a_forked_worker_opens_its_own_handles(tmp_path):
    scene = make_scenes(tmp_path, 1)[0]
    expected = scene.read(WINDOW).image
    inherited, image, opened = read_in_forked_worker(lambda: scene.read(WINDOW).image)
    assert (inherited, opened) == (0, 3)
    np.testing.assert_array_equal(image, expected)
    assert handles.open_files() == 3  # the parent's are untouched and still read
    np.testing.assert_array_equal(scene.read(WINDOW).image, expected)


def test_scene_pickles_after_reading(tmp_path):
    scene = make_scenes(tmp_path, 1)[0]
    expected = scene.read(WINDOW).image
    clone = pickle.loads(pickle.dumps(scene))
    np.testing.assert_array_equal(clone.read(WINDOW).image, expected)


def test_unopenable_file_names_file_and_scene(tmp_path):
    missing = RasterScene([BandSource("B02", tmp_path / "gone_B02.tif")], scene_id="lost")
    with pytest.raises(raster.RasterReadError, match=r"cannot open raster .*gone_B02.tif \(scene lost\)"):
        missing.read(WINDOW)
    assert handles.open_files() == 0
