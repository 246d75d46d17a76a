"""End-to-end pretraining on the bundled samples: run directory, loss, resume, DDP, guards."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch
import yaml
from PIL import Image

import domainmae
from domainmae.cli import main
from domainmae.pipeline import STATS_SAMPLES, _measure_stats
from domainmae.train import NonFiniteLossError, load_checkpoint, loop, pretrain
from domainmae.train.logging import read_metrics

from .conftest import SAMPLES, torchrun

pytestmark = pytest.mark.slow
QUICK = ["train.log_every=1", "train.checkpoint_every=15"]


def _losses(run: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(run / "metrics.jsonl")]


def test_cellpainting_demo_runs_end_to_end(tmp_path):
    run = pretrain("cellpainting", output=tmp_path / "run", max_steps=30, overrides=QUICK, quiet=True)
    assert (run / "config.yaml").is_file()
    records = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 31))
    assert {"step", "epoch", "loss", "lr", "samples_per_s"} <= set(records[0])
    losses = _losses(run)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert ckpts == ["last.ckpt", "step_00000015.ckpt", "step_00000030.ckpt"]
    pngs = sorted((run / "reconstructions").glob("step_*.png"))
    assert [p.name for p in pngs] == ["step_00000015.png", "step_00000030.png"]
    with Image.open(pngs[-1]) as image:
        assert image.format == "PNG" and image.width > 100
    model, state = load_checkpoint(run)
    assert state["step"] == 30 and model.config.channels[0]["name"] == "DNA"
    assert isinstance(model, domainmae.MaskedAutoencoder)


def test_resume_after_a_crash_continues_exactly(tmp_path):
    straight = pretrain("cellpainting", output=tmp_path / "straight", max_steps=30, overrides=QUICK, quiet=True)
    # A crash right after step 15: the run directory as it was then.
    crashed = tmp_path / "crashed"
    shutil.copytree(straight, crashed)
    shutil.copyfile(crashed / "checkpoints" / "step_00000015.ckpt", crashed / "checkpoints" / "last.ckpt")
    resumed = pretrain("cellpainting", output=crashed, resume=True, quiet=True)
    a, b = _losses(straight), _losses(resumed)
    assert len(b) == 30
    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-6


def test_existing_run_is_not_overwritten(tmp_path):
    pretrain("cellpainting", output=tmp_path / "run", max_steps=2, overrides=QUICK, quiet=True)
    with pytest.raises(FileExistsError, match="already holds a run"):
        pretrain("cellpainting", output=tmp_path / "run", max_steps=2, quiet=True)


def test_a_resume_that_fails_on_its_data_keeps_the_run_resumable(tmp_path):
    """The run's config.yaml is what resume reads: an override that the data refuses must not replace it."""
    run = pretrain("cellpainting", output=tmp_path / "run", max_steps=2, overrides=QUICK, quiet=True)
    config = (run / "config.yaml").read_bytes()
    with pytest.raises(ValueError, match="Actn"):
        pretrain("cellpainting", output=run, resume=True, max_steps=3, overrides=["data.channels=[DNA,Actn]"], quiet=True)
    assert (run / "config.yaml").read_bytes() == config
    pretrain("cellpainting", output=run, resume=True, max_steps=3, quiet=True)
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2, 3]
    # A new run refused by its data leaves no folder behind that would pass for a run.
    with pytest.raises(ValueError, match="Actn"):
        pretrain("cellpainting", output=tmp_path / "new", max_steps=2, overrides=["data.channels=[DNA,Actn]"], quiet=True)
    assert not (tmp_path / "new").exists()


def test_non_finite_losses_abort_and_keep_the_last_good_checkpoint(tmp_path, monkeypatch):
    import domainmae.models.mae as mae

    real = mae.reconstruction_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] > 15 else loss  # from step 16 on (one sensor, one call a step)

    monkeypatch.setattr(mae, "reconstruction_loss", poisoned)
    with pytest.raises(NonFiniteLossError, match="3 non-finite losses in a row at step 18"):
        pretrain("cellpainting", output=tmp_path / "run", max_steps=30, quiet=True,
                 overrides=[*QUICK, "train.max_bad_steps=3", "train.preview_every=100"])  # fmt: skip
    _, state = load_checkpoint(tmp_path / "run")
    assert state["step"] == 15


def test_cli_pretrain_reports_recipe_errors(capsys):
    assert main(["pretrain", "--recipe", "cellpainting", "--set", "train.batch_sise=4"]) == 1
    assert "train.batch_sise: unknown key; did you mean batch_size" in capsys.readouterr().err


def test_reconstruct_from_run_directory_with_hidden_channels(tmp_path):
    run = pretrain("cellpainting", output=tmp_path / "run", max_steps=4, overrides=QUICK, quiet=True)
    out = tmp_path / "recon.png"
    assert main(["reconstruct", "--checkpoint", str(run), "--channels", "DNA,Actin", "--output", str(out)]) == 0
    with Image.open(out) as image:
        assert image.format == "PNG"
    assert main(["reconstruct", "--checkpoint", str(run), "--channels", "Mito", "--output", str(out),
                 "--overwrite"]) == 1  # fmt: skip


def test_two_process_ddp_matches_one_process(tmp_path):
    common = ["--recipe", "cellpainting", "--max-steps", "6", "--quiet", "--device", "cpu",
              "--set", "train.log_every=1", "--set", "data.crops_per_read=4"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "domainmae", "pretrain", "--output", str(tmp_path / "one"), *common],
                         env=env, capture_output=True, text=True)  # fmt: skip
    assert one.returncode == 0, one.stderr
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
         "-m", "domainmae", "pretrain", "--output", str(tmp_path / "two"), *common],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len(a) == len(b) == 6  # rank 1 wrote no metrics of its own
    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-4
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir()) == ["last.ckpt", "step_00000006.ckpt"]
    one_model, _ = load_checkpoint(tmp_path / "one")
    two_model, _ = load_checkpoint(tmp_path / "two")
    torch.testing.assert_close(one_model.blocks[0].attn.qkv.weight, two_model.blocks[0].attn.qkv.weight, atol=1e-4, rtol=1e-3)
    assert json.loads((tmp_path / "two" / "metrics.jsonl").read_text().splitlines()[0])["step"] == 1


def test_sentinel_demo_runs_end_to_end_with_per_sensor_losses(tmp_path):
    run = pretrain("sentinel", output=tmp_path / "run", max_steps=30, overrides=QUICK, quiet=True)
    records = read_metrics(run / "metrics.jsonl")
    assert {"loss", "loss_s2", "loss_s1"} <= set(records[0])
    for r in records:
        assert r["loss"] == pytest.approx(r["loss_s2"] + r["loss_s1"], rel=1e-5)
    losses = _losses(run)
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10
    # band statistics measured on the data are kept with the run
    stats = load_checkpoint(run)[1]["recipe"]["data"]["band_stats"]
    assert set(stats) == {"s2", "s1"} and set(stats["s1"]) == {"VV", "VH"}
    assert -25 < stats["s1"]["VV"]["mean"] < 0  # backscatter in dB
    with Image.open(run / "reconstructions" / "step_00000030.png") as image:
        assert image.format == "PNG"


def test_mask_mix_entries_join_at_their_start_fraction(tmp_path, monkeypatch):
    drawn: list[str | None] = []
    sample = domainmae.MaskedAutoencoder.sample_masking

    def record(self, *args, strategy=None, **kwargs):
        drawn.append(strategy)
        return sample(self, *args, strategy=strategy, **kwargs)

    monkeypatch.setattr(domainmae.MaskedAutoencoder, "sample_masking", record)
    mix = "[{strategy: random, weight: 1}, {strategy: sensor, weight: 1, ratio: 0.9, start: 0.5}]"
    pretrain("sentinel", output=tmp_path / "run", max_steps=20, overrides=[f"model.mask_mix={mix}"], quiet=True)
    train = drawn[:-1]  # the last call draws the final reconstruction figure's masks
    assert len(train) == 20
    assert train[:10] == ["random"] * 10
    assert "sensor" in train[10:] and "random" in train[10:]


def test_previews_show_the_masks_of_the_step_they_follow(tmp_path, monkeypatch):
    keyed: list[int] = []  # the step each drawn set of masks was keyed on (counted from 0)
    key = loop._step_generator
    monkeypatch.setattr(loop, "_step_generator", lambda seed, step, dev: keyed.append(step) or key(seed, step, dev))
    pretrain("cellpainting", output=tmp_path / "run", max_steps=2, overrides=[*QUICK, "train.preview_every=1"],
             quiet=True)  # fmt: skip
    assert keyed == [0, 0, 1, 1]  # step 1's masks, then the preview after it with them; then step 2's


def test_a_mask_mix_with_no_entry_at_the_start_is_refused(tmp_path):
    mix = "[{strategy: random, start: 0.2}, {strategy: sensor, ratio: 0.9, start: 0.5}]"
    with pytest.raises(ValueError, match="first steps would have no strategy"):
        pretrain("sentinel", output=tmp_path / "run", max_steps=2, overrides=[f"model.mask_mix={mix}"], quiet=True)


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    accum = pretrain("cellpainting", output=tmp_path / "accum", max_steps=6, quiet=True,
                     overrides=[*QUICK, "train.micro_batch=4", "data.crops_per_read=4"])  # fmt: skip
    plain = pretrain("cellpainting", output=tmp_path / "plain", max_steps=6, quiet=True,
                     overrides=[*QUICK, "data.crops_per_read=4"])  # fmt: skip
    assert len(_losses(accum)) == 6
    assert max(abs(x - y) for x, y in zip(_losses(accum), _losses(plain))) < 1e-5



def test_multi_sensor_loss_does_not_depend_on_micro_batches_or_processes(tmp_path):
    # Random masking over the joint S2 (12 channels) + S1 (2) tokens and whole-sensor masking give every crop its
    # own number of masked tokens per sensor: each forward must divide by the global batch's count, not its own.
    mix = "[{strategy: random, weight: 1}, {strategy: sensor, weight: 1, ratio: 0.9}]"
    overrides = [*QUICK, f"model.mask_mix={mix}", "data.crop_size=32", "data.crops_per_read=2", "model.embed_dim=32",
                 "model.num_heads=2", "model.decoder_embed_dim=32", "model.decoder_num_heads=2"]  # fmt: skip
    whole = pretrain("sentinel", output=tmp_path / "whole", max_steps=3, overrides=overrides, quiet=True)
    micro = pretrain("sentinel", output=tmp_path / "micro", max_steps=3, overrides=[*overrides, "train.micro_batch=2"],
                     quiet=True)  # fmt: skip
    settings = [word for kv in [*overrides, "train.micro_batch=2"] for word in ("--set", kv)]
    two = subprocess.run(  # two processes of two micro-batches each
        torchrun("-m", "domainmae", "pretrain", "--output", str(tmp_path / "two"), "--recipe", "sentinel",
                 "--max-steps", "3", "--quiet", "--device", "cpu", *settings),
        env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
    )  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    expected = read_metrics(whole / "metrics.jsonl")
    assert {"loss_s2", "loss_s1"} <= set(expected[0])
    for run in (micro, tmp_path / "two"):
        got = read_metrics(run / "metrics.jsonl")
        for key in ("loss", "loss_s2", "loss_s1"):
            torch.testing.assert_close([r[key] for r in got], [r[key] for r in expected], rtol=1e-6, atol=0)
        # atol as in the DDP tests: the key biases change no output, so Adam turns their rounding-noise gradients
        # into steps of about lr.
        torch.testing.assert_close(load_checkpoint(run)[0].state_dict(), load_checkpoint(whole)[0].state_dict(),
                                   rtol=1e-3, atol=1e-4)  # fmt: skip


def test_microscopy_with_dataset_statistics_measures_keeps_and_embeds_with_them(tmp_path):
    # normalize: stats on a plate: the band statistics are measured on the fields (as for EO scenes), kept
    # with the run, and the export normalises with the same numbers.
    run = pretrain("cellpainting", output=tmp_path / "run", max_steps=2, overrides=[*QUICK, "data.normalize=stats"],
                   quiet=True)  # fmt: skip
    stats = yaml.safe_load((run / "config.yaml").read_text())["data"]["band_stats"]
    assert list(stats) == ["image"] and list(stats["image"]) == ["DNA", "PH3", "Actin"]
    dna = tifffile.imread(SAMPLES / "examplefly" / "01_POS002_D.TIF").astype(np.float64)
    assert 0.2 * dna.mean() < stats["image"]["DNA"]["mean"] < 5 * dna.mean()  # measured on crops, in the data's units
    table = domainmae.embed(run, output=tmp_path / "emb.parquet", level="image", progress=False)
    assert pd.read_parquet(table).filter(like="emb_").notna().all().all()


class _Reads:
    """``4 * STATS_SAMPLES`` one-crop reads, each image filled with its read's index: a listing sorted so that
    its first reads differ from the rest, as a plate's first wells or a tile's first patches do."""

    def __len__(self) -> int:
        return 4 * STATS_SAMPLES

    def __getitem__(self, index: int) -> list[dict]:
        return [{"image": np.full((1, 4, 4), float(index)), "channels": ["DNA"]}]


def test_measured_band_statistics_sample_reads_across_the_data():
    """The statistics a run measures come from reads spread over the data (the first quarter of the reads
    would give a mean of n/8 and an sd of n/14 for n reads, against n/2 and n/3.5 over all of them), and
    depend on the seed."""
    n = len(_Reads())
    stats = {seed: _measure_stats(_Reads(), 1, ["image"], seed, "raise")["image"]["DNA"] for seed in (0, 1)}
    for measured in stats.values():
        assert 0.4 * n < measured["mean"] < 0.6 * n and 0.23 * n < measured["std"] < 0.33 * n
    assert stats[0] != stats[1]


def _record_lrs(monkeypatch) -> list[float]:
    """The learning rate of every optimiser update from now on, as AdamW applies it."""
    used: list[float] = []
    step = torch.optim.AdamW.step

    def recording(self, *args, **kwargs):
        used.append(self.param_groups[0]["lr"])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording)
    return used


def test_metrics_record_the_learning_rate_each_step_used(tmp_path, monkeypatch):
    used = _record_lrs(monkeypatch)
    run = pretrain("cellpainting", output=tmp_path / "run", max_steps=6, quiet=True,
                   overrides=["train.log_every=1", "train.warmup_epochs=1"])  # fmt: skip
    logged = [r["lr"] for r in read_metrics(run / "metrics.jsonl")]
    assert logged == pytest.approx(used) and len(used) == 6
    assert logged[0] > 0  # the first warm-up step, not the last (min_lr 0) shifted in


def test_resume_with_more_steps_follows_the_longer_schedule_from_its_first_step(tmp_path, monkeypatch):
    """The README's `--max-steps 10` then `--resume --max-steps 20`: the restored optimiser held the short
    schedule's last lr (0), and the first resumed update used it."""
    used = _record_lrs(monkeypatch)
    overrides = ["train.log_every=1", "train.warmup_epochs=1"]
    pretrain("cellpainting", output=tmp_path / "run", max_steps=6, overrides=overrides, quiet=True)
    del used[:]
    resumed = pretrain("cellpainting", output=tmp_path / "run", max_steps=12, overrides=overrides, resume=True,
                       quiet=True)  # fmt: skip
    after_resume = list(used)
    del used[:]
    pretrain("cellpainting", output=tmp_path / "straight", max_steps=12, overrides=overrides, quiet=True)
    assert after_resume == pytest.approx(used[6:]) and after_resume[0] > 0
    assert [r["lr"] for r in read_metrics(resumed / "metrics.jsonl")][6:] == pytest.approx(used[6:])
