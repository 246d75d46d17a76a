"""EO scenes beyond BigEarthNet: CRSs without an EPSG code, radiometry per sensor, stacked multi-band rasters."""
from __future__ import annotations

import random

import numpy as np
import pytest
import rasterio.io
from rasterio.crs import CRS

from domainmae.data.geo import RasterWindowReader
from domainmae.data.multisensor import MultiSensorScene
from domainmae.data.raster import BandSource, RasterScene

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
        reader = RasterWindowReader(scene, 16, windows_per_read=4)
        samples = list(reader.random(12, random.Random(0))) + list(reader.grid())
        assert len(samples) == 28 and CRS.from_user_input(samples[-1]["meta"]["crs"]) == CUSTOM_CRS
        assert CountingCRS.calls == 1, f"{CountingCRS.calls} CRS descriptions for {len(samples)} windows of one scene"
