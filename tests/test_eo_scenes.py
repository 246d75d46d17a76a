"""EO scenes beyond BigEarthNet: CRSs without an EPSG code, radiometry per sensor, stacked multi-band rasters."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.io
from rasterio.crs import CRS

from domainmae.data.multisensor import MultiSensorScene
from domainmae.data.raster import BandSource, RasterScene
from domainmae.data.samplers import Window
from domainmae.data.windows import WindowReader
from domainmae.pipeline import build_training_data, sentinel_scenes
from domainmae.recipes import RecipeError, load_recipe

from .test_data_raster import write_tif

#: A transverse Mercator no EPSG code describes: CRS.to_string() searches the EPSG database (~200 ms) and falls back to WKT.
CUSTOM_CRS = CRS.from_proj4("+proj=tmerc +lat_0=0 +lon_0=15.5 +k=0.9996 +x_0=500000 +y_0=0 +ellps=WGS84 +units=m +no_defs")


class CountingCRS(CRS):
    """A CRS that counts its ``to_string`` calls (rasterio's CRS type itself cannot be patched)."""

    calls = 0

    def to_string(self) -> str:
        CountingCRS.calls += 1
        return super().to_string()


def test_crs_without_epsg_code_is_described_once_per_scene(tmp_path, monkeypatch):
    s2 = write_tif(tmp_path / "s2_B02.tif", np.ones((1, 64, 64), np.uint16), crs=CUSTOM_CRS.to_wkt())
    s1 = write_tif(tmp_path / "s1_VV.tif", np.ones((1, 64, 64), np.float32), crs=CUSTOM_CRS.to_wkt())
    file_crs = rasterio.io.DatasetReaderBase.crs
    monkeypatch.setattr(rasterio.io.DatasetReader, "crs", property(lambda self: CountingCRS(file_crs.__get__(self))))
    single = RasterScene([BandSource("B02", s2)])
    pair = MultiSensorScene({"s2": RasterScene([BandSource("B02", s2)]), "s1": RasterScene([BandSource("VV", s1)])})
    for scene in (single, pair):
        CountingCRS.calls = 0
        reader = WindowReader(scene, 16, windows_per_read=4)
        samples = list(reader.random(12, random.Random(0))) + list(reader.grid())
        assert len(samples) == 28 and CRS.from_user_input(samples[-1]["meta"]["crs"]) == CUSTOM_CRS
        assert CountingCRS.calls == 1, f"{CountingCRS.calls} CRS descriptions for {len(samples)} windows of one scene"


# --------------------------------------------------------------------------- radiometry per sensor

REFLECTANCE_B05 = 0.25  # a flat 20 m band: any nodata blended into a valid pixel shows as a smaller value


def write_s2_scene(folder: Path, offset: int = 0, **tags: str) -> Path:
    """A 64x64 px S2 scene (B02 at 10 m, B05 at 20 m) with a 16 px nodata (DN 0) border, DN = R*1e4 - offset.

    ``tags`` go on the files (``PROCESSING_BASELINE`` on the file, ``BOA_ADD_OFFSET`` on the band).
    The files declare no nodata: the sensor config says that DN 0 is nodata.
    """
    folder.mkdir(parents=True)
    b02 = np.random.default_rng(0).integers(100, 9000, (1, 64, 64)) - offset
    b05 = np.full((1, 32, 32), REFLECTANCE_B05 * 1e4 - offset)
    b02[..., :16], b05[..., :8] = 0, 0
    for name, data, res in (("B02", b02, 10.0), ("B05", b05, 20.0)):
        path = write_tif(folder / f"T33UUP_{name}.tif", data.astype(np.uint16), res=res)
        with rasterio.open(path, "r+") as dst:
            dst.update_tags(**{k: v for k, v in tags.items() if k != "BOA_ADD_OFFSET"})
            if "BOA_ADD_OFFSET" in tags:
                dst.update_tags(1, BOA_ADD_OFFSET=tags["BOA_ADD_OFFSET"])
    return folder


def scene_recipe(path: Path, *overrides: str):
    return load_recipe("sentinel", [f"data.path={path}", "data.format=scene", "data.sensors={s2: [B02, B05]}",
                                    *overrides])  # fmt: skip


def test_baselines_03_and_04_read_to_the_same_reflectance(tmp_path):
    write_s2_scene(tmp_path / "S2A_MSIL2A_20210101T101031_N0300_R022_T33UUP_20210101T120000")
    write_s2_scene(tmp_path / "S2A_MSIL2A_20230101T101031_N0400_R022_T33UUP_20230101T120000", offset=-1000)
    write_s2_scene(tmp_path / "tagged_baseline", offset=-1000, PROCESSING_BASELINE="04.00")
    write_s2_scene(tmp_path / "tagged_offset", offset=-1000, BOA_ADD_OFFSET="-1000")
    scenes = sentinel_scenes(scene_recipe(tmp_path).data)
    regions = [scene.read(Window(0, 0, 64, 64)) for scene in scenes]
    reference = regions[0]
    assert reference.image.shape == (2, 64, 64) and 0.01 < reference.image[0][reference.valid].min()
    for region in regions[1:]:
        np.testing.assert_allclose(region.image, reference.image, atol=1e-6)
        np.testing.assert_array_equal(region.valid, reference.valid)


def test_nodata_from_the_sensor_config_does_not_bleed_into_valid_pixels(tmp_path):
    write_s2_scene(tmp_path / "S2A_MSIL2A_20210101T101031_N0300_R022_T33UUP_20210101T120000")
    (scene,) = sentinel_scenes(scene_recipe(tmp_path).data)
    region = scene.read(Window(0, 0, 64, 64))
    assert not region.valid[:, :16].any() and region.valid[:, 17:].all()
    # B05 is read bilinearly from 20 m: a valid pixel next to the border must not mix in the border's zeros.
    np.testing.assert_allclose(region.image[1][region.valid], REFLECTANCE_B05, rtol=1e-6)


def test_radiometry_is_set_from_the_recipe(tmp_path):
    write_s2_scene(tmp_path / "no_baseline", offset=-1000)
    plain = sentinel_scenes(scene_recipe(tmp_path).data)[0].read(Window(0, 0, 64, 64))
    recipe = scene_recipe(tmp_path, "data.radiometry.s2.offset=-1000")
    shifted = sentinel_scenes(recipe.data)[0].read(Window(0, 0, 64, 64))
    np.testing.assert_allclose(plain.image[1][plain.valid], REFLECTANCE_B05 + 0.1, rtol=1e-6)
    np.testing.assert_allclose(shifted.image[1][shifted.valid], REFLECTANCE_B05, rtol=1e-6)
    with pytest.raises(RecipeError, match=r"data.radiometry.s2.baseline_offsets"):
        scene_recipe(tmp_path, "data.radiometry.s2.baseline_offsets={4.0: -1000}")


# --------------------------------------------------------------------------- stacked multi-band rasters


def test_stacked_rasters_are_scenes_with_bands_named_by_descriptions(tmp_path):
    data = np.arange(4 * 32 * 32, dtype=np.uint16).reshape(4, 32, 32)
    with rasterio.open(write_tif(tmp_path / "ortho_a.tif", data), "r+") as dst:
        dst.descriptions = ("blue", "green", "red", "nir")
    write_tif(tmp_path / "ortho_b.tif", data + 1)
    named = sentinel_scenes(stack_recipe(tmp_path / "ortho_a.tif", "data.sensors.optical=[nir, red]").data)
    assert [s.scene_id for s in named] == ["ortho_a"] and named[0].channels == ("nir", "red")
    np.testing.assert_array_equal(named[0].read(Window(0, 0, 32, 32)).image, data[[3, 2]].astype(np.float32))
    # Without descriptions the recipe names the bands, in order; a folder is one scene per raster.
    with pytest.raises(ValueError, match=r"ortho_b.tif has 4 bands without \(distinct\) descriptions; 2 band names "
                                         r"were given: \['nir', 'red'\]"):
        sentinel_scenes(stack_recipe(tmp_path, "data.sensors.optical=[nir, red]").data)
    scenes = sentinel_scenes(stack_recipe(tmp_path, "data.sensors.optical=[blue, green, red, nir]").data)
    assert [s.channels for s in scenes] == [("blue", "green", "red", "nir")] * 2
    np.testing.assert_array_equal(scenes[1].read(Window(0, 0, 32, 32)).image, (data + 1).astype(np.float32))
    with pytest.raises(ValueError, match=r"ortho_a.tif has no band described as 'swir'; its bands are "
                                         r"\['blue', 'green', 'red', 'nir'\]"):
        sentinel_scenes(stack_recipe(tmp_path / "ortho_a.tif", "data.sensors.optical=[red, swir]").data)


def stack_recipe(path: Path, *overrides: str):
    return load_recipe("multispectral", [f"data.path={path}", *overrides])


def test_scenes_in_folders_of_the_same_name_keep_apart(tmp_path):
    """data/2020/T33UUP and data/2021/T33UUP are two scenes: their ids (and so the rasters and GeoParquet rows
    named by them) must differ, or one scene's raster silently replaces the other's."""
    for year in ("2020", "2021"):
        write_s2_scene(tmp_path / year / "T33UUP")
    write_s2_scene(tmp_path / "2021" / "T32TQM")
    scenes = sentinel_scenes(scene_recipe(tmp_path).data)
    assert sorted(s.scene_id for s in scenes) == ["2020_T33UUP", "2021_T33UUP", "T32TQM"]


def test_stacked_rasters_of_the_same_file_name_are_refused_by_name(tmp_path):
    data = np.arange(4 * 32 * 32, dtype=np.uint16).reshape(4, 32, 32)
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        write_tif(tmp_path / folder / "ortho.tif", data)
    listing = tmp_path / "list.txt"
    listing.write_text(f"{tmp_path / 'a' / 'ortho.tif'}\n{tmp_path / 'b' / 'ortho.tif'}\n")
    with pytest.raises(ValueError, match=r"2 scenes are named 'ortho'.*a/ortho.tif.*b/ortho.tif"):
        sentinel_scenes(stack_recipe(listing, "data.sensors.optical=[blue, green, red, nir]").data)


def test_band_statistics_of_one_scene_come_from_many_windows(tmp_path):
    """`--recipe multispectral --data scene.tif`: one scene is one read per epoch, and the statistics took
    that read's windows only (2), so the sd of a scene half dark, half bright was ~0 and the mean one half's."""
    columns = np.arange(512)[None, None, :]
    data = np.broadcast_to(1000 + 3000 * (columns >= 256) + 20 * (np.arange(512)[None, :, None] % 7),
                           (4, 512, 512)).astype(np.uint16)  # fmt: skip
    with rasterio.open(write_tif(tmp_path / "scene.tif", data), "r+") as dst:
        dst.descriptions = ("blue", "green", "red", "nir")
    recipe = stack_recipe(tmp_path / "scene.tif", "data.crop_size=64")
    scene = data[0].astype(np.float64)
    for seed in (0, 1):
        stats = build_training_data(recipe.data, seed=seed).band_stats["optical"]["blue"]
        assert abs(stats["mean"] - scene.mean()) < 0.15 * scene.std() and 0.85 < stats["std"] / scene.std() < 1.15
