"""Label rasters: per-patch embeddings joined with a categorical raster in another resolution or CRS."""
import numpy as np
import pandas as pd
import pytest
import rasterio
from rasterio.transform import from_origin
from rasterio.warp import Resampling, calculate_default_transform, reproject

from domainmae.cli import main
from domainmae.export import evaluate
from domainmae.export.embed import embed, embed_baselines
from domainmae.export.labels import raster_table
from tests import test_export_geo
from tests.test_export_geo import HEIGHT, PATCH, TRANSFORM, WIDTH, WINDOW

scene = test_export_geo.scene  # its module fixture: a 64 x 96 px UTM scene and a tiny S2 checkpoint
NODATA = 255
ROWS, COLS = HEIGHT // PATCH, WIDTH // PATCH  # the patch grid: 8 x 12


def _truth() -> np.ndarray:
    """Labels at 5 m (2 x 2 per 10 m source pixel, 16 x 16 per patch): class 1 + patch column // 4; patch
    row 0 nodata; patch (4, 1) 3/8 class 9 (mixed); patch (5, 1) half nodata, half class 9 (pure)."""
    side = 2 * PATCH
    labels = np.repeat(1 + np.arange(COLS) // 4, side)[None, :].repeat(ROWS * side, 0).astype(np.uint8)
    labels[:side] = NODATA
    labels[4 * side : 4 * side + 6, side : 2 * side] = 9
    labels[5 * side : 5 * side + 8, side : 2 * side] = NODATA
    labels[5 * side + 8 : 6 * side, side : 2 * side] = 9
    return labels


def _write(path, labels, transform, crs):
    with rasterio.open(path, "w", driver="GTiff", height=labels.shape[0], width=labels.shape[1], count=1,
                       dtype="uint8", crs=crs, transform=transform, nodata=NODATA) as dst:  # fmt: skip
        dst.write(labels, 1)
    return path


@pytest.fixture(scope="module")
def rasters(scene, tmp_path_factory):
    root = tmp_path_factory.mktemp("labels")
    emb = embed(scene["ckpt"], output=root / "emb.tif", stride=WINDOW, progress=False)
    fine = from_origin(TRANSFORM.c, TRANSFORM.f, 5.0, 5.0)
    utm = _write(root / "utm.tif", _truth(), fine, "EPSG:32633")
    # The same labels in geographic coordinates, finely enough that nearest resampling there and back is exact
    # away from class borders.
    transform, width, height = calculate_default_transform("EPSG:32633", "EPSG:4326", 192, 128,
                                                           *rasterio.transform.array_bounds(128, 192, fine),
                                                           resolution=2e-5)  # fmt: skip
    geographic = np.full((height, width), NODATA, np.uint8)
    reproject(_truth(), geographic, src_transform=fine, src_crs="EPSG:32633", src_nodata=NODATA, dst_transform=transform,
              dst_crs="EPSG:4326", dst_nodata=NODATA, resampling=Resampling.nearest)  # fmt: skip
    return {"emb": emb, "utm": utm, "wgs84": _write(root / "wgs84.tif", geographic, transform, "EPSG:4326")}


def test_majority_purity_and_nodata_per_patch(rasters):
    df, features, provenance = raster_table(rasters["emb"], rasters["utm"], purity=0.5)
    assert len(features) == 32 and provenance["features"] == "model"
    got = {(r // PATCH, c // PATCH): label for r, c, label in zip(df.window_row, df.window_col, df.label)}
    assert not any(row == 0 for row, _ in got)  # nodata row
    assert got[(4, 1)] == 1 and got[(5, 1)] == 9  # 5/8 majority kept at 0.5; nodata ignored in (5, 1)
    assert all(got[(r, c)] == 1 + c // 4 for r in range(1, ROWS) for c in range(COLS) if (r, c) not in [(5, 1)])
    assert len(df) == (ROWS - 1) * COLS
    with rasterio.open(rasters["emb"]) as src:
        np.testing.assert_array_equal(df[features].to_numpy()[0], src.read()[:, 1, 0])  # first row: patch (1, 0)
    strict, _, _ = raster_table(rasters["emb"], rasters["utm"], purity=0.7)
    assert len(strict) == len(df) - 1 and not ((strict.window_row == 4 * PATCH) & (strict.window_col == PATCH)).any()


def test_label_raster_in_another_crs_lines_up(rasters):
    utm, _, _ = raster_table(rasters["emb"], rasters["utm"])
    wgs, _, _ = raster_table(rasters["emb"], rasters["wgs84"])
    joined = utm.merge(wgs, on=["window_row", "window_col"], suffixes=("", "_wgs"))
    assert len(joined) >= 0.9 * len(utm) and (joined.label == joined.label_wgs).all()


def test_evaluate_with_a_label_raster_blocks_and_baselines(rasters, tmp_path, capsys):
    raw = embed_baselines(rasters["emb"], ["raw"], tmp_path / "baselines")
    result = evaluate(rasters["emb"], labels=rasters["utm"], split="blocks:32", against=raw.items(), test_size=0.3)
    assert result["label"] == "label" and result["n_classes"] == 4 and list(result["features"]) == ["model", "raw"]
    assert result["n_dropped"] > 0  # train patches touching a test block
    assert main(["evaluate", str(rasters["emb"]), "--labels", str(rasters["wgs84"]), "--method", "knn"]) == 0
    assert "knn" in capsys.readouterr().out


def test_zarr_embeddings_join_like_the_geotiff(scene, rasters, tmp_path):
    store = embed(scene["ckpt"], output=tmp_path / "emb.zarr", stride=WINDOW, progress=False)
    tif, features, _ = raster_table(rasters["emb"], rasters["utm"])
    zarr_table, _, provenance = raster_table(store, rasters["utm"])
    assert provenance["format"] == "zarr"
    pd.testing.assert_frame_equal(zarr_table, tif, check_exact=False, rtol=1e-6)
