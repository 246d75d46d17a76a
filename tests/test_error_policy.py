"""One error policy (:mod:`domainmae.data.errors`) in every reader that lists items: ``raise`` raises the bad item's
error; ``skip`` leaves the item out, records and logs it, and ends the scan with one warning counting the skips."""
from __future__ import annotations

import logging
import shutil
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

from domainmae.data import (
    ErrorPolicy,
    bigearthnet_scenes,
    find_scenes,
    load_data_fields,
    pair_scenes,
    pattern_fields,
    stack_fields,
    stacked_scenes,
    zarr_fields,
)

from .test_data_microscopy import FLY, FLY_CHANNELS, FLY_PATTERN, _write_plate
from .test_data_raster import S1_ROOT, S2_ROOT, write_tif

#: What a case gives: the reader, to call with ``on_error=``, the items it keeps when skipping, the summary
#: warning (a regex) and a text naming the one bad item.
Case = tuple[Callable[..., list[Any]], int, str, str]


def _fly_without_one_file(tmp_path: Path) -> Path:
    fly = shutil.copytree(FLY, tmp_path / "fly")
    (fly / "01_POS076_F.TIF").unlink()
    return fly


def _manifest(tmp_path: Path) -> Case:
    manifest = _fly_without_one_file(tmp_path) / "load_data.csv"
    return partial(load_data_fields, manifest), 2, "skipped 1 of 3 rows of ", "01_POS076_F"


def _pattern(tmp_path: Path) -> Case:
    fly = _fly_without_one_file(tmp_path)
    read = partial(pattern_fields, fly, FLY_PATTERN, FLY_CHANNELS)
    return read, 2, "skipped 1 of 3 fields in ", "field=01_POS076"


def _stacks(tmp_path: Path) -> Case:
    tifffile.imwrite(tmp_path / "good.tif", np.zeros((2, 8, 8), np.uint8))
    (tmp_path / "junk.tif").write_bytes(b"II*\x00 not a tiff at all")
    paths = [tmp_path / "good.tif", tmp_path / "junk.tif"]
    read = partial(stack_fields, paths, axes="CYX", channels=["a", "b"])
    return read, 1, "skipped 1 of 2 TIFF stacks", "junk.tif"


def _plate(tmp_path: Path) -> Case:
    images = {("A", "1", "0"): np.zeros((3, 16, 16), np.uint8), ("A", "2", "0"): np.ones((3, 16, 16), np.uint8)}
    _write_plate(tmp_path / "plate.zarr", "0.5", images)
    shutil.rmtree(tmp_path / "plate.zarr" / "A" / "2")
    read = partial(zarr_fields, tmp_path / "plate.zarr")
    return read, 1, "skipped 1 wells or fields of OME-Zarr plate", "A/2 is listed"


def _band_files(tmp_path: Path) -> Case:
    for scene, bands in {"P1": ("B02", "B03"), "P2": ("B02",)}.items():
        (tmp_path / scene).mkdir()
        for band in bands:
            write_tif(tmp_path / scene / f"{scene}_{band}.tif", np.ones((1, 8, 8), np.uint16))
    read = partial(find_scenes, tmp_path, bands=["B02", "B03"])
    return read, 1, "skipped 1 of 2 scenes under ", "scene P2"


def _stacked(tmp_path: Path) -> Case:
    write_tif(tmp_path / "good.tif", np.ones((1, 8, 8), np.uint16))
    (tmp_path / "junk.tif").write_bytes(b"II*\x00 not a tiff at all")
    read = partial(stacked_scenes, tmp_path, bands=["B02"])
    return read, 1, "skipped 1 of 2 rasters in ", "junk.tif"


def _bigearthnet(tmp_path: Path) -> Case:
    root = shutil.copytree(S2_ROOT, tmp_path / "s2")
    patches = sorted(p for p in root.iterdir() if p.is_dir())
    (patches[0] / f"{patches[0].name}_labels_metadata.json").write_text("{")
    read = partial(bigearthnet_scenes, root, "s2")
    return read, len(patches) - 1, f"skipped 1 of {len(patches)} BigEarthNet patches", patches[0].name


def _pairs(tmp_path: Path) -> Case:
    s2, s1 = bigearthnet_scenes(S2_ROOT, "s2"), bigearthnet_scenes(S1_ROOT, "s1")[:-1]

    def read(on_error: Any) -> list[Any]:  # pair_scenes names its policy on_unpaired
        return pair_scenes(s2, s1, on_unpaired=on_error)

    return read, len(s1), f"skipped 1 of {len(s2) + len(s1)} s2 and s1 scenes", "has no s2/s1 partner"


CASES = [_manifest, _pattern, _stacks, _plate, _band_files, _stacked, _bigearthnet, _pairs]


@pytest.mark.parametrize("case", CASES, ids=[case.__name__.strip("_") for case in CASES])
def test_every_reader_raises_or_skips_records_logs_and_summarises_alike(case, tmp_path, caplog) -> None:
    read, kept, summary, bad = case(tmp_path)
    with pytest.raises((OSError, ValueError), match=bad):
        read(on_error="raise")
    policy = ErrorPolicy("skip")
    with caplog.at_level(logging.WARNING), pytest.warns(UserWarning, match=summary) as warned:
        items = read(on_error=policy)
    assert len(items) == kept
    assert len(policy.skipped) == 1 and bad in policy.skipped[0]  # recorded
    assert "skipped (1 so far)" in caplog.text and bad in caplog.text  # logged when it happened
    assert len([w for w in warned if str(w.message).startswith("skipped")]) == 1  # one summary per scan


def test_a_shared_policy_summarises_only_the_skips_of_each_scan() -> None:
    policy = ErrorPolicy("skip")
    policy.handle(OSError("an earlier scan's skip"))
    since = len(policy.skipped)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        policy.summarise(since, 3, "things")  # nothing new was skipped: no warning
    policy.handle(FileNotFoundError("b.tif"))
    with pytest.warns(UserWarning, match=r"^skipped 1 of 3 things: b\.tif$"):
        policy.summarise(since, 3, "things")
    assert policy.skipped == ["an earlier scan's skip", "b.tif"]


def test_raise_mode_raises_the_error_itself_and_a_bad_mode_is_named() -> None:
    err = FileNotFoundError("gone.tif")
    with pytest.raises(FileNotFoundError) as raised:
        ErrorPolicy().handle(err)
    assert raised.value is err
    with pytest.raises(ValueError, match="on_error must be 'raise' or 'skip', got 'ignore'"):
        ErrorPolicy("ignore")  # type: ignore[arg-type]
