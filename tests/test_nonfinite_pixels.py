"""NaN/inf pixels (the nodata of float TIFFs and rasters) are invalid pixels: left out of statistics and of
the loss, filled before they reach the encoder, and training on data holding them stays finite."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from domainmae.data.loader import collate_samples
from domainmae.data.stats import band_statistics
from domainmae.models.losses import reconstruction_loss
from domainmae.train import pretrain
from domainmae.train.logging import read_metrics

from .conftest import SAMPLES

CHANNELS = {"DNA": "D", "PH3": "F", "Actin": "R"}


def _float_manifest(folder: Path, poisoned: int = 0) -> Path:
    """A load_data CSV of two 96x96 float32 ExampleFly fields; field ``poisoned`` has a NaN block in DNA
    and an inf pixel in Actin, both where every 64 px crop sees them."""
    rows = []
    for index, site in enumerate(("POS002", "POS076")):
        row = {"Metadata_Plate": "ExampleFly", "Metadata_Site": site}
        for name, letter in CHANNELS.items():
            plane = tifffile.imread(SAMPLES / "examplefly" / f"01_{site}_{letter}.TIF")[:96, :96].astype(np.float32)
            if index == poisoned and name == "DNA":
                plane[30:66, 30:66] = np.nan
            if index == poisoned and name == "Actin":
                plane[48, 48] = np.inf
            tifffile.imwrite(folder / f"{site}_{letter}.tif", plane)
            row |= {f"FileName_Orig{name}": f"{site}_{letter}.tif", f"PathName_Orig{name}": "."}
        rows.append(row)
    manifest = folder / "load_data.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return manifest


@pytest.mark.slow
@pytest.mark.parametrize("normalize", ["standardize", "percentile"])
def test_demo_recipe_trains_with_finite_losses_on_a_field_with_nan_and_inf(tmp_path: Path, normalize: str) -> None:
    manifest = _float_manifest(tmp_path)
    # Two fields of 8 crops each per step: the poisoned field is in every batch.
    overrides = [f"data.path={manifest}", f"data.normalize={normalize}", "train.batch_size=16",
                 "train.log_every=1", "train.max_bad_steps=1"]  # fmt: skip
    run = pretrain("cellpainting", output=tmp_path / "run", max_steps=3, overrides=overrides, quiet=True)
    losses = [record["loss"] for record in read_metrics(run / "metrics.jsonl")]
    assert len(losses) == 3 and np.isfinite(losses).all()


def test_loss_ignores_the_values_of_invalid_pixels_even_nan() -> None:
    torch.manual_seed(0)
    pred, target = torch.randn(2, 4, 12), torch.randn(2, 4, 12)
    mask = torch.ones(2, 4)
    valid = torch.rand(2, 4, 12) > 0.3
    valid[0, 1] = False  # a token without any valid pixel contributes nothing
    losses = []
    for fill in (0.0, 1e6, float("nan"), float("inf")):
        for norm_pix, fourier in ((False, 0.0), (True, 0.01)):
            poisoned = torch.where(valid, target, fill)
            losses.append(reconstruction_loss(pred, poisoned, mask, patch_size=2, valid=valid, norm_pix=norm_pix,
                                              fourier_weight=fourier))  # fmt: skip
    reference = losses[:2]
    for index, loss in enumerate(losses):
        assert torch.isfinite(loss) and torch.allclose(loss, reference[index % 2])


def test_band_statistics_leave_out_nan_and_inf() -> None:
    image = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(2, 4, 4)
    poisoned = image.clone()
    poisoned[0, 0, :2] = float("nan")
    poisoned[1, 3, 3] = float("-inf")
    stats = band_statistics([{"image": poisoned, "channels": ("a", "b")}])
    for c, keep in ((0, ~torch.isnan(poisoned[0])), (1, torch.isfinite(poisoned[1]))):
        values = image[c][keep].double()
        assert stats.count[c] == keep.sum()
        assert stats.mean[c] == pytest.approx(values.mean().item())
        assert stats.std[c] == pytest.approx(values.std(correction=0).item())


def test_collate_combines_per_channel_and_per_pixel_valid_masks() -> None:
    plain = {"image": torch.zeros(2, 4, 4), "channels": ("a", "b")}
    per_pixel = {**plain, "valid": torch.ones(4, 4, dtype=torch.bool)}
    per_channel = {**plain, "valid": torch.ones(2, 4, 4, dtype=torch.bool)}
    per_channel["valid"][1, 0, 0] = False
    batch = collate_samples([plain, per_pixel, per_channel])
    assert batch["valid"].shape == (3, 2, 4, 4)
    assert batch["valid"].sum() == 3 * 2 * 16 - 1 and not batch["valid"][2, 1, 0, 0]
