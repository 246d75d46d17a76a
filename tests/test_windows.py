"""The one window engine: microscopy fields and raster scenes through the same reader, dataset and meta schema."""
from __future__ import annotations

import random

import numpy as np
import rasterio
from affine import Affine

from domainmae.data import RasterScene, Window, WindowDataset, WindowReader, load_data_fields, random_windows

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
