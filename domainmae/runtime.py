"""Choosing a device; the run directory's layout; loading a trained model, whatever form it comes in, without
running code from the file; exporting one.

A trained model comes as

* a run directory (:class:`RunDir`; its ``checkpoints/last.ckpt``) or a ``.ckpt`` file: the full training state
  (weights, optimiser, RNG states, resolved recipe), read with ``torch.load(weights_only=True)``:
  tensors and plain data only, plus the numpy types of the numpy RNG state;
* an exported folder (``domainmae export-model``): ``model.safetensors`` + ``config.json`` (model
  config with the channel/sensor vocabulary and wavelengths, normalisation statistics, crop size,
  step) + the run's resolved ``recipe.yaml``, so ``embed``/``reconstruct`` work from it as from the
  run; or the Hugging Face Hub id of such a folder.
"""
from __future__ import annotations

import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from .atomic import atomic_dir
from .models import MaskedAutoencoder, create_model
from .models.pretrained import CONFIG, WEIGHTS, read_pretrained, save_pretrained
from .recipes import resolve_recipe, save_recipe

FORMAT = "domainmae-checkpoint/1"
RECIPE = "recipe.yaml"  # an exported folder's resolved recipe


class RunDir:
    """The one place that knows where a run's files live under ``root``.

    Periodic checkpoints and previews are named by step, zero-padded so names sort by step
    (``checkpoints/step_00000100.ckpt``, ``reconstructions/step_00000100.png``). It lives here, not
    in ``train``, because loading a model from a run directory needs it too.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.config = self.root / "config.yaml"  # the resolved recipe
        self.metrics = self.root / "metrics.jsonl"  # one JSON object per logged step
        self.tensorboard = self.root / "tensorboard"  # event files (train.tensorboard)
        self.checkpoints = self.root / "checkpoints"
        self.last = self.checkpoints / "last.ckpt"  # the newest checkpoint: what resume and loading read
        self.reconstructions = self.root / "reconstructions"  # preview PNGs

    def checkpoint(self, step: int) -> Path:
        """The periodic checkpoint of ``step``."""
        return self.checkpoints / f"step_{step:08d}.ckpt"

    def periodic_checkpoints(self) -> list[Path]:
        """The periodic checkpoints on disk, oldest first (``last.ckpt`` is not one of them)."""
        return sorted(self.checkpoints.glob("step_*.ckpt"))

    def reconstruction(self, step: int) -> Path:
        """The reconstruction preview of ``step``."""
        return self.reconstructions / f"step_{step:08d}.png"

    def holds_run(self) -> bool:
        """Whether a run has written a checkpoint here (a new run must not overwrite it)."""
        return self.last.exists()


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device} asked for, but torch sees no CUDA device")
    return torch.device(device)


def checkpoint_file(path: str | Path) -> Path:
    """A checkpoint file from a file path or a run directory (its ``checkpoints/last.ckpt``)."""
    path = Path(path)
    if path.is_dir():
        candidate = RunDir(path).last
        if not candidate.is_file():
            raise FileNotFoundError(f"no checkpoint in run directory {path} (looked for {candidate})")
        return candidate
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return path


def _numpy_rng_types() -> list[Any]:
    """What a pickled ``np.random.get_state()`` refers to (its key is a uint32 array): the array
    rebuilder, ``ndarray``, ``dtype`` and its uint32 subclass. Arrays of these types still unpickle
    under the same limits."""
    key = np.random.get_state()[1]
    return [key.__reduce__()[0], np.ndarray, np.dtype, type(key.dtype)]


def _refusal(err: pickle.UnpicklingError) -> str:
    """torch's reason for refusing a pickle, without its advice to load with weights_only=False."""
    found = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\. Please|\n|$)", str(err))
    return found.group(1).strip() if found else str(err).splitlines()[0]


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The raw checkpoint dict, unpickled as tensors and plain data only; errors name the file.

    A file holding anything else (an object whose unpickling would call a function) is refused
    before any of it runs.
    """
    file = checkpoint_file(path)
    try:
        with torch.serialization.safe_globals(_numpy_rng_types()):
            state = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"cannot load checkpoint {file} safely: {_refusal(err)}. Checkpoints are read as tensors and plain "
            "data only, so nothing in it was run; share models as exported folders (domainmae export-model)"
        ) from err
    except Exception as err:  # torch raises several types for torn files
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


@dataclass
class Trained:
    """A trained model and what using it needs besides the weights."""

    model: MaskedAutoencoder  # on the asked device, in eval mode
    recipe: dict[str, Any]  # the run's resolved recipe as plain data: data section, band statistics, crop size
    step: int | None  # optimiser steps it was trained for
    file: Path  # the file the weights came from (provenance records and hashes it)


def load_trained(source: str | Path, device: str | torch.device = "cpu") -> Trained:
    """A trained model from a run directory, a ``.ckpt`` file, an exported folder or a Hub id.

    Only a name that is neither a file, a ``.ckpt`` path nor a folder without ``config.json`` (a run
    directory) is looked up on the Hugging Face Hub.
    """
    path = Path(source)
    if path.is_file() or path.suffix == ".ckpt" or (path.is_dir() and not (path / CONFIG).is_file()):
        file = checkpoint_file(path)
        model, state = load_checkpoint(file, device)
        return Trained(model, state["recipe"], state.get("step"), file)
    model, config, folder = read_pretrained(source)
    recipe_file = folder / RECIPE
    if not recipe_file.is_file():
        raise FileNotFoundError(f"{recipe_file} is missing: embed/reconstruct need the run's recipe beside {CONFIG}")
    try:
        recipe = yaml.safe_load(recipe_file.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"cannot read {recipe_file}: {err}") from err
    return Trained(model.to(device), recipe, config.get("step"), folder / WEIGHTS)


def export_model(source: str | Path, directory: str | Path, *, overwrite: bool = False) -> Path:
    """Write a trained model (any form :func:`load_trained` takes) to ``directory`` to share; return it.

    The folder holds ``model.safetensors``, ``config.json`` (model config, ``normalization`` method and
    band statistics, ``crop_size``, ``step``) and ``recipe.yaml``; it is written beside ``directory`` and
    renamed at the end. ``overwrite`` replaces an earlier export, never another folder (a run directory).
    """
    directory = Path(directory)
    if directory.exists():
        if not overwrite:
            raise FileExistsError(f"{directory} already exists; pass overwrite=True (--overwrite) to replace it")
        if not (directory / CONFIG).is_file():
            raise FileExistsError(f"refusing to replace {directory}: it is not an exported model (no {CONFIG})")
    trained = load_trained(source)
    recipe = resolve_recipe(trained.recipe)
    data = recipe.data
    with atomic_dir(directory) as tmp:
        save_pretrained(trained.model, tmp, normalization={"method": data.normalize, "band_stats": data.band_stats},
                        crop_size=data.crop_size, step=trained.step)  # fmt: skip
        save_recipe(recipe, tmp / RECIPE)
    return directory
