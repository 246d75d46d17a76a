"""The one window engine: microscopy fields and raster scenes through the same reader, dataset and meta schema."""
from __future__ import annotations

import random

import numpy as np
import pytest
import rasterio
from affine import Affine

from domainmae.data import (
    NoValidWindowError,
    RasterScene,
    Window,
    WindowDataset,
    WindowReader,
    load_data_fields,
    random_windows,
)  # fmt: skip
from domainmae.data.windows import proportional_reads
from domainmae.pipeline import build_training_data
from domainmae.recipes import load_recipe

from .conftest import SAMPLES


def write_scene(path, height: int = 70, width: int = 90) -> RasterScene:
    values = np.arange(3 * height * width, dtype=np.uint16).reshape(3, height, width)
    profile = dict(driver="GTiff", width=width, height=height, count=3, dtype="uint16", crs="EPSG:32633",
                   transform=Affine(10, 0, 500000, 0, -10, 5000000))  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(values)
    return RasterScene.from_file(path, ["a", "b", "c"])


def test_fields_and_scenes_share_one_meta_schema(tmp_path):
    field = load_data_fields(SAMPLES / "examplehuman" / "load_data.csv")[0]
    scene = write_scene(tmp_path / "scene.tif")
    for source in (field, scene):
        items = WindowDataset([source], 32, windows_per_read=3)
        (sample, *_) = items[0]
        window = sample["meta"]["window"]
        # One type everywhere: a Window that is also the plain (row, col, height, width) tuple.
        assert isinstance(window, Window) and window == tuple(window) and window.height == window.width == 32
    assert "field" in field.read(Window(0, 0, 8, 8)).crop(Window(2, 2, 4, 4))["meta"]
    assert scene.read(Window(0, 0, 8, 8)).crop(Window(2, 2, 4, 4))["meta"]["crs"] == "EPSG:32633"


def test_field_windows_are_independent_and_uniform_as_the_plain_sampler():
    """A field is one block: its random windows are the plain sampler's, draw for draw."""
    field = load_data_fields(SAMPLES / "examplehuman" / "load_data.csv")[0]
    got = [s["meta"]["window"] for s in WindowReader(field, 64, windows_per_read=5).random(5, random.Random(3))]
    assert got == random_windows(*field.shape, 64, 5, random.Random(3))
    assert len(set(got)) == 5


def test_grid_items_are_rows_read_once_and_equal_plain_reads(tmp_path):
    scene = write_scene(tmp_path / "scene.tif")
    dataset = WindowDataset([scene], 32, sampling="grid")
    # 70 x 90 px in 32 px windows: rows at 0, 32, 38 and columns at 0, 32, 58 (the last snapped to the edge).
    assert len(dataset) == 3
    with rasterio.open(tmp_path / "scene.tif") as src:
        for item in dataset:
            assert len(item) == 3 and len({s["meta"]["window"].row for s in item}) == 1
            for sample in item:
                window = sample["meta"]["window"]
                expected = src.read(window=window.to_rasterio()).astype(np.float32)
                np.testing.assert_array_equal(sample["image"].numpy(), expected)
    assert dataset.readers[0].regions_read == 3


def test_reads_follow_valid_area(tmp_path):
    """Reads are spread by window positions x valid fraction and sum exactly; a scene of nodata gets none."""
    small, large = write_scene(tmp_path / "small.tif", 40, 40), write_scene(tmp_path / "large.tif", 80, 80)
    empty_path = tmp_path / "empty.tif"
    profile = dict(driver="GTiff", width=40, height=40, count=1, dtype="uint16", nodata=0, crs="EPSG:32633",
                   transform=Affine(10, 0, 500000, 0, -10, 5000000))  # fmt: skip
    with rasterio.open(empty_path, "w", **profile) as dst:
        dst.write(np.zeros((1, 40, 40), np.uint16))
    empty = RasterScene.from_file(empty_path, ["a"])
    counts = proportional_reads([small, large, empty], 16, 100)
    # 25 x 25 against 65 x 65 positions: 625 / 4850 and 4225 / 4850 of 100 reads.
    assert counts == [13, 87, 0]
    dataset = WindowDataset([small, large, empty], 16, reads_per_source=counts)
    assert len(dataset) == 100 and [dataset.source_index(i) for i in (0, 12, 13, 99)] == [0, 0, 1, 1]
    with pytest.raises(NoValidWindowError, match="none of the 1 fields/scenes"):
        proportional_reads([empty], 16, 10)


def test_windows_per_epoch_makes_a_full_epoch_from_a_few_scenes():
    """Three bundled scenes cannot fill a step of four reads; 64 windows per epoch (16 reads of 4) can."""
    section = load_recipe("multispectral", demo=True).data
    few = build_training_data(section)
    with pytest.raises(ValueError, match="has 3 fields/regions but one step needs 4 .*data.windows_per_epoch"):
        few.steps_per_epoch(4)
    many = build_training_data(section.model_copy(update={"windows_per_epoch": 64}))
    assert len(many.dataset) == 16 and many.steps_per_epoch(4) == 4
    assert sorted({many.dataset.dataset.dataset.source_index(i) for i in range(16)}) == [0, 1, 2]
