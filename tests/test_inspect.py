"""`domainmae inspect`: layouts detected on the bundled samples and on small synthetic stores."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import tifffile
import zarr
from affine import Affine
from rasterio.crs import CRS

from domainmae.cli import main
from domainmae.data.bigearthnet import SENTINEL1_BANDS, SENTINEL2_BANDS
from domainmae.data.inspect import Report, render_report
from domainmae.pipeline import inspect_path
from domainmae.recipes import load_recipe

from .conftest import SAMPLES

FLY, HUMAN, BEN = SAMPLES / "examplefly", SAMPLES / "examplehuman", SAMPLES / "bigearthnet-mm"


def _ranges(report: Report, group: int = 0) -> dict[str, tuple[float, float]]:
    return {c.name: (c.min, c.max) for c in report.groups[group].channels}


def _tiff_ranges(files_by_channel: dict[str, list[Path]]) -> dict[str, tuple[float, float]]:
    """Min/max of each channel over all its files, read with tifffile itself."""
    planes = {name: [tifffile.imread(path) for path in paths] for name, paths in files_by_channel.items()}
    return {name: (float(min(p.min() for p in ps)), float(max(p.max() for p in ps))) for name, ps in planes.items()}


# --------------------------------------------------------------------------- bundled microscopy samples


def test_fly_manifest_reports_three_uint8_fields_of_three_named_channels() -> None:
    report = inspect_path(FLY / "load_data.csv")
    assert report.layout == "CellProfiler load_data manifest (CSV)" and report.reader.endswith("load_data_fields")
    (group,) = report.groups
    assert (group.count, group.sampled, group.shapes) == (3, 3, [(1006, 1000)])
    assert [(c.name, c.dtype, c.shape) for c in group.channels] == [
        ("DNA", "uint8", (1006, 1000)), ("PH3", "uint8", (1006, 1000)), ("Actin", "uint8", (1006, 1000)),
    ]  # fmt: skip
    sites = ("002", "076", "218")
    expected = {name: [FLY / f"01_POS{site}_{letter}.TIF" for site in sites]
                for name, letter in (("DNA", "D"), ("PH3", "F"), ("Actin", "R"))}  # fmt: skip
    assert _ranges(report) == _tiff_ranges(expected)
    assert group.crs == [] and all(c.pixel_size is None and c.nodata is None for c in group.channels)


def test_fly_folder_is_grouped_by_the_one_letter_channel_pattern() -> None:
    report = inspect_path(FLY)
    assert "ExampleFly" in report.layout and report.reader.endswith("pattern_fields")
    (group,) = report.groups
    assert group.count == 3 and [c.name for c in group.channels] == ["D", "F", "R"]
    # The same files as the manifest's DNA, PH3 and Actin columns.
    assert list(_ranges(report).values()) == list(_ranges(inspect_path(FLY / "load_data.csv")).values())
    assert any("load_data.csv" in note for note in report.notes)


def test_human_folder_is_grouped_by_the_cellomics_pattern() -> None:
    report = inspect_path(HUMAN)
    assert "Cellomics" in report.layout
    (group,) = report.groups
    assert group.count == 1 and group.shapes == [(512, 512)]
    files = {k: [HUMAN / f"AS_09125_050116030001_D03f00d{k}.tif"] for k in "012"}
    assert [c.name for c in group.channels] == ["0", "1", "2"] and _ranges(report) == _tiff_ranges(files)


def test_few_samples_bound_what_is_read() -> None:
    report = inspect_path(FLY / "load_data.csv", samples=2)
    assert report.groups[0].count == 3 and report.groups[0].sampled == 2  # first and last field only
    files = {"DNA": [FLY / "01_POS002_D.TIF", FLY / "01_POS218_D.TIF"]}
    assert _ranges(report)["DNA"] == _tiff_ranges(files)["DNA"]


# --------------------------------------------------------------------------- bundled BigEarthNet sample


def test_bigearthnet_mm_root_reports_paired_s2_and_s1_bands_in_utm() -> None:
    report = inspect_path(BEN)
    assert "BigEarthNet-MM" in report.layout
    s2, s1 = report.groups
    assert (s2.name, s2.count, s1.name, s1.count) == ("s2", 6, "s1", 6)
    assert tuple(c.name for c in s2.channels) == SENTINEL2_BANDS and tuple(c.name for c in s1.channels) == SENTINEL1_BANDS
    assert s2.shapes == s1.shapes == [(120, 120)] and s2.unit == "metre"
    # Six patches in three UTM zones (north): EPSG 326xx.
    assert len(s2.crs) == 3 and all(CRS.from_string(c).to_epsg() // 100 == 326 for c in s2.crs)
    bands = {c.name: c for c in s2.channels}
    assert (bands["B02"].shape, bands["B02"].pixel_size) == ((120, 120), (10.0, 10.0))
    assert (bands["B05"].shape, bands["B05"].pixel_size) == ((60, 60), (20.0, 20.0))
    assert (bands["B01"].shape, bands["B01"].pixel_size) == ((20, 20), (60.0, 60.0))
    assert all(c.dtype == "uint16" for c in s2.channels) and all(c.dtype == "float32" for c in s1.channels)
    # Values as the reader yields them: S2 DN x 1e-4 (reflectance), S1 already in dB.
    b02 = [rasterio.open(p).read(1) for p in sorted(BEN.glob("BigEarthNet-S2-Example/*/*_B02.tif"))]
    assert bands["B02"].max == pytest.approx(max(a.max() for a in b02) * 1e-4, rel=1e-6)
    assert all(-60 < c.min < c.max < 30 for c in s1.channels)


def test_a_folder_of_scenes_of_two_sensors_reports_each_band_set() -> None:
    report = inspect_path(SAMPLES)
    assert report.layout == "folder of per-band rasters"
    names = {len(g.channels): g for g in report.groups}
    assert set(names) == {2, 12} and names[12].count == names[2].count == 6
    assert names[12].channels[0].max == 8760.0  # no radiometry without a recipe: raw DN


# --------------------------------------------------------------------------- synthetic fixtures


def _geotiff(path: Path, data: np.ndarray, **profile) -> Path:
    with rasterio.open(path, "w", driver="GTiff", count=data.shape[0], height=data.shape[1], width=data.shape[2],
                       dtype=data.dtype, crs="EPSG:32633", transform=Affine(10, 0, 500000, 0, -10, 5000000),
                       **profile) as dst:  # fmt: skip
        dst.write(data)
    return path


def test_geotiff_reports_crs_nodata_tiles_and_ignores_nodata_in_ranges(tmp_path: Path) -> None:
    data = np.arange(3 * 256 * 256, dtype=np.uint16).reshape(3, 256, 256) % 5000 + 100
    data[:, :, :32] = 0  # a nodata border
    path = _geotiff(tmp_path / "scene.tif", data, nodata=0, tiled=True, blockxsize=128, blockysize=128,
                    compress="deflate")  # fmt: skip
    with rasterio.open(path, "r+") as dst:
        dst.descriptions = ("B02", "B03", "B04")
    report = inspect_path(path)
    assert report.layout == "GeoTIFF (multi-band scene)"
    (group,) = report.groups
    assert group.crs == ["EPSG:32633"] and group.blocks == [(128, 128)] and group.shapes == [(256, 256)]
    assert [(c.name, c.dtype, c.nodata, c.pixel_size) for c in group.channels] == [
        (name, "uint16", 0.0, (10.0, 10.0)) for name in ("B02", "B03", "B04")
    ]
    valid = data[:, :, 32:]
    assert _ranges(report) == {n: (float(v.min()), float(v.max())) for n, v in zip(("B02", "B03", "B04"), valid)}
    text = render_report(report)
    assert "EPSG:32633" in text and "10 metre" in text and "128x128" in text


def test_large_scene_is_measured_on_a_centred_window(tmp_path: Path) -> None:
    data = np.arange(300 * 200, dtype=np.float32).reshape(1, 300, 200)  # value = row * 200 + col
    report = inspect_path(_geotiff(tmp_path / "ramp.tif", data), max_side=64)
    top, left = (300 - 64) // 2, (200 - 64) // 2
    assert _ranges(report)["band1"] == (top * 200 + left, (top + 63) * 200 + left + 63)


def _ome_plate(root: Path, images: dict[tuple[str, str, str], np.ndarray]) -> None:
    """An NGFF 0.4 HCS plate (Zarr v2) with 0.65 µm pixels."""
    plate = zarr.open_group(root, mode="w", zarr_format=2)
    wells = sorted({(r, c) for r, c, _ in images})
    plate.attrs["plate"] = {"name": "P1", "rows": [{"name": "A"}], "columns": [{"name": c} for _, c in wells],
                            "wells": [{"path": f"{r}/{c}"} for r, c in wells]}  # fmt: skip
    for r, c in wells:
        plate.create_group(f"{r}/{c}").attrs["well"] = {"images": [{"path": s} for rr, cc, s in images if (rr, cc) == (r, c)]}
    axes = [{"name": "c", "type": "channel"}, {"name": "y", "type": "space", "unit": "micrometer"},
            {"name": "x", "type": "space", "unit": "micrometer"}]  # fmt: skip
    for (r, c, s), data in images.items():
        image = plate.create_group(f"{r}/{c}/{s}")
        image.create_array("0", data=data, chunks=(1, 16, 16))
        image.attrs["multiscales"] = [{"axes": axes, "datasets": [
            {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1.0, 0.65, 0.65]}]}]}]
        image.attrs["omero"] = {"channels": [{"label": "DNA"}, {"label": "ER"}]}


def test_ome_zarr_plate_reports_wells_fields_names_and_pixel_size(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = {key: rng.integers(10, 4000, (2, 40, 48), dtype=np.uint16)
              for key in [("A", "1", "0"), ("A", "1", "1"), ("A", "2", "0")]}  # fmt: skip
    _ome_plate(tmp_path / "plate.zarr", images)
    report = inspect_path(tmp_path / "plate.zarr")
    assert report.layout == "OME-Zarr HCS plate"
    (group,) = report.groups
    assert group.count == 3 and group.shapes == [(40, 48)] and group.unit == "micrometer"
    assert [(c.name, c.dtype, c.pixel_size) for c in group.channels] == [
        ("DNA", "uint16", (0.65, 0.65)), ("ER", "uint16", (0.65, 0.65))
    ]
    stacked = np.stack(list(images.values()))
    assert _ranges(report) == {n: (float(stacked[:, k].min()), float(stacked[:, k].max())) for k, n in enumerate(("DNA", "ER"))}
    assert "0.65 micrometer" in render_report(report)


def test_plain_zarr_array_gets_positional_channel_names(tmp_path: Path) -> None:
    data = np.random.default_rng(1).random((4, 5, 32, 32), dtype=np.float32)
    zarr.create_array(tmp_path / "fields.zarr", data=data, chunks=(1, 1, 16, 16))
    report = inspect_path(tmp_path / "fields.zarr")
    assert report.layout == "Zarr array [N, C, H, W]"
    (group,) = report.groups
    assert group.count == 4 and [c.name for c in group.channels] == ["c0", "c1", "c2", "c3", "c4"]
    assert all(c.dtype == "float32" for c in group.channels)
    assert _ranges(report)["c3"] == (float(data[:, 3].min()), float(data[:, 3].max()))


def test_unrecognised_folder_says_what_was_looked_for(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not images")
    (tmp_path / "cells.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(ValueError, match="no known layout") as info:
        inspect_path(tmp_path)
    message = str(info.value)
    for looked_for in ("Zarr store", "BigEarthNet", "ExampleFly", "per-band rasters", "load_data manifest"):
        assert looked_for in message
    assert ".jpg" in message and ".txt" in message


def test_single_plane_tiff_and_missing_path_are_explained(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "plane.tif", np.zeros((8, 8), np.uint16))
    with pytest.raises(ValueError, match="plane.tif is a single-plane TIFF"):
        inspect_path(tmp_path / "plane.tif")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        inspect_path(tmp_path / "nowhere")


def test_multichannel_tiff_stack(tmp_path: Path) -> None:
    data = np.random.default_rng(2).integers(0, 60000, (3, 24, 32), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "field.ome.tif", data, metadata={"axes": "CYX", "Channel": {"Name": ["DNA", "ER", "Mito"]},
                                                                 "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})  # fmt: skip
    report = inspect_path(tmp_path / "field.ome.tif")
    assert report.layout == "OME-TIFF stack"
    (group,) = report.groups
    assert [(c.name, c.pixel_size) for c in group.channels] == [(n, (0.5, 0.5)) for n in ("DNA", "ER", "Mito")]
    assert _ranges(report)["ER"] == (float(data[1].min()), float(data[1].max()))


def test_nan_and_inf_pixels_are_counted_per_channel_and_left_out_of_ranges(tmp_path: Path) -> None:
    data = np.random.default_rng(3).uniform(-5, 5, (3, 32, 32)).astype(np.float32)
    data[0, 8:16, 8:16] = np.nan  # 64 of 1024 pixels
    data[2, 0, 0], data[2, 31, 31] = np.inf, -np.inf
    tifffile.imwrite(tmp_path / "field.tif", data, metadata={"axes": "CYX"})
    report = inspect_path(tmp_path / "field.tif")
    assert [c.invalid for c in report.groups[0].channels] == [64 / 1024, 0.0, 2 / 1024]
    finite = [channel[np.isfinite(channel)] for channel in data]
    assert list(_ranges(report).values()) == [(float(v.min()), float(v.max())) for v in finite]
    text = render_report(report)
    rows = {line.split()[0]: line for line in text.splitlines() if line.startswith("  c")}
    assert "6.25%" in rows["c0"] and "0.195%" in rows["c2"] and "%" not in rows["c1"] and "NaN/inf" in text
    # A float raster whose nodata is NaN: the same count, through the raster reader's valid mask.
    scene = data[:1].copy()
    report = inspect_path(_geotiff(tmp_path / "scene.tif", scene, nodata=float("nan")))
    assert [c.invalid for c in report.groups[0].channels] == [64 / 1024]


# --------------------------------------------------------------------------- recipes and the command


def test_recipe_reads_the_path_as_training_does() -> None:
    sentinel = inspect_path(BEN, load_recipe("sentinel").data)
    assert "format bigearthnet" in sentinel.layout and [g.name for g in sentinel.groups] == ["s2", "s1"]
    with pytest.raises(ValueError, match=r"expected channels \['DNA', 'ER', 'RNA', 'AGP', 'Mito'\]"):
        inspect_path(FLY / "load_data.csv", load_recipe("cellpainting").data)
    picked = inspect_path(FLY / "load_data.csv", load_recipe("cellpainting", ["data.channels=[Actin,DNA]"]).data)
    assert [c.name for c in picked.groups[0].channels] == ["Actin", "DNA"]


def test_inspect_command_prints_the_report_or_a_one_line_error(tmp_path: Path, capsys) -> None:
    assert main(["inspect", str(FLY / "load_data.csv")]) == 0
    out = capsys.readouterr().out
    assert "CellProfiler load_data manifest" in out and "1006x1000" in out and "Actin" in out
    assert main(["inspect", str(tmp_path)]) == 1
    assert "no known layout" in capsys.readouterr().err
    assert main(["inspect", str(BEN), "--recipe", "sentinel", "--samples", "2"]) == 0
    assert "EPSG:32633" in capsys.readouterr().out


@pytest.mark.parametrize("content", ["header only", "truncated", "empty"])
def test_an_unreadable_tiff_is_named_without_a_traceback(tmp_path, capsys, content: str) -> None:
    """A corrupt or truncated TIFF once ended in ``IndexError: 0``, an empty one in a message naming no file."""
    scene = SAMPLES / "multispectral" / "S2A_MSIL2A_20170617T113321_36_85.tif"
    data = {"header only": b"II*\x00" + bytes(100), "truncated": scene.read_bytes()[:5000], "empty": b""}[content]
    path = tmp_path / "bad.tif"
    path.write_bytes(data)
    assert main(["inspect", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"cannot read {path}: " in err and "Traceback" not in err
