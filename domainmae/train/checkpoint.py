"""Checkpoints: atomic writes, pruning, exact-resume state, and loading a model back."""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import atomic_path
from ..models import MaskedAutoencoder, create_model

FORMAT = "domainmae-checkpoint/1"
LAST = "last.ckpt"


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
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, **state}, tmp)
    return Path(path)


def prune_checkpoints(folder: Path, keep: int) -> None:
    """Keep the ``keep`` newest periodic ``step_*.ckpt`` files (``last.ckpt`` is never pruned)."""
    periodic = sorted(folder.glob("step_*.ckpt"))
    for old in periodic[:-keep] if keep else periodic:
        old.unlink()


def checkpoint_file(path: str | Path) -> Path:
    """A checkpoint file from a file path or a run directory (its ``checkpoints/last.ckpt``)."""
    path = Path(path)
    if path.is_dir():
        candidate = path / "checkpoints" / LAST
        if not candidate.is_file():
            raise FileNotFoundError(f"no checkpoint in run directory {path} (looked for {candidate})")
        return candidate
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return path


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The raw checkpoint dict; errors name the file."""
    file = checkpoint_file(path)
    try:
        # Our own files hold numpy/python RNG states too, so they are not weights-only pickles.
        state = torch.load(file, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises several types for torn or foreign files
        raise ValueError(f"cannot read checkpoint {file}: {err}") from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{file} is not a domainmae checkpoint (no '{FORMAT}' format tag)")
    return state


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[MaskedAutoencoder, dict[str, Any]]:
    """Rebuild the model of a checkpoint (file or run directory) with its weights.

    Returns ``(model, checkpoint)``; ``checkpoint["recipe"]`` is the resolved recipe of the run.
    """
    state = read_checkpoint(path)
    model = create_model(state["model_config"])
    model.load_state_dict(state["model"])
    return model.to(device).eval(), state
