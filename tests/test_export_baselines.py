"""Baseline features: ``embed(features="raw"|"random")``: the model's rows, other features; ``embed_baselines``
embeds them for the rows of an embeddings file, from its provenance."""
import json

import numpy as np
import pandas as pd
import pytest
import rasterio
import torch

import domainmae
from domainmae.export import read_embeddings
from domainmae.export.embed import embed, embed_baselines
from domainmae.export.raw import channel_stats, with_invalid_as_nan
from domainmae.export.writers.tables import write_embeddings
from tests import test_export_geo, test_export_tables
from tests.test_export_geo import BANDS, PATCH, WINDOW
from tests.test_export_tables import CHANNELS, _tiles

plate, scene = test_export_tables.plate, test_export_geo.scene  # their module fixtures, shared

STATS = 7  # mean, std, p5, p25, p50, p75, p95


def _stats(tile: np.ndarray) -> np.ndarray:
    """Per-channel statistics of one tile ``[C, H, W]`` -> ``[C * 7]``, channel by channel."""
    flat = tile.reshape(tile.shape[0], -1).astype(np.float64)
    return np.concatenate([[c.mean(), c.std(), *np.percentile(c, [5, 25, 50, 75, 95])] for c in flat])


def _meta(df: pd.DataFrame) -> pd.DataFrame:
    return df[[c for c in df.columns if not c.startswith("emb_")]]


def test_raw_features_are_per_channel_stats_of_the_normalised_tiles_on_the_model_rows(plate, tmp_path):
    model = embed(plate["run"], output=tmp_path / "model.parquet", progress=False)
    raw = embed(plate["run"], output=tmp_path / "raw.parquet", features="raw", batch_size=5, progress=False)
    df, features, provenance = read_embeddings(raw)
    assert len(features) == len(CHANNELS) * STATS and provenance["features"] == "raw"
    assert provenance["feature_names"][:3] == ["DNA:mean", "DNA:std", "DNA:p5"]
    pd.testing.assert_frame_equal(_meta(df), _meta(read_embeddings(model)[0]))
    rows = df[(df.Metadata_Plate == "P1") & (df.Metadata_Well == "B02")]
    expected = np.stack([_stats(t.numpy()) for t in _tiles(plate["root"], "P1", "B02")])
    np.testing.assert_allclose(rows[features].to_numpy(), expected, rtol=1e-5, atol=1e-5)


def test_random_init_is_reproducible_and_differs_from_the_trained_model(plate, tmp_path):
    # The fixture's "trained" model is itself an untrained init from seed 0, so draw from another seed.
    first = embed(plate["run"], output=tmp_path / "r1.parquet", features="random", seed=7, progress=False)
    again = embed(plate["run"], output=tmp_path / "r2.parquet", features="random", seed=7, progress=False)
    trained = embed(plate["run"], output=tmp_path / "model.parquet", progress=False)
    (a, features, provenance), (b, _, _) = read_embeddings(first), read_embeddings(again)
    assert provenance["features"] == "random" and provenance["seed"] == 7
    np.testing.assert_array_equal(a[features].to_numpy(), b[features].to_numpy())
    assert not np.allclose(a[features].to_numpy(), read_embeddings(trained)[0][features].to_numpy(), atol=1e-3)
    torch.manual_seed(7)
    fresh = domainmae.create_model(plate["model"].config).eval()
    rows = a[(a.Metadata_Plate == "P2") & (a.Metadata_Well == "A01")]
    with torch.no_grad():
        expected = fresh.embed(_tiles(plate["root"], "P2", "A01"), CHANNELS)
    np.testing.assert_allclose(rows[features].to_numpy(), expected.numpy(), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="features must be"):
        embed(plate["run"], output=tmp_path / "x.parquet", features="pixels", progress=False)


def test_embed_baselines_writes_them_for_the_rows_of_a_file(plate, tmp_path):
    path = embed(plate["run"], output=tmp_path / "emb.parquet", progress=False)
    files = embed_baselines(path, ["raw", "random"], tmp_path / "baselines", seed=3)
    assert list(files) == ["raw", "random"] and all(f.parent == tmp_path / "baselines" for f in files.values())
    model, features, source = read_embeddings(path)
    for name, file in files.items():
        df, _, provenance = read_embeddings(file)
        assert provenance["features"] == name and provenance["checkpoint_sha256"] == source["checkpoint_sha256"]
        pd.testing.assert_frame_equal(_meta(df), _meta(model))  # the same rows, in the same order
    assert read_embeddings(files["random"])[2]["seed"] == 3
    with pytest.raises(ValueError, match="baselines must be 'raw' and/or 'random', got \\['pixels'\\]"):
        embed_baselines(path, ["raw", "pixels"], tmp_path / "other")
    bare = write_embeddings(tmp_path / "bare.parquet", model, features, {})
    with pytest.raises(ValueError, match="no 'checkpoint' in its provenance, so its baselines cannot be embedded"):
        embed_baselines(bare, ["raw"], tmp_path / "other")


def test_raw_raster_holds_each_patchs_channel_stats(scene, tmp_path):
    out = embed(scene["ckpt"], output=tmp_path / "raw.tif", stride=WINDOW, features="raw", progress=False)
    with rasterio.open(out) as raster:
        assert raster.count == len(BANDS) * STATS and json.loads(raster.tags()["domainmae"])["features"] == "raw"
        values = raster.read()
    image = scene["image"].numpy()
    for row, col in [(0, 0), (5, 9), (7, 11)]:  # patch-grid positions
        patch = image[:, row * PATCH : (row + 1) * PATCH, col * PATCH : (col + 1) * PATCH]
        np.testing.assert_allclose(values[:, row, col], _stats(patch), rtol=1e-4, atol=1e-5)


def test_invalid_pixels_are_left_out_of_the_stats_and_an_empty_channel_is_zeros():
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.normal(size=(2, 3, 8, 8)).astype(np.float32))
    valid = torch.from_numpy(rng.random((2, 3, 8, 8)) > 0.3)
    valid[1, 2] = False  # a channel with no valid pixel
    batch = with_invalid_as_nan({"images": images, "valid": valid, "channels": ("a", "b", "c")})
    got = channel_stats(batch["images"], None).reshape(2, 3, STATS)
    for b in range(2):
        for c in range(3):
            kept = images[b, c][valid[b, c]].numpy()
            expected = _stats(kept[None, :, None]) if kept.size else np.zeros(STATS)
            np.testing.assert_allclose(got[b, c], expected, rtol=1e-5, atol=1e-6)
