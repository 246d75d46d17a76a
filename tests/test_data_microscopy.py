"""Microscopy readers on the bundled CellProfiler samples, plus synthetic TIFF/Zarr fixtures for layouts the
samples cannot show (stacks, OME-Zarr plates, illumination functions, broken files)."""
from __future__ import annotations

import csv
import logging
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tifffile
import zarr
from PIL import Image
from zarr.storage import LocalStore

from domainmae.data import (
    ErrorPolicy,
    FieldError,
    Window,
    WindowDataset,
    WindowReader,
    load_data_fields,
    pattern_fields,
    stack_fields,
    zarr_fields,
)  # fmt: skip
from domainmae.data import tiff as tiff_module
from domainmae.pipeline import microscopy_fields
from domainmae.recipes import load_recipe

from .conftest import SAMPLES

FLY = SAMPLES / "examplefly"
HUMAN = SAMPLES / "examplehuman"
FLY_PATTERN = r"(?P<field>.+)_(?P<channel>[DFR])\.TIF"
FLY_CHANNELS = {"D": "DNA", "F": "PH3", "R": "Actin"}


def _write_manifest(path: Path, rows: list[dict[str, str]]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _rows(manifest: Path) -> list[dict[str, str]]:
    with open(manifest, newline="") as handle:
        return list(csv.DictReader(handle))


# --- load_data manifests on the real samples -----------------------------------------------------------


@pytest.mark.parametrize(("folder", "count", "shape"), [(FLY, 3, (1006, 1000)), (HUMAN, 1, (512, 512))])
def test_every_manifest_channel_equals_tifffile(folder: Path, count: int, shape: tuple[int, int]) -> None:
    fields = load_data_fields(folder / "load_data.csv")
    assert len(fields) == count
    for field in fields:
        assert field.channels == ("DNA", "PH3", "Actin")
        assert field.shape == shape
        sample = WindowReader(field, min(shape)).window(Window(0, 0, *shape))
        assert sample["image"].dtype.is_floating_point and sample["image"].shape == (3, *shape)
        for k, name in enumerate(field.channels):
            expected = tifffile.imread(sample["meta"]["files"][name])
            np.testing.assert_array_equal(sample["image"][k].numpy(), expected)
        assert sample["meta"]["Metadata_Plate"] and "Metadata_Site" in sample["meta"]


def test_manifest_windowed_read_matches_full_read() -> None:
    for field in load_data_fields(FLY / "load_data.csv")[:1] + load_data_fields(HUMAN / "load_data.csv"):
        window = Window(37, 101, 150, 90)
        np.testing.assert_array_equal(field.pixels(window), field.pixels()[:, 37:187, 101:191])


def test_parquet_manifest_with_rename_and_selection(tmp_path: Path) -> None:
    rows = _rows(HUMAN / "load_data.csv")
    for row in rows:  # an absolute PathName replaces the manifest's folder
        row.update({k: str(HUMAN.resolve()) for k in row if k.startswith("PathName_")})
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "plate.parquet")
    field = load_data_fields(tmp_path / "plate.parquet", channel_map={"DNA": "Hoechst"}, channels=["Actin", "Hoechst"])[0]
    assert field.channels == ("Actin", "Hoechst")
    image = field.pixels()
    np.testing.assert_array_equal(image[1], tifffile.imread(HUMAN / rows[0]["FileName_OrigDNA"]))
    assert field.meta["Metadata_Well"] == "D03"


def test_manifest_channel_errors_name_channels() -> None:
    with pytest.raises(ValueError, match=r"channel_map keys \['OrigDNA'\]"):
        load_data_fields(HUMAN / "load_data.csv", channel_map={"OrigDNA": "DNA"})
    with pytest.raises(ValueError, match=r"expected channels \['DNA', 'ER'\], found \['DNA', 'PH3', 'Actin'\]"):
        load_data_fields(HUMAN / "load_data.csv", channels=["DNA", "ER"])


def test_illumination_function_divides(tmp_path: Path) -> None:
    row = _rows(HUMAN / "load_data.csv")[0]
    row.update({k: str(HUMAN.resolve()) for k in row if k.startswith("PathName_")})
    illum = np.random.default_rng(0).uniform(0.5, 2.0, size=(512, 512)).astype(np.float32)
    np.save(tmp_path / "IllumDNA.npy", illum)
    row.update(FileName_IllumDNA="IllumDNA.npy", PathName_IllumDNA="")  # empty PathName = manifest folder
    field = load_data_fields(_write_manifest(tmp_path / "load_data.csv", [row]))[0]
    image = field.pixels()
    raw = tifffile.imread(HUMAN / row["FileName_OrigDNA"]).astype(np.float32)
    np.testing.assert_allclose(image[0], raw / illum, rtol=1e-6)
    np.testing.assert_array_equal(image[1], tifffile.imread(HUMAN / row["FileName_OrigPH3"]))  # no illum: as is
    np.testing.assert_allclose(field.pixels(Window(5, 6, 20, 30))[0], (raw / illum)[5:25, 6:36], rtol=1e-6)
    assert field.meta["illum"] == {"DNA": str(tmp_path / "IllumDNA.npy")}


def test_missing_file_names_file_and_row_and_skip_counts(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rows = _rows(FLY / "load_data.csv")
    for row in rows:
        row.update({k: str(FLY.resolve()) for k in row if k.startswith("PathName_")})
    rows[1]["FileName_OrigPH3"] = "01_POS999_F.TIF"
    manifest = _write_manifest(tmp_path / "load_data.csv", rows)
    with pytest.raises(FileNotFoundError, match=r"01_POS999_F\.TIF.*channel PH3, row 2 of"):
        load_data_fields(manifest)
    policy = ErrorPolicy("skip")
    with caplog.at_level(logging.WARNING):
        fields = load_data_fields(manifest, on_error=policy)
    assert [f.meta["Metadata_Site"] for f in fields] == ["POS002", "POS218"]
    assert len(policy.skipped) == 1 and "01_POS999_F.TIF" in policy.skipped[0]
    assert "01_POS999_F.TIF" in caplog.text


def _scrambled_zlib_tiff(path: Path) -> None:
    """A TIFF with a valid header whose zlib strips do not decompress (the codec's error is no OSError)."""
    tifffile.imwrite(path, tifffile.imread(FLY / "01_POS002_R.TIF"), compression="zlib", rowsperstrip=1006)
    with tifffile.TiffFile(path) as tif:
        offset, count = tif.pages[0].dataoffsets[0], tif.pages[0].databytecounts[0]
    data = bytearray(path.read_bytes())
    data[offset + 2 : offset + count] = bytes(b ^ 0x5A for b in data[offset + 2 : offset + count])
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("corrupt", ["not a TIFF", "zlib strip"])
def test_corrupt_file_names_file_and_dataset_skips_it(tmp_path: Path, corrupt: str) -> None:
    for name in ("01_POS002_D.TIF", "01_POS002_F.TIF"):
        shutil.copy(FLY / name, tmp_path / name)
    if corrupt == "not a TIFF":
        (tmp_path / "01_POS002_R.TIF").write_bytes(b"II*\x00 this is not a TIFF")
    else:
        _scrambled_zlib_tiff(tmp_path / "01_POS002_R.TIF")
    fields = pattern_fields(tmp_path, FLY_PATTERN, FLY_CHANNELS)
    with pytest.raises(FieldError, match=r"01_POS002_R\.TIF \(channel Actin, field=01_POS002"):
        fields[0].pixels()
    policy = ErrorPolicy("skip")
    crops = WindowDataset(fields, size=64, on_error=policy)
    assert crops[0] == [] and len(policy.skipped) == 1


# --- per-channel files by pattern -------------------------------------------------------------------------


def test_pattern_groups_examplefly_into_three_fields_of_three_channels() -> None:
    fields = pattern_fields(FLY, FLY_PATTERN, FLY_CHANNELS)
    assert [f.meta["field"] for f in fields] == ["01_POS002", "01_POS076", "01_POS218"]
    assert all(f.channels == ("DNA", "PH3", "Actin") for f in fields)
    by_manifest = load_data_fields(FLY / "load_data.csv")
    for from_pattern, from_manifest in zip(fields, by_manifest):
        np.testing.assert_array_equal(from_pattern.pixels(), from_manifest.pixels())


def test_pattern_field_missing_channel_raises_or_is_skipped(tmp_path: Path) -> None:
    for name in ("01_POS002_D.TIF", "01_POS002_F.TIF", "01_POS002_R.TIF", "01_POS076_D.TIF"):
        shutil.copy(FLY / name, tmp_path / name)
    with pytest.raises(FieldError, match=r"field=01_POS076 .* no file for channel\(s\) F \(PH3\), R \(Actin\)"):
        pattern_fields(tmp_path, FLY_PATTERN, FLY_CHANNELS)
    policy = ErrorPolicy("skip")
    assert len(pattern_fields(tmp_path, FLY_PATTERN, FLY_CHANNELS, on_error=policy)) == 1
    assert len(policy.skipped) == 1


def test_pattern_reads_rxrx_style_png_channels(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    planes = {(site, w): rng.integers(0, 65535, size=(30, 40), dtype=np.uint16) for site in "12" for w in "12"}
    for (site, w), plane in planes.items():
        Image.fromarray(plane).save(tmp_path / f"B02_s{site}_w{w}.png")
    pattern = r"(?P<Metadata_Well>\w+)_s(?P<Metadata_Site>\d)_w(?P<channel>\d)\.png"
    fields = pattern_fields(tmp_path, pattern, {"1": "DNA", "2": "ER"}, channels=["ER", "DNA"])
    assert [(f.meta["Metadata_Well"], f.meta["Metadata_Site"]) for f in fields] == [("B02", "1"), ("B02", "2")]
    np.testing.assert_array_equal(fields[1].pixels(Window(2, 3, 10, 12)),
                                  np.stack([planes["2", "2"], planes["2", "1"]])[:, 2:12, 3:15])


# --- TIFF stacks -----------------------------------------------------------------------------------------

STACK = np.random.default_rng(1).integers(0, 65535, size=(5, 40, 56), dtype=np.uint16)
NAMES = ["DNA", "ER", "RNA", "AGP", "Mito"]


@pytest.mark.parametrize(
    ("layout", "write"),
    [
        ("CYX", lambda p: tifffile.imwrite(p, STACK)),
        ("YXC", lambda p: tifffile.imwrite(p, STACK.transpose(1, 2, 0))),
        ("CYX", lambda p: tifffile.imwrite(p, STACK, tile=(16, 16), compression="zlib")),
    ],
)
def test_tiff_stack_round_trips(tmp_path: Path, layout: str, write) -> None:
    path = tmp_path / "stack.tif"
    write(path)
    with pytest.raises(ValueError, match=r"ambiguous; say the layout with data.axes \(axes= in Python\)"):
        stack_fields([path], channels=NAMES)
    field = stack_fields([path], axes=layout, channels=NAMES)[0]
    assert field.channels == tuple(NAMES)
    np.testing.assert_array_equal(field.pixels(), STACK)
    np.testing.assert_array_equal(field.pixels(Window(3, 17, 20, 30)), STACK[:, 3:23, 17:47])
    with pytest.raises(ValueError, match=r"expected 3 channels \['DNA', 'ER', 'RNA'\], found 5"):
        stack_fields([path], axes=layout, channels=NAMES[:3])


def test_a_recipe_reads_plain_stacks_by_its_data_axes(tmp_path: Path) -> None:
    """A plain stack (tifffile's own, or pages written one by one) says no layout; the recipe can (it could
    not: no key reached stack_fields' axes)."""
    tifffile.imwrite(tmp_path / "a.tif", STACK)
    with tifffile.TiffWriter(tmp_path / "b.tif") as tif:
        for plane in STACK + 1:
            tif.write(plane, metadata=None)  # no shape metadata: tifffile reads pages as IYX
    channels = f"data.channels=[{','.join(NAMES)}]"
    for name in ("a.tif", "b.tif"):
        recipe = load_recipe("cellpainting", [f"data.path={tmp_path / name}", "data.format=stack", channels])
        with pytest.raises(ValueError, match="data.axes"):
            microscopy_fields(recipe.data)
    recipe = load_recipe("cellpainting", [f"data.path={tmp_path}", "data.format=stack", "data.axes=CYX", channels])
    fields = microscopy_fields(recipe.data)
    np.testing.assert_array_equal(fields[0].pixels(), STACK)
    np.testing.assert_array_equal(fields[1].pixels(), STACK + 1)


def test_a_stack_with_several_series_says_which_it_reads(tmp_path: Path, caplog) -> None:
    path = tmp_path / "positions.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tif:
        for value in (1, 2):
            tif.write(np.full((3, 16, 16), value, np.uint16), metadata={"axes": "CYX", "Channel": {"Name": NAMES[:3]}})
    with caplog.at_level(logging.WARNING, logger="domainmae.data.tiff"):
        fields = stack_fields([path])
    assert len(fields) == 1 and float(fields[0].pixels().mean()) == 1
    assert "positions.ome.tif holds 2 image series; its first, CYX (3, 16, 16), is the field" in caplog.text


def test_ome_tiff_channel_names_from_metadata(tmp_path: Path) -> None:
    path = tmp_path / "field.ome.tif"
    tifffile.imwrite(path, STACK, tile=(16, 16), metadata={"axes": "CYX", "Channel": {"Name": NAMES}})
    field = stack_fields([path])[0]
    assert field.channels == tuple(NAMES)
    np.testing.assert_array_equal(field.pixels(), STACK)
    picked = stack_fields([path], channel_map={"DNA": "Hoechst"}, channels=["Mito", "Hoechst"])[0]
    np.testing.assert_array_equal(picked.pixels(Window(8, 8, 16, 24)), STACK[[4, 0], 8:24, 8:32])


# --- Zarr and OME-Zarr ----------------------------------------------------------------------------------


def test_plain_zarr_array_and_group(tmp_path: Path) -> None:
    data = np.random.default_rng(2).integers(0, 4000, size=(3, 2, 24, 32), dtype=np.uint16)
    zarr.create_array(tmp_path / "fields.zarr", data=data, chunks=(1, 1, 8, 8))
    fields = zarr_fields(tmp_path / "fields.zarr", channels=["DNA", "Actin"])
    assert len(fields) == 3 and fields[1].channels == ("DNA", "Actin")
    for n, field in enumerate(fields):
        np.testing.assert_array_equal(field.pixels(), data[n])
    with pytest.raises(ValueError, match="2 unnamed channels; pass channels="):
        zarr_fields(tmp_path / "fields.zarr")

    group = zarr.open_group(tmp_path / "group.zarr", mode="w")
    for n in range(3):
        group.create_array(f"site{n}", data=data[n], chunks=(1, 8, 8))
    fields = zarr_fields(tmp_path / "group.zarr", channels=["DNA", "Actin"])
    np.testing.assert_array_equal(fields[2].pixels(Window(4, 5, 10, 11)), data[2][:, 4:14, 5:16])


def test_a_zarr_chunk_that_does_not_decode_names_the_store_and_field(tmp_path: Path) -> None:
    data = np.random.default_rng(3).integers(0, 4000, size=(2, 2, 16, 16), dtype=np.uint16)
    zarr.create_array(tmp_path / "fields.zarr", data=data, chunks=(1, 2, 16, 16))
    chunk = tmp_path / "fields.zarr" / "c" / "1" / "0" / "0" / "0"  # the second field's only chunk
    chunk.write_bytes(chunk.read_bytes()[:8] + bytes(b ^ 0x5A for b in chunk.read_bytes()[8:]))
    fields = zarr_fields(tmp_path / "fields.zarr", channels=["DNA", "Actin"])
    np.testing.assert_array_equal(fields[0].pixels(), data[0])
    with pytest.raises(FieldError, match=r"cannot read Zarr array .*fields\.zarr.*decompression"):
        fields[1].pixels()
    policy = ErrorPolicy("skip")
    crops = WindowDataset(fields, size=8, on_error=policy)
    assert len(crops[0]) == 1 and crops[1] == [] and len(policy.skipped) == 1


def _write_plate(root: Path, version: str, images: dict[tuple[str, str, str], np.ndarray]) -> None:
    """An OME-Zarr HCS plate: NGFF 0.4 (Zarr v2, metadata at the top of .zattrs) or 0.5 (Zarr v3, under "ome")."""
    fmt = 2 if version == "0.4" else 3
    axes = "cyx" if version == "0.4" else "tczyx"  # 0.5 fixture also exercises singleton t and z axes

    def ome(attrs: dict) -> dict:
        return {k: {**v, "version": version} if k in ("plate", "well") else v for k, v in attrs.items()} if fmt == 2 \
            else {"ome": {"version": version, **attrs}}

    wells = sorted({(row, col) for row, col, _ in images})
    plate = zarr.open_group(root, mode="w", zarr_format=fmt)
    plate.attrs.update(ome({"plate": {
        "name": "P1", "rows": [{"name": "A"}], "columns": [{"name": c} for _, c in wells],
        "wells": [{"path": f"{r}/{c}", "rowIndex": 0, "columnIndex": i} for i, (r, c) in enumerate(wells)],
    }}))  # fmt: skip
    for row, col in wells:
        sites = sorted(site for r, c, site in images if (r, c) == (row, col))
        plate.create_group(f"{row}/{col}").attrs.update(ome({"well": {"images": [{"path": s} for s in sites]}}))
    for (row, col, site), data in images.items():
        image = plate.create_group(f"{row}/{col}/{site}")
        level0 = data.reshape((1, data.shape[0], 1, *data.shape[1:]) if axes == "tczyx" else data.shape)
        image.create_array("0", data=level0, chunks=(*[1] * (level0.ndim - 2), 8, 8))
        image.create_array("1", data=level0[..., ::2, ::2] + 1, chunks=level0[..., ::2, ::2].shape)
        image.attrs.update(ome({
            "multiscales": [{"axes": [{"name": a} for a in axes], "datasets": [{"path": "0"}, {"path": "1"}]}],
            "omero": {"channels": [{"label": "DNA"}, {"label": "ER"}, {"label": "Mito"}]},
        }))  # fmt: skip


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_ome_zarr_plate_reads_level0_with_omero_names(tmp_path: Path, version: str, monkeypatch) -> None:
    rng = np.random.default_rng(3)
    images = {(r, c, s): rng.integers(0, 255, size=(3, 32, 40), dtype=np.uint8)
              for r, c, s in [("A", "1", "0"), ("A", "1", "1"), ("A", "2", "0")]}  # fmt: skip
    _write_plate(tmp_path / "plate.zarr", version, images)
    fields = zarr_fields(tmp_path / "plate.zarr", channel_map={"Mito": "MITO"})
    assert [(f.meta["Metadata_Well"], f.meta["Metadata_Site"]) for f in fields] == [("A1", "0"), ("A1", "1"), ("A2", "0")]
    assert all(f.channels == ("DNA", "ER", "MITO") and f.meta["Metadata_Plate"] == "P1" for f in fields)
    for field, data in zip(fields, images.values()):
        np.testing.assert_array_equal(field.pixels(), data)

    # A 8x8 window on the 8x8 chunk grid of two selected channels touches exactly two chunks.
    keys: list[str] = []
    get = LocalStore.get

    async def spy(self, key, *args, **kwargs):
        keys.append(key)
        return await get(self, key, *args, **kwargs)

    monkeypatch.setattr(LocalStore, "get", spy)
    picked = zarr_fields(tmp_path / "plate.zarr", channels=["Mito", "DNA"])[0]
    keys.clear()
    np.testing.assert_array_equal(picked.pixels(Window(8, 16, 8, 8)), images["A", "1", "0"][[2, 0], 8:16, 16:24])
    assert len([k for k in keys if Path(k).name not in ("zarr.json", ".zarray", ".zattrs", ".zgroup")]) == 2


def test_ome_zarr_missing_well_raises_or_is_skipped(tmp_path: Path) -> None:
    images = {("A", "1", "0"): np.zeros((3, 16, 16), np.uint8), ("A", "2", "0"): np.ones((3, 16, 16), np.uint8)}
    _write_plate(tmp_path / "plate.zarr", "0.5", images)
    shutil.rmtree(tmp_path / "plate.zarr" / "A" / "2")
    with pytest.raises(FileNotFoundError, match=r"A/2 is listed in the OME metadata but missing"):
        zarr_fields(tmp_path / "plate.zarr")
    policy = ErrorPolicy("skip")
    assert len(zarr_fields(tmp_path / "plate.zarr", on_error=policy)) == 1 and len(policy.skipped) == 1


# --- crops and tiling -------------------------------------------------------------------------------------


def test_random_crops_read_each_field_once(monkeypatch) -> None:
    calls: list[str] = []
    read_plane = tiff_module._read_plane

    def counting(path, window, where):
        calls.append(Path(path).name)
        return read_plane(path, window, where)

    monkeypatch.setattr(tiff_module, "_read_plane", counting)
    fields = load_data_fields(FLY / "load_data.csv")
    crops = WindowDataset(fields, size=128, windows_per_read=5)
    batch = crops[1]
    assert len(batch) == 5 and len(calls) == 3  # one read per channel file, not one per crop
    calls.clear()
    full = fields[1].pixels()
    for crop in batch:
        window = crop["meta"]["window"]
        assert crop["image"].shape == (3, 128, 128) and crop["channels"] == ("DNA", "PH3", "Actin")
        np.testing.assert_array_equal(crop["image"].numpy(), full[(slice(None), *window.slices())])
    assert len({crop["meta"]["window"] for crop in batch}) > 1


def test_grid_tiling_covers_every_pixel() -> None:
    field = load_data_fields(FLY / "load_data.csv")[0]
    tiles = list(WindowReader(field, 224).grid(stride=200))
    full = field.pixels()
    covered = np.zeros(field.shape, dtype=int)
    for tile in tiles:
        window = tile["meta"]["window"]
        covered[window.slices()] += 1
        np.testing.assert_array_equal(tile["image"].numpy(), full[(slice(None), *window.slices())])
    assert covered.min() >= 1 and len(tiles) == 25
    assert [t["meta"]["window"] for item in WindowDataset([field], 224, sampling="grid", stride=200) for t in item] == \
        [t["meta"]["window"] for t in tiles]  # deterministic


def test_crop_larger_than_field_names_the_field() -> None:
    crops = WindowDataset(load_data_fields(HUMAN / "load_data.csv"), size=600)
    with pytest.raises(ValueError, match=r"field row 1 of .*load_data\.csv of 512x512 px is smaller than the 600 px crop"):
        crops[0]


def test_a_folder_given_as_the_manifest_says_so(tmp_path: Path) -> None:
    from domainmae.pipeline import microscopy_fields
    from domainmae.recipes import load_recipe

    (tmp_path / "plate1.csv").write_text("x\n")
    section = load_recipe("cellpainting", [f"data.path={tmp_path}", "data.format=manifest"]).data
    with pytest.raises(ValueError, match=rf"{tmp_path} is a folder.*manifest file.*plate1\.csv"):
        microscopy_fields(section)


def test_a_csv_manifest_saved_with_a_byte_order_mark_keeps_its_first_column(tmp_path: Path) -> None:
    """Excel saves "CSV UTF-8" with a BOM, which would otherwise become part of the first column's name."""
    rows = _rows(HUMAN / "load_data.csv")
    for row in rows:
        row.update({k: str(HUMAN.resolve()) for k in row if k.startswith("PathName_")})
    first = next(iter(rows[0]))
    manifest = tmp_path / "load_data.csv"
    with open(manifest, "w", newline="", encoding="utf-8-sig") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    assert manifest.read_bytes().startswith(b"\xef\xbb\xbf")
    field = load_data_fields(manifest)[0]
    assert field.meta[first] == rows[0][first]
