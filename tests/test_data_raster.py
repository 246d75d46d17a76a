"""Earth-observation readers: real BigEarthNet S1+S2 patches, plus synthetic rasters for what they cannot show."""
from __future__ import annotations

import json
import random
import shutil
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.warp import transform as warp_points

from domainmae.data.bigearthnet import (
    BEN19_LABELS,
    CLC43_LABELS,
    bigearthnet_pairs,
    bigearthnet_scenes,
    read_patch_metadata,
)
from domainmae.data.geo import Grid, MissingCRSError, RasterReadError
from domainmae.data.multisensor import MultiSensorScene, pair_scenes
from domainmae.data.radiometry import SENTINEL2_L2A, Radiometry, baseline_in_name
from domainmae.data.raster import BandSource, RasterScene
from domainmae.data.samplers import Window, random_windows
from domainmae.data.scenes import find_scenes
from domainmae.data.stats import band_statistics
from domainmae.data.windows import NoValidWindowError, WindowDataset, WindowReader, valid_fraction

from .conftest import SAMPLES

BEN = SAMPLES / "bigearthnet-mm"
S2_ROOT, S1_ROOT = BEN / "BigEarthNet-S2-Example", BEN / "BigEarthNet-S1-Example"
ORIGIN = (404400.0, 5342400.0)  # a UTM 33N corner, as in the first BigEarthNet patch


def grid_transform(res: float = 10.0, origin: tuple[float, float] = ORIGIN) -> Affine:
    return Affine.translation(*origin) @ Affine.scale(res, -res)


def write_tif(path: Path, data: np.ndarray, *, res: float = 10.0, origin=ORIGIN, crs="EPSG:32633", **profile) -> Path:
    """``data`` ``[C, H, W]`` as a GeoTIFF; ``crs=None`` writes one without CRS."""
    count, height, width = data.shape
    profile = dict(driver="GTiff", count=count, height=height, width=width, dtype=data.dtype.name, **profile)
    if crs is not None:
        profile.update(crs=crs, transform=grid_transform(res, origin))
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def pair_of(s2_b02: Path, s1_vv: Path) -> MultiSensorScene:
    scenes = {"s2": RasterScene([BandSource("B02", s2_b02)]), "s1": RasterScene([BandSource("VV", s1_vv)])}
    return MultiSensorScene(scenes)


def all_windows(reader: WindowReader, count: int, seed: int = 0) -> list[dict]:
    return list(reader.random(count, random.Random(seed)))


# --------------------------------------------------------------------------- real BigEarthNet patches


@pytest.fixture(scope="module")
def pairs() -> list[MultiSensorScene]:
    return bigearthnet_pairs(S2_ROOT, S1_ROOT)


def test_bigearthnet_coarse_bands_equal_rasterio_resampled_read(pairs):
    s2 = pairs[0].scenes["s2"]
    assert s2.radiometry == Radiometry(scale=1e-4, nodata=0)  # baseline N0205 of the source product: no offset
    whole = WindowReader(s2, 120).window(Window(0, 0, 120, 120))
    assert whole["image"].shape == (12, 120, 120) and whole["image"].dtype == torch.float32
    expected = {}
    for band in s2.bands:
        with rasterio.open(band.path) as src:
            raw = src.read(1, out_shape=(120, 120), resampling=Resampling.bilinear)
        expected[band.name] = raw.astype(np.float32) * np.float32(1e-4)
        np.testing.assert_allclose(whole["image"][s2.channels.index(band.name)].numpy(), expected[band.name], rtol=1e-6)
    # Windows cut from tile-aligned regions (fractional 20 m / 60 m windows) equal the same crop of the whole read.
    for sample in all_windows(WindowReader(s2, 48, windows_per_read=4), 8):
        rows, cols = Window(*sample["meta"]["window"]).slices()
        for c, name in enumerate(sample["channels"]):
            np.testing.assert_allclose(sample["image"][c].numpy(), expected[name][rows, cols], rtol=1e-6)


def test_s1_and_s2_windows_share_transform_and_crs(pairs):
    assert len(pairs) == 6
    for pair in pairs:
        sample = next(WindowReader(pair, 32).random(1, random.Random(1)))
        s1, s2, meta = sample["s1"], sample["s2"], sample["meta"]
        assert s1["channels"] == ("VV", "VH") and s1["image"].shape == (2, 32, 32)
        assert s1["meta"]["transform"] == s2["meta"]["transform"] == meta["transform"]
        assert s1["meta"]["crs"] == s2["meta"]["crs"] == meta["crs"] and meta["crs"].startswith("EPSG:326")
        rows, cols = Window(*meta["window"]).slices()
        with rasterio.open(pair.scenes["s1"].bands[0].path) as src:  # VV, already in dB: read unchanged
            assert src.transform @ (cols.start, rows.start) == (meta["transform"].c, meta["transform"].f)
            np.testing.assert_array_equal(s1["image"][0].numpy(), src.read(1)[rows, cols])


def test_pairing_by_name_and_by_footprint_agree_with_the_metadata(pairs):
    for pair in pairs:
        s1 = pair.scenes["s1"]
        partner = read_patch_metadata(s1.bands[0].path.parent / f"{s1.scene_id}_labels_metadata.json").s2_partner
        assert partner == pair.scenes["s2"].scene_id
    s2_scenes, s1_scenes = bigearthnet_scenes(S2_ROOT, "s2"), bigearthnet_scenes(S1_ROOT, "s1")
    by_footprint = pair_scenes(s2_scenes, s1_scenes, by="footprint")
    assert sorted(p.name for p in by_footprint) == sorted(p.name for p in pairs)
    with pytest.raises(ValueError, match="no s2/s1 partner"):
        pair_scenes(s2_scenes, s1_scenes[:-1])


def test_bigearthnet_pairs_by_the_partner_the_s1_metadata_names(tmp_path):
    """Patch names carry only ``<row>_<col>`` of their tile, which repeats across tiles in the full archive: the
    S1 metadata's ``corresponding_s2_patch`` decides the pair, not the shared key."""
    shutil.copytree(BEN, tmp_path / "ben")
    s2_root, s1_root = tmp_path / "ben" / S2_ROOT.name, tmp_path / "ben" / S1_ROOT.name

    def clone(root: Path, old: str, new: str, partner: str | None = None) -> None:
        shutil.copytree(root / old, root / new)
        for file in list((root / new).iterdir()):
            file.rename(root / new / file.name.replace(old, new))
        if partner:
            meta = root / new / f"{new}_labels_metadata.json"
            meta.write_text(json.dumps({**json.loads(meta.read_text()), "corresponding_s2_patch": partner}))

    # Row 87, column 48 of another tile (29SND) and its S1 partner: the key 87_48 is now in two tiles.
    clone(s2_root, "S2A_MSIL2A_20171221T112501_56_35", "S2A_MSIL2A_20171221T112501_87_48")
    clone(s1_root, "S1A_IW_GRDH_1SDV_20171221T064238_29SND_56_35", "S1A_IW_GRDH_1SDV_20171221T064238_29SND_87_48",
          partner="S2A_MSIL2A_20171221T112501_87_48")  # fmt: skip
    pairs = bigearthnet_pairs(s2_root, s1_root)
    assert len(pairs) == 7
    for pair in pairs:
        s1 = pair.scenes["s1"]
        partner = read_patch_metadata(s1.bands[0].path.parent / f"{s1.scene_id}_labels_metadata.json").s2_partner
        assert partner == pair.scenes["s2"].scene_id


def test_bigearthnet_labels_parse(pairs):
    s2 = pairs[0].scenes["s2"]
    folder = s2.bands[0].path.parent
    patch = read_patch_metadata(folder / f"{folder.name}_labels_metadata.json")
    assert patch.labels == (
        "Non-irrigated arable land",
        "Land principally occupied by agriculture, with significant areas of natural vegetation",
    )
    assert patch.acquired == datetime(2017, 6, 13, 10, 10, 31, tzinfo=timezone.utc)
    assert patch.source.startswith("S2A_MSIL1C_20170613T101031_N0205")
    with rasterio.open(s2.bands[1].path) as src:  # B02, 10 m
        assert patch.bounds == tuple(src.bounds) and rasterio.crs.CRS.from_wkt(patch.crs_wkt) == src.crs
    hot43, hot19 = patch.multi_hot(43), patch.multi_hot(19)
    assert hot43.shape == (43,) == (len(CLC43_LABELS),) and hot43.sum() == 2
    assert hot19.shape == (19,) == (len(BEN19_LABELS),) and hot19[BEN19_LABELS.index("Arable land")] == 1
    s1_patch = read_patch_metadata(next((S1_ROOT / pairs[0].scenes["s1"].scene_id).glob("*.json")))
    assert s1_patch.labels == patch.labels and s1_patch.bounds == patch.bounds  # S1 spells "lly" for "lry"
    sample = WindowReader(pairs[0], 16).window(Window(0, 0, 16, 16))
    assert sample["s2"]["meta"]["labels"] == patch.labels and sample["s2"]["meta"]["datetime"] == patch.acquired


def test_labels_json_errors_name_file_and_key(tmp_path):
    broken = tmp_path / "x_labels_metadata.json"
    broken.write_text('{"labels": ["Pastures"]}')
    with pytest.raises(ValueError, match=r"x_labels_metadata.json lacks the key 'coordinates'"):
        read_patch_metadata(broken)


# --------------------------------------------------------------------------- radiometry


def test_radiometry_scale_offset_and_db():
    assert baseline_in_name("S2B_MSIL2A_20230101T101031_N0509_R022_T33UUP") == (5, 9)
    assert baseline_in_name("no_baseline_here") is None
    assert SENTINEL2_L2A.for_baseline((5, 9)) == Radiometry(1e-4, -1000.0, nodata=0)
    assert SENTINEL2_L2A.for_baseline((2, 5)) == Radiometry(1e-4, 0.0, nodata=0)
    assert SENTINEL2_L2A.for_baseline(None) == SENTINEL2_L2A
    reflectance = Radiometry(1e-4, -1000.0).apply(np.array([1000, 3500, 11000], np.uint16))
    np.testing.assert_allclose(reflectance, [0.0, 0.25, 1.0])
    db = Radiometry(to_db=True, db_floor=-40.0).apply(np.array([1.0, 0.1, 1e-3, 0.0], np.float32))
    np.testing.assert_allclose(db, [0.0, -10.0, -30.0, -40.0], atol=1e-5)


def test_radiometry_from_file_metadata_wins_over_config(tmp_path):
    path = tmp_path / "scaled.tif"
    write_tif(path, np.full((1, 8, 8), 3500, np.uint16))
    with rasterio.open(path, "r+") as dst:  # GDAL convention: value = DN * scale + offset
        dst.scales, dst.offsets = (1e-4,), (-0.1,)
    scene = RasterScene.from_file(path, ["B04"], radiometry=Radiometry())
    np.testing.assert_allclose(scene.read(Window(0, 0, 8, 8)).image, 0.25, rtol=1e-6)
    power = write_tif(tmp_path / "vv.tif", np.full((1, 8, 8), -12.5, np.float32))
    with rasterio.open(power, "r+") as dst:
        dst.units = ("dB",)
    scene = RasterScene.from_file(power, ["VV"], radiometry=Radiometry(to_db=True))
    np.testing.assert_array_equal(scene.read(Window(0, 0, 8, 8)).image, -12.5)  # already dB: not converted again


# --------------------------------------------------------------------------- tile-aware sampling


def test_tile_aware_sampler_is_uniform_over_positions():
    rng = random.Random(0)
    # 11 rows, 3 px windows, 4 px tiles: positions 0..8 fall in cells of 4, 4 and 1 positions.
    counts = np.zeros(9)
    for _ in range(6000):
        windows = random_windows(11, 3, 3, 3, rng, block=(4, 4))
        assert len({w.row // 4 for w in windows}) == 1 and all(w.row + w.height <= 11 for w in windows)
        for w in windows:
            counts[w.row] += 1
    np.testing.assert_allclose(counts / counts.sum(), 1 / 9, atol=0.012)


def test_tile_aware_reader_reads_fewer_regions_than_windows(tmp_path):
    data = np.arange(2 * 1024 * 1024, dtype=np.uint16).reshape(2, 1024, 1024)
    path = write_tif(tmp_path / "cog.tif", data, tiled=True, blockxsize=256, blockysize=256, compress="deflate")
    with rasterio.open(path, "r+") as dst:
        dst.descriptions = ("B04", "B08")
    scene = RasterScene.from_file(path)
    assert scene.channels == ("B04", "B08") and scene.block_shape == (256, 256)
    reader = WindowReader(scene, 64, windows_per_read=8)
    samples = all_windows(reader, 64)
    assert len(samples) == 64 and reader.regions_read == 8
    corners = np.array([s["meta"]["window"][:2] for s in samples])
    assert corners.min() >= 0 and corners.max() <= 1024 - 64
    assert {(r >= 480, c >= 480) for r, c in corners} == {(False, False), (False, True), (True, False), (True, True)}
    for sample in samples[:8]:
        rows, cols = Window(*sample["meta"]["window"]).slices()
        np.testing.assert_array_equal(sample["image"].numpy(), data[:, rows, cols].astype(np.float32))
        row, col = sample["meta"]["window"][:2]
        assert sample["meta"]["transform"] == grid_transform() @ Affine.translation(col, row)


# --------------------------------------------------------------------------- nodata, clouds, redraws


def bordered(tmp_path: Path, nodata_in_file: bool) -> Path:
    data = np.random.default_rng(0).integers(1, 10000, (2, 128, 128), dtype=np.uint16)
    data[:, :, :48] = 0  # a nodata border, as at the edge of a Sentinel-2 swath
    return write_tif(tmp_path / "border.tif", data, **({"nodata": 0} if nodata_in_file else {}))


@pytest.mark.parametrize("nodata_in_file", [True, False])
def test_nodata_border_is_invalid_and_windows_are_redrawn(tmp_path, nodata_in_file):
    path = bordered(tmp_path, nodata_in_file)
    scene = RasterScene.from_file(path, ["B02", "B03"], nodata=None if nodata_in_file else 0)
    region = scene.read(Window(0, 0, 128, 128))
    assert not region.valid[:, :48].any() and region.valid[:, 48:].all() and (region.image[:, :, :48] == 0).all()
    samples = all_windows(WindowReader(scene, 32, windows_per_read=4, min_valid=0.9), 20)
    assert all(valid_fraction(s) >= 0.9 for s in samples) and min(s["meta"]["window"][1] for s in samples) >= 45


def test_mostly_invalid_scene_raises_after_bounded_redraws(tmp_path):
    data = np.zeros((1, 64, 64), np.uint16)
    data[0, :4, :4] = 7
    scene = RasterScene.from_file(write_tif(tmp_path / "empty.tif", data, nodata=0), ["B02"])
    with pytest.raises(NoValidWindowError, match="scene empty: 6 random 16 px windows in a row"):
        all_windows(WindowReader(scene, 16, min_valid=0.5, max_redraws=5), 4)


def test_scl_classes_mask_pixels_on_the_10m_grid(tmp_path):
    b02 = write_tif(tmp_path / "T_B02.tif", np.full((1, 64, 64), 1500, np.uint16))
    scl = np.full((1, 32, 32), 4, np.uint8)  # vegetation
    scl[0, 8:16, 8:16] = 9  # cloud high probability, at 20 m
    scl_path = write_tif(tmp_path / "T_SCL.tif", scl, res=20.0)
    scene = find_scenes(tmp_path, invalid_classes={"SCL": (3, 8, 9, 10)}, radiometry=Radiometry(1e-4))[0]
    assert [b.path for b in scene.bands] == [b02, scl_path] and scene.channels == ("B02",)
    region = scene.read(Window(0, 0, 64, 64))
    assert region.image.shape == (1, 64, 64) and not region.valid[16:32, 16:32].any()
    assert region.valid.sum() == 64 * 64 - 16 * 16 and np.allclose(region.image[0][region.valid], 0.15)


# --------------------------------------------------------------------------- co-registration and CRS


def test_crs_mismatch_is_warped_onto_the_s2_grid(tmp_path):
    height = width = 64
    s2_path = write_tif(tmp_path / "s2_B02.tif", np.full((1, height, width), 1000, np.uint16))
    # S1 in geographic coordinates, covering the west half of the S2 patch only; its values are a
    # linear function of UTM easting/northing, so after warping back they must match the S2 grid's coordinates.
    lon, lat = warp_points("EPSG:32633", "EPSG:4326", [ORIGIN[0], ORIGIN[0] + 320], [ORIGIN[1], ORIGIN[1] - 640])
    res = 5e-5
    s1_transform = grid_transform(res, (lon[0] - 20 * res, lat[0] + 20 * res))
    n_rows, n_cols = int((lat[0] - lat[1]) / res) + 40, int((lon[1] - lon[0]) / res) + 20
    cols, rows = np.meshgrid(np.arange(n_cols) + 0.5, np.arange(n_rows) + 0.5)
    xs, ys = warp_points("EPSG:4326", "EPSG:32633", *(s1_transform @ (cols.ravel(), rows.ravel())))
    field = ((np.array(xs) - ORIGIN[0]) + 2 * (ORIGIN[1] - np.array(ys))).reshape(1, n_rows, n_cols).astype(np.float32)
    with rasterio.open(
        tmp_path / "s1_VV.tif", "w", driver="GTiff", count=1, height=n_rows, width=n_cols, dtype="float32",
        crs="EPSG:4326", transform=s1_transform,
    ) as dst:  # fmt: skip
        dst.write(field)
    pair = pair_of(s2_path, tmp_path / "s1_VV.tif")
    sample = WindowReader(pair, 64).window(Window(0, 0, height, width))
    s1 = sample["s1"]
    assert s1["image"].shape == (1, 64, 64) and s1["meta"]["transform"] == sample["s2"]["meta"]["transform"]
    valid = s1["valid"].numpy()
    assert valid[:, :30].all() and not valid[:, 34:].any()  # east of the S1 footprint: no data
    centres_x, centres_y = (np.arange(width) + 0.5) * 10, (np.arange(height) + 0.5) * 10
    expected = centres_x[None, :] + 2 * centres_y[:, None]
    # Within a fraction of a 10 m pixel (1 unit = 1 m east or 0.5 m north): GDAL's approximate transformer
    # allows 0.125 source pixels; a misplaced grid would be off by tens of units.
    np.testing.assert_allclose(s1["image"][0].numpy()[valid], expected[valid], atol=3.0)


def test_a_band_whose_crs_puts_it_off_the_scene_is_an_error_not_nodata(tmp_path):
    """An S1 file labelled with the wrong UTM zone lies hundreds of km away: warped onto the S2 grid it would
    read as all nodata, silently. Partly covering is data; covering nothing is a georeferencing error."""
    s2_path = write_tif(tmp_path / "s2_B02.tif", np.ones((1, 32, 32), np.uint16))
    wrong_zone = write_tif(tmp_path / "s1_VV.tif", np.ones((1, 32, 32), np.float32), crs="EPSG:32629")
    with pytest.raises(RasterReadError, match=r"s1_VV\.tif .*EPSG:32629.*does not overlap.*EPSG:32633, another sensor's"):
        pair_of(s2_path, wrong_zone).read(Window(0, 0, 32, 32))
    # Within one scene the grid is its finest band's: that file is named too, as it may be the wrong one.
    b03 = write_tif(tmp_path / "s2_B03.tif", np.ones((1, 16, 16), np.uint16), res=20.0, crs="EPSG:32629")
    scene = RasterScene([BandSource("B02", s2_path), BandSource("B03", b03)])
    with pytest.raises(RasterReadError, match=r"s2_B03\.tif .*the scene's own, from .*s2_B02\.tif"):
        scene.read(Window(0, 0, 32, 32))
    # Half the S2 patch, east edge: read, with the uncovered half invalid.
    half = write_tif(tmp_path / "half_VV.tif", np.ones((1, 32, 16), np.float32), origin=(ORIGIN[0] + 160, ORIGIN[1]),
                     res=10.0, crs="EPSG:32633")  # fmt: skip
    region = pair_of(s2_path, half).scenes["s1"].read(Window(0, 0, 32, 32), grid=pair_of(s2_path, half).scenes["s2"].grid)
    assert region.valid[:, 16:].all() and not region.valid[:, :16].any()


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_raster_without_crs_says_so(tmp_path):
    s2_path = write_tif(tmp_path / "s2_B02.tif", np.ones((1, 16, 16), np.uint16))
    bare = write_tif(tmp_path / "bare_VV.tif", np.ones((1, 16, 16), np.float32), crs=None)
    pair = pair_of(s2_path, bare)
    with pytest.raises(MissingCRSError, match=r"bare_VV.tif .*has no CRS"):
        pair.read(Window(0, 0, 16, 16))
    with pytest.raises(MissingCRSError, match="bare_VV"):
        pair_scenes([pair.scenes["s2"]], [pair.scenes["s1"]], by="footprint")


# --------------------------------------------------------------------------- bad files and the skip policy


def test_missing_and_corrupt_files_name_the_file(tmp_path):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    good = write_tif(tmp_path / "a" / "A_B02.tif", np.ones((1, 32, 32), np.uint16))
    write_tif(tmp_path / "b" / "B_B02.tif", np.ones((1, 32, 32), np.uint16), tiled=True, blockxsize=16, blockysize=16)
    truncated = tmp_path / "b" / "B_B02.tif"
    truncated.write_bytes(truncated.read_bytes()[:-200])
    scenes = find_scenes(tmp_path)
    with pytest.raises(RasterReadError, match=r"B_B02.tif"):
        scenes[1].read(Window(0, 0, 32, 32))
    missing = RasterScene([BandSource("B02", tmp_path / "gone_B02.tif")])
    with pytest.raises(RasterReadError, match=r"cannot open raster .*gone_B02.tif"):
        missing.read(Window(0, 0, 8, 8))
    (tmp_path / "junk_B02.tif").write_bytes(b"II*\x00 not a tiff at all")
    with pytest.raises(RasterReadError, match=r"junk_B02.tif"):
        RasterScene.from_file(tmp_path / "junk_B02.tif", ["B02"])
    scenes = [RasterScene([BandSource("B02", good)]), *scenes[1:], missing]
    dataset = WindowDataset(scenes, 16, windows_per_read=2, on_error="skip")
    items = [dataset[i] for i in range(len(dataset))]
    assert [len(item) for item in items] == [2, 0, 0] and len(dataset.policy.skipped) == 2
    assert "B_B02.tif" in dataset.policy.skipped[0] and "gone_B02.tif" in dataset.policy.skipped[1]
    with pytest.raises(RasterReadError):
        WindowDataset(scenes[1:2], 16)[0]


def test_find_scenes_reports_scenes_missing_a_band(tmp_path):
    for scene, bands in {"P1": ("B02", "B03"), "P2": ("B02",)}.items():
        (tmp_path / scene).mkdir()
        for band in bands:
            write_tif(tmp_path / scene / f"{scene}_{band}.tif", np.ones((1, 8, 8), np.uint16))
    with pytest.raises(FileNotFoundError, match=r"scene P2 .* band\(s\) \['B03'\]"):
        find_scenes(tmp_path, bands=["B02", "B03"])
    with pytest.warns(UserWarning, match="skipped 1 of 2 scenes"):
        assert [s.scene_id for s in find_scenes(tmp_path, bands=["B02", "B03"], on_error="skip")] == ["P1"]


def test_grid_dataset_tiles_every_scene(pairs):
    dataset = WindowDataset(pairs[:2], 60, sampling="grid")
    windows = [sample for item in dataset for sample in item]  # one item per row of windows, read as one strip
    assert len(dataset) == 4 and len(windows) == 8
    assert windows[5]["meta"]["window"] == (0, 60, 60, 60)
    assert windows[5]["s2"]["image"].shape == (12, 60, 60)


# --------------------------------------------------------------------------- band statistics


def test_band_statistics_ignore_invalid_pixels(tmp_path):
    scene = RasterScene.from_file(bordered(tmp_path, nodata_in_file=True), ["B02", "B03"], radiometry=Radiometry(1e-4))
    samples = list(WindowReader(scene, 32).grid())  # 16 windows tiling the scene exactly
    stats = band_statistics(samples)
    with rasterio.open(scene.bands[0].path) as src:
        data = src.read().astype(np.float64) * 1e-4
    valid = data[0] != 0
    np.testing.assert_allclose(stats.mean, data[:, valid].mean(axis=1), rtol=1e-6)
    np.testing.assert_allclose(stats.std, data[:, valid].std(axis=1), rtol=1e-5)
    assert stats.count.tolist() == [valid.sum()] * 2 and set(stats.as_dict()) == {"B02", "B03"}
    # A per-channel mask [C, H, W] counts each channel's own pixels.
    image = torch.arange(8.0).reshape(2, 2, 2)
    mask = torch.tensor([[[True, False], [True, True]], [[False, False], [True, True]]])
    stats = band_statistics([{"image": image, "channels": ("a", "b"), "valid": mask}])
    np.testing.assert_allclose(stats.mean, [np.mean([0, 2, 3]), 6.5])
    assert stats.count.tolist() == [3, 2]


def test_band_statistics_of_multisensor_samples_need_a_sensor(pairs):
    samples = list(WindowReader(pairs[0], 60).grid())
    assert band_statistics(samples, sensor="s1").channels == ("VV", "VH")
    with pytest.raises(ValueError, match=r"sensor= one of \['s1', 's2'\]"):
        band_statistics(samples)


def _stack_with_band_nodata(folder: Path) -> Path:
    """A VRT stack: band A declares no nodata, band B declares -9999 (its top 4 rows), 16 x 16 px at 10 m."""
    folder.mkdir()
    for name, values, nodata in (("a", np.full((1, 16, 16), 100.0), None), ("b", np.full((1, 16, 16), 200.0), -9999)):
        values[:, :4] = -9999 if nodata else values[:, :4]
        with rasterio.open(folder / f"{name}.tif", "w", driver="GTiff", height=16, width=16, count=1, dtype="float32",
                           crs="EPSG:32633", transform=Affine(10, 0, 500000, 0, -10, 4000000), nodata=nodata) as dst:
            dst.write(values.astype(np.float32))
    bands = "".join(
        f'<VRTRasterBand dataType="Float32" band="{i}"><Description>{name.upper()}</Description>{extra}<SimpleSource>'
        f'<SourceFilename relativeToVRT="1">{name}.tif</SourceFilename><SourceBand>1</SourceBand></SimpleSource>'
        "</VRTRasterBand>"
        for i, (name, extra) in enumerate((("a", ""), ("b", "<NoDataValue>-9999</NoDataValue>")), start=1)
    )
    (folder / "stack.vrt").write_text(f'<VRTDataset rasterXSize="16" rasterYSize="16"><SRS>EPSG:32633</SRS>'
                                      f"<GeoTransform>500000, 10, 0, 4000000, 0, -10</GeoTransform>{bands}</VRTDataset>")
    return folder / "stack.vrt"


def test_a_bands_own_nodata_is_kept_beside_a_band_without_one(tmp_path):
    """The file's nodata comes before the sensor's default, band by band: band B's -9999 stays nodata when the
    radiometry says 0 (it used to take band A's none, then the default for every band); a warped read, which
    takes one nodata for all bands, refuses the file by name rather than blending -9999 into valid pixels."""
    stack = _stack_with_band_nodata(tmp_path / "stack")
    scene = RasterScene.from_file(stack, radiometry=Radiometry(nodata=0))
    region = scene.read(Window(0, 0, 16, 16))
    assert not region.valid[:4].any() and region.valid[4:].all()
    assert (region.image[:, 4:] == np.array([100.0, 200.0])[:, None, None]).all()
    shifted = Grid(CRS.from_epsg(32633), Affine(10, 0, 500005, 0, -10, 3999995), 14, 14)  # off the lattice: warped
    with pytest.raises(RasterReadError, match=r"stack.vrt.*different nodata"):
        scene.read(Window(0, 0, 14, 14), shifted)
