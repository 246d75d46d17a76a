"""Remote data (domainmae.data.remote): the bundled samples served over HTTP from 127.0.0.1 read as they do locally."""
from __future__ import annotations

import csv
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import rasterio
import tifffile
import zarr

from domainmae.data import handles, remote
from domainmae.data.fields import FieldError
from domainmae.data.geo import RasterReadError
from domainmae.data.inspect import render_report
from domainmae.data.radiometry import Radiometry
from domainmae.data.raster import RasterScene
from domainmae.data.samplers import Window
from domainmae.data.scenes import stacked_scenes
from domainmae.data.tiff import load_data_fields, stack_fields
from domainmae.data.zarr import zarr_fields
from domainmae.deps import MissingDependencyError
from domainmae.pipeline import inspect_path, microscopy_fields
from domainmae.recipes import DataSection, load_recipe

from .conftest import SAMPLES
from .httpserver import Served, serve

STACKS = sorted((SAMPLES / "multispectral").glob("*.tif"))
FLY = ["DNA", "PH3", "Actin"]


@pytest.fixture(scope="module")
def samples() -> Iterator[Served]:
    with serve(SAMPLES) as served:
        yield served


@pytest.fixture(autouse=True)
def _fresh_handles() -> Iterator[None]:
    yield
    handles.close_all()  # a later test's server has another port, so nothing would be reused anyway


def _same(remote_region, local_region) -> None:
    np.testing.assert_array_equal(remote_region.image, local_region.image)
    assert remote_region.channels == local_region.channels
    if local_region.valid is None:
        assert remote_region.valid is None
    else:
        np.testing.assert_array_equal(remote_region.valid, local_region.valid)


@pytest.mark.parametrize(
    ("location", "expected"),
    [
        (("http://h/a/load.csv", "..", ".", "x.tif"), "http://h/a/x.tif"),  # a manifest's PathName "." and ".."
        (("s3://bucket/plates/m.csv", "/images/x.tif"), "s3://bucket/images/x.tif"),  # absolute: same bucket
        (("http://h/a", "https://o/b.tif"), "https://o/b.tif"),  # a URL replaces what came before
        ((Path("local"), "http://o/x.tif"), "http://o/x.tif"),
        ((Path("local"), "sub", "x.tif"), Path("local/sub/x.tif")),
        # Relative parts are file names: characters with a meaning in URLs are encoded, so they name the file.
        (("http://h/a/m.csv", "..", "my plate", "pct%41 #1?.tif"), "http://h/a/my%20plate/pct%2541%20%231%3F.tif"),
        # s3:// and gs:// locations are bucket keys, taken as they are (s3fs, gcsfs and GDAL encode them).
        (("s3://b/a/m.csv", "..", "my plate", "pct%41.tif"), "s3://b/a/my plate/pct%41.tif"),
        # A list's query (an access token) goes to its relative entries; an absolute URL keeps its own query only.
        (("https://h/l/scenes.txt?token=abc", "..", "a.tif?sig=1"), "https://h/l/a.tif%3Fsig%3D1?token=abc"),
        (("https://h/l/scenes.txt?token=abc", "..", "https://o/a.tif?sig=1"), "https://o/a.tif?sig=1"),
    ],
)
def test_join_resolves_like_paths(location: tuple, expected: remote.Location) -> None:
    assert remote.join(*location) == expected


def test_url_names_are_decoded_like_file_names() -> None:
    assert remote.pure_path("https://h/my%20plate/scene%201.tif?sig=a%20b").name == "scene 1.tif"
    assert remote.pure_path("https://h/my%20plate/scene%201.tif").parent.name == "my plate"
    assert remote.pure_path("s3://bucket/pct%41.tif").name == "pct%41.tif"  # a key, not a URL path


#: File names whose characters mean something in a URL, each with the value its pixels hold.
URL_CHARACTER_NAMES = {"plain.tif": 1, "with space.tif": 2, "hash#1.tif": 3, "pct%41.tif": 4, "q?x.tif": 5}


def test_file_names_with_url_characters_read_their_own_file(tmp_path: Path) -> None:
    # A manifest names files on disk; served over HTTP, the same rows must read the same files. "pct%41.tif"
    # once read "pctA.tif" (%41 is "A"), "#" and "?" cut the name short, a space made GDAL reject the URL.
    folder = tmp_path / "my plate"
    folder.mkdir()
    tifffile.imwrite(folder / "pctA.tif", np.full((8, 8), 99, np.uint16))
    for name, value in URL_CHARACTER_NAMES.items():
        tifffile.imwrite(folder / name, np.full((8, 8), value, np.uint16))
    with open(tmp_path / "load_data.csv", "w", newline="") as handle:
        rows = [(name, "my plate") for name in URL_CHARACTER_NAMES]
        csv.writer(handle).writerows([("FileName_DNA", "PathName_DNA"), *rows])
    shutil.copy(STACKS[0], folder / "scene 1.tif")
    (tmp_path / "scenes.txt").write_text("my plate/scene 1.tif\n")
    with serve(tmp_path) as served:
        fields = load_data_fields(f"{served.url}/load_data.csv", channels=["DNA"])
        assert [np.unique(field.pixels()).tolist() for field in fields] == [[v] for v in URL_CHARACTER_NAMES.values()]
        assert [remote.pure_path(field.meta["files"]["DNA"]).name for field in fields] == list(URL_CHARACTER_NAMES)
        (scene,) = stacked_scenes(f"{served.url}/scenes.txt")
        (local,) = stacked_scenes(tmp_path / "scenes.txt")
        assert scene.scene_id == local.scene_id == "scene 1"
        _same(scene.read(Window(0, 0, 16, 16)), local.read(Window(0, 0, 16, 16)))


def test_gdal_paths_and_url_detection() -> None:
    assert remote.gdal_path("https://h/a.tif") == "/vsicurl/https://h/a.tif"
    assert remote.gdal_path("s3://bucket/key/a.tif") == "/vsis3/bucket/key/a.tif"
    assert remote.gdal_path("gs://bucket/a.tif") == "/vsigs/bucket/a.tif"
    assert remote.gdal_path(Path("a.tif")) == Path("a.tif")
    assert not remote.is_url("C:/data/a.tif") and not remote.is_url(Path("http:/x")) and remote.is_url("s3://b/k")
    assert handles.file_stamp("http://h/a.tif") is None  # no stat (nor request) per read for a URL


@pytest.mark.parametrize("path", STACKS, ids=lambda p: p.stem[-5:])
def test_geotiff_window_over_http_equals_local(samples: Served, path: Path) -> None:
    url = f"{samples.url}/multispectral/{path.name}"
    scene, local = RasterScene.from_file(url), RasterScene.from_file(path)
    assert (scene.scene_id, scene.channels, scene.datetime) == (local.scene_id, local.channels, local.datetime)
    assert scene.files == (url,)
    for window in (Window(0, 0, 120, 120), Window(7, 33, 64, 48)):
        _same(scene.read(window), local.read(window))


def test_cog_opens_without_listing_or_sidecars(tmp_path: Path) -> None:
    # A tiled COG with overviews, as object stores serve them; read onto a coarser grid too (resampled).
    with rasterio.open(STACKS[0]) as source:
        profile = {**source.profile, "driver": "COG", "blocksize": 64, "overview_resampling": "average"}
        profile.pop("blockxsize"), profile.pop("blockysize"), profile.pop("tiled", None)
        with rasterio.open(tmp_path / "scene.tif", "w", **profile) as cog:
            cog.write(source.read())
            cog.update_tags(**source.tags())
            cog.descriptions = source.descriptions
    with serve(tmp_path) as served:
        scene = RasterScene.from_file(f"{served.url}/scene.tif")
        window = Window(10, 20, 80, 90)
        _same(scene.read(window), RasterScene.from_file(tmp_path / "scene.tif").read(window))
        asked = served.requests()
    # Without GDAL_DISABLE_READDIR_ON_OPEN and the allowed extensions, GDAL also lists "/" and probes
    # scene.tif.aux.xml, scene.aux, scene.tif.msk, ... (see benchmarks/remote.py).
    assert {key.split(" ", 1)[1] for key in asked} == {"/scene.tif"}, asked


def test_urls_without_a_tiff_extension_open(tmp_path: Path) -> None:
    # Signed URLs carry a query; download endpoints may have no extension at all.
    shutil.copy(STACKS[0], tmp_path / "scene")
    with serve(tmp_path) as served:
        for url in (f"{served.url}/scene", f"{served.url}/scene?signature=abc&expires=1"):
            assert RasterScene.from_file(url, scene_id="s").read(Window(0, 0, 8, 8)).image.shape == (4, 8, 8)


def test_signed_urls_open_with_a_declared_nodata(tmp_path: Path) -> None:
    # A declared nodata (the scene's, or the sensor's for a file without one: Sentinel-2's 0) once went through
    # GDAL's vrt://<path>?a_nodata=..., which takes the URL's own "?" as its options: "Unknown option: signature".
    with rasterio.open(STACKS[0]) as source:
        profile, pixels, bands = {**source.profile, "nodata": None}, source.read(), source.descriptions
    pixels[:, :5, :7] = 0
    with rasterio.open(tmp_path / "scene.tif", "w", **profile) as scene:
        scene.write(pixels)
        scene.descriptions = bands
    declared = ({"radiometry": Radiometry(scale=1e-4, nodata=0)}, {"nodata": 0})
    with serve(tmp_path) as served:
        url = f"{served.url}/scene.tif?X-Amz-Signature=abc&X-Amz-Expires=3600"
        for kwargs in declared:
            local = RasterScene.from_file(tmp_path / "scene.tif", scene_id="s", **kwargs).read(Window(0, 0, 32, 32))
            _same(RasterScene.from_file(url, scene_id="s", **kwargs).read(Window(0, 0, 32, 32)), local)
            assert not local.valid[:5, :7].any() and local.valid.any()


def test_list_of_urls_reads_as_local_stacks(samples: Served, tmp_path: Path) -> None:
    listing = tmp_path / "scenes.txt"
    listing.write_text("# three scenes\n" + "".join(f"{samples.url}/multispectral/{p.name}\n\n" for p in STACKS))
    local = stacked_scenes(SAMPLES / "multispectral")
    with serve(tmp_path) as lists:  # the list itself at a URL too
        for scenes in (stacked_scenes(listing), stacked_scenes(f"{lists.url}/scenes.txt")):
            assert [s.scene_id for s in scenes] == [s.scene_id for s in local]
            window = Window(40, 40, 32, 32)
            for scene, local_scene in zip(scenes, local, strict=True):
                _same(scene.read(window), local_scene.read(window))


def test_lists_saved_with_a_byte_order_mark_keep_their_first_entry(tmp_path: Path) -> None:
    # Notepad and Excel's "UTF-8" put a byte-order mark first; it once became part of the first URL.
    (tmp_path / "scenes.txt").write_text("https://h/a.tif\r\nb.tif\r\n", encoding="utf-8-sig")
    assert remote.read_list(tmp_path / "scenes.txt") == ["https://h/a.tif", tmp_path / "b.tif"]
    with serve(tmp_path) as served:
        assert remote.read_list(f"{served.url}/scenes.txt") == ["https://h/a.tif", f"{served.url}/b.tif"]


def test_zarr_store_over_http_equals_local(tmp_path: Path) -> None:
    fields = [[tifffile.imread(SAMPLES / "examplefly" / f"01_POS{site}_{c}.TIF") for c in "DFR"]
              for site in ("002", "076")]  # fmt: skip
    zarr.create_array(tmp_path / "fly.zarr", data=np.asarray(fields), chunks=(1, 1, 256, 256))
    with serve(tmp_path) as served:
        url = f"{served.url}/fly.zarr"
        remote_fields, local = zarr_fields(url, channels=FLY), zarr_fields(tmp_path / "fly.zarr", channels=FLY)
        assert [f.shape for f in remote_fields] == [f.shape for f in local] == [(1006, 1000)] * 2
        for window in (Window(0, 0, 1006, 1000), Window(250, 240, 64, 100)):  # the second crosses four chunks
            for field, local_field in zip(remote_fields, local, strict=True):
                _same(field.read(window), local_field.read(window))
        asked = served.requests()
    # Only the chunks a window touches are fetched: two fields x three channels x four chunks for the second
    # window, after the whole fields (4 x 4 chunks of 256 px each per channel).
    assert sum(n for key, n in asked.items() if "/c/" in key) == 2 * 3 * 16 + 2 * 3 * 4


def _fly_manifest(folder: str, out: Path) -> tuple[Path, list[dict[str, str]]]:
    """The ExampleFly manifest with every ``PathName`` set to ``folder``, written to ``out/load_data.csv``."""
    with open(SAMPLES / "examplefly" / "load_data.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        row.update({key: folder for key in row if key.startswith("PathName_")})
    with open(out / "load_data.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return out / "load_data.csv", rows


def test_manifest_with_url_paths_equals_local(samples: Served, tmp_path: Path) -> None:
    # The images stay where they are served; the manifest lives elsewhere.
    manifest, rows = _fly_manifest(f"{samples.url}/examplefly", tmp_path)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "load_data.parquet")
    local = load_data_fields(SAMPLES / "examplefly" / "load_data.csv")
    with serve(tmp_path) as manifests:
        for where in (manifest, f"{manifests.url}/load_data.parquet",
                      f"{samples.url}/examplefly/load_data.csv"):  # relative PathName "." against a URL manifest
            fields = load_data_fields(where)
            assert [f.meta["files"]["DNA"] for f in fields] == [f"{samples.url}/examplefly/{r['FileName_OrigDNA']}"
                                                                for r in rows]  # fmt: skip
            for field, local_field in zip(fields, local, strict=True):
                assert field.shape == local_field.shape
                _same(field.read(Window(500, 400, 96, 80)), local_field.read(Window(500, 400, 96, 80)))


def test_channel_files_of_different_shapes_at_urls_are_named(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "a_DNA.tif", np.zeros((32, 32), np.uint16))
    tifffile.imwrite(tmp_path / "a_Actin.tif", np.zeros((32, 40), np.uint16))
    with open(tmp_path / "load_data.csv", "w", newline="") as handle:
        header = ("FileName_DNA", "PathName_DNA", "FileName_Actin", "PathName_Actin")
        csv.writer(handle).writerows([header, ("a_DNA.tif", ".", "a_Actin.tif", ".")])
    with serve(tmp_path) as served:
        (field,) = load_data_fields(f"{served.url}/load_data.csv")
        with pytest.raises(FieldError, match=r"differ in shape \(a_DNA.tif: \(32, 32\), a_Actin.tif: \(32, 40\)\)"):
            field.pixels()


def test_recipe_paths_may_be_urls_where_the_format_lists_no_folder(samples: Served) -> None:
    url = f"{samples.url}/examplehuman/load_data.csv"
    fields = microscopy_fields(DataSection(kind="microscopy", format="manifest", path=url))
    assert len(fields) == 1 and fields[0].pixels().shape == (3, 512, 512)
    with pytest.raises(ValueError, match="is a URL, which format 'pattern' cannot read"):
        section = DataSection(kind="microscopy", format="pattern", path=f"{samples.url}/examplefly", pattern="x")
        microscopy_fields(section)


def test_tiff_stack_over_http_equals_local(samples: Served, tmp_path: Path) -> None:
    stack = np.stack([tifffile.imread(SAMPLES / "examplehuman" / f"AS_09125_050116030001_D03f00d{k}.tif")
                      for k in range(3)])  # fmt: skip
    tifffile.imwrite(tmp_path / "stack.tif", stack, compression="zlib", tile=(128, 128),
                     photometric="minisblack", metadata={"axes": "CYX"})
    with serve(tmp_path) as served:
        (field,) = stack_fields([f"{served.url}/stack.tif"], channels=FLY)
        (local,) = stack_fields([tmp_path / "stack.tif"], channels=FLY)
        _same(field.read(Window(100, 130, 200, 150)), local.read(Window(100, 130, 200, 150)))


def test_missing_or_unreachable_urls_are_named(samples: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(remote, "HTTP_RETRY_DELAY", 0.01)
    missing = f"{samples.url}/multispectral/nope.tif"
    with pytest.raises(RasterReadError, match=f"cannot open raster {missing}"):
        RasterScene.from_file(missing)
    with pytest.raises(FileNotFoundError, match=f"no Zarr array or group at {samples.url}/nope.zarr"):
        zarr_fields(f"{samples.url}/nope.zarr", channels=FLY)
    manifest, _ = _fly_manifest(f"{samples.url}/gone", tmp_path)
    field = load_data_fields(manifest)[0]  # not checked when listed: that would be a request per file
    with pytest.raises(FileNotFoundError, match=f"{samples.url}/gone/01_POS002_D.TIF"):
        field.pixels()
    with serve(tmp_path) as closed:
        url = f"{closed.url}/load_data.csv"
    with pytest.raises(RasterReadError, match=f"cannot open raster {closed.url}/scene.tif"):
        RasterScene.from_file(f"{closed.url}/scene.tif")
    # fsspec reports an unreachable host as FileNotFoundError(url): the reason was lost
    with pytest.raises(OSError, match=rf"{url}: Cannot connect to host .* \({remote.HTTP_MAX_RETRY + 1} tries\)"):
        load_data_fields(url)


def test_unavailable_servers_are_retried_then_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # GDAL retries 429/5xx (GDAL_HTTP_MAX_RETRY); the fsspec readers once raised aiohttp's ClientResponseError at
    # the first 503, which is no OSError: on_error="skip" and the DataLoader's skipping let it through.
    monkeypatch.setattr(remote, "HTTP_RETRY_DELAY", 0.01)  # the back-off, not the server, would set the pace
    for name, shape in (("flaky_a.tif", (8, 8)), ("down_b.tif", (8, 8)), ("flaky_stack.tif", (2, 8, 8)),
                        ("down_stack.tif", (2, 8, 8))):  # fmt: skip
        tifffile.imwrite(tmp_path / name, np.ones(shape, np.uint16), compression="zlib", metadata={"axes": "CYX"})
    with open(tmp_path / "flaky_manifest.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([("FileName_DNA", "PathName_DNA"), ("flaky_a.tif", "."), ("down_b.tif", ".")])
    zarr.create_array(tmp_path / "flaky.zarr", data=np.arange(2 * 16 * 16).reshape(2, 16, 16), chunks=(1, 8, 8))
    with serve(tmp_path, unavailable={"flaky": remote.HTTP_MAX_RETRY, "down": None}) as served:
        flaky, down = load_data_fields(f"{served.url}/flaky_manifest.csv", on_error="skip")
        assert np.unique(flaky.pixels()).tolist() == [1]
        with pytest.raises(OSError, match=rf"{served.url}/down_b.tif.*503"):
            down.pixels()
        with pytest.warns(UserWarning, match=rf"skipped 1 of 2 TIFF stacks: .*{served.url}/down_stack.tif.*503"):
            stacks = [f"{served.url}/flaky_stack.tif", f"{served.url}/down_stack.tif"]
            (stack,) = stack_fields(stacks, on_error="skip", channels=["a", "b"])
        assert np.unique(stack.pixels()).tolist() == [1]
        (field,) = zarr_fields(f"{served.url}/flaky.zarr", channels=["a", "b"])
        np.testing.assert_array_equal(field.pixels(), np.arange(2 * 16 * 16).reshape(2, 16, 16))


def test_dropped_connections_are_retried_then_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A server that hangs up without answering raised aiohttp's ServerDisconnectedError, which is no OSError:
    # it was not retried, and on_error="skip" and the DataLoader's skipping let it end the run.
    monkeypatch.setattr(remote, "HTTP_RETRY_DELAY", 0.01)
    for name in ("cut_a.tif", "gone_b.tif"):
        tifffile.imwrite(tmp_path / name, np.ones((2, 8, 8), np.uint16), metadata={"axes": "CYX"})
    with serve(tmp_path, dropped={"cut": remote.HTTP_MAX_RETRY, "gone": None}) as served:
        with pytest.warns(UserWarning, match=rf"skipped 1 of 2 TIFF stacks: .*{served.url}/gone_b.tif"):
            (stack,) = stack_fields([f"{served.url}/cut_a.tif", f"{served.url}/gone_b.tif"], on_error="skip",
                                    channels=["a", "b"])  # fmt: skip
        assert np.unique(stack.pixels()).tolist() == [1]
        with pytest.raises(OSError, match=rf"{served.url}/gone_b.tif: .*\({remote.HTTP_MAX_RETRY + 1} tries\)"):
            remote.read_bytes(f"{served.url}/gone_b.tif")


def test_missing_optional_packages_name_the_url_and_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    url = "http://127.0.0.1:9/plate.zarr"
    monkeypatch.setitem(sys.modules, "fsspec", None)  # what `import fsspec` sees when absent
    with pytest.raises(MissingDependencyError, match=rf"{url} needs the optional package fsspec "
                       r"\(pip install 'domainmae\[remote\]'\)"):  # fmt: skip
        zarr_fields(url, channels=FLY)
    monkeypatch.undo()
    import fsspec

    def no_filesystem(scheme: str) -> None:
        raise ImportError(f"Install s3fs to access {scheme}")

    monkeypatch.setattr(fsspec, "get_filesystem_class", no_filesystem)
    with pytest.raises(MissingDependencyError, match="s3://bucket/m.csv needs the optional package s3fs"):
        load_data_fields("s3://bucket/m.csv")


def test_inspect_reads_urls_with_a_recipe(samples: Served) -> None:
    data = load_recipe("multispectral").data
    url = f"{samples.url}/multispectral/{STACKS[0].name}"
    remote_report, local_report = inspect_path(url, data, samples=1), inspect_path(STACKS[0], data, samples=1)
    assert render_report(remote_report).replace(url, str(STACKS[0])) == render_report(local_report)
    manifest = f"{samples.url}/examplefly/load_data.csv"
    fly = load_recipe("cellpainting", ["data.channels=[DNA,PH3,Actin]"]).data
    assert inspect_path(manifest, fly, samples=1).groups[0].channels[0].dtype == "uint8"
    with pytest.raises(ValueError, match="is a URL: name its layout with a recipe"):
        inspect_path(url)
