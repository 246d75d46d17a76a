"""Checkpoints: atomic writes, pruning, exact-resume state. Reading them (weights-only) lives in
:mod:`domainmae.runtime`, beside the other forms a trained model comes in; re-exported here."""
from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import atomic_path, writing
from ..runtime import FORMAT, RunDir, checkpoint_file, load_checkpoint, read_checkpoint

__all__ = ["FORMAT", "checkpoint_file", "load_checkpoint", "prune_checkpoints", "read_checkpoint",
           "rng_state", "save_checkpoint", "set_rng_state"]  # fmt: skip


def rng_state() -> dict[str, Any]:
    """Every RNG a run draws from, so a resumed run continues the same streams."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically (temp file, then rename): an interrupted write leaves
    the previous file as it was."""
    # torch.save reports a failed write (a full disk) as a RuntimeError from its zip writer
    with atomic_path(path) as tmp, writing(path, RuntimeError):
        torch.save({"format": FORMAT, **state}, tmp)
    return Path(path)


def prune_checkpoints(run: RunDir, keep: int, step: int) -> None:
    """Keep the ``keep`` newest periodic checkpoints of ``run`` up to ``step`` (the one just saved), files and
    sharded folders; ``last.ckpt`` is never pruned.

    Also removed: periodic checkpoints past ``step``, which a save killed between renaming ``step_N.dcp`` into
    place and pointing ``last.dcp`` at it leaves behind (sorted by name they would outlive the checkpoint
    ``last.dcp`` names; the resumed run writes them again, the same, as resume is exact), and the temporary
    files and folders of writes a kill cut short (a sharded one is as big as the model's whole state).
    """
    periodic = run.periodic_checkpoints()
    upto = [path for path in periodic if run.checkpoint_step(path) <= step]
    past = [path for path in periodic if run.checkpoint_step(path) > step]
    for old in [*(upto[:-keep] if keep else upto), *past, *run.interrupted_writes()]:
        if old.is_dir():
            shutil.rmtree(old)
        else:
            old.unlink()
