"""i-MAE (objective imae): mixing, the two branches and their targets, lam = 1, multi-sensor tokens,
distillation, pretraining and reconstruction from the CLI, and the config round trip."""
import shutil

import pytest
import torch

import domainmae
from domainmae.cli import main
from domainmae.models import IMAEOutput, MixtureAutoencoder, model_config
from domainmae.models.imae import linear_separability, mix_weight, partner_rows, ridge_r2
from domainmae.models.losses import reconstruction_loss, token_weight
from domainmae.models.patches import patchify_channels
from domainmae.train import load_checkpoint, pretrain
from domainmae.train.logging import read_metrics
from domainmae.viz import reconstruction_images

from .conftest import TINY

SMALL = {**TINY, "depth": 1}
NAMES = ["DNA", "ER", "RNA"]
CELLS = 16  # (32 / 8) ** 2 grid cells


def _imae(**kw) -> MixtureAutoencoder:
    return domainmae.create_model({**SMALL, "channels": NAMES, "objective": "imae", **kw})


def _pair(b: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(b, 3, 32, 32), torch.randn(b, 3, 32, 32) * 2 + 1


def test_two_reconstructions_differ_and_each_is_scored_against_its_own_source():
    model, (x1, x2) = _imae(), _pair()
    noise = torch.rand(4, 3 * CELLS)
    out = model(x1, partner=x2, lam=0.3, noise=noise)
    assert isinstance(out, IMAEOutput) and out.weights == (0.3, 0.7)
    torch.testing.assert_close(out.mixture["image"], 0.3 * x1 + 0.7 * x2)
    low, high = out.preds[0]["image"], out.preds[1]["image"]
    assert low.shape == high.shape == (4, 3 * CELLS, 64)
    # The identity-initialised branches must part as soon as their different targets have trained them.
    torch.nn.init.normal_(model.unmix[0].weight, std=0.1)
    out = model(x1, partner=x2, lam=0.3, noise=noise)
    assert not torch.allclose(out.preds[0]["image"], out.preds[1]["image"])
    mask = out.mask["image"]
    for pred, source, key in ((out.preds[0], x1, "low"), (out.preds[1], x2, "high")):
        own = reconstruction_loss(pred["image"], patchify_channels(source, 8), mask, patch_size=8)
        torch.testing.assert_close(out.branch_losses[key], own)
    assert torch.allclose(out.loss, out.branch_losses["low"] + out.branch_losses["high"])


def test_swapping_the_sources_flips_the_branches():
    model, (x1, x2) = _imae(), _pair()
    torch.nn.init.normal_(model.unmix[0].weight, std=0.1)
    noise = torch.rand(4, 3 * CELLS)
    a = model(x1, partner=x2, lam=0.3, noise=noise)
    # The same mixture given the other way round: branch 0 still rebuilds the lower-weight source (x1).
    b = model(x2, partner=x1, lam=0.7, noise=noise)
    for i in range(2):
        torch.testing.assert_close(a.preds[i]["image"], b.preds[i]["image"])
        torch.testing.assert_close(a.sources[i]["image"], b.sources[i]["image"])
    torch.testing.assert_close(a.loss, b.loss)
    # The other source as the faint one: the branches' targets trade places.
    c = model(x2, partner=x1, lam=0.3, noise=noise)
    torch.testing.assert_close(c.sources[0]["image"], x2)
    torch.testing.assert_close(c.sources[1]["image"], x1)
    torch.testing.assert_close(a.sources[0]["image"], x1)


def test_lam_one_is_the_ordinary_mae_loss():
    model, (x1, x2) = _imae(norm_pix_loss=True), _pair()
    mae = domainmae.create_model({**SMALL, "channels": NAMES, "norm_pix_loss": True})
    missing, unexpected = mae.load_state_dict(model.state_dict(), strict=False)
    assert not missing and unexpected == ["unmix.0.weight", "unmix.0.bias", "unmix.1.weight", "unmix.1.bias"]
    noise = torch.rand(4, 3 * CELLS)
    out = model(x1, partner=x2, lam=1.0, noise=noise)
    assert abs(out.loss.item() - mae(x1, noise=noise).loss.item()) < 1e-6
    out.loss.backward()  # the absent source's branch still has a (zero) gradient: DDP needs every parameter used
    assert model.unmix[0].weight.grad is not None and not model.unmix[0].weight.grad.any()


def test_multi_sensor_tokens_mix_within_each_sensor():
    sensors = {"s2": [{"name": "B04", "wavelength": 665}, "B08"], "s1": ["VV", "VH"]}
    model = domainmae.create_model({**SMALL, "sensors": sensors, "objective": "imae", "mix_ratio": 0.2})
    x = {"s2": torch.randn(4, 2, 32, 32), "s1": torch.randn(4, 2, 32, 32)}
    valid = {"s2": torch.rand(4, 32, 32) > 0.1}
    out = model(x, group=2, valid=valid)  # partners: the other crop of each read of two
    rows = partner_rows(4, 2)
    assert rows.tolist() == [1, 0, 3, 2]
    for s in x:
        torch.testing.assert_close(out.mixture[s], 0.2 * x[s] + 0.8 * x[s][rows])
    assert set(out.losses) == {"s2", "s1"} and torch.isfinite(out.loss)
    out.loss.backward()
    images = reconstruction_images(model, x, None, out)
    assert list(images["s1"]) == ["mixture", "masked", "low x0.20", "separated low", "high x0.80", "separated high"]


def test_counts_are_the_tokens_valid_in_both_sources_and_chunks_add_up_to_the_batch():
    model, (x, _) = _imae(fourier_weight=0.01), _pair(6)
    valid = torch.rand(6, 32, 32) > 0.3
    valid[2:4, :, :16] = False  # the second read's left half is nodata
    masking = model.sample_masking(model.split_inputs(x)[0], (4, 4), generator=torch.Generator().manual_seed(1))
    counts = model.loss_counts(x, valid=valid, masking=masking, group=2, lam=0.3)
    # A token is scored where it is masked and holds a pixel valid in its row and in its partner (the loss's rule).
    both = patchify_channels((valid & valid[partner_rows(6, 2)]).unsqueeze(1).expand(-1, 3, -1, -1).float(), 8)
    assert counts["image"] == token_weight(masking.mask, both > 0.5).sum() < masking.mask.sum()
    whole = model(x, valid=valid, masking=masking, group=2, lam=0.3)
    chunks = [slice(0, 2), slice(2, 4), slice(4, 6)]  # whole reads: the same partners as in the whole batch
    shares = [model(x[c], valid=valid[c], masking=masking.rows(c), group=2, lam=0.3, counts=counts, parts=3)
              for c in chunks]  # fmt: skip
    torch.testing.assert_close(torch.stack([o.loss for o in shares]).mean(), whole.loss, rtol=1e-6, atol=0)
    own = [model.loss_counts(x[c], valid=valid[c], masking=masking.rows(c), group=2)["image"] for c in chunks]
    assert sum(own) == counts["image"] and len(set(map(float, own))) > 1  # uneven chunks, adding up to the batch


def test_reads_of_one_crop_cannot_be_paired():
    with pytest.raises(ValueError, match="data.crops_per_read to 2 or more"):
        partner_rows(4, 1)


def test_distillation_pulls_towards_the_teacher(tmp_path):
    teacher = domainmae.create_model({**SMALL, "channels": NAMES})
    teacher.save_pretrained(tmp_path / "teacher")
    model = _imae(distill_from=str(tmp_path / "teacher"), distill_weight=0.5)
    x1, x2 = _pair()
    noise = torch.rand(4, 3 * CELLS)
    plain = model(x1, partner=x2, lam=0.3, noise=noise)
    assert plain.distill.item() == 0
    model.set_teacher(domainmae.MaskedAutoencoder.from_pretrained(tmp_path / "teacher"))
    out = model(x1, partner=x2, lam=0.3, noise=noise)
    assert out.distill.item() > 0
    torch.testing.assert_close(out.loss, plain.loss + 0.5 * out.distill)
    assert "teacher" not in "".join(model.state_dict())  # frozen and not saved with the student
    # The student taught by itself on one unmixed source (lam 1, identity branches) has nothing to learn.
    model.set_teacher(model)
    assert model(x1, partner=x2, lam=1.0, noise=noise).distill.item() < 1e-10
    with pytest.raises(ValueError, match="width"):
        model.set_teacher(domainmae.create_model({**SMALL, "channels": NAMES, "embed_dim": 64}))


def test_config_round_trip_and_defaults_stay_out_of_saved_configs():
    config = model_config({**SMALL, "channels": NAMES, "objective": "imae", "mix_beta": 0.5, "distill_from": "runs/a"})
    saved = config.to_dict()
    assert saved["objective"] == "imae" and saved["mix_beta"] == 0.5 and "mix_ratio" not in saved
    assert model_config(saved).to_dict() == saved
    assert not {"objective", "mix_ratio", "mix_beta", "distill_from", "distill_weight"} & set(model_config({}).to_dict())
    with pytest.raises(ValueError, match="options of objective 'imae' only: mix_ratio"):
        model_config({"mix_ratio": 0.3})
    with pytest.raises(ValueError, match="objective 'clip' is not one of"):
        model_config({"objective": "clip"})
    with pytest.raises(ValueError, match="mix_ratio must be <= 1"):
        model_config({"objective": "imae", "mix_ratio": 1.5})


def test_mix_weight_is_fixed_or_a_pure_function_of_seed_and_step():
    fixed = model_config({"objective": "imae", "mix_ratio": 0.3})
    assert mix_weight(fixed, 0, 5) == 0.3
    drawn = model_config({"objective": "imae", "mix_beta": 1.0})
    draws = [mix_weight(drawn, 7, s) for s in range(50)]
    assert draws == [mix_weight(drawn, 7, s) for s in range(50)] and len(set(draws)) == 50
    assert all(0 < d < 1 for d in draws)


def test_linear_separability_scores_a_linear_mixture():
    torch.manual_seed(1)
    ridge_x = torch.randn(200, 5)
    assert ridge_r2(ridge_x, ridge_x @ torch.randn(5, 3), 100) > 0.999
    assert ridge_r2(ridge_x, torch.randn(200, 3), 100) < 0.1  # nothing to find: no better than the mean
    model = _imae()
    for level in ("image", "patch"):
        scores = linear_separability(model, *_pair(16), lam=0.3, channels=NAMES, level=level)
        assert set(scores) == {"low", "high"} and all(s <= 1 for s in scores.values())


@pytest.mark.slow
def test_pretrain_imae_on_the_demo_then_reconstruct(tmp_path, capsys):
    overrides = ["model.objective=imae", "model.mix_ratio=0.3", "train.log_every=1", "data.crop_size=32",
                 "train.checkpoint_every=20"]  # fmt: skip
    run = pretrain("cellpainting", output=tmp_path / "run", max_steps=20, overrides=overrides, quiet=True)
    losses = [r["loss"] for r in read_metrics(run / "metrics.jsonl")]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5
    model, state = load_checkpoint(run)
    assert isinstance(model, MixtureAutoencoder) and model.config.mix_ratio == 0.3
    assert (run / "reconstructions" / "step_00000020.png").is_file()
    assert main(["reconstruct", "--checkpoint", str(run), "--output", str(tmp_path / "r.png")]) == 0
    assert (tmp_path / "r.png").stat().st_size > 1000
    assert main(["reconstruct", "--checkpoint", str(run), "--score", "--output", str(tmp_path / "s.png")]) != 0
    assert "is an i-MAE (objective imae)" in capsys.readouterr().err
    # Distilling from the run's own checkpoint (the teacher is loaded by pretraining).
    teacher = run / "checkpoints" / "step_00000020.ckpt"
    again = pretrain("cellpainting", output=tmp_path / "distilled", max_steps=2,
                     overrides=[*overrides, f"model.distill_from={teacher}"], quiet=True)  # fmt: skip
    assert load_checkpoint(again)[0].config.distill_from == str(teacher)
    with pytest.raises(ValueError, match="crops_per_read to 2 or more"):
        pretrain("cellpainting", output=tmp_path / "one", max_steps=1, overrides=[*overrides, "data.crops_per_read=1"])


@pytest.mark.slow
def test_imae_steps_do_not_depend_on_micro_batches_and_resume_exactly(tmp_path):
    # Beta-drawn lam: a function of (seed, step); partners within whole reads, so splitting the batch of 16
    # (two reads of 8) into micro-batches of one read, or stopping and resuming, changes nothing.
    overrides = ["model.objective=imae", "data.crop_size=32", "train.batch_size=16", "train.log_every=1",
                 "train.checkpoint_every=2"]  # fmt: skip
    whole = pretrain("cellpainting", output=tmp_path / "whole", max_steps=4, overrides=overrides, quiet=True)
    split = pretrain("cellpainting", output=tmp_path / "split", max_steps=4, overrides=[*overrides, "train.micro_batch=8"],
                     quiet=True)  # fmt: skip
    losses = {run: [r["loss"] for r in read_metrics(run / "metrics.jsonl")] for run in (whole, split)}
    assert losses[split] == pytest.approx(losses[whole], rel=1e-5)
    # Resumed from the step-2 checkpoint of the same run (same schedule), it ends with the same weights.
    shutil.copytree(whole, tmp_path / "resumed")
    shutil.copyfile(whole / "checkpoints" / "step_00000002.ckpt", tmp_path / "resumed" / "checkpoints" / "last.ckpt")
    resumed = pretrain("cellpainting", output=tmp_path / "resumed", resume=True, quiet=True)
    expected, got = load_checkpoint(whole)[1]["model"], load_checkpoint(resumed)[1]["model"]
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)
