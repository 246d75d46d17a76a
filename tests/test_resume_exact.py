"""Exact resume after an interrupt anywhere in a step: SIGINT, SIGTERM, a raw KeyboardInterrupt, and a
non-finite final step. Interrupts are injected right after ``optimizer.step()`` ran, before the step
counter moves: the window where a checkpoint used to pair new weights with the old step."""
import os
import shutil
import signal
import types
from pathlib import Path

import pytest
import torch

from domainmae.train import load_checkpoint, loop, pretrain
from domainmae.train.logging import read_metrics

pytestmark = pytest.mark.slow
STEPS = 8
# Every step logged and checkpointed (kept), so any step's state can be compared; no previews (slow).
FAST = ["train.log_every=1", "train.checkpoint_every=1", "train.keep_checkpoints=20", "train.preview_every=1000"]


def _run(output: Path, **kw) -> Path:
    return pretrain("cellpainting", output=output, max_steps=STEPS, overrides=FAST, quiet=True, **kw)


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """The uninterrupted run every interrupted one must reproduce."""
    return _run(tmp_path_factory.mktemp("straight") / "run")


def _interrupt_after_optimizer_step(monkeypatch, at_update: int, interrupt) -> None:
    """Call ``interrupt()`` inside the ``at_update``-th optimiser update, after the weights changed."""
    real_build, calls = loop.build_optimizer, {"n": 0}

    def build(*args, **kwargs):
        optimizer = real_build(*args, **kwargs)
        real_step = optimizer.step

        def step(self, *a, **k):
            out = real_step(*a, **k)
            calls["n"] += 1
            if calls["n"] == at_update:
                interrupt()
            return out

        optimizer.step = types.MethodType(step, optimizer)  # a bound method, as the LR scheduler expects
        return optimizer

    monkeypatch.setattr(loop, "build_optimizer", build)


def _assert_same_run(a: Path, b: Path) -> None:
    ra, rb = read_metrics(a / "metrics.jsonl"), read_metrics(b / "metrics.jsonl")
    assert [r["step"] for r in rb] == list(range(1, STEPS + 1))
    assert [r["loss"] for r in ra] == [r["loss"] for r in rb]
    (ma, sa), (mb, sb) = load_checkpoint(a), load_checkpoint(b)
    assert sa["step"] == sb["step"] == STEPS
    for (name, x), y in zip(ma.state_dict().items(), mb.state_dict().values()):
        assert torch.equal(x, y), name


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_inside_a_step_finishes_it_then_checkpoints_and_resumes_exactly(straight, tmp_path, monkeypatch, signum):
    def unhandled(*_):  # stands in for SIGTERM's default action, which would end pytest itself
        raise AssertionError("SIGTERM reached the handler that was there before the run")

    before = signal.signal(signal.SIGTERM, unhandled) if signum == signal.SIGTERM else signal.getsignal(signum)
    outer = signal.getsignal(signum)
    try:
        _interrupt_after_optimizer_step(monkeypatch, 3, lambda: os.kill(os.getpid(), signum))
        with pytest.raises(KeyboardInterrupt, match="after step 3"):
            _run(tmp_path / "run")
        assert signal.getsignal(signum) is outer  # the run put the previous handler back
    finally:
        signal.signal(signum, before)
    assert load_checkpoint(tmp_path / "run")[1]["step"] == 3  # the step the signal arrived in completed
    assert [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")] == [1, 2, 3]
    monkeypatch.undo()
    _assert_same_run(straight, pretrain("cellpainting", output=tmp_path / "run", resume=True, quiet=True))


def test_a_raw_keyboard_interrupt_inside_a_step_keeps_the_last_boundary_checkpoint(straight, tmp_path, monkeypatch):
    def ctrl_c():
        raise KeyboardInterrupt

    _interrupt_after_optimizer_step(monkeypatch, 3, ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "run")
    # Step 3 updated the weights but never finished: the checkpoint is still the one of step 2.
    state = load_checkpoint(tmp_path / "run")[1]
    assert state["step"] == 2
    torch.testing.assert_close(state["model"], load_checkpoint(straight / "checkpoints" / "step_00000002.ckpt")[1]["model"],
                               rtol=0, atol=0)  # fmt: skip
    monkeypatch.undo()
    _assert_same_run(straight, pretrain("cellpainting", output=tmp_path / "run", resume=True, quiet=True))


def test_a_run_killed_while_appending_to_its_metrics_resumes_exactly(straight, tmp_path):
    """A SIGKILL (or a full disk) in the middle of the line of step 4: ``metrics.jsonl`` ends in a torn line,
    the newest checkpoint is step 3's. The torn line is dropped on resume (it failed to parse: resume stopped)."""
    run = tmp_path / "run"
    shutil.copytree(straight, run)
    shutil.copyfile(run / "checkpoints" / "step_00000003.ckpt", run / "checkpoints" / "last.ckpt")
    lines = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    (run / "metrics.jsonl").write_text("".join(lines[:3]) + lines[3][:20])
    _assert_same_run(straight, pretrain("cellpainting", output=run, resume=True, quiet=True))


def test_a_damaged_metrics_line_before_the_last_is_an_error_naming_the_file(straight, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(straight, run)
    lines = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    (run / "metrics.jsonl").write_text("".join([*lines[:2], "{garbage\n", *lines[3:]]))
    with pytest.raises(ValueError, match=r"metrics\.jsonl line 3 is not a JSON object"):
        pretrain("cellpainting", output=run, resume=True, quiet=True)


def test_a_non_finite_final_step_still_writes_the_final_checkpoint(straight, tmp_path, monkeypatch):
    import domainmae.models.mae as mae

    real, calls = mae.reconstruction_loss, {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] == STEPS else loss  # the last step only (one call a step)

    monkeypatch.setattr(mae, "reconstruction_loss", poisoned)
    run = _run(tmp_path / "run")
    model, state = load_checkpoint(run)
    # The final checkpoint holds the last good weights (step 7's: the NaN update was skipped), and says that
    # all 8 steps ran, the last of them without an update.
    assert state["step"] == STEPS and state["bad_steps"] == 1
    assert (run / "checkpoints" / f"step_{STEPS:08d}.ckpt").is_file()
    good = load_checkpoint(straight / "checkpoints" / f"step_{STEPS - 1:08d}.ckpt")[0]
    for (name, x), y in zip(model.state_dict().items(), good.state_dict().values()):
        assert torch.equal(x, y), name


def test_the_command_exits_with_128_plus_the_signal_so_schedulers_can_requeue(tmp_path, monkeypatch, capsys):
    from domainmae.cli import main

    def unhandled(*_):  # stands in for SIGTERM's default action, which would end pytest itself
        raise AssertionError("SIGTERM reached the handler that was there before the run")

    before = signal.signal(signal.SIGTERM, unhandled)
    try:
        _interrupt_after_optimizer_step(monkeypatch, 2, lambda: os.kill(os.getpid(), signal.SIGTERM))
        argv = ["pretrain", "--recipe", "cellpainting", "--output", str(tmp_path / "run"), "--max-steps", "4",
                "--quiet", *[w for kv in FAST for w in ("--set", kv)]]  # fmt: skip
        assert main(argv) == 128 + signal.SIGTERM == 143
    finally:
        signal.signal(signal.SIGTERM, before)
    assert "stopped by SIGTERM after step 2; checkpoint written, continue with --resume" in capsys.readouterr().err
    assert load_checkpoint(tmp_path / "run")[1]["step"] == 2
