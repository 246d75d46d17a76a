"""Preemption of a multi-process run: a signal that reaches torchrun (as a scheduler's does) stops every worker
at the same step boundary with a checkpoint, and the resumed run equals one that was never stopped. Also the
Slurm example script, run here with stand-ins for ``srun`` and ``scontrol``: SIGUSR1 before the time limit
checkpoints and requeues, and the requeued job resumes."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from domainmae.train import load_checkpoint
from domainmae.train.interrupts import StopRequests
from domainmae.train.logging import read_metrics

from .conftest import free_port, torchrun

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
STEPS = 6
ARGS = ["--recipe", "cellpainting", "--max-steps", str(STEPS), "--quiet", "--device", "cpu",
        "--set", "train.log_every=1", "--set", "train.checkpoint_every=1000", "--set", "data.crops_per_read=4"]  # fmt: skip
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
# Run as the worker script under torchrun: rank 0 signals its launcher from inside the third optimiser update
# (after the weights changed, before the step counter moved) and waits until the forwarded signal reached it.
INJECT = """
import os, signal, sys, time, types
from domainmae.train import loop

real_build = loop.build_optimizer

def build(*args, **kwargs):
    optimizer, calls = real_build(*args, **kwargs), {"n": 0}
    real_step = optimizer.step

    def step(self, *a, **k):
        out = real_step(*a, **k)
        calls["n"] += 1
        if calls["n"] == 3 and os.environ["RANK"] == "0":
            os.kill(os.getppid(), signal.SIGTERM)
            stop = signal.getsignal(signal.SIGTERM).__self__  # the run's StopRequests
            deadline = time.monotonic() + 60
            while stop.received is None and time.monotonic() < deadline:
                time.sleep(0.01)
        return out

    optimizer.step = types.MethodType(step, optimizer)
    return optimizer

loop.build_optimizer = build
from domainmae.cli import main
sys.exit(main(["pretrain", *sys.argv[1:]]))
"""


def _assert_same_run(straight: Path, resumed: Path) -> None:
    a, b = read_metrics(straight / "metrics.jsonl"), read_metrics(resumed / "metrics.jsonl")
    assert [r["step"] for r in b] == list(range(1, STEPS + 1))
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    (ma, sa), (mb, sb) = load_checkpoint(straight), load_checkpoint(resumed)
    assert sa["step"] == sb["step"] == STEPS
    for (name, x), y in zip(ma.state_dict().items(), mb.state_dict().values()):
        assert torch.equal(x, y), name


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """Two processes, never stopped: what every stopped and resumed run must reproduce."""
    run = tmp_path_factory.mktemp("straight") / "run"
    done = subprocess.run(torchrun("-m", "domainmae", "pretrain", "--output", str(run), *ARGS), env=ENV,
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return run


def test_sigterm_to_a_two_process_run_stops_both_at_one_boundary_and_resumes_exactly(straight, tmp_path):
    script, run = tmp_path / "inject.py", tmp_path / "run"
    script.write_text(INJECT)
    stopped = subprocess.run(torchrun(str(script), "--output", str(run), *ARGS), env=ENV, capture_output=True,
                             text=True)  # fmt: skip
    assert stopped.returncode != 0
    assert stopped.stderr.count("stopped by SIGTERM after step 3; checkpoint written") == 2, stopped.stderr[-3000:]
    assert load_checkpoint(run)[1]["step"] == 3  # the step the signal arrived in was finished
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2, 3]
    resumed = subprocess.run(torchrun("-m", "domainmae", "pretrain", "--output", str(run), "--resume", *ARGS),
                             env=ENV, capture_output=True, text=True)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_same_run(straight, run)


def _stand_ins(folder: Path) -> Path:
    """``srun`` that runs its command in place (the job has one node: this machine) and ``scontrol`` that
    names this host and records requeues."""
    folder.mkdir()
    (folder / "srun").write_text('#!/bin/bash\nwhile [[ "$1" == --* ]]; do shift; done\nexec "$@"\n')
    (folder / "scontrol").write_text(f'#!/bin/bash\nif [ "$1" = show ]; then echo localhost; '
                                     f'else echo "$*" >> {folder}/requeued; fi\n')  # fmt: skip
    for tool in ("srun", "scontrol"):
        (folder / tool).chmod(0o755)
    return folder


def test_the_slurm_script_checkpoints_on_sigusr1_requeues_and_the_requeued_job_resumes(straight, tmp_path):
    bin_ = _stand_ins(tmp_path / "bin")
    run = tmp_path / "run"
    env = {**ENV, "PATH": f"{bin_}:{os.path.dirname(sys.executable)}:{os.environ['PATH']}", "SLURM_JOB_ID": "4242",
           "SLURM_JOB_NAME": "test", "SLURM_NNODES": "1", "SLURM_JOB_NODELIST": "localhost", "GPUS_PER_NODE": "2",
           "PORT": str(free_port()), "RUN": str(run)}  # fmt: skip
    command = ["bash", str(ROOT / "datasets" / "slurm" / "pretrain.sbatch"), *ARGS[2:]]  # the recipe is the default
    job = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics, deadline = run / "metrics.jsonl", time.monotonic() + 300
    while not (metrics.is_file() and metrics.read_text().strip()) and time.monotonic() < deadline:
        assert job.poll() is None, job.communicate()[1][-3000:]
        time.sleep(0.05)
    job.send_signal(signal.SIGUSR1)  # Slurm's warning before the time limit, to the batch script (B:USR1)
    out, err = job.communicate(timeout=300)
    assert job.returncode == 0, err[-3000:]
    assert (bin_ / "requeued").read_text() == "requeue 4242\n"
    assert "requeueing job 4242" in out
    step = load_checkpoint(run)[1]["step"]
    assert 1 <= step < STEPS
    assert err.count(f"stopped by SIGUSR1 after step {step}; checkpoint written") == 2, err[-3000:]
    again = subprocess.run(command, env=env, capture_output=True, text=True)  # the requeued job: resumes
    assert again.returncode == 0, again.stderr[-3000:]
    assert (bin_ / "requeued").read_text() == "requeue 4242\n"  # not requeued again
    _assert_same_run(straight, run)


@pytest.mark.parametrize("last", [None, "last.ckpt", "last.dcp"])
def test_the_requeued_slurm_job_resumes_a_sharded_run_too(tmp_path, last):
    """An fsdp run's newest checkpoint is the folder link ``last.dcp`` (no ``last.ckpt``): the requeued job must
    pass ``--resume`` for it too, or ``pretrain`` refuses the folder and the run ends for good."""
    bin_, run = tmp_path / "bin", tmp_path / "run"
    bin_.mkdir()
    (bin_ / "srun").write_text(f'#!/bin/bash\necho "$@" > {tmp_path}/launched\n')  # records the command line
    (bin_ / "scontrol").write_text("#!/bin/bash\necho localhost\n")
    for tool in ("srun", "scontrol"):
        (bin_ / tool).chmod(0o755)
    (run / "checkpoints" / "step_00000004.dcp").mkdir(parents=True)
    if last == "last.ckpt":
        (run / "checkpoints" / last).write_bytes(b"checkpoint")
    elif last == "last.dcp":
        (run / "checkpoints" / last).symlink_to("step_00000004.dcp")
    env = {**ENV, "PATH": f"{bin_}:{os.environ['PATH']}", "SLURM_JOB_ID": "7", "SLURM_JOB_NAME": "test",
           "SLURM_NNODES": "1", "SLURM_JOB_NODELIST": "localhost", "RUN": str(run)}  # fmt: skip
    done = subprocess.run(["bash", str(ROOT / "datasets" / "slurm" / "pretrain.sbatch")], env=env, capture_output=True,
                          text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert ("--resume" in (tmp_path / "launched").read_text().split()) == (last is not None)


def test_a_second_ctrl_c_stops_at_once_but_a_repeated_scheduler_signal_does_not():
    with StopRequests() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGUSR1)  # e.g. Slurm and torchrun both passing a signal on
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.received == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt, match="SIGINT again: stopping at once"):
            os.kill(os.getpid(), signal.SIGINT)
