"""Shared models: a folder of ``model.safetensors`` + ``config.json`` (the Hugging Face Hub layout).

Safetensors hold tensors only, so loading a shared model cannot run code, unlike a pickled
checkpoint. ``config.json`` holds the model config (channel/sensor vocabulary with wavelengths,
patch size, ...) under ``model_config`` plus whatever the caller adds (normalisation statistics,
crop size, training step). A name that is not an existing folder is taken as a Hub model id.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

from ..atomic import atomic_path, atomic_write_text, writing
from .factory import create_model
from .mae import MaskedAutoencoder

FORMAT = "domainmae-pretrained/1"
CONFIG = "config.json"
WEIGHTS = "model.safetensors"


def save_pretrained(model: MaskedAutoencoder, directory: str | Path, **extra: Any) -> Path:
    """Write ``model`` to ``directory`` (created if needed) as ``model.safetensors`` + ``config.json``.

    ``extra`` are JSON-able entries added to ``config.json`` beside ``model_config``. Each file is
    written atomically; returns ``directory``.
    """
    directory = Path(directory)
    with atomic_path(directory / WEIGHTS) as tmp, writing(directory / WEIGHTS, SafetensorError):
        save_model(model, str(tmp), metadata={"format": "pt"})
    text = json.dumps({"format": FORMAT, "model_config": model.config.to_dict(), **extra}, indent=2)
    atomic_write_text(directory / CONFIG, text + "\n")
    return directory


def pretrained_dir(name_or_path: str | Path) -> Path:
    """A local folder for ``name_or_path``: the folder itself, else a download of the Hub model of that id.

    Only a name that is not an existing folder is looked up on the Hub; offline or unknown, the
    error names it.
    """
    path = Path(name_or_path)
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download  # only when a Hub id is asked for

    try:
        return Path(snapshot_download(str(name_or_path)))
    except Exception as err:  # invalid id, offline, unknown repo: all mean "not found" here
        raise FileNotFoundError(
            f"{str(name_or_path)!r} is not a folder, and fetching it as a Hugging Face Hub model id failed: {err}"
        ) from err


def read_pretrained(name_or_path: str | Path) -> tuple[MaskedAutoencoder, dict[str, Any], Path]:
    """``(model in eval mode on CPU, config.json contents, local folder)`` of a shared model."""
    directory = pretrained_dir(name_or_path)
    config_file, weights = directory / CONFIG, directory / WEIGHTS
    for file in (config_file, weights):
        if not file.is_file():
            raise FileNotFoundError(f"{directory} is not a shared domainmae model: {file} is missing")
    try:
        config = json.loads(config_file.read_text())
    except ValueError as err:
        raise ValueError(f"cannot read {config_file}: {err}") from err
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ValueError(f"{config_file} is not a domainmae model config (no '{FORMAT}' format tag)")
    model = create_model(config["model_config"])
    try:
        load_model(model, weights, strict=True)
    except Exception as err:  # safetensors raises several types for torn files or mismatched keys
        raise ValueError(f"cannot load {weights} into the model of {config_file}: {err}") from err
    return model.eval(), config, directory
