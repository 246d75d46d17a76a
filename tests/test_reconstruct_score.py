"""Reconstruction scores: the three baselines' arithmetic on hand-made images, and the model and the
baselines scored on the same masked tokens, in the units of the model's own loss."""
import json

import pytest
import torch
from PIL import Image

from domainmae.cli import main
from domainmae.models import MAEConfig, MaskedAutoencoder, masking_from_scores
from domainmae.models.baselines import channel_gram, interpolate_visible, linear_from_channels, mean_of_visible
from domainmae.pipeline import TrainingData
from domainmae.train import pretrain
from domainmae.train.reconstruct import sample_crops, score_reconstruction
from domainmae.train.score import format_scores, score_batch


def _ramp(h: int = 16, w: int = 16) -> torch.Tensor:
    """``[H, W]`` a linear ramp 0.5 * row - 0.25 * col + 3."""
    rows, cols = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    return 0.5 * rows - 0.25 * cols + 3


def _cells(hidden: list[tuple[int, int]], grid: int = 4, p: int = 4) -> torch.Tensor:
    """``[H, W]`` bool visible pixels with the listed patch cells hidden."""
    cells = torch.ones(grid, grid, dtype=torch.bool)
    for i, j in hidden:
        cells[i, j] = False
    return cells.repeat_interleave(p, 0).repeat_interleave(p, 1)


def test_mean_of_visible_is_the_per_channel_mean_of_visible_pixels_and_nan_for_a_hidden_channel():
    images = torch.randn(2, 3, 16, 16)
    visible = torch.stack([_cells([(0, 0), (1, 2), (3, 3)]), _cells([(2, 2)]), torch.zeros(16, 16, dtype=torch.bool)])
    visible = visible.expand(2, -1, -1, -1)
    pred = mean_of_visible(images, visible)
    for b in range(2):
        for c in range(2):
            assert torch.allclose(pred[b, c], images[b, c][visible[b, c]].mean().expand(16, 16))
        assert pred[b, 2].isnan().all()  # nothing of that channel was seen: no prediction, not a guess


def test_interpolation_of_a_linear_ramp_is_exact_in_the_interior():
    ramp = _ramp()
    visible = _cells([(1, 1), (1, 2), (2, 1)])  # interior cells, surrounded by visible ones
    images = torch.stack([ramp, -ramp]).unsqueeze(0)
    pred = interpolate_visible(images, visible.expand(1, 2, -1, -1))
    hidden = ~visible
    assert torch.allclose(pred[0, 0][hidden], ramp[hidden], atol=1e-4)
    assert torch.allclose(pred[0, 1][hidden], -ramp[hidden], atol=1e-4)
    assert torch.equal(pred[0, 0][visible], ramp[visible])  # visible pixels are kept as they are


def test_interpolation_ignores_invalid_pixel_values_and_covers_the_edges():
    ramp = _ramp()
    visible = _cells([(0, 0), (3, 3)])  # corner cells: the border reflects, so not exact there
    images = ramp.clone().expand(1, 1, -1, -1).clone()
    images[0, 0, 0, 8] = float("nan")  # an invalid (nodata) pixel, not visible
    pred = interpolate_visible(images, (visible & images[0, 0].isfinite()).expand(1, 1, -1, -1))
    assert pred.isfinite().all()
    assert (pred[0, 0] - ramp).abs().max() < 3


def test_linear_baseline_recovers_a_channel_that_is_a_linear_function_of_another():
    reference = torch.randn(3, 3, 16, 16)
    reference[:, 1] = 2 * reference[:, 0] - 1  # channel 1 = 2 * channel 0 - 1 (channel 2 is noise)
    gram = channel_gram(reference)
    images = torch.randn(2, 3, 16, 16)
    images[:, 1] = 2 * images[:, 0] - 1
    visible = torch.ones(2, 3, 16, 16, dtype=torch.bool)
    visible[:, 1] = False  # channel 1 hidden entirely: rebuilt from the others, pixel by pixel
    visible[0, 0, :8] = False  # where channel 0 is masked too, channel 2 (noise) alone is a poor predictor
    pred = linear_from_channels(images, visible, gram)
    assert torch.allclose(pred[1, 1], images[1, 1], atol=1e-4)
    assert torch.allclose(pred[0, 1, 8:], images[0, 1, 8:], atol=1e-4)
    assert (pred[0, 1, :8] - images[0, 1, :8]).abs().mean() > 0.5
    assert torch.equal(pred[:, 0][visible[:, 0]], images[:, 0][visible[:, 0]])  # visible pixels kept
    visible[:] = False  # nothing to regress on: the intercept alone, the reference mean of the channel
    assert torch.allclose(linear_from_channels(images, visible, gram)[:, 1], reference[:, 1].mean().expand(2, 16, 16),
                          atol=1e-4)


def _tiny(norm_pix: bool, sensors=None) -> MaskedAutoencoder:
    torch.manual_seed(0)
    tokens = {"sensors": sensors} if sensors else {"channels": ["DNA", "PH3", "Actin"]}
    return MaskedAutoencoder(MAEConfig(img_size=16, patch_size=4, embed_dim=32, depth=1, num_heads=2, decoder_embed_dim=32,
                                       decoder_depth=1, decoder_num_heads=2, norm_pix_loss=norm_pix, **tokens))


@pytest.mark.parametrize("norm_pix", [False, True])
def test_model_mse_is_its_own_loss_on_the_same_masks(norm_pix):
    model = _tiny(norm_pix).eval()
    images = torch.randn(4, 3, 16, 16)
    valid = torch.rand(4, 16, 16) > 0.1
    masking = model.sample_masking(model.split_inputs(images)[0], (4, 4), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model(images, valid=valid, masking=masking)
    scores = score_batch(model, images, None, valid, masking, gram=channel_gram(torch.randn(2, 3, 16, 16)))
    assert scores["units"] == ("norm-pix" if norm_pix else "normalised")
    assert scores["scores"]["model"]["overall"] == pytest.approx(out.loss.item(), rel=1e-5)
    per_channel = scores["scores"]["model"]["sensors"]["image"]["channels"]
    assert set(per_channel) == {"DNA", "PH3", "Actin"}
    for name in ("mean", "interpolation", "linear"):
        assert scores["scores"][name]["overall"] is not None
    if norm_pix:  # a constant patch standardises to 0: the mean baseline predicts 0 for every patch
        assert scores["scores"]["mean"]["overall"] == pytest.approx(_zero_loss(model, images, valid, masking), rel=1e-5)


def _zero_loss(model, images, valid, masking) -> float:
    from domainmae.models.losses import reconstruction_loss

    inp = model.split_inputs(images, None, valid)[0][0]
    target, valid_px = model.targets(inp)
    return reconstruction_loss(torch.zeros_like(target), target, masking.mask, patch_size=4, valid=valid_px,
                               norm_pix=True).item()


def test_hidden_channel_scores_none_for_baselines_that_cannot_see_it():
    model = _tiny(False).eval()
    images = torch.randn(2, 3, 16, 16)
    images[:, 1] = 3 * images[:, 0] + 0.5
    # PH3 hidden, DNA fully visible, one Actin patch masked
    scores_ = torch.cat([torch.zeros(16), 2 * torch.ones(16), torch.zeros(16)]).expand(2, -1).clone()
    scores_[:, 40] = 1
    masking = masking_from_scores(scores_, 31)
    reference = torch.randn(4, 3, 16, 16)
    reference[:, 1] = 3 * reference[:, 0] + 0.5
    scores = score_batch(model, images, None, None, masking, gram=channel_gram(reference))["scores"]
    ph3 = {name: scores[name]["sensors"]["image"]["channels"]["PH3"] for name in ("mean", "interpolation", "linear")}
    assert ph3["mean"] is None and ph3["interpolation"] is None
    assert scores["mean"]["overall"] is None  # it has no prediction for every masked token
    assert ph3["linear"] < 1e-6  # PH3 = 3 DNA + 0.5 and DNA is visible wherever PH3 is hidden


def test_multi_sensor_scores_per_sensor_sum_to_the_model_loss():
    model = _tiny(False, {"s2": [{"name": "B04", "wavelength": 665}, {"name": "B08", "wavelength": 842}],
                          "s1": ["VV", "VH"]}).eval()
    images = {"s2": torch.randn(2, 2, 16, 16), "s1": torch.randn(2, 2, 16, 16)}
    masking = model.sample_masking(model.split_inputs(images)[0], (4, 4), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = model(images, masking=masking)
    result = score_batch(model, images, None, None, masking, gram=channel_gram(torch.randn(2, 4, 16, 16)))
    model_scores = result["scores"]["model"]
    assert model_scores["overall"] == pytest.approx(out.loss.item(), rel=1e-5)
    for sensor in ("s2", "s1"):
        assert model_scores["sensors"][sensor]["mse"] == pytest.approx(out.losses[sensor].item(), rel=1e-5)
    assert result["best_baseline"] in ("mean", "interpolation", "linear")
    assert "s1/VV" in format_scores(result)


@pytest.mark.slow
def test_score_from_a_run_directory_cli_and_json(tmp_path, capsys):
    run = pretrain("cellpainting", output=tmp_path / "run", max_steps=2, overrides=["train.log_every=1"], quiet=True)
    first = score_reconstruction(run, samples=4, seed=3)
    again = score_reconstruction(run, samples=4, seed=3)
    assert first["scores"] == again["scores"]  # held-out crops and masks are fixed by the seed
    assert first["samples"] == 4 and first["best_baseline"] in ("mean", "interpolation", "linear")
    hidden = score_reconstruction(run, samples=4, seed=3, visible_channels=["DNA", "Actin"])
    assert hidden["scores"]["mean"]["sensors"]["image"]["channels"]["PH3"] is None
    assert hidden["best_baseline"] == "linear"
    out, report = tmp_path / "recon.png", tmp_path / "scores.json"
    assert main(["reconstruct", "--checkpoint", str(run), "--score", "--score-samples", "4", "--output", str(out),
                 "--output-json", str(report)]) == 0
    printed = capsys.readouterr().out
    assert "best baseline" in printed and "model" in printed
    assert json.loads(report.read_text())["scores"]["model"]["overall"] > 0
    plain = tmp_path / "plain.png"
    assert main(["reconstruct", "--checkpoint", str(run), "--output", str(plain)]) == 0
    with Image.open(out) as scored, Image.open(plain) as without:
        assert scored.height > without.height * 1.2  # a fourth row per sample: the best baseline
    given = score_reconstruction(run, samples=2, data=first["data"])
    assert given["held_out"] == "the given data" and given["samples"] == 2
    for flags in (["--samples", "0"], ["--score", "--score-samples", "0"]):  # said "every item ... was skipped"
        assert main(["reconstruct", "--checkpoint", str(run), "--output", str(tmp_path / "none.png"), *flags]) == 1
        assert "samples must be at least 1, got 0" in capsys.readouterr().err


def test_hiding_channels_at_mask_ratio_zero_shows_the_other_channels_whole():
    from domainmae.train.reconstruct import hide_channels_masking

    masking = hide_channels_masking(["B04", "B08", "VV", "VH"], ["VV", "VH"], 3, 16, 0.0, torch.Generator().manual_seed(0))
    assert torch.equal(masking.mask, torch.cat([torch.ones(32), torch.zeros(32)]).expand(3, -1))
    model = _tiny(False, {"s2": [{"name": "B04", "wavelength": 665}, {"name": "B08", "wavelength": 842}],
                          "s1": ["VV", "VH"]}).eval()
    images = {"s2": torch.randn(3, 2, 16, 16), "s1": torch.randn(3, 2, 16, 16)}
    with torch.no_grad():
        out = model(images, masking=masking)
    result = score_batch(model, images, None, None, masking, gram=channel_gram(torch.randn(2, 4, 16, 16)))
    s1 = result["scores"]["model"]["sensors"]["s1"]
    assert s1["tokens"] == 0 and s1["mse"] is None and s1["channels"] == {"VV": None, "VH": None}  # nothing masked
    assert result["scores"]["model"]["overall"] == pytest.approx(out.loss.item(), rel=1e-5)
    assert result["scores"]["linear"]["overall"] is not None and result["scores"]["mean"]["overall"] is None
    assert "s1/VV" in format_scores(result)
    with pytest.raises(ValueError, match="hides nothing"):
        hide_channels_masking(["VV", "VH"], ["VV", "VH"], 1, 16, 0.0, torch.Generator())


class _Fields:
    """Twelve one-crop "fields", each image filled with its own index, so a crop tells where it came from."""

    def __len__(self) -> int:
        return 12

    def __getitem__(self, key: tuple[int, int]) -> dict:
        index, _ = key
        return {"image": torch.full((1, 4, 4), float(index)), "channels": ["DNA"], "meta": {}}


def test_scored_crops_are_spread_over_the_data_not_the_first_fields():
    """Four reads of twelve fields come from four different fields chosen by the seed: scoring the first
    few fields of a sorted listing (one plate row, one tile) would not represent the data."""
    training = TrainingData(dataset=_Fields(), crops_per_item=1)
    drawn = {}
    for seed in range(6):
        images = sample_crops(training, 4, seed, stream=1)["images"]
        drawn[seed] = images[:, 0, 0, 0].long().tolist()
        assert len(set(drawn[seed])) == 4  # each field once before any twice
        assert sample_crops(training, 4, seed, stream=1)["images"].equal(images)  # fixed by the seed
    assert len({tuple(d) for d in drawn.values()}) > 1
    assert len(set().union(*drawn.values())) > 4  # not always the same four fields
    # More reads than fields: every field once, then again.
    assert sorted(sample_crops(training, 13, 0, stream=1)["images"][:12, 0, 0, 0].long().tolist()) == list(range(12))


@pytest.mark.slow
def test_reconstruct_keeps_existing_files_and_never_replaces_its_checkpoint(tmp_path, capsys):
    """``reconstruct --output run/checkpoints/last.ckpt`` once turned the run's checkpoint into a PNG."""
    run = pretrain("cellpainting", output=tmp_path / "run", max_steps=1, quiet=True)
    ckpt = run / "checkpoints" / "last.ckpt"
    before = ckpt.read_bytes()
    for extra in ([], ["--overwrite"], ["--score", "--overwrite"]):
        assert main(["reconstruct", "--checkpoint", str(ckpt), "--output", str(ckpt), *extra]) == 1
        assert f"{ckpt} is an input of this command" in capsys.readouterr().err
    assert main(["reconstruct", "--checkpoint", str(run), "--output", str(tmp_path / "r.png"),
                 "--output-json", str(ckpt), "--overwrite"]) == 1  # fmt: skip
    assert f"{ckpt} is an input of this command" in capsys.readouterr().err
    assert ckpt.read_bytes() == before
    png = tmp_path / "r.png"
    assert main(["reconstruct", "--checkpoint", str(run), "--output", str(png), "--output-json", str(png)]) == 1
    assert "--output-json and --output" in capsys.readouterr().err and not png.exists()
    png.write_text("earlier")
    assert main(["reconstruct", "--checkpoint", str(run), "--output", str(png)]) == 1
    assert f"{png} already exists" in capsys.readouterr().err and png.read_text() == "earlier"
    assert main(["reconstruct", "--checkpoint", str(run), "--output", str(png), "--overwrite"]) == 0
    with Image.open(png) as image:
        assert image.format == "PNG"


def test_reconstruct_refuses_a_name_that_is_not_a_png(tmp_path, capsys):
    """``reconstruct --output rec.jpg`` once wrote PNG bytes into rec.jpg; refused before the model loads."""
    out = tmp_path / "rec.jpg"
    assert main(["reconstruct", "--checkpoint", str(tmp_path / "no-run"), "--output", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"{out}" in err and "'.jpg'" in err and ".png" in err and not out.exists()
