"""Choosing a device; the run directory's layout; loading a trained model, whatever form it comes in, without
running code from the file; exporting one.

A trained model comes as

* a run directory (:class:`RunDir`; its ``checkpoints/last.ckpt``) or a ``.ckpt`` file: the full training state
  (weights, optimiser, RNG states, resolved recipe), read with ``torch.load(weights_only=True)``:
  tensors and plain data only, plus the numpy types of the numpy RNG state;
* a sharded checkpoint of a ``train.strategy: fsdp`` run (``checkpoints/step_N.dcp/``, the run's
  ``checkpoints/last.dcp`` links to the newest): ``torch.distributed.checkpoint`` shards of the weights and
  optimiser state, one file per process that wrote it, and :data:`SHARDED_STATE`, the rest of a ``.ckpt``
  (read as above). Its ``.metadata`` index is a pickle that ``torch.distributed.checkpoint`` unpickles, so
  read only sharded checkpoints you trust;
* an exported folder (``domainmae export-model``): ``model.safetensors`` + ``config.json`` (model
  config with the channel/sensor vocabulary and wavelengths, normalisation statistics, crop size,
  step) + the run's resolved ``recipe.yaml``, so ``embed``/``reconstruct`` work from it as from the
  run; or the Hugging Face Hub id of such a folder.
"""
from __future__ import annotations

import pickle
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from .atomic import atomic_dir
from .models import MaskedAutoencoder, create_model
from .models.pretrained import CONFIG, WEIGHTS, pretrained_dir, read_pretrained, save_pretrained
from .recipes import Recipe, resolve_recipe, save_recipe

FORMAT = "domainmae-checkpoint/1"
SHARDED_STATE = "state.ckpt"  # in a sharded checkpoint folder: a .ckpt's contents but the model and optimiser
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
        self.last_sharded = self.checkpoints / "last.dcp"  # fsdp runs: a link to the newest step_N.dcp/ instead
        self.reconstructions = self.root / "reconstructions"  # preview PNGs

    def checkpoint(self, step: int) -> Path:
        """The periodic checkpoint of ``step``."""
        return self.checkpoints / f"step_{step:08d}.ckpt"

    def sharded_checkpoint(self, step: int) -> Path:
        """The sharded checkpoint folder of ``step`` (``train.strategy: fsdp``)."""
        return self.checkpoints / f"step_{step:08d}.dcp"

    def periodic_checkpoints(self) -> list[Path]:
        """The periodic checkpoints on disk, files and sharded folders, oldest first (``last.*`` are not)."""
        return sorted([*self.checkpoints.glob("step_*.ckpt"), *self.checkpoints.glob("step_*.dcp")])

    @staticmethod
    def checkpoint_step(path: Path) -> int:
        """The step of a periodic checkpoint, from its name."""
        return int(path.name.removeprefix("step_").split(".")[0])

    def interrupted_writes(self) -> list[Path]:
        """Temporary files and folders of checkpoint writes that never finished: ``atomic_path`` and
        ``atomic_dir`` name them ``.<final name>.<random>``, and a kill skips their clean-up."""
        return [*self.checkpoints.glob(".step_*"), *self.checkpoints.glob(".last.*")]

    def reconstruction(self, step: int) -> Path:
        """The reconstruction preview of ``step``."""
        return self.reconstructions / f"step_{step:08d}.png"

    def holds_run(self) -> bool:
        """Whether a run has written a checkpoint here (a new run must not overwrite it)."""
        return self.last.exists() or self.last_sharded.exists()


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device} asked for, but torch sees no CUDA device")
    return torch.device(device)


def is_sharded(path: Path) -> bool:
    """Whether ``path`` is a sharded checkpoint folder (or a link to one, like ``last.dcp``)."""
    return (path / SHARDED_STATE).is_file()


def checkpoint_file(path: str | Path) -> Path:
    """A checkpoint file or sharded checkpoint folder from its path or a run directory (its newest:
    ``checkpoints/last.ckpt``, else ``checkpoints/last.dcp``; a sharded save removes ``last.ckpt``, so when
    both are there the file was written after the folder)."""
    path = Path(path)
    if is_sharded(path):
        return path
    if path.is_dir():
        run = RunDir(path)
        candidate = next((c for c in (run.last, run.last_sharded) if c.exists()), None)
        if candidate is None:
            raise FileNotFoundError(f"no checkpoint in run directory {path} (looked for {run.last} and {run.last_sharded})")
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
    before any of it runs. A sharded checkpoint gives its :data:`SHARDED_STATE` dict: no ``model``
    or ``optimizer`` entries (:func:`read_sharded_weights` reads the weights).
    """
    file = checkpoint_file(path)
    if is_sharded(file):
        file = file / SHARDED_STATE
    try:
        with torch.serialization.safe_globals(_numpy_rng_types()):
            state = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if not _refusal(err).startswith("Unsupported global"):  # not a refused object: bytes that are no pickle
            raise ValueError(f"cannot read checkpoint {file}: not a PyTorch checkpoint, or a damaged one "
                             f"({_refusal(err)})") from err  # fmt: skip
        raise ValueError(
            f"cannot load checkpoint {file} safely: {_refusal(err)}. Checkpoints are read as tensors and plain "
            "data only, so nothing in it was run; share models as exported folders (domainmae export-model)"
        ) from err
    except Exception as err:  # torch raises several types for torn files, some without text (EOFError, KeyError)
        what = "it is empty" if file.is_file() and file.stat().st_size == 0 else "not a PyTorch checkpoint, or a damaged one"
        raise ValueError(f"cannot read checkpoint {file}: {what} ({type(err).__name__}: {err})") from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{file} is not a domainmae checkpoint (no '{FORMAT}' format tag)")
    return state


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[MaskedAutoencoder, dict[str, Any]]:
    """Rebuild the model of a checkpoint (file or run directory) with its weights.

    Returns ``(model, checkpoint)``; ``checkpoint["recipe"]`` is the resolved recipe of the run.
    """
    state = read_checkpoint(path)
    model = create_model(state["model_config"])
    if "model" in state:
        model.load_state_dict(state["model"])
    else:
        state["model"] = read_sharded_weights(model, checkpoint_file(path))
    return model.to(device).eval(), state


@contextmanager
def single_process_dcp() -> Iterator[None]:
    """Silence ``torch.distributed.checkpoint``'s warning that it runs without a process group: reading a
    sharded checkpoint in one process, or a one-process fsdp run writing one, is what we mean to do."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


def read_sharded_weights(model: MaskedAutoencoder, folder: Path) -> dict[str, torch.Tensor]:
    """Load the weights of sharded checkpoint ``folder`` into ``model`` (whole, on the CPU) and return its
    state dict. One process reads every shard, however many processes wrote them."""
    import torch.distributed.checkpoint as dcp  # here: importing it costs every command a second or more

    weights = model.state_dict()
    try:
        # no_dist: read alone even inside a process group (e.g. embed run under torchrun).
        with single_process_dcp():
            dcp.load({"model": weights}, checkpoint_id=folder, no_dist=True)
    except Exception as err:  # torch raises several types for missing or torn shards
        raise ValueError(f"cannot read sharded checkpoint {folder}: {err}") from err
    model.load_state_dict(weights)
    return weights


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
    if _is_checkpoint(Path(source)):
        file = checkpoint_file(source)
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


def _is_checkpoint(path: Path) -> bool:
    """Whether :func:`load_trained` reads ``path`` as a checkpoint (a file, a run directory), not a shared model."""
    return path.is_file() or path.suffix == ".ckpt" or (path.is_dir() and not (path / CONFIG).is_file())


def weights_file(source: str | Path) -> Path:
    """The file (or sharded checkpoint folder) :func:`load_trained` would read ``source``'s weights from, without
    reading them: what provenance hashes (``Trained.file``)."""
    return checkpoint_file(source) if _is_checkpoint(Path(source)) else pretrained_dir(source) / WEIGHTS


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
    with atomic_dir(directory) as tmp:
        save_exported(trained.model, resolve_recipe(trained.recipe), trained.step, tmp)
    return directory


def save_exported(model: MaskedAutoencoder, recipe: Recipe, step: int | None, directory: Path) -> Path:
    """Write ``model`` with what embedding needs besides its weights (normalisation, band statistics, crop size,
    the resolved ``recipe``) into ``directory``, the layout :func:`load_trained` reads; return it."""
    data = recipe.data
    save_pretrained(model, directory, normalization={"method": data.normalize, "band_stats": data.band_stats},
                    crop_size=data.crop_size, step=step)  # fmt: skip
    save_recipe(recipe, directory / RECIPE)
    return directory
