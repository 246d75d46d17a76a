"""Microscopy fields keep their files open in the per-process LRU of domainmae.data.handles: a TIFF's header is
parsed once per process, not once per read, a Zarr array is opened once, and the open-file limit still holds."""
from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from domainmae.data import (
    FieldError,
    Window,
    ZarrField,
    handles,
    load_data_fields,
    pattern_fields,
    stack_fields,
    zarr_fields,
)  # fmt: skip

from .conftest import SAMPLES
from .test_raster_handles import read_in_forked_worker

FLY, HUMAN = SAMPLES / "examplefly", SAMPLES / "examplehuman"
FLY_PATTERN, FLY_CHANNELS = r"(?P<field>.+)_(?P<channel>[DFR])\.TIF", {"D": "DNA", "F": "PH3", "R": "Actin"}
WINDOWS = [Window(0, 0, 64, 64), Window(100, 37, 90, 120), Window(400, 300, 64, 64), Window(7, 9, 200, 31),
           Window(300, 250, 128, 128)]  # fmt: skip
linux_only = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts descriptors in /proc, forks")


@pytest.fixture(autouse=True)
def _fresh_cache():
    handles.close_all()  # earlier tests may have left these files open: each test counts its own opens
    yield
    handles.set_max_open_files(None)
    handles.close_all()


@pytest.fixture
def tiff_opens(monkeypatch) -> list[str]:
    """Names of the files each ``tifffile.TiffFile`` was constructed on (a construction parses a header)."""
    opened: list[str] = []

    class Counting(tifffile.TiffFile):
        def __init__(self, file, *args, **kwargs) -> None:
            opened.append(Path(file).name)
            super().__init__(file, *args, **kwargs)

    monkeypatch.setattr(tifffile, "TiffFile", Counting)
    monkeypatch.setattr(tifffile.tifffile, "TiffFile", Counting)  # what tifffile.memmap/imread construct
    return opened


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def expected_planes(files: list[Path], window: Window) -> np.ndarray:
    return np.stack([tifffile.imread(path)[window.slices()] for path in files]).astype(np.float32)


@pytest.mark.parametrize("folder", [FLY, HUMAN])  # FLY: uncompressed (memory-mapped); HUMAN: 2 of 3 PackBits
def test_channel_files_parse_each_header_once_per_process(folder: Path, tiff_opens: list[str]) -> None:
    field = load_data_fields(folder / "load_data.csv")[0]
    files = [Path(path) for path in field.meta["files"].values()]
    reads = [field.pixels(window) for window in WINDOWS]
    assert sorted(tiff_opens) == sorted(path.name for path in files)  # one per channel file, not one per read
    for window, image in zip(WINDOWS, reads, strict=True):
        np.testing.assert_array_equal(image, expected_planes(files, window))
    np.testing.assert_array_equal(field.pixels(), expected_planes(files, Window(0, 0, *field.shape)))


def test_tiff_stack_parses_its_header_once(tmp_path: Path, tiff_opens: list[str]) -> None:
    data = np.random.default_rng(0).integers(0, 4000, (3, 500, 480), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "plain.tif", data, photometric="minisblack", metadata={"axes": "CYX"})
    tifffile.imwrite(tmp_path / "tiled.tif", data, photometric="minisblack", metadata={"axes": "CYX"}, tile=(128, 128),
                     compression="zlib")
    for name in ("plain.tif", "tiled.tif"):
        (field,) = stack_fields([tmp_path / name], channels=["a", "b", "c"])
        tiff_opens.clear()  # the scan opened the file to lay it out; reads open it once more, then keep it
        for window in WINDOWS[:3]:
            np.testing.assert_array_equal(field.pixels(window), data[(slice(None), *window.slices())])
        assert tiff_opens == [name]


def test_zarr_array_is_opened_once_per_process(tmp_path: Path, monkeypatch) -> None:
    data = np.random.default_rng(1).integers(0, 4000, (2, 3, 500, 480), dtype=np.uint16)
    zarr.create_array(tmp_path / "fields.zarr", shape=data.shape, dtype="uint16", chunks=(1, 1, 128, 128))[:] = data
    fields = zarr_fields(tmp_path / "fields.zarr", channels=["a", "b", "c"])
    opened: list[str] = []
    open_array = zarr.open_array

    def counting(*args, **kwargs) -> zarr.Array:
        opened.append(kwargs.get("path", ""))
        return open_array(*args, **kwargs)

    monkeypatch.setattr(zarr, "open_array", counting)
    for field, n in zip(fields, range(2), strict=True):
        for window in WINDOWS[:3]:
            np.testing.assert_array_equal(field.pixels(window), data[(n, slice(None), *window.slices())])
    assert len(opened) == 1  # both fields index one array: one open for the process
    for index in ([1, 2], [2, 0]):  # consecutive channels are read as a slice, others as a list
        subset = ZarrField("subset", ("x", "y"), {}, str(tmp_path / "fields.zarr"), "", "ncyx", {"n": 1}, index)
        np.testing.assert_array_equal(subset.pixels(WINDOWS[1]), data[(1, index, *WINDOWS[1].slices())])
    assert len(opened) == 1


def test_illumination_functions_are_mapped_once(tmp_path: Path, monkeypatch) -> None:
    row = {"FileName_OrigDNA": "01_POS002_D.TIF", "PathName_OrigDNA": str(FLY.resolve()),
           "FileName_IllumDNA": "IllumDNA.npy", "PathName_IllumDNA": ""}  # fmt: skip
    illum = np.random.default_rng(2).uniform(0.5, 2.0, (1006, 1000)).astype(np.float32)
    np.save(tmp_path / "IllumDNA.npy", illum)
    (tmp_path / "load_data.csv").write_text(",".join(row) + "\n" + ",".join(row.values()) + "\n")
    loads: list[str] = []
    load = np.load

    def counting(path, *args, **kwargs) -> np.ndarray:
        loads.append(Path(path).name)
        return load(path, *args, **kwargs)

    monkeypatch.setattr(np, "load", counting)
    (field,) = load_data_fields(tmp_path / "load_data.csv")
    raw = tifffile.imread(FLY / "01_POS002_D.TIF").astype(np.float32)
    for window in WINDOWS:
        np.testing.assert_allclose(field.pixels(window)[0], (raw / illum)[window.slices()], rtol=1e-6)
    assert loads == ["IllumDNA.npy"]


def test_reads_are_copies_that_outlive_the_handles() -> None:
    field = pattern_fields(FLY, FLY_PATTERN, FLY_CHANNELS)[0]
    image = field.pixels(WINDOWS[1])
    assert image.base is None or not isinstance(image.base, np.memmap)
    handles.close_all()  # unmaps the files: the image read before must not depend on them
    np.testing.assert_array_equal(image, field.pixels(WINDOWS[1]))


@linux_only
def test_microscopy_files_stay_under_the_open_file_limit() -> None:
    handles.set_max_open_files(4)
    fields = pattern_fields(FLY, FLY_PATTERN, FLY_CHANNELS) + load_data_fields(HUMAN / "load_data.csv")
    first = [field.pixels(WINDOWS[2]) for field in fields]  # 12 channel files through a cache of 4
    settled = open_fds()
    for _ in range(3):
        for field, image in zip(fields, first, strict=True):
            np.testing.assert_array_equal(field.pixels(WINDOWS[2]), image)  # evicted files reopen transparently
            assert handles.open_files() <= 4
    assert open_fds() <= settled  # evicting a memory-mapped plane closes its descriptor
    handles.close_all()
    assert open_fds() <= settled - 4


def test_fields_pickle_without_handles() -> None:
    field = pattern_fields(FLY, FLY_PATTERN, FLY_CHANNELS)[0]
    before = len(pickle.dumps(field))
    image = field.pixels(WINDOWS[0])
    assert len(pickle.dumps(field)) <= before + 64  # only the cached shape is new, no handle
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(field)).pixels(WINDOWS[0]), image)


def test_a_file_replaced_removed_or_broken_while_open_is_reopened_or_named(tmp_path: Path) -> None:
    for name in ("01_POS002_D.TIF", "01_POS002_F.TIF", "01_POS002_R.TIF"):
        shutil.copy(FLY / name, tmp_path / name)
    (field,) = pattern_fields(tmp_path, FLY_PATTERN, FLY_CHANNELS)
    path, window = tmp_path / "01_POS002_F.TIF", WINDOWS[1]
    field.pixels(window)
    inverted = 255 - tifffile.imread(path)
    tifffile.imwrite(tmp_path / "new.tif", inverted)
    os.replace(tmp_path / "new.tif", path)  # as tools that write files atomically do: a new file, same path
    np.testing.assert_array_equal(field.pixels(window)[1], inverted[window.slices()])  # not the open old one
    tifffile.imwrite(tmp_path / "new.tif", inverted[:150])
    os.replace(tmp_path / "new.tif", path)  # now shorter than the field, whose shape was read before
    with pytest.raises(FieldError, match=r"01_POS002_F\.TIF \(channel PH3, .*\): read a plane of shape \(50, 120\)"):
        field.pixels(window)
    path.unlink()
    with pytest.raises(FileNotFoundError, match=r"01_POS002_F\.TIF \(channel PH3, field=01_POS002 .*\) does not exist"):
        field.pixels(window)
    path.write_bytes(b"II*\x00 this is not a TIFF")
    with pytest.raises(FieldError, match=r"cannot read .*01_POS002_F\.TIF \(channel PH3, field=01_POS002"):
        field.pixels(window)
    assert path not in handles.open_paths()


@linux_only
def test_a_forked_worker_opens_its_own_microscopy_handles() -> None:
    field = pattern_fields(FLY, FLY_PATTERN, FLY_CHANNELS)[0]
    expected = field.pixels(WINDOWS[1])
    # As in a DataLoader worker: the parent's memory maps are not the child's.
    inherited, image, opened = read_in_forked_worker(lambda: field.pixels(WINDOWS[1]))
    assert (inherited, opened) == (0, 3)
    np.testing.assert_array_equal(image, expected)
    assert handles.open_files() == 3
