"""Sentinel-2 L2A ``.SAFE`` products as ESA ships them: one scene per product, each band from its finest copy.

The products are written here in the real folder structure with real JPEG 2000 band files (GDAL's JP2OpenJPEG
driver, lossless), tiny: 12x12 px at 10 m, 6x6 at 20 m, 2x2 at 60 m.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from domainmae.data.bigearthnet import SENTINEL2_BANDS
from domainmae.data.detect import detect
from domainmae.data.radiometry import Radiometry
from domainmae.data.safe import safe_scenes
from domainmae.data.samplers import Window
from domainmae.pipeline import sentinel_scenes
from domainmae.recipes import load_recipe

PRODUCT = "S2A_MSIL2A_20230601T101559_N0509_R065_T32TQM_20230601T150000"
GRANULE = "L2A_T32TQM_A012345_20230601T101559"
ORIGIN = (699960.0, 4900020.0)  # the upper-left corner of MGRS tile 32TQM
SIZE_10M = 12
#: What each resolution folder of a real L2A product holds (TCI is 3-band 8-bit; AOT/WVP are not reflectance).
FOLDERS = {
    10: ("AOT", "B02", "B03", "B04", "B08", "TCI", "WVP"),
    20: ("AOT", "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B11", "B12", "B8A", "SCL", "TCI", "WVP"),
    60: ("AOT", "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B09", "B11", "B12", "B8A", "SCL", "TCI", "WVP"),
}
MTD_BANDS = 13  # BOA_ADD_OFFSET band_id 0..12: B01..B08, B8A, B09, B10, B11, B12


def dn(band: str, res: int) -> np.ndarray:
    """DN of ``band`` at ``res`` m: 10 m copies a ramp from 1100, coarser ones a flat 3000 + 10 * res."""
    side = SIZE_10M * 10 // res
    if res == 10:
        return (1100 + np.arange(side * side)).reshape(1, side, side).astype(np.uint16)
    return np.full((1, side, side), 3000 + 10 * res, np.uint16)


def reflectance(band: str, offset: int, res: int = 10) -> np.ndarray:
    """``(DN + offset) / 10000`` of ``band``'s copy at ``res`` m, ``[H, W]``."""
    return (dn(band, res)[0].astype(np.float64) + offset) / 10000


def mtd_xml(baseline: str | None = "05.09", offsets: list[str] | None = None, quantification: str = "10000") -> str:
    """``MTD_MSIL2A.xml`` as ESA writes it (abridged): namespaced root, unqualified children."""
    offsets = ["-1000"] * MTD_BANDS if offsets is None else offsets
    baseline_line = "" if baseline is None else f"<PROCESSING_BASELINE>{baseline}</PROCESSING_BASELINE>"
    offset_lines = "".join(f'<BOA_ADD_OFFSET band_id="{i}">{v}</BOA_ADD_OFFSET>' for i, v in enumerate(offsets))
    return f"""<?xml version="1.0" encoding="UTF-8" standalone="no"?>
<n1:Level-2A_User_Product xmlns:n1="https://psd-14.sentinel2.eo.esa.int/PSD/User_Product_Level-2A.xsd">
<n1:General_Info><Product_Info><PROCESSING_LEVEL>Level-2A</PROCESSING_LEVEL>{baseline_line}</Product_Info>
<Product_Image_Characteristics><QUANTIFICATION_VALUES_LIST>
<BOA_QUANTIFICATION_VALUE unit="none">{quantification}</BOA_QUANTIFICATION_VALUE>
<AOT_QUANTIFICATION_VALUE unit="none">1000.0</AOT_QUANTIFICATION_VALUE>
</QUANTIFICATION_VALUES_LIST>
<BOA_ADD_OFFSET_VALUES_LIST>{offset_lines}</BOA_ADD_OFFSET_VALUES_LIST>
</Product_Image_Characteristics></n1:General_Info>
</n1:Level-2A_User_Product>
"""


def write_safe(parent: Path, name: str = PRODUCT, mtd: str | None = mtd_xml(), granules: tuple[str, ...] = (GRANULE,),
               folders: dict[int, tuple[str, ...]] = FOLDERS) -> Path:  # fmt: skip
    """An unpacked L2A product ``parent/<name>`` (``mtd`` None: without ``MTD_MSIL2A.xml``)."""
    product = parent / name
    tile, sensed = name.split("_")[5], name.split("_")[2]
    for granule in granules:
        for res, bands in folders.items():
            folder = product / "GRANULE" / granule / "IMG_DATA" / f"R{res}m"
            folder.mkdir(parents=True)
            for band in bands:
                data = np.zeros((3, *dn(band, res).shape[1:]), np.uint8) if band == "TCI" else dn(band, res)
                profile = dict(driver="JP2OpenJPEG", count=len(data), height=data.shape[1], width=data.shape[2],
                               dtype=data.dtype.name, crs="EPSG:32632", QUALITY=100, REVERSIBLE="YES",
                               transform=Affine.translation(*ORIGIN) @ Affine.scale(res, -res))  # fmt: skip
                with rasterio.open(folder / f"{tile}_{sensed}_{band}_{res}m.jp2", "w", **profile) as dst:
                    dst.write(data)
    (product / "manifest.safe").write_text("<xfdu:XFDU/>")
    if mtd is not None:
        (product / "MTD_MSIL2A.xml").write_text(mtd)
    return product


def read_all(scene) -> np.ndarray:
    return scene.read(Window(0, 0, SIZE_10M, SIZE_10M)).image


def test_a_product_is_one_scene_of_the_twelve_l2a_bands_each_from_its_finest_copy(tmp_path):
    product = write_safe(tmp_path, f"{PRODUCT}.SAFE")
    (scene,) = safe_scenes(product)
    assert scene.scene_id == PRODUCT and scene.datetime.isoformat() == "2023-06-01T10:15:59+00:00"
    assert scene.channels == SENTINEL2_BANDS  # ESA order, B8A after B08, no B10; AOT/WVP/TCI/SCL only on request
    finest = {band.name: band.path.relative_to(product / "GRANULE" / GRANULE / "IMG_DATA") for band in scene.bands}
    assert finest["B02"] == Path("R10m/T32TQM_20230601T101559_B02_10m.jp2")
    assert finest["B05"] == Path("R20m/T32TQM_20230601T101559_B05_20m.jp2")
    assert finest["B01"] == Path("R20m/T32TQM_20230601T101559_B01_20m.jp2")  # a real L2A has B01 at 20 m too
    assert finest["B09"] == Path("R60m/T32TQM_20230601T101559_B09_60m.jp2")
    assert {str(path.parent) for path in finest.values()} == {"R10m", "R20m", "R60m"}
    (masked,) = safe_scenes(product, bands=["B04", "SCL"], invalid_classes={"SCL": (0,)})
    assert masked.channels == ("B04",) and masked.bands[1].path.parent.name == "R20m"
    assert scene.grid.width == SIZE_10M and read_all(scene).shape == (12, SIZE_10M, SIZE_10M)


def test_mtd_offset_and_quantification_turn_dn_into_reflectance(tmp_path):
    (scene,) = safe_scenes(write_safe(tmp_path, f"{PRODUCT}.SAFE"), radiometry=Radiometry())
    image = read_all(scene)  # no scale or offset configured: both come from MTD_MSIL2A.xml
    np.testing.assert_allclose(image[SENTINEL2_BANDS.index("B02")], reflectance("B02", -1000), atol=1e-6)
    np.testing.assert_allclose(image[SENTINEL2_BANDS.index("B05")], reflectance("B05", -1000, res=20)[0, 0], atol=1e-6)


def test_an_offset_stated_in_the_mtd_wins_over_the_baseline_table(tmp_path):
    offsets = ["-1000"] * MTD_BANDS
    offsets[1] = "-500"  # band_id 1 is B02
    (scene,) = safe_scenes(write_safe(tmp_path, f"{PRODUCT}.SAFE", mtd_xml(offsets=offsets)))
    image = read_all(scene)
    np.testing.assert_allclose(image[SENTINEL2_BANDS.index("B02")], reflectance("B02", -500), atol=1e-6)
    np.testing.assert_allclose(image[SENTINEL2_BANDS.index("B03")], reflectance("B03", -1000), atol=1e-6)
    # Stated offsets hold whatever baseline the MTD or the name gives (the table says 0 before 04.00).
    (old,) = safe_scenes(write_safe(tmp_path, PRODUCT.replace("N0509", "N0300"), mtd_xml(baseline="03.00")))
    np.testing.assert_allclose(read_all(old)[SENTINEL2_BANDS.index("B03")], image[SENTINEL2_BANDS.index("B03")])


@pytest.mark.parametrize(
    ("name", "mtd", "offset"),
    [
        (PRODUCT + ".SAFE", mtd_xml(baseline=None, offsets=[]), -1000),  # MTD without baseline or offsets: the name's
        (PRODUCT + ".SAFE", None, -1000),  # no MTD: the baseline in the name, N0509
        (PRODUCT.replace("N0509", "N0300") + ".SAFE", None, 0),  # before baseline 04.00: no offset
        (PRODUCT + ".SAFE", mtd_xml(baseline="03.00", offsets=[]), 0),  # the MTD's baseline wins over the name's
    ],
    ids=["mtd-without-baseline", "no-mtd", "no-mtd-old-baseline", "mtd-baseline-over-name"],
)
def test_without_stated_offsets_the_baseline_decides(tmp_path, name, mtd, offset):
    (scene,) = safe_scenes(write_safe(tmp_path, name, mtd))
    np.testing.assert_allclose(read_all(scene)[SENTINEL2_BANDS.index("B02")], reflectance("B02", offset), atol=1e-6)


def test_a_folder_of_products_is_a_scene_each_for_the_scene_recipe_and_for_detection(tmp_path):
    second = PRODUCT.replace("20230601T101559", "20230611T101559").replace("S2A", "S2B")
    write_safe(tmp_path / "archive" / "2023-06", f"{PRODUCT}.SAFE")
    write_safe(tmp_path / "archive", second)  # not named .SAFE: a product by its MTD_MSIL2A.xml
    recipe = load_recipe("sentinel", [f"data.path={tmp_path / 'archive'}", "data.format=scene",
                                      "data.sensors={s2: [B02, B05, B8A]}"])  # fmt: skip
    scenes = sentinel_scenes(recipe.data)
    assert sorted(s.scene_id for s in scenes) == sorted([PRODUCT, second])
    assert all(s.channels == ("B02", "B05", "B8A") and s.radiometry.scale == 1e-4 for s in scenes)
    np.testing.assert_allclose(read_all(scenes[0])[1], reflectance("B05", -1000, res=20)[0, 0], atol=1e-6)
    found = detect(tmp_path / "archive")
    assert "SAFE" in found.layout and found.reader == "domainmae.data.safe_scenes"
    assert [len(group) for group in found.items.values()] == [2]
    assert found.items["scenes"][0].channels == SENTINEL2_BANDS


def test_a_product_of_several_granules_names_each_scene_by_its_granule(tmp_path):
    other = GRANULE.replace("T32TQM", "T32TQL")
    product = write_safe(tmp_path, f"{PRODUCT}.SAFE", granules=(GRANULE, other), folders={10: ("B02",)})
    scenes = safe_scenes(product, bands=["B02"])
    assert sorted(s.scene_id for s in scenes) == sorted([f"{PRODUCT}_{GRANULE}", f"{PRODUCT}_{other}"])


@pytest.mark.parametrize(
    ("mtd", "message"),
    [
        (mtd_xml()[:-40], r"MTD_MSIL2A.xml is not valid XML"),
        (mtd_xml(baseline="5.9.1"), r"MTD_MSIL2A.xml.*processing baseline '5.9.1'"),
        (mtd_xml(offsets=["-1000"] * 12 + ["minus"]), r"MTD_MSIL2A.xml.*BOA_ADD_OFFSET band_id='12'.*'minus'"),
        (mtd_xml(offsets=["-1000"] * 14), r"MTD_MSIL2A.xml.*BOA_ADD_OFFSET band_id='13'"),
        (mtd_xml(quantification="0"), r"MTD_MSIL2A.xml.*BOA_QUANTIFICATION_VALUE '0'"),
    ],
    ids=["truncated", "baseline", "offset", "band-id", "quantification"],
)
def test_a_malformed_mtd_is_an_error_naming_the_file(tmp_path, mtd, message):
    product = write_safe(tmp_path, f"{PRODUCT}.SAFE", mtd, folders={10: ("B02",)})
    with pytest.raises(ValueError, match=message):
        safe_scenes(tmp_path, bands=["B02"])
    with pytest.warns(UserWarning, match=rf"skipped 1 of 1 .*{product.name}"):
        assert safe_scenes(tmp_path, bands=["B02"], on_error="skip") == []
