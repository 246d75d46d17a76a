"""xarray / Zarr datacubes: windows equal the array and carry its georeferencing."""
from __future__ import annotations

import random
from datetime import datetime, timezone

import numpy as np
import pytest
import xarray as xr
from affine import Affine

from domainmae.data.cube import cube_grid, open_cube
from domainmae.data.samplers import Window
from domainmae.data.windows import WindowDataset, WindowReader

# Writing the fixtures: string band names and consolidated metadata have no Zarr v3 spec yet; zarr says so.
pytestmark = [
    pytest.mark.filterwarnings("ignore:The data type .* does not have a Zarr V3 specification"),
    pytest.mark.filterwarnings("ignore:Consolidated metadata is currently not part"),
]

TRANSFORM = Affine(10.0, 0.0, 404400.0, 0.0, -10.0, 5342400.0)
BANDS = ["B02", "B03", "B04"]


def cube(times: int = 2, height: int = 96, width: int = 80) -> xr.DataArray:
    data = np.random.default_rng(0).random((times, len(BANDS), height, width), dtype=np.float32)
    return xr.DataArray(
        data,
        dims=("time", "band", "y", "x"),
        coords={"time": np.array(["2021-05-01T10:30", "2021-06-10T10:30"][:times], "datetime64[ns]"), "band": BANDS},
        name="reflectance",
    )


def rioxarray_style(array: xr.DataArray) -> xr.Dataset:
    """What rioxarray writes: a ``spatial_ref`` coordinate with the CRS and a GDAL GeoTransform."""
    geotransform = " ".join(map(str, TRANSFORM.to_gdal()))
    spatial_ref = xr.DataArray(0, attrs={"crs_wkt": "EPSG:32633", "GeoTransform": geotransform})
    dataset = array.to_dataset().assign_coords(spatial_ref=spatial_ref)
    dataset["reflectance"].attrs["grid_mapping"] = "spatial_ref"
    return dataset


def test_zarr_cube_windows_equal_the_array_and_carry_the_transform(tmp_path):
    array = cube()
    path = tmp_path / "cube.zarr"
    rioxarray_style(array).to_zarr(path, encoding={"reflectance": {"chunks": (1, 3, 32, 32)}})
    scenes = open_cube(path)
    assert [s.datetime for s in scenes] == [
        datetime(2021, 5, 1, 10, 30, tzinfo=timezone.utc),
        datetime(2021, 6, 10, 10, 30, tzinfo=timezone.utc),
    ]
    scene = scenes[1]
    assert scene.channels == tuple(BANDS) and scene.block_shape == (32, 32)
    assert scene.grid.transform == TRANSFORM and scene.grid.crs.to_epsg() == 32633
    reader = WindowReader(scene, 24, windows_per_read=4)
    samples = list(reader.random(8, random.Random(0)))
    assert reader.regions_read == 2
    for sample in samples:
        row, col, height, width = sample["meta"]["window"]
        expected = array.values[1, :, row : row + height, col : col + width]
        np.testing.assert_array_equal(sample["image"].numpy(), expected)
        assert sample["meta"]["transform"] == TRANSFORM @ Affine.translation(col, row)
        assert sample["meta"]["crs"] == "EPSG:32633" and sample["meta"]["scene_id"] == "cube[1]"
        assert sample["valid"].all()


def test_geozarr_attributes_and_nan_as_invalid(tmp_path):
    array = cube(times=1).isel(time=0)
    array[0, :4, :] = np.nan  # a decoded _FillValue
    dataset = array.to_dataset()
    dataset.attrs.update(
        {"proj:code": "EPSG:32633", "spatial:transform": list(TRANSFORM)[:6], "spatial:dimensions": ["y", "x"]}
    )
    dataset.to_zarr(tmp_path / "geo.zarr")
    (scene,) = open_cube(tmp_path / "geo.zarr")
    assert scene.grid.transform == TRANSFORM and scene.grid.crs.to_epsg() == 32633
    region = scene.read(Window(0, 0, 8, 8))
    assert not region.valid[:4].any() and region.valid[4:].all() and (region.image[:, :4] == 0).all()


def test_grid_from_coordinates_and_errors():
    array = cube(times=1).isel(time=0)
    centres = array.assign_coords(x=404405.0 + 10 * np.arange(80), y=5342395.0 - 10 * np.arange(96))
    assert cube_grid(centres).transform == TRANSFORM and cube_grid(centres).crs is None
    with pytest.raises(ValueError, match="no spatial:transform, no GeoTransform and no y/x coordinates"):
        cube_grid(array)
    with pytest.raises(ValueError, match="pass bands="):
        open_cube(centres.drop_vars("band"))
    with pytest.raises(ValueError, match=r"data variables \['a', 'b'\]; pass variable="):
        open_cube(xr.Dataset({"a": centres, "b": centres}))


def test_cube_scenes_feed_the_window_dataset():
    array = cube(times=2).assign_coords(x=404405.0 + 10 * np.arange(80), y=5342395.0 - 10 * np.arange(96))
    dataset = WindowDataset(open_cube(array), 32, sampling="grid")
    windows = [sample for item in dataset for sample in item]  # one item per row of windows
    assert len(dataset) == 2 * 3 and len(windows) == 2 * 3 * 3
    sample = windows[9 + 4]  # second time step, the centre window of the 3 x 3 tiling
    assert sample["meta"]["window"] == (32, 32, 32, 32)
    np.testing.assert_array_equal(sample["image"].numpy(), array.values[1, :, 32:64, 32:64])
