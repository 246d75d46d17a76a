"""``create_model``: a model by size name, config or dict, with overrides."""
from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import fields, replace
from typing import Any

from .config import MODEL_SIZES, MAEConfig
from .imae import MixtureAutoencoder
from .mae import MaskedAutoencoder


def _with_overrides(config: MAEConfig, overrides: Mapping[str, Any]) -> MAEConfig:
    names = [f.name for f in fields(MAEConfig)]
    for key in overrides:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else f"; valid keys: {', '.join(names)}"
            raise TypeError(f"unknown model option {key!r}{hint}")
    return replace(config, **overrides)


def model_config(name_or_config: str | MAEConfig | Mapping[str, Any], **overrides: Any) -> MAEConfig:
    """Resolve a size name (``vit_tiny`` ...), a config or a dict, plus overrides, to a config."""
    if isinstance(name_or_config, MAEConfig):
        config = name_or_config
    elif isinstance(name_or_config, Mapping):
        config = _with_overrides(MAEConfig(), name_or_config)
    elif name_or_config in MODEL_SIZES:
        config = MAEConfig(name=name_or_config, **MODEL_SIZES[name_or_config])
    else:
        raise ValueError(f"unknown model {name_or_config!r}; choose one of {', '.join(MODEL_SIZES)}")
    config = _with_overrides(config, overrides)
    config.validate()
    return config


def create_model(name_or_config: str | MAEConfig | Mapping[str, Any], **overrides: Any) -> MaskedAutoencoder:
    """Build an MAE by size name or config.

    ``channels=[...]`` gives a channel-agnostic model, ``sensors={name: channels}`` a multi-sensor
    one, otherwise a standard MAE on ``in_chans`` stacked channels. Any config field can be
    overridden (``patch_size``, ``img_size``, ``embed_dim``, ``mask_strategy`` ...). ``objective="imae"``
    gives a :class:`~domainmae.models.imae.MixtureAutoencoder` (an MAE that also separates mixtures).
    """
    config = model_config(name_or_config, **overrides)
    return (MixtureAutoencoder if config.objective == "imae" else MaskedAutoencoder)(config)
