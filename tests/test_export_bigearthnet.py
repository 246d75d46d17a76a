"""EO export on the bundled BigEarthNet S1+S2 patches, whose scenes lie in three UTM zones (EPSG:32629/32633/32635)."""
from __future__ import annotations

import logging
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from rasterio.warp import transform_bounds
from rasterio.windows import Window
from rasterio.windows import bounds as window_bounds

from domainmae.export import profile, read_embeddings
from domainmae.export.embed import embed
from domainmae.train import pretrain

from .conftest import SAMPLES

S2_ROOT = SAMPLES / "bigearthnet-mm" / "BigEarthNet-S2-Example"
TINY_SENTINEL = ["data.crop_size=48", "data.crops_per_read=4", "model.embed_dim=32", "model.depth=1",
                 "model.num_heads=2", "model.decoder_embed_dim=16", "model.decoder_depth=1",
                 "model.decoder_num_heads=2", "train.batch_size=4", "train.micro_batch=null",
                 "train.checkpoint_every=100"]  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A tiny S2+S1 model trained one step on the six sample patches (48 px windows: 3 x 3 per 120 px patch)."""
    return pretrain("sentinel", output=tmp_path_factory.mktemp("ben") / "run", max_steps=1, overrides=TINY_SENTINEL,
                    quiet=True)  # fmt: skip


def _true_centroid(scene_id: str, window: Window | None, crs: str) -> shapely.Point:
    """Centre of a window's (or the whole patch's) bounds, from the S2 B02 file's own transform, in ``crs``."""
    s2 = scene_id.split("+")[0]
    with rasterio.open(S2_ROOT / s2 / f"{s2}_B02.tif") as src:
        bounds = src.bounds if window is None else window_bounds(window, src.transform)
        return shapely.box(*transform_bounds(src.crs, crs, *bounds)).centroid


@pytest.mark.parametrize("level", ["tile", "image"])
def test_footprints_are_projected_from_each_scenes_own_crs(run, tmp_path, level):
    # Batches of 8 windows straddle scenes in different UTM zones; one batch of 64 holds every scene's windows.
    batch_size = 8 if level == "tile" else 64
    out = embed(run, output=tmp_path / "chips.parquet", crs="EPSG:4326", level=level, batch_size=batch_size,
                progress=False)  # fmt: skip
    chips = gpd.read_parquet(out)
    assert chips.crs.to_epsg() == 4326 and len(chips) == (6 * 9 if level == "tile" else 6)
    assert chips.scene_id.nunique() == 6
    # Reader bookkeeping (e.g. how many windows a scene tiles into) is not a column.
    assert not [c for c in chips.columns if c.startswith("grid")]
    for chip in chips.itertuples():
        window = Window(chip.window_col, chip.window_row, chip.window_width, chip.window_height)
        centre = _true_centroid(chip.scene_id, window if level == "tile" else None, "EPSG:4326")
        assert chip.geometry.contains(centre), (chip.scene_id, chip.window_row, chip.window_col)


def test_scenes_in_several_crss_need_a_target_crs(run, tmp_path):
    with pytest.raises(ValueError, match=r"EPSG:32629.*EPSG:32633.*EPSG:32635.*--crs"):
        embed(run, output=tmp_path / "chips.parquet", progress=False)
    assert not list(tmp_path.iterdir())


def test_profile_of_chips_keeps_footprints_when_rows_stay_and_aggregates_list_columns(run, tmp_path, caplog):
    chips = embed(run, output=tmp_path / "chips.parquet", crs="EPSG:4326", progress=False)
    normalised = gpd.read_parquet(profile(chips, tmp_path / "norm.parquet", normalization="center_scale"))
    source = gpd.read_parquet(chips)
    assert normalised.crs.to_epsg() == 4326 and normalised.geometry.geom_equals_exact(source.geometry, 0).all()
    assert np.allclose(np.stack(normalised["embedding"]).mean(axis=0), 0, atol=1e-5)
    # Per scene: the list columns (sensors, labels) counted per group, not a TypeError; footprints not merged.
    with caplog.at_level(logging.WARNING, logger="domainmae.export.profile"):
        scenes, _, _ = read_embeddings(profile(chips, tmp_path / "scenes.parquet", strata=["scene_id"]))
    assert len(scenes) == source["scene_id"].nunique() == 6 and "geometry" not in scenes
    assert [list(v) for v in scenes["labels"]] == [list(source.loc[source.scene_id == s, "labels"].iloc[0])
                                                   for s in scenes["scene_id"]]  # fmt: skip
    assert "footprints are not aggregated" in caplog.text
