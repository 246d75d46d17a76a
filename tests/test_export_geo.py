"""EO export: GeoParquet footprints and CRS, per-patch GeoTIFFs that overlay the source, seamless blending."""
import json
import shutil

import geopandas as gpd
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import rasterio
import shapely
import tifffile
import torch
import xarray as xr
import zarr
from rasterio.crs import CRS
from rasterio.transform import array_bounds, from_origin

import domainmae
from domainmae.data.cube import cube_grid, open_cube
from domainmae.data.samplers import Window
from domainmae.export.embed import embed
from domainmae.recipes import load_recipe, resolve_recipe
from domainmae.train.checkpoint import save_checkpoint

BANDS = ["B02", "B03", "B04"]
STATS = {"s2": {b: {"mean": 1000.0 + 100 * i, "std": 500.0} for i, b in enumerate(BANDS)}}
HEIGHT, WIDTH, WINDOW, PATCH = 64, 96, 32, 8
TRANSFORM = from_origin(500000.0, 4000000.0, 10.0, 10.0)


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> dict:
    """One smooth 3-band UTM scene (64 x 96 px, one GeoTIFF per band) and a tiny S2 model's checkpoint."""
    root = tmp_path_factory.mktemp("eo")
    folder = root / "S2A_MSIL2A_20200601T101031_T33UUP"
    folder.mkdir()
    rows, cols = np.mgrid[0:HEIGHT, 0:WIDTH]
    pixels = np.stack([1000 + 400 * np.sin(rows / (7 + i) + cols / (11 - i)) for i in range(3)]).astype(np.float32)
    for band, values in zip(BANDS, pixels):
        with rasterio.open(folder / f"{band}.tif", "w", driver="GTiff", height=HEIGHT, width=WIDTH, count=1,
                           dtype="float32", crs="EPSG:32633", transform=TRANSFORM) as dst:  # fmt: skip
            dst.write(values, 1)
    torch.manual_seed(0)  # module fixtures run before the per-test seeding
    model = domainmae.create_model("vit_tiny", sensors={"s2": BANDS}, patch_size=PATCH, img_size=WINDOW, embed_dim=32,
                                   depth=2, num_heads=2, decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)  # fmt: skip
    recipe = load_recipe("sentinel").model_dump(mode="json")
    # radiometry={}: the pixels are read as stored (they are not Sentinel-2 L2A DN).
    recipe["data"].update(format="scene", path=str(root), sensors={"s2": BANDS}, crop_size=WINDOW, band_stats=STATS,
                          radiometry={}, num_workers=0)  # fmt: skip
    recipe["model"]["patch_size"] = PATCH
    ckpt = save_checkpoint(root / "model.ckpt", {"model_config": model.config.to_dict(), "model": model.state_dict(),
                                                 "step": 2, "recipe": resolve_recipe(recipe).model_dump(mode="json")})  # fmt: skip
    normalized = (pixels - np.array([1000.0, 1100.0, 1200.0])[:, None, None]) / 500.0
    return {"ckpt": ckpt, "model": model.eval(), "image": torch.from_numpy(normalized.astype(np.float32))}


def _patches(scene, row: int, col: int, size: int = WINDOW, bands: list[str] = BANDS) -> np.ndarray:
    """``model.embed_patches`` of one window with ``bands`` only: ``[D, h, w]``."""
    window = scene["image"][None, [BANDS.index(b) for b in bands], row : row + size, col : col + size]
    with torch.no_grad():
        return scene["model"].embed_patches({"s2": window}, {"s2": bands})[0].permute(2, 0, 1).numpy()


def test_geoparquet_footprints_tile_the_scene_in_its_crs(scene, tmp_path):
    out = embed(scene["ckpt"], output=tmp_path / "chips.parquet", progress=False)
    chips = gpd.read_parquet(out)
    assert chips.crs.to_epsg() == 32633 and len(chips) == 2 * 3
    left, top = TRANSFORM.c, TRANSFORM.f
    scene_box = shapely.box(left, top - HEIGHT * 10, left + WIDTH * 10, top)
    assert chips.union_all().equals(scene_box) and np.isclose(chips.area.sum(), scene_box.area)  # no gaps, no overlap
    assert chips.datetime.iloc[0].year == 2020 and list(chips.sensors.iloc[0]) == ["s2"]
    row = chips[(chips.window_row == 32) & (chips.window_col == 64)].iloc[0]
    assert row.geometry.equals(shapely.box(left + 640, top - 640, left + 960, top - 320))
    window = scene["image"][None, :, 32:64, 64:96]
    with torch.no_grad():
        expected = scene["model"].embed({"s2": window}, {"s2": BANDS})[0].numpy()
    assert row.embedding.dtype == np.float32
    np.testing.assert_allclose(row.embedding, expected, rtol=1e-4, atol=1e-5)
    provenance = json.loads(pq.read_schema(out).metadata[b"domainmae"])
    assert provenance["channels"] == {"s2": BANDS} and provenance["level"] == "tile"

    wgs84 = gpd.read_parquet(embed(scene["ckpt"], output=tmp_path / "wgs84.parquet", crs="EPSG:4326", progress=False))
    assert wgs84.crs.to_epsg() == 4326
    np.testing.assert_allclose(wgs84.to_crs(32633).total_bounds, scene_box.bounds, atol=1e-3)


@pytest.mark.parametrize(("pixels", "size"), [(64, 10.0), (1098, 100.0)])  # a tile; a whole Sentinel-2 tile
def test_footprints_follow_the_curved_edges_in_another_crs(pixels, size):
    """A footprint projected corner by corner has straight edges where the true ones curve: a 109.8 km window at
    62.8 N in EPSG:32635 was 465 m off in EPSG:4326."""
    from domainmae.data.geo import Grid
    from domainmae.export.writers.geoparquet import footprints

    grid = Grid(CRS.from_epsg(32635), from_origin(500_000, 7_000_000, size, size), pixels, pixels)
    meta = grid.window_meta(Window(0, 0, pixels, pixels))
    (got,) = footprints([[meta]], CRS.from_epsg(4326))
    # Back in the window's CRS, the written outline (its edges followed at ~1 m steps, as straight lines in
    # degrees are what a reader of the file draws) against the window itself.
    drawn = gpd.GeoSeries([shapely.segmentize(got, 1e-5)], crs=4326).to_crs(32635).iloc[0]
    error = drawn.hausdorff_distance(shapely.box(*meta["bounds"]))
    assert error < 0.5, f"{error:.1f} m"
    if pixels == 64:  # a 640 m window is within 2 cm corner to corner: no vertex is added, the file stays small
        assert len(got.exterior.coords) == 5
    (same,) = footprints([[meta]], CRS.from_epsg(32635))  # in its own CRS the box is exact: 4 corners, no more
    assert same.equals(shapely.box(*meta["bounds"])) and len(same.exterior.coords) == 5


def test_geoparquet_scene_metadata_missing_in_the_first_batch(scene, tmp_path):
    # Scene "A_undated" has no acquisition time in its name; with one scene (6 windows) a batch, the first
    # batch's datetime column is all null and the second's timestamps.
    source = next(scene["ckpt"].parent.glob("S2A*"))
    for name in ("A_undated", source.name):
        (tmp_path / "data" / name).mkdir(parents=True)
        for band in BANDS:
            shutil.copy(source / f"{band}.tif", tmp_path / "data" / name / f"{band}.tif")
    out = embed(scene["ckpt"], data=tmp_path / "data", output=tmp_path / "chips.parquet", batch_size=6, progress=False)
    chips = gpd.read_parquet(out)
    assert list(chips.scene_id) == ["A_undated"] * 6 + [source.name] * 6
    assert chips.datetime[:6].isna().all() and (chips.datetime[6:].dt.year == 2020).all()
    assert pq.read_schema(out).field("datetime").type == pa.timestamp("us", tz="UTC")


def test_geotiff_overlays_the_source_and_matches_embed_patches(scene, tmp_path):
    out = embed(scene["ckpt"], output=tmp_path / "patches.tif", stride=WINDOW, progress=False)  # no overlap
    with rasterio.open(out) as raster, rasterio.open(next(scene["ckpt"].parent.glob("S2A*/B02.tif"))) as source:
        assert raster.crs == source.crs and raster.bounds == source.bounds
        assert raster.shape == (HEIGHT // PATCH, WIDTH // PATCH) and raster.count == 32 and raster.dtypes[0] == "float32"
        values = raster.read()
        assert json.loads(raster.tags()["domainmae"])["stride"] == WINDOW
    np.testing.assert_allclose(values[:, 4:8, 8:12], _patches(scene, 32, 64), rtol=1e-4, atol=1e-5)


def test_overlapping_windows_blend_without_seams(scene, tmp_path):
    hard = embed(scene["ckpt"], output=tmp_path / "hard.tif", stride=WINDOW, progress=False)
    blended = embed(scene["ckpt"], output=tmp_path / "blended.tif", progress=False)  # stride: half a window
    with rasterio.open(hard) as a, rasterio.open(blended) as b:
        hard, blended = a.read().astype(np.float64), b.read().astype(np.float64)

    def seam_ratio(values: np.ndarray) -> float:
        """Mean jump across the hard tiles' borders (after patch rows/cols 3 and 7) over the median jump."""
        cols = np.abs(np.diff(values, axis=2)).mean(axis=(0, 1))  # [11]: between patch columns c and c + 1
        rows = np.abs(np.diff(values, axis=1)).mean(axis=(0, 2))  # [7]
        seams = np.r_[cols[[3, 7]], rows[[3]]]
        return float(seams.mean() / np.median(np.r_[np.delete(cols, [3, 7]), np.delete(rows, [3])]))

    assert seam_ratio(hard) > 1.2  # the windows' edges show in a hard tiling ...
    assert seam_ratio(blended) < 1.1  # ... and not once overlapping windows are blended
    # Where only one window covers (the top-left corner), blending returns that window's values exactly.
    np.testing.assert_allclose(blended[:, :2, :2], _patches(scene, 0, 0)[:, :2, :2], rtol=1e-4, atol=1e-5)


def test_zarr_overlays_the_source_and_equals_the_geotiff(scene, tmp_path, monkeypatch):
    tif = embed(scene["ckpt"], output=tmp_path / "patches.tif", progress=False)
    # Chunks of 3 x 3 patches: the blended strips (2 rows each at the default stride) must be regrouped
    # across chunk borders, and the last chunk row (8 = 3 + 3 + 2) is partial.
    monkeypatch.setattr("domainmae.export.writers.raster.block_side", lambda dim: 3)
    out = embed(scene["ckpt"], output=tmp_path / "patches.zarr", progress=False)
    with rasterio.open(tif) as raster, rasterio.open(next(scene["ckpt"].parent.glob("S2A*/B02.tif"))) as source:
        expected, source_crs, source_bounds = raster.read(), source.crs, tuple(source.bounds)
    (cube,) = open_cube(out)  # GeoZarr attributes on the array
    assert cube.grid.crs == source_crs and (cube.grid.height, cube.grid.width) == (HEIGHT // PATCH, WIDTH // PATCH)
    assert array_bounds(cube.grid.height, cube.grid.width, cube.grid.transform) == (
        source_bounds[0], source_bounds[1], source_bounds[2], source_bounds[3])  # fmt: skip
    assert cube.channels == tuple(f"emb_{i:04d}" for i in range(32))
    dataset = xr.open_dataset(out, engine="zarr", chunks=None)
    array = dataset["embedding"]
    # GeoZarr's proj:wkt2 is WKT2 (PROJCRS[...]), not GDAL's default WKT1 (PROJCS[...]).
    assert array.attrs["proj:wkt2"].startswith("PROJCRS[") and CRS.from_wkt(array.attrs["proj:wkt2"]) == source_crs
    assert array.dtype == np.float32 and array.encoding["chunks"] == (32, 3, 3)
    np.testing.assert_allclose(array.values, expected, rtol=0, atol=1e-6)
    # The CF/rioxarray grid mapping alone (as rioxarray/GDAL read it) gives the same grid.
    cf = array.copy()
    cf.attrs = {k: v for k, v in cf.attrs.items() if not k.startswith(("spatial:", "proj:"))}
    assert cube_grid(cf) == cube.grid and "spatial_ref" in array.coords
    np.testing.assert_allclose(array.x.values[:2], [TRANSFORM.c + 40, TRANSFORM.c + 120])
    assert dataset.attrs["domainmae"]["format"] == "zarr" and dataset.attrs["domainmae"]["level"] == "patch"

    with pytest.raises(FileExistsError, match="patches.zarr"):
        embed(scene["ckpt"], output=out, progress=False)
    embed(scene["ckpt"], output=out, stride=WINDOW, overwrite=True, progress=False)
    assert xr.open_dataset(out, engine="zarr", chunks=None).attrs["domainmae"]["stride"] == WINDOW
    assert sorted(p.name for p in tmp_path.iterdir()) == ["patches.tif", "patches.zarr"]  # no temp leftovers


def test_int8_geotiff_unscales_to_the_float32_export(scene, tmp_path):
    exact = embed(scene["ckpt"], output=tmp_path / "float.tif", progress=False)
    small = embed(scene["ckpt"], output=tmp_path / "int8.tif", dtype="int8", progress=False)
    with rasterio.open(exact) as a, rasterio.open(small) as b:
        expected, raw = a.read(), b.read()
        scales, offsets = np.array(b.scales)[:, None, None], np.array(b.offsets)[:, None, None]
        assert b.dtypes[0] == "int8" and b.bounds == a.bounds and b.crs == a.crs
        assert json.loads(b.tags()["domainmae"])["dtype"] == "int8"
    # each band's full range; -128 is nodata (patches without data), none here
    assert (raw.min(axis=(1, 2)) == -127).all() and (raw.max(axis=(1, 2)) == 127).all()
    error = np.abs(raw * scales + offsets - expected)
    assert (error <= scales / 2 + 1e-6).all() and (scales < 0.05).all()  # within half a step, and steps are fine
    with pytest.raises(ValueError, match="GeoTIFF option"):
        embed(scene["ckpt"], output=tmp_path / "int8.zarr", dtype="int8", progress=False)


@pytest.mark.parametrize("dtype", ["float32", "int8"])
def test_geotiffs_are_cloud_optimised_and_keep_values_and_metadata(scene, tmp_path, monkeypatch, dtype):
    monkeypatch.setattr("domainmae.export.writers.raster.OVERVIEW_MIN_SIZE", 3)  # the 8 x 12 patch grid: overviews 4 x 6, 2 x 3
    reference = embed(scene["ckpt"], output=tmp_path / "reference.zarr", stride=WINDOW, progress=False)
    out = embed(scene["ckpt"], output=tmp_path / "cog.tif", stride=WINDOW, dtype=dtype, progress=False)
    with rasterio.open(out) as cog:
        structure = cog.tags(ns="IMAGE_STRUCTURE")
        assert structure["LAYOUT"] == "COG" and structure["COMPRESSION"] == "DEFLATE"
        assert structure["PREDICTOR"] == ("3" if dtype == "float32" else "2")
        assert cog.profile["tiled"] and cog.overviews(1) == [2, 4] and cog.dtypes[0] == dtype
        assert cog.descriptions[:2] == ("emb_0000", "emb_0001")
        assert json.loads(cog.tags()["domainmae"])["dtype"] == dtype
        steps, offsets = np.array(cog.scales)[:, None, None], np.array(cog.offsets)[:, None, None]
        values = cog.read().astype(np.float64) * steps + offsets
        overview = cog.read(1, out_shape=(4, 6))  # served from the first overview
    expected = xr.open_dataset(reference, engine="zarr", chunks=None)["embedding"].values
    if dtype == "float32":
        assert (steps == 1).all() and overview.shape == (4, 6)
        np.testing.assert_allclose(values, expected, rtol=0, atol=1e-6)
    else:
        assert (np.abs(values - expected) <= steps / 2 + 1e-6).all()
    # Every IFD (full resolution and overviews) precedes every tile of data, so a reader finds all with one read.
    with tifffile.TiffFile(out) as tif:
        ifds = [page.offset for page in tif.pages]
        data = [offset for page in tif.pages for offset in page.dataoffsets]
        assert len(ifds) == 3 and max(ifds) < min(data)


def test_channel_subset_is_recorded_and_embedded_alone(scene, tmp_path):
    subset = ["B02", "B04"]
    out = embed(scene["ckpt"], output=tmp_path / "rb.tif", stride=WINDOW, channels=subset, progress=False)
    with rasterio.open(out) as raster:
        values = raster.read()
        assert json.loads(raster.tags()["domainmae"])["channels"] == {"s2": subset}
    window = values[:, 4:8, 8:12]
    np.testing.assert_allclose(window, _patches(scene, 32, 64, bands=subset), rtol=1e-4, atol=1e-5)
    assert not np.allclose(window, _patches(scene, 32, 64), atol=1e-3)  # the dropped band changes the embedding


def test_overwrite_replaces_earlier_embed_rasters_and_no_other_folder(scene, tmp_path):
    """``--overwrite`` of a raster output deleted whatever folder was there: the user's, the input data, the run."""
    maps = embed(scene["ckpt"], output=tmp_path / "maps", format="geotiff", progress=False)  # a folder of rasters
    assert embed(scene["ckpt"], output=maps, format="geotiff", overwrite=True, progress=False) == maps
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.txt").write_text("precious")
    data = shutil.copytree(next(scene["ckpt"].parent.glob("S2A*")), tmp_path / "scenes")  # GeoTIFFs, not embed's
    store = tmp_path / "plate.zarr"
    zarr.open_group(store, mode="w").create_array("image", shape=(2, 8, 8), dtype="uint8")
    for folder, fmt in ((mine, "geotiff"), (data, "geotiff"), (store, "zarr"), (scene["ckpt"].parent, "zarr")):
        before = sorted(p.name for p in folder.iterdir())
        # the checkpoint's folder is also the recipe's data folder: refused as an input first
        refusal = "is an input of this command" if folder == scene["ckpt"].parent else "refusing to replace"
        with pytest.raises((FileExistsError, ValueError), match=rf"{folder}.*{refusal}|{refusal} {folder}"):
            embed(scene["ckpt"], output=folder, format=fmt, overwrite=True, progress=False)
        assert sorted(p.name for p in folder.iterdir()) == before


def _with_nodata_columns(scene, folder, columns: int):
    """The scene copied into ``folder`` with its first ``columns`` pixel columns nodata (a swath edge)."""
    data = folder / "S2A_MSIL2A_20200601T101031_T33UUP"
    shutil.copytree(next(scene["ckpt"].parent.glob("S2A*")), data)
    for band in BANDS:
        with rasterio.open(data / f"{band}.tif", "r+") as dst:
            values = dst.read(1)
            values[:, :columns] = -9999.0
            dst.write(values, 1)
            dst.nodata = -9999.0
    return data


@pytest.mark.parametrize(("fmt", "dtype", "features"), [("geotiff", "float32", "model"), ("geotiff", "int8", "model"),
                                                    ("zarr", "float32", "model"), ("geotiff", "float32", "raw")])
def test_patches_without_data_are_nodata_in_the_rasters(scene, tmp_path, fmt, dtype, features):
    """A scene whose left 40 px are nodata (a swath edge): its patches there were embeddings of zero-filled input
    (or zeros for raw features), indistinguishable from data, and entered label tables."""
    from domainmae.export.labels import raster_table
    from domainmae.export.writers.raster import read_embedding_raster

    _with_nodata_columns(scene, tmp_path, 40)
    out = embed(scene["ckpt"], data=tmp_path, output=tmp_path / f"emb.{'zarr' if fmt == 'zarr' else 'tif'}",
                format=fmt, dtype=dtype, features=features, progress=False)  # fmt: skip
    values, _, _, _ = read_embedding_raster(out)
    empty = np.zeros(values.shape[1:], bool)
    empty[:, : 40 // PATCH] = True  # patch columns 0-4 hold only nodata pixels; column 5 starts at pixel 40
    assert np.isnan(values[:, empty]).all() and np.isfinite(values[:, ~empty]).all()
    if fmt == "geotiff":
        with rasterio.open(out) as src:  # GDAL readers (QGIS) see them as nodata too
            assert src.nodata is not None and not src.read_masks(1)[empty].any() and src.read_masks(1)[~empty].all()
    labels = tmp_path / "labels.tif"
    with rasterio.open(labels, "w", driver="GTiff", height=HEIGHT, width=WIDTH, count=1, dtype="uint8",
                       crs="EPSG:32633", transform=TRANSFORM) as dst:  # fmt: skip
        dst.write(np.ones((HEIGHT, WIDTH), np.uint8), 1)
    table, columns, _ = raster_table(out, labels)
    assert len(table) == (~empty).sum() and np.isfinite(table[columns].to_numpy()).all()


def test_windows_without_data_have_no_row_in_the_tables(scene, tmp_path):
    """Windows wholly in a scene's nodata had rows embedded from zero-filled input (raw features: zeros)."""
    from domainmae.align.finetune import tuned_encoder

    _with_nodata_columns(scene, tmp_path, 40)  # the windows at column 0 hold no data; those at 32 do from 40 on

    def table(name: str, **options) -> gpd.GeoDataFrame:
        return gpd.read_parquet(embed(scene["ckpt"], data=tmp_path, output=tmp_path / name, progress=False, **options))

    chips = table("chips.parquet")
    assert sorted(set(chips.window_col)) == [32, 64] and len(chips) == 2 * 2
    rows = np.stack(chips.embedding.to_numpy())
    raw = table("raw.parquet", features="raw")
    assert raw[["window_row", "window_col"]].equals(chips[["window_row", "window_col"]])  # baselines: same rows
    np.testing.assert_allclose(table("scene.parquet", level="image").embedding.iloc[0], rows.mean(axis=0),
                               rtol=1e-5, atol=1e-6)  # fmt: skip
    # align --unfreeze re-embeds the table's rows: the same windows, in the same order
    tuned = tuned_encoder(scene["ckpt"], len(chips), tmp_path / "home", data=tmp_path, pool="mean", device="cpu",
                          batch_size=4, lr_scale=1.0)  # fmt: skip
    np.testing.assert_allclose(tuned.embed(), rows, rtol=1e-4, atol=1e-5)


def test_overwrite_never_replaces_an_input_file(scene, tmp_path):
    """``embed --data scene.tif --output scene.tif --overwrite`` replaced the user's scene with its embedding."""
    data = shutil.copytree(next(scene["ckpt"].parent.glob("S2A*")), tmp_path / "S2A_MSIL2A_20200601T101031_T33UUP")
    band = next(data.glob("*.tif"))
    before = band.read_bytes()
    with pytest.raises(ValueError, match=rf"{band} is an input of this command \({data}\)"):
        embed(scene["ckpt"], data=data, output=band, format="geotiff", overwrite=True, progress=False)
    assert band.read_bytes() == before


def test_an_unknown_crs_is_named_before_any_window_is_embedded(scene, tmp_path, capsys, monkeypatch):
    """``--crs EPSG:99999`` once ended in pyproj's CRSError traceback, after every window was embedded."""
    from domainmae.cli import main
    from domainmae.export.stream import Export

    def embedded(*args, **kwargs):
        raise AssertionError("a window was embedded before --crs was checked")

    monkeypatch.setattr(Export, "forward", embedded)
    out = tmp_path / "chips.parquet"
    assert main(["embed", "--checkpoint", str(scene["ckpt"]), "--output", str(out), "--crs", "EPSG:99999",
                 "--quiet"]) == 1  # fmt: skip
    assert "--crs 'EPSG:99999'" in capsys.readouterr().err and not out.exists()
