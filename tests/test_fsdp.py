"""``train.strategy: fsdp`` and ``train.activation_checkpointing``: sharded training gives the loss curve of one
process, sharded checkpoints resume on another number of processes (and .ckpt files under fsdp), and
recomputing activations changes nothing but memory.

Tolerance: two processes reduce-scatter gradients where one process sums them, so float32 rounding differs
(about 1e-7 relative per step here); the curves must agree to rtol 1e-5 over 6 steps, the weights to atol 1e-4
(as in the DDP test of test_pretrain.py).
"""
import os
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch

import domainmae
from domainmae.recipes import RecipeError, load_recipe
from domainmae.runtime import RunDir, export_model
from domainmae.train import load_checkpoint, pretrain
from domainmae.train.checkpoint import prune_checkpoints
from domainmae.train.logging import read_metrics

from .conftest import TINY, torchrun
from .test_preemption import ENV

STEPS = 6
RTOL = 1e-5
# A tiny model on 32 px crops of the fly fields (16 crops an epoch, 2 per read, so 3 fields fill a step);
# batches of 8 in micro-batches of 2 (accumulated; under fsdp reduce-scattered after each) with gradient
# clipping; checkpoints at steps 3 and 6 (the first is where the resumed runs start); a preview at the end.
SETTINGS = ["train.log_every=1", "train.checkpoint_every=3", "data.crops_per_read=2", "data.windows_per_epoch=16",
            "train.micro_batch=2", "train.grad_clip=1.0", "data.crop_size=32", "model.embed_dim=32",
            "model.num_heads=2", "model.decoder_embed_dim=32", "model.decoder_num_heads=2"]  # fmt: skip
FSDP = [*SETTINGS, "train.strategy=fsdp"]


def _cli(*overrides: str) -> list[str]:
    """``domainmae pretrain`` arguments after the output, on the CPU."""
    args = ["--recipe", "cellpainting", "--max-steps", str(STEPS), "--quiet", "--device", "cpu"]
    return [*args, *(word for kv in overrides for word in ("--set", kv))]


def _two_processes(output: Path, *extra: str, overrides=FSDP) -> Path:
    done = subprocess.run(torchrun("-m", "domainmae", "pretrain", "--output", str(output), *extra, *_cli(*overrides)),
                          env=ENV, capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return output


def _one_process(output: Path, overrides=FSDP, max_steps: int = STEPS, resume: bool = False) -> Path:
    return pretrain("cellpainting", output=output, max_steps=max_steps, device="cpu", overrides=overrides, quiet=True,
                    resume=resume)  # fmt: skip


def _losses(run: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(run / "metrics.jsonl")]


def _assert_same_curve(a: Path, b: Path) -> None:
    assert [r["step"] for r in read_metrics(b / "metrics.jsonl")] == list(range(1, STEPS + 1))
    torch.testing.assert_close(_losses(b), _losses(a), rtol=RTOL, atol=0)
    (ma, sa), (mb, sb) = load_checkpoint(a), load_checkpoint(b)
    assert sa["step"] == sb["step"] == STEPS
    # atol: the key bias changes no output (softmax ignores a constant per query), so its gradient is rounding
    # noise that Adam's normalisation turns into steps of about lr; the DDP test allows the same.
    torch.testing.assert_close(mb.state_dict(), ma.state_dict(), rtol=1e-3, atol=1e-4)


def _crashed_after_step_3(run: Path, copy: Path) -> Path:
    """``run`` as it was when it stopped after step 3: its newest checkpoint is step 3's."""
    shutil.copytree(run, copy, symlinks=True)
    checkpoints = copy / "checkpoints"
    for later in [*checkpoints.glob("last.*"), *checkpoints.glob(f"step_{STEPS:08d}.*")]:
        if later.is_dir() and not later.is_symlink():
            shutil.rmtree(later)
        else:
            later.unlink()
    if (checkpoints / "step_00000003.dcp").is_dir():
        (checkpoints / "last.dcp").symlink_to("step_00000003.dcp")
    else:
        shutil.copyfile(checkpoints / "step_00000003.ckpt", checkpoints / "last.ckpt")
    return copy


@pytest.fixture(scope="module")
def one(tmp_path_factory) -> Path:
    """One process under fsdp: it trains the whole model and writes sharded checkpoints of one shard."""
    return _one_process(tmp_path_factory.mktemp("one") / "run")


@pytest.fixture(scope="module")
def two(tmp_path_factory) -> Path:
    """Two processes under fsdp, each holding half of every parameter."""
    return _two_processes(tmp_path_factory.mktemp("two") / "run")


@pytest.fixture(scope="module")
def ddp(tmp_path_factory) -> Path:
    """One process under the default strategy: .ckpt files."""
    return _one_process(tmp_path_factory.mktemp("ddp") / "run", overrides=SETTINGS)


# ----------------------------------------------------------------------------------------- recipes
def test_strategy_defaults_to_ddp_and_names_the_key_when_misspelt():
    train = load_recipe("cellpainting", demo=True).train
    assert train.strategy == "ddp" and train.activation_checkpointing is False
    with pytest.raises(RecipeError, match=r"train\.strategy: Input should be 'ddp' or 'fsdp' \(got 'zero3'\)"):
        load_recipe("cellpainting", ["train.strategy=zero3"], demo=True)


def test_pruning_removes_old_sharded_folders_with_their_shards(tmp_path):
    run = RunDir(tmp_path)
    for step in (1, 3):
        run.sharded_checkpoint(step).mkdir(parents=True)
        (run.sharded_checkpoint(step) / "__0_0.distcp").write_bytes(b"shards")
    run.checkpoint(2).write_bytes(b"ckpt")
    prune_checkpoints(run, keep=2, step=3)
    assert run.periodic_checkpoints() == [run.checkpoint(2), run.sharded_checkpoint(3)]


# ------------------------------------------------------------------------------ activation checkpointing
def test_activation_checkpointing_recomputes_blocks_and_changes_no_loss_or_gradient():
    model = domainmae.create_model("vit_tiny", channels=["DNA", "RNA"], **TINY)
    images, noise = torch.randn(3, 2, 32, 32), torch.rand(3, 2 * 16)
    calls = {"n": 0}
    for block in [*model.blocks, *model.decoder_blocks]:
        # A pre-hook: recomputation stops once it has what backward needs, before a forward hook would run.
        block.register_forward_pre_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))

    def loss_and_grads(recompute: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model.activation_checkpointing = recompute
        model.zero_grad()
        calls["n"] = 0
        loss = model(images, noise=noise).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    plain_loss, plain = loss_and_grads(False)
    assert calls["n"] == 3  # two encoder blocks and one decoder block, once each
    loss, grads = loss_and_grads(True)
    assert calls["n"] == 6  # each block ran again in backward
    torch.testing.assert_close(loss, plain_loss, rtol=0, atol=0)
    torch.testing.assert_close(grads, plain, rtol=1e-6, atol=1e-7)
    with torch.no_grad():  # nothing to recompute without a backward: blocks run once
        calls["n"] = 0
        model(images, noise=noise)
    assert calls["n"] == 3


@pytest.mark.slow
def test_activation_checkpointing_in_a_run_gives_the_same_curve(tmp_path):
    plain = _one_process(tmp_path / "plain", overrides=SETTINGS, max_steps=3)
    recomputed = _one_process(tmp_path / "recomputed", overrides=[*SETTINGS, "train.activation_checkpointing=true"],
                              max_steps=3)  # fmt: skip
    torch.testing.assert_close(_losses(recomputed), _losses(plain), rtol=1e-6, atol=0)


# ------------------------------------------------------------------------------------------- fsdp
@pytest.mark.slow
def test_fsdp_alone_trains_the_whole_model_as_ddp_does(one, ddp):
    assert _losses(one) == _losses(ddp)  # the same computation: no sharding with one process
    assert sorted(p.name for p in (one / "checkpoints").iterdir()) == ["last.dcp", "step_00000003.dcp", "step_00000006.dcp"]


@pytest.mark.slow
def test_two_processes_under_fsdp_give_the_curve_of_one(one, two):
    _assert_same_curve(one, two)
    folder = two / "checkpoints" / "last.dcp"
    assert folder.is_symlink() and os.readlink(folder) == "step_00000006.dcp"
    # One file of shards per process, the index, and the rest of the run's state; no last.ckpt.
    assert sorted(p.name for p in folder.iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp", "state.ckpt"]
    assert not (two / "checkpoints" / "last.ckpt").exists()
    _, state = load_checkpoint(folder)  # the folder itself loads too, into one unsharded model
    assert state["step"] == STEPS and state["recipe"]["train"]["strategy"] == "fsdp"


@pytest.mark.slow
def test_embed_and_export_take_a_sharded_run(two, tmp_path):
    table = domainmae.embed(two, output=tmp_path / "emb.parquet", level="image", progress=False)
    assert pd.read_parquet(table).filter(like="emb_").notna().all().all()
    exported = export_model(two, tmp_path / "model")
    shared = domainmae.MaskedAutoencoder.from_pretrained(exported)
    torch.testing.assert_close(shared.state_dict(), load_checkpoint(two)[0].state_dict())


@pytest.mark.slow
def test_a_two_process_sharded_checkpoint_resumes_on_one_process(one, two, tmp_path):
    crashed = _crashed_after_step_3(two, tmp_path / "run")
    _assert_same_curve(one, _one_process(crashed, resume=True))


@pytest.mark.slow
def test_a_one_process_sharded_checkpoint_resumes_on_two_processes(one, tmp_path):
    crashed = _crashed_after_step_3(one, tmp_path / "run")
    _assert_same_curve(one, _two_processes(crashed, "--resume"))


@pytest.mark.slow
def test_a_ddp_checkpoint_file_resumes_sharded_on_two_processes(one, ddp, tmp_path):
    resumed = _two_processes(_crashed_after_step_3(ddp, tmp_path / "run"), "--resume")
    _assert_same_curve(one, resumed)
    # The sharded checkpoints of the fsdp part are now the newest; the .ckpt of step 3 stays.
    assert sorted(p.name for p in (resumed / "checkpoints").iterdir()) == ["last.dcp", "step_00000003.ckpt",
                                                                          "step_00000006.dcp"]  # fmt: skip
