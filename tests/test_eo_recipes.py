"""EO recipes end to end on the bundled samples: band subsets, with and without S1, pretrain then embed."""
from __future__ import annotations

import geopandas as gpd
import pytest
from PIL import Image

import domainmae
from domainmae.train import load_checkpoint, pretrain, reconstruct

pytestmark = pytest.mark.slow
SHORT = ["train.max_steps=2", "train.log_every=1", "train.checkpoint_every=2", "data.crop_size=32",
         "train.batch_size=4", "data.crops_per_read=2"]  # fmt: skip


@pytest.mark.parametrize(
    "sensors",
    [
        "data.sensors.s2=[B02,B03,B04]",  # S1 stays, from the recipe
        "data.sensors={s2: [B02, B03, B04]}",  # S2 alone
    ],
    ids=["s2-subset+s1", "s2-subset"],
)
def test_sentinel_band_subset_trains_and_embeds(tmp_path, sensors):
    run = pretrain("sentinel", output=tmp_path / "run", overrides=[*SHORT, sensors], quiet=True)
    recipe = load_checkpoint(run)[1]["recipe"]
    assert list(recipe["data"]["band_stats"]["s2"]) == ["B02", "B03", "B04"]
    # The six samples lie in three UTM zones: one GeoParquet geometry column needs one CRS.
    out = domainmae.embed(run, output=tmp_path / "emb.parquet", crs="EPSG:4326", progress=False)
    table = gpd.read_parquet(out)
    assert len(table) >= 6 and table.geometry.notna().all() and table.crs.to_epsg() == 4326
    assert ("s1" in recipe["data"]["sensors"]) == ("{" not in sensors)


def test_multispectral_demo_trains_on_a_stacked_geotiff_with_bands_named_by_descriptions(tmp_path):
    run = pretrain("multispectral", output=tmp_path / "run", overrides=SHORT, quiet=True)
    recipe = load_checkpoint(run)[1]["recipe"]
    assert list(recipe["data"]["sensors"]) == ["optical"]
    assert list(recipe["data"]["band_stats"]["optical"]) == ["blue", "green", "red", "nir"]
    assert 0.0 < recipe["data"]["band_stats"]["optical"]["red"]["mean"] < 0.5  # reflectance: the demo scales DN
    table = gpd.read_parquet(domainmae.embed(run, output=tmp_path / "emb.parquet", progress=False))
    assert len(table) >= 3 and table.crs.to_epsg() == 32629
    # One sensor named "optical": reconstruct drew nothing (it filed the batch's channels under "image").
    for visible in (None, ["blue", "green", "red"]):
        png = reconstruct(run, output=tmp_path / f"{visible is None}.png", visible_channels=visible, baseline="linear")
        with Image.open(png) as image:
            assert image.format == "PNG" and image.width > 100
