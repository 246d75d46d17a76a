"""Named model sizes, a typed config and ``create_model``."""
from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from .embed import ChannelLike, channel_specs
from .mae import MaskedAutoencoder
from .masking import STRATEGIES

# Encoder (width, depth, heads) from ViT; decoders from the MAE paper (512 wide, 8 deep for
# base/large/huge) and narrower, shallower ones for the small encoders.
MODEL_SIZES: dict[str, dict[str, int]] = {
    "vit_tiny": dict(embed_dim=192, depth=12, num_heads=3, decoder_embed_dim=128, decoder_depth=4, decoder_num_heads=4),
    "vit_small": dict(embed_dim=384, depth=12, num_heads=6, decoder_embed_dim=256, decoder_depth=4, decoder_num_heads=8),
    "vit_base": dict(embed_dim=768, depth=12, num_heads=12, decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16),
    "vit_large": dict(embed_dim=1024, depth=24, num_heads=16, decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16),
    "vit_huge": dict(embed_dim=1280, depth=32, num_heads=16, decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16),
}


@dataclass
class MAEConfig:
    """Everything needed to rebuild a model. Exactly one of the token kinds applies:
    ``sensors`` (multi-sensor), else ``channels`` (channel-agnostic), else ``in_chans`` (standard)."""

    embed_dim: int = 192
    depth: int = 12
    num_heads: int = 3
    decoder_embed_dim: int = 128
    decoder_depth: int = 4
    decoder_num_heads: int = 4
    mlp_ratio: float = 4.0
    patch_size: int = 16
    img_size: int | tuple[int, int] = 224
    in_chans: int = 3
    channels: list[Any] | None = None
    sensors: dict[str, list[Any]] | None = None
    norm_pix_loss: bool = False
    mask_ratio: float = 0.75
    mask_strategy: str = "random"
    fourier_weight: float = 0.0
    name: str = field(default="custom")

    @property
    def kind(self) -> str:
        return "multisensor" if self.sensors else "channel" if self.channels else "standard"

    def validate(self) -> None:
        """Fail early, naming the field, on values the model cannot be built with."""
        if self.channels is not None and self.sensors is not None:
            raise ValueError("give either channels= (channel-agnostic) or sensors= (multi-sensor), not both")
        for width, heads, what in (
            (self.embed_dim, self.num_heads, "embed_dim/num_heads"),
            (self.decoder_embed_dim, self.decoder_num_heads, "decoder_embed_dim/decoder_num_heads"),
        ):
            if width % heads or width % 4:
                raise ValueError(f"{what}: width {width} must be divisible by {heads} heads and by 4 (2-D sin-cos)")
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {self.mask_ratio}")
        if self.mask_strategy not in STRATEGIES:
            raise ValueError(f"mask_strategy {self.mask_strategy!r} is not one of {', '.join(STRATEGIES)}")

    def sensor_specs(self) -> dict[str, int | Sequence[ChannelLike]]:
        """The ``sensors`` argument of :class:`MaskedAutoencoder` for this config."""
        if self.sensors:
            return dict(self.sensors)
        return {"image": self.channels if self.channels else self.in_chans}

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML/JSON-able dict (channel specs as ``{"name", "wavelength"}``)."""

        def plain(chs: Sequence[ChannelLike]) -> list[dict[str, Any]]:
            return [asdict(s) for s in channel_specs(chs)]

        out = asdict(self)
        out["img_size"] = list(self.img_size) if isinstance(self.img_size, tuple) else self.img_size
        out["channels"] = plain(self.channels) if self.channels else None
        out["sensors"] = {k: plain(v) for k, v in self.sensors.items()} if self.sensors else None
        return out


# Config fields passed to MaskedAutoencoder as they are (token kinds go through sensor_specs()).
_MODEL_ARGS = (
    "img_size", "patch_size", "embed_dim", "depth", "num_heads", "decoder_embed_dim", "decoder_depth",
    "decoder_num_heads", "mlp_ratio", "norm_pix_loss", "mask_ratio", "mask_strategy", "fourier_weight",
)  # fmt: skip


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
    overridden (``patch_size``, ``img_size``, ``embed_dim``, ``mask_strategy`` ...).
    """
    config = model_config(name_or_config, **overrides)
    model = MaskedAutoencoder(sensors=config.sensor_specs(), **{k: getattr(config, k) for k in _MODEL_ARGS})
    model.config = config
    return model
