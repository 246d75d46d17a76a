"""Label rasters and vector files: per-patch embeddings joined with categorical labels in another resolution
or CRS."""
import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
from rasterio.features import shapes
from rasterio.transform import from_origin
from rasterio.warp import Resampling, calculate_default_transform, reproject
from shapely.geometry import LineString, MultiPoint, Point, box, shape

from domainmae.cli import main
from domainmae.export import evaluate
from domainmae.export.embed import embed, embed_baselines
from domainmae.export.labels import raster_table
from domainmae.export.splits import split_rows
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
    # The classes are stripes 32 px wide, as the blocks are: the test blocks hold classes no training patch has,
    # which scored 0 as if it were a result. gap=0: no training patch shares an input pixel with a test patch (the
    # default margin of one more window would leave this 64 x 96 px scene nothing to train on).
    with pytest.raises(ValueError, match="no test row's 'label' occurs in the training rows"):
        evaluate(rasters["emb"], labels=rasters["utm"], split="blocks:32", against=raw.items(), test_size=0.3, gap=0)
    result = evaluate(rasters["emb"], labels=rasters["utm"], split="window_row=32,40", against=raw.items())
    assert result["label"] == "label" and result["n_classes"] == 4 and list(result["features"]) == ["model", "raw"]
    assert result["n_test"] == 2 * COLS  # patch rows 4 and 5: classes 1 to 3 on both sides
    assert main(["evaluate", str(rasters["emb"]), "--labels", str(rasters["wgs84"]), "--method", "knn"]) == 0
    assert "knn" in capsys.readouterr().out


def test_zarr_embeddings_join_like_the_geotiff(scene, rasters, tmp_path):
    store = embed(scene["ckpt"], output=tmp_path / "emb.zarr", stride=WINDOW, progress=False)
    tif, features, _ = raster_table(rasters["emb"], rasters["utm"])
    zarr_table, _, provenance = raster_table(store, rasters["utm"])
    assert provenance["format"] == "zarr"
    pd.testing.assert_frame_equal(zarr_table, tif, check_exact=False, rtol=1e-6)


# Vector labels are drawn in UTM, where patch edges are easy to place, and written in geographic coordinates, so
# every test goes through the reprojection to the embedding raster's CRS.
NAMES = {1: "water", 2: "crops", 3: "forest", 9: "urban"}


def _vectors(path, geometries, **columns):
    frame = gpd.GeoDataFrame(columns, geometry=list(geometries), crs="EPSG:32633").to_crs("EPSG:4326")
    frame.to_parquet(path) if path.suffix == ".parquet" else frame.to_file(path)
    return path


def _patches(top, left, bottom, right):
    """The UTM box of patches ``[top, bottom) x [left, right)``."""
    (west, north), (east, south) = TRANSFORM @ (left * PATCH, top * PATCH), TRANSFORM @ (right * PATCH, bottom * PATCH)
    return box(west, south, east, north)


def _centre(row, col):
    return Point(TRANSFORM @ (col + 0.5, row + 0.5))  # of source pixel (row, col)


def _by_patch(df):
    return {(r // PATCH, c // PATCH): label for r, c, label in zip(df.window_row, df.window_col, df.label)}


@pytest.fixture(scope="module")
def polygons(tmp_path_factory):
    """The label raster's classes as polygons (nodata left out), with their class as ``cls`` beside a second column
    (so the class column has to be named), and as the only column, by name, in GeoParquet."""
    root, truth = tmp_path_factory.mktemp("vectors"), _truth()
    drawn = list(shapes(truth, mask=truth != NODATA, transform=from_origin(TRANSFORM.c, TRANSFORM.f, 5.0, 5.0)))
    geometries, classes = [shape(g) for g, _ in drawn], [int(v) for _, v in drawn]
    return {"codes": _vectors(root / "truth.gpkg", geometries, cls=classes, source=["survey"] * len(classes)),
            "names": _vectors(root / "names.parquet", geometries, cls=[NAMES[c] for c in classes])}  # fmt: skip


def test_polygons_label_patches_like_the_equivalent_raster(rasters, polygons):
    expected, _, _ = raster_table(rasters["emb"], rasters["utm"])
    got, _, _ = raster_table(rasters["emb"], polygons["codes"], field="cls")
    pd.testing.assert_frame_equal(got, expected, check_dtype=False)
    strict, _, _ = raster_table(rasters["emb"], polygons["codes"], purity=0.7, field="cls")
    assert _by_patch(strict) == _by_patch(raster_table(rasters["emb"], rasters["utm"], purity=0.7)[0])


def test_string_classes_round_trip(rasters, polygons):
    expected, _, _ = raster_table(rasters["emb"], rasters["utm"])
    got, _, _ = raster_table(rasters["emb"], polygons["names"])  # its only column: no field needed
    assert list(got.label) == [NAMES[c] for c in expected.label]


def test_points_label_a_patch_by_their_majority(rasters, tmp_path):
    points = {"a": [(17, 25), (18, 26), (19, 27), (17, 41), (18, 42)], "b": [(20, 28), (19, 43), (20, 44), (21, 45)]}
    geometries = [_centre(*rc) for cls in points for rc in points[cls]]
    classes = [cls for cls in points for _ in points[cls]]
    # A multipoint is its points; rows without a class or a geometry are skipped, not an error.
    geometries += [MultiPoint([_centre(49, 65), _centre(50, 66)]), _centre(49, 1), None]
    classes += ["c", None, "b"]
    file = _vectors(tmp_path / "points.geojson", geometries, cls=classes)
    got, _, _ = raster_table(rasters["emb"], file)
    # Patch (2, 3): 3 a, 1 b; patch (2, 5): 2 a, 3 b; patch (6, 8): the multipoint.
    assert _by_patch(got) == {(2, 3): "a", (2, 5): "b", (6, 8): "c"}
    strict, _, _ = raster_table(rasters["emb"], file, purity=0.7)
    assert _by_patch(strict) == {(2, 3): "a", (6, 8): "c"}


def test_integer_classes_with_missing_values_stay_integers(rasters, tmp_path):
    # GDAL reads an integer column with nulls as float64: the labels must still be the file's 1 and 2, not 1.0.
    file = _vectors(tmp_path / "gaps.geojson", [_patches(1, 1, 2, 2), _patches(3, 3, 4, 4), _patches(5, 5, 6, 6)],
                    cls=[1, 2, None])  # fmt: skip
    got, _, _ = raster_table(rasters["emb"], file)
    assert _by_patch(got) == {(1, 1): 1, (3, 3): 2}
    assert got.label.dtype.kind == "i"


def test_overlapping_classes_are_not_decided_by_drawing_order(rasters, tmp_path):
    # Class 1 over patches (1..2, 1..2) twice (a same-class overlap is harmless), class 2 over (2..3, 2..3):
    # patch (2, 2) lies under both.
    drawn = [(_patches(1, 1, 3, 3), 1), (_patches(1, 1, 2, 2), 1), (_patches(2, 2, 4, 4), 2)]
    expected = {(1, 1): 1, (1, 2): 1, (2, 1): 1, (2, 3): 2, (3, 2): 2, (3, 3): 2}
    for order in (drawn, drawn[::-1]):
        file = _vectors(tmp_path / "overlap.gpkg", [g for g, _ in order], cls=[c for _, c in order])
        assert _by_patch(raster_table(rasters["emb"], file)[0]) == expected


def test_lines_unknown_fields_and_unplaceable_files_are_refused(rasters, polygons, tmp_path):
    roads = _vectors(tmp_path / "roads.shp", [LineString([_centre(9, 9).coords[0], _centre(30, 40).coords[0]])], cls=[1])
    with pytest.raises(ValueError, match=r"roads\.shp holds LineString geometries; only polygons and points"):
        raster_table(rasters["emb"], roads)
    with pytest.raises(ValueError, match=r"truth\.gpkg has the columns \['cls', 'source'\].*--label-field"):
        raster_table(rasters["emb"], polygons["codes"])
    with pytest.raises(ValueError, match=r"label field 'kind' is not a column of .*truth\.gpkg; it has \['cls', 'source'\]"):
        raster_table(rasters["emb"], polygons["codes"], field="kind")
    with pytest.raises(ValueError, match=r"utm\.tif is a raster"):
        raster_table(rasters["emb"], rasters["utm"], field="cls")
    (tmp_path / "broken.gpkg").write_text("not a GeoPackage")
    with pytest.raises(OSError, match=r"cannot read .*broken\.gpkg"):
        raster_table(rasters["emb"], tmp_path / "broken.gpkg")
    gpd.GeoDataFrame({"cls": [1]}, geometry=[_patches(1, 1, 2, 2)]).to_parquet(tmp_path / "nocrs.parquet")
    with pytest.raises(ValueError, match=r"nocrs\.parquet has no CRS"):
        raster_table(rasters["emb"], tmp_path / "nocrs.parquet")
    # A list column (the chips' own multi-label "labels") failed with numpy's "truth value ... is ambiguous".
    chips = _vectors(tmp_path / "chips.parquet", [_patches(1, 1, 2, 2)], labels=[["crops", "forest"]])
    with pytest.raises(ValueError, match=r"label field 'labels' of .*chips\.parquet holds lists.*--label labels"):
        raster_table(rasters["emb"], chips, field="labels")
    far = _vectors(tmp_path / "far.gpkg", [_patches(100, 100, 101, 101)], cls=[1])
    with pytest.raises(ValueError, match=r"no patch of .* has a label in .*far\.gpkg"):
        raster_table(rasters["emb"], far)


def test_cli_evaluates_against_a_polygon_file(rasters, polygons, capsys):
    command = ["evaluate", str(rasters["emb"]), "--labels", str(polygons["codes"]), "--split", "window_row=32,40"]
    assert main([*command, "--label-field", "cls", "--method", "knn"]) == 0
    assert "knn" in capsys.readouterr().out
    # Blocks as wide as the class stripes hold out whole classes: refused, not scored 0.
    assert main([*command[:-1], "blocks:32", "--gap", "0", "--label-field", "cls"]) == 1
    assert "no test row's 'label' occurs in the training rows" in capsys.readouterr().err
    assert main(command) == 1 and "--label-field" in capsys.readouterr().err
    assert main(["evaluate", str(rasters["emb"]), "--label-field", "cls"]) == 1
    assert "vector label file" in capsys.readouterr().err


def _scene_folder(root, pixels):
    """``root`` holding one 3-band scene of ``pixels [3, H, W]`` on the test scene's grid start."""
    folder = root / "S2A_MSIL2A_20200601T101031_T33UUP"
    folder.mkdir(parents=True)
    for band, values in zip(test_export_geo.BANDS, pixels):
        with rasterio.open(folder / f"{band}.tif", "w", driver="GTiff", height=values.shape[0], width=values.shape[1],
                           count=1, dtype="float32", crs="EPSG:32633", transform=TRANSFORM) as dst:  # fmt: skip
            dst.write(values, 1)
    return root


def test_a_blocks_split_of_label_raster_patches_keeps_test_pixels_out_of_training_embeddings(scene, tmp_path):
    """A patch of an embedding raster is blended from the encoder windows over it, which reach a window's side
    minus a patch beyond it: with the default gap, changing only the pixels under the test patches changes no
    training patch's embedding (a gap of one patch let 8 px neighbours of the test area through)."""
    side = 384
    rows, cols = np.mgrid[0:side, 0:side]
    pixels = np.stack([1000 + 400 * np.sin(rows / (7 + i) + cols / (11 - i)) for i in range(3)]).astype(np.float32)
    labels = _write(tmp_path / "labels.tif", (1 + (cols // 32) % 2).astype(np.uint8), TRANSFORM, "EPSG:32633")
    before = embed(scene["ckpt"], data=str(_scene_folder(tmp_path / "a", pixels)), output=tmp_path / "a.tif",
                   progress=False)  # fmt: skip
    df, features, _ = raster_table(before, labels)
    train, test, dropped, _ = split_rows(df, df.label.astype(str).to_numpy(), "blocks:128", 0.3, 0, False)
    assert len(train) > 0 and dropped > 0
    changed = pixels.copy()
    for row, col in df.loc[test, ["window_row", "window_col"]].to_numpy():
        changed[:, row : row + PATCH, col : col + PATCH] += 3000.0
    after = embed(scene["ckpt"], data=str(_scene_folder(tmp_path / "b", changed)), output=tmp_path / "b.tif",
                  progress=False)  # fmt: skip
    moved = raster_table(after, labels)[0]
    assert not np.allclose(df.loc[test, features], moved.loc[test, features])  # the change reaches the test patches
    np.testing.assert_allclose(df.loc[train, features], moved.loc[train, features], atol=1e-5)
