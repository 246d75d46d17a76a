"""Export of fields that hold different subsets of the channel vocabulary (``data.allow_channel_subsets``),
on the real ExampleFly images: each field is embedded with the channels it has, recorded per row."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch

from domainmae.data.transforms import self_standardize
from domainmae.export.embed import embed
from domainmae.export.stream import Export
from domainmae.train import load_checkpoint, pretrain

from .test_channel_subsets import FLY, _fly_manifest

FILES = {"DNA": "D", "PH3": "F", "Actin": "R"}  # ExampleFly file suffix of each channel
TILE = 64  # the demo recipe's crop size


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    """Three fields, the middle one without Actin, and a model trained 2 steps on them (one field per step)."""
    root = tmp_path_factory.mktemp("subsets")
    manifest = _fly_manifest(root / "mixed.csv", 3, drop_actin={1})
    overrides = [f"data.path={manifest}", "data.allow_channel_subsets=true", "data.crops_per_read=4",
                 "train.batch_size=4", "train.micro_batch=4", "train.checkpoint_every=100"]  # fmt: skip
    path = pretrain("cellpainting", output=root / "run", max_steps=2, overrides=overrides, quiet=True)
    model, _ = load_checkpoint(path)
    return {"run": path, "model": model.eval()}


def _tile(site: str, channels: list[str], row: int, col: int) -> torch.Tensor:
    """One grid tile of an ExampleFly field, normalised as in training: ``[1, C, 64, 64]``."""
    image = np.stack([tifffile.imread(FLY / f"01_{site}_{FILES[c]}.TIF") for c in channels]).astype(np.float32)
    return self_standardize(torch.from_numpy(image[:, row : row + TILE, col : col + TILE]))[None]


def test_each_field_is_embedded_with_its_own_channels(run, tmp_path, monkeypatch):
    batches: list[set[tuple[str, ...]]] = []
    forward = Export.forward

    def spy(self, samples, pool):
        batches.append({tuple(s["channels"]) for s in samples})
        return forward(self, samples, pool)

    monkeypatch.setattr(Export, "forward", spy)
    out = embed(run["run"], output=tmp_path / "emb.parquet", batch_size=100, progress=False)
    assert all(len(channels) == 1 for channels in batches)  # no batch mixes channel sets
    df = pd.read_parquet(out)
    fields = list(pd.unique(df.Metadata_Image))
    assert len(fields) == 3 and len(df) == 3 * 256  # 1006 x 1000 px -> 16 x 16 tiles of 64 px per field
    per_field = df.groupby("Metadata_Image", sort=False).Metadata_Channels.unique()
    assert [list(v) for v in per_field] == [["DNA,PH3,Actin"], ["DNA,PH3"], ["DNA,PH3,Actin"]]
    features = [c for c in df.columns if c.startswith("emb_")]
    for field in fields:
        rows = df[df.Metadata_Image == field]
        site, channels = rows.Metadata_Site.iloc[0], rows.Metadata_Channels.iloc[0].split(",")
        for r, c in [(0, 0), (512, 320)]:
            row = rows[(rows.Metadata_TileRow == r) & (rows.Metadata_TileCol == c)]
            with torch.no_grad():
                expected = run["model"].embed(_tile(site, channels, r, c), channels)
            np.testing.assert_allclose(row[features].to_numpy(), expected.numpy(), rtol=1e-4, atol=1e-5)


def test_requested_channels_are_those_of_each_fields_channels(run, tmp_path):
    anndata = pytest.importorskip("anndata")  # the optional [h5ad] extra

    out = embed(run["run"], output=tmp_path / "emb.h5ad", channels=["Actin", "PH3"], level="image", progress=False)
    assert list(anndata.read_h5ad(out).obs.Metadata_Channels) == ["Actin,PH3", "PH3", "Actin,PH3"]
    refused = r"field row 2 of .*mixed.csv has channels \['DNA', 'PH3'\], none of the chosen \['Actin'\]"
    with pytest.raises(ValueError, match=refused):
        embed(run["run"], output=tmp_path / "actin.parquet", channels=["Actin"], progress=False)
    assert not (tmp_path / "actin.parquet").exists()
