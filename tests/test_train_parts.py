"""Optimiser groups and schedule, atomic checkpoints, and the deterministic data order."""
import argparse
import math

import pytest
import torch

import domainmae
from domainmae.data.loader import StepBatchSampler, collate_samples
from domainmae.runtime import RunDir
from domainmae.train.checkpoint import (
    checkpoint_file,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from domainmae.train.optim import param_groups, scaled_lr, warmup_cosine

from .conftest import TINY


def test_no_weight_decay_on_norms_biases_and_embeddings():
    model = domainmae.create_model("vit_tiny", sensors={"s2": ["B02", "B03"], "s1": ["VV"]}, **TINY)
    decay, no_decay = param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    decay_names = {names[id(p)] for p in decay["params"]}
    assert {"cls_token", "mask_token", "sensor_embed", "norm.weight", "blocks.0.attn.qkv.bias"} <= no_decay_names
    assert "patch_embed.s2.channel_embed.learned" in no_decay_names
    assert {"blocks.0.attn.qkv.weight", "patch_embed.s2.proj.weight", "decoder_pred.s1.weight"} <= decay_names
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert len(decay_names | no_decay_names) == len(list(model.parameters()))


def test_lr_scaling_and_warmup_cosine_shape():
    assert scaled_lr(1.5e-4, 4096) == pytest.approx(2.4e-3)
    ramp = [warmup_cosine(s, 10, 110) for s in range(110)]
    assert ramp[0] == pytest.approx(0.1) and ramp[9] == pytest.approx(1.0)
    assert ramp[60] == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert all(a >= b for a, b in zip(ramp[9:], ramp[10:]))  # monotone decay after warmup
    assert warmup_cosine(110, 10, 110, min_ratio=0.1) == pytest.approx(0.1)


def test_interrupted_checkpoint_write_keeps_the_previous_file(tmp_path, monkeypatch):
    model = domainmae.create_model("vit_tiny", channels=["DNA"], **TINY)
    state = {"model_config": model.config.to_dict(), "model": model.state_dict(), "step": 1}
    path = save_checkpoint(RunDir(tmp_path).last, state)

    def crash(obj, f, *args, **kwargs):
        with open(f, "wb") as handle:
            handle.write(b"torn")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {**state, "step": 2})
    monkeypatch.undo()
    loaded, ckpt = load_checkpoint(tmp_path)  # a run directory resolves to checkpoints/last.ckpt
    assert ckpt["step"] == 1
    torch.testing.assert_close(loaded.blocks[0].attn.qkv.weight, model.blocks[0].attn.qkv.weight)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["last.ckpt"]  # no temp files left behind


@pytest.mark.parametrize("tokens", [{"in_chans": 3}, {"channels": ["DNA", "ER"]}])
def test_single_sensor_checkpoints_with_the_sensor_in_their_keys_still_load(tmp_path, tokens):
    model = domainmae.create_model("vit_tiny", **tokens, **TINY)
    assert {"patch_embed.proj.weight", "decoder_pred.weight"} <= set(model.state_dict())  # timm's names
    # How single-sensor weights were named before: the sensor ("image") after each per-sensor part.
    parts = ("patch_embed.", "decoder_channel_embed.", "decoder_pred.")
    old = {next((f"{p}image.{k[len(p):]}" for p in parts if k.startswith(p)), k): v for k, v in model.state_dict().items()}
    assert {"patch_embed.image.proj.weight", "decoder_pred.image.weight"} <= set(old)
    save_checkpoint(tmp_path / "old.ckpt", {"model_config": model.config.to_dict(), "model": old, "step": 1})
    loaded, _ = load_checkpoint(tmp_path / "old.ckpt")  # strict loading: every old key found its tensor
    torch.testing.assert_close(loaded.state_dict(), model.state_dict())


def test_checkpoint_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint in run directory"):
        load_checkpoint(tmp_path)
    bad = tmp_path / "x.ckpt"
    for content, says in ((b"garbage", "not a PyTorch checkpoint, or a damaged one"), (b"hello\n", "not a PyTorch"),
                          (b"", "is empty")):  # fmt: skip
        bad.write_bytes(content)
        with pytest.raises(ValueError, match=rf"checkpoint .*x\.ckpt.* {says}"):
            load_checkpoint(bad)
    torch.save({"format": "x", "args": argparse.Namespace(a=1)}, bad)  # a pickle that would build an object
    with pytest.raises(ValueError, match=r"cannot load checkpoint .*x\.ckpt safely: Unsupported global.*nothing in it was run"):
        load_checkpoint(bad)


def test_prune_keeps_newest(tmp_path):
    run = RunDir(tmp_path)
    run.checkpoints.mkdir()
    for step in (10, 20, 30, 40):
        run.checkpoint(step).write_bytes(b"x")
    prune_checkpoints(run, 2, step=40)
    assert sorted(p.name for p in run.checkpoints.iterdir()) == ["step_00000030.ckpt", "step_00000040.ckpt"]


def test_prune_keeps_the_checkpoint_just_saved_when_a_killed_save_left_a_later_one(tmp_path):
    """A kill between renaming ``step_6.dcp`` into place and pointing ``last.dcp`` at it leaves a complete,
    unlinked later folder; the run resumes from step 3 and saves step 4. Pruning by name alone kept step 6 and
    deleted step 4, the only checkpoint ``last.dcp`` names: the run was left with none."""
    run = RunDir(tmp_path)
    run.checkpoints.mkdir()
    for step in (3, 6, 4):
        run.sharded_checkpoint(step).mkdir()
        (run.sharded_checkpoint(step) / "state.ckpt").write_bytes(b"x")
    run.last_sharded.symlink_to(run.sharded_checkpoint(4).name)
    prune_checkpoints(run, 1, step=4)
    assert run.periodic_checkpoints() == [run.sharded_checkpoint(4)]
    assert checkpoint_file(tmp_path) == run.last_sharded


def test_prune_removes_what_killed_atomic_writes_left(tmp_path):
    run = RunDir(tmp_path)
    run.checkpoints.mkdir()
    run.checkpoint(2).write_bytes(b"x")
    # As atomic_path and atomic_dir name them; a SIGKILL (or a node lost) skips their clean-up.
    for name in (".last.ckpt.k2j4_9.tmp", ".step_00000003.ckpt.x8a1qz.tmp"):
        (run.checkpoints / name).write_bytes(b"half")
    (run.checkpoints / ".step_00000004.dcp.6o53bb_p").mkdir()
    (run.checkpoints / ".step_00000004.dcp.6o53bb_p" / "__0_0.distcp").write_bytes(b"shards")
    (run.checkpoints / "notes.txt").write_text("the user's")
    prune_checkpoints(run, 1, step=2)
    assert sorted(p.name for p in run.checkpoints.iterdir()) == ["notes.txt", "step_00000002.ckpt"]


def _keys(sampler):
    return [key for batch in sampler for key in batch]


def test_data_order_does_not_depend_on_processes_or_micro_batches():
    one = list(StepBatchSampler(20, 8, seed=3, total_steps=6))
    two = [list(StepBatchSampler(20, 8, world=2, rank=r, seed=3, total_steps=6)) for r in (0, 1)]
    accum = list(StepBatchSampler(20, 8, micro=2, seed=3, total_steps=6))
    for step in range(6):
        assert one[step] == two[0][step] + two[1][step]  # rank r takes chunk r of the global batch
        assert one[step] == accum[2 * step] + accum[2 * step + 1]
    # every epoch (2 steps of 8 out of 20) visits distinct items, and epochs reshuffle
    epoch0, epoch1 = [i for i, _ in one[0] + one[1]], [i for i, _ in one[2] + one[3]]
    assert len(set(epoch0)) == 16 and epoch0 != epoch1


def test_resumed_sampler_continues_the_same_stream():
    full = list(StepBatchSampler(20, 8, seed=1, total_steps=6))
    assert list(StepBatchSampler(20, 8, seed=1, start_step=4, total_steps=6)) == full[4:]


def test_collate_refuses_mixed_channel_sets():
    a = {"image": torch.zeros(2, 4, 4), "channels": ("DNA", "RNA"), "meta": {}}
    b = {"image": torch.zeros(2, 4, 4), "channels": ("DNA", "ER"), "meta": {}}
    batch = collate_samples([[a, a], a])
    assert batch["images"].shape == (3, 2, 4, 4) and batch["valid"] is None
    with pytest.raises(ValueError, match=r"different channels \('DNA', 'RNA'\) and \('DNA', 'ER'\)"):
        collate_samples([a, b])


def test_atomic_writes_get_ordinary_permissions(tmp_path):
    import os

    from domainmae.atomic import atomic_write_text

    atomic_write_text(tmp_path / "a.txt", "x")
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~mask


@pytest.mark.parametrize("writer", ["atomic_dir", "atomic_path"])
def test_replacing_a_folder_output_leaves_it_whole_whenever_a_kill_lands(tmp_path, monkeypatch, writer):
    """A folder cannot be renamed over: the old one used to be deleted first, so a kill (or an OOM, a node lost)
    during that deletion, or just after it, left no output at all. Killed inside every deletion, the output is
    the old one or the new one, whole."""
    import shutil

    import domainmae.atomic as atomic

    out = tmp_path / "model"
    out.mkdir()
    for name in ("_metadata", "part-0.parquet", "part-1.parquet"):  # atomic_path replaces only a table in parts
        (out / name).write_text("old")
    real, seen = shutil.rmtree, []

    def contents() -> dict[str, str] | str | None:
        if out.is_dir():
            return {p.name: p.read_text() for p in out.iterdir()}
        return out.read_text() if out.is_file() else None

    old, new = contents(), {"model.safetensors": "new"} if writer == "atomic_dir" else "new"

    def rmtree_then_killed(path, *args, **kwargs):
        real(path, *args, **kwargs)
        seen.append(contents() in (old, new))  # what a kill right here would leave

    monkeypatch.setattr(atomic.shutil, "rmtree", rmtree_then_killed)
    if writer == "atomic_dir":
        with atomic.atomic_dir(out) as tmp:
            (tmp / "model.safetensors").write_text("new")
        assert (out / "model.safetensors").read_text() == "new"
    else:
        with atomic.atomic_path(out) as tmp:
            tmp.write_text("new")
        assert out.read_text() == "new"
    assert seen and all(seen)
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # nothing left beside it


def test_resume_trims_the_metrics_log_without_risking_it(tmp_path, monkeypatch):
    """Resume rewrites ``metrics.jsonl`` without the steps past the checkpoint; a full disk in the middle of that
    rewrite truncated the whole log in place (the steps before the checkpoint were lost for good)."""
    import pathlib

    from domainmae.train.logging import MetricsLog, read_metrics

    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(f'{{"step": {s}, "loss": 1.0}}\n' for s in range(1, 31)))
    before, real = path.read_text(), pathlib.Path.write_text

    def disk_full(self, text, *args, **kwargs):
        real(self, text[:100], *args, **kwargs)
        raise OSError(27, "File too large")

    monkeypatch.setattr(pathlib.Path, "write_text", disk_full)
    with pytest.raises(OSError, match="File too large"):
        MetricsLog(path, resume_step=18)
    monkeypatch.undo()
    assert path.read_text() == before
    assert [r["step"] for r in read_metrics(path)] == list(range(1, 31))
