"""The one model config: every hyper-parameter of an MAE, its default and its bounds, and the named sizes.

A model is built from an :class:`MAEConfig` (``MaskedAutoencoder(config)``), checkpoints and ``config.json``
store its :meth:`~MAEConfig.to_dict`, and a recipe's ``model:`` section derives its keys, types and bounds
from these fields, so a hyper-parameter is declared once, here.
"""
from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .embed import ChannelLike, channel_specs
from .masking import STRATEGIES

#: Pretraining objectives: the MAE, or i-MAE (Zhang & Shen 2022: separate a two-image mixture, models/imae.py).
OBJECTIVES = ("mae", "imae")
# i-MAE's options with their defaults. A config at these values leaves them out of to_dict(), so an MAE's
# saved config (checkpoints, config.json) is what it was before i-MAE existed, and older files still load.
_IMAE_DEFAULTS: dict[str, Any] = {"objective": "mae", "mix_ratio": None, "mix_beta": 1.0, "distill_from": None,
                                  "distill_weight": 1.0}  # fmt: skip
# Every option a saved config leaves out at its default (the same reason: files from before it still load alike).
_OMITTED_AT_DEFAULT: dict[str, Any] = {**_IMAE_DEFAULTS, "sensor_loss_weights": None}

# Encoder (width, depth, heads) from ViT; decoders from the MAE paper (512 wide, 8 deep for
# base/large/huge) and narrower, shallower ones for the small encoders.
MODEL_SIZES: dict[str, dict[str, int]] = {
    "vit_tiny": dict(embed_dim=192, depth=12, num_heads=3, decoder_embed_dim=128, decoder_depth=4, decoder_num_heads=4),
    "vit_small": dict(embed_dim=384, depth=12, num_heads=6, decoder_embed_dim=256, decoder_depth=4, decoder_num_heads=8),
    "vit_base": dict(embed_dim=768, depth=12, num_heads=12, decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16),
    "vit_large": dict(embed_dim=1024, depth=24, num_heads=16, decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16),
    "vit_huge": dict(embed_dim=1280, depth=32, num_heads=16, decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16),
}
# A config that names no size has vit_tiny's architecture: the cheapest model that is still a ViT.
_DEFAULT_SIZE = MODEL_SIZES["vit_tiny"]

# Bound names as pydantic's ``Field`` takes them (the recipe schema passes them on), with their checks.
_BOUND_CHECKS = {"gt": (operator.gt, ">"), "ge": (operator.ge, ">="), "lt": (operator.lt, "<"), "le": (operator.le, "<=")}


def _bounded(default: Any, **bounds: float) -> Any:
    """A dataclass field whose value must satisfy ``bounds`` (``gt=0``, ``lt=1`` ...): checked by
    :meth:`MAEConfig.validate`, and declared on the recipe's model keys."""
    return field(default=default, metadata={"bounds": bounds})


@dataclass
class MAEConfig:
    """Everything needed to rebuild a model. Exactly one of the token kinds applies:
    ``sensors`` (multi-sensor), else ``channels`` (channel-agnostic), else ``in_chans`` (standard)."""

    embed_dim: int = _bounded(_DEFAULT_SIZE["embed_dim"], gt=0)
    depth: int = _bounded(_DEFAULT_SIZE["depth"], gt=0)
    num_heads: int = _bounded(_DEFAULT_SIZE["num_heads"], gt=0)
    decoder_embed_dim: int = _bounded(_DEFAULT_SIZE["decoder_embed_dim"], gt=0)
    decoder_depth: int = _bounded(_DEFAULT_SIZE["decoder_depth"], gt=0)
    decoder_num_heads: int = _bounded(_DEFAULT_SIZE["decoder_num_heads"], gt=0)
    mlp_ratio: float = _bounded(4.0, gt=0)
    patch_size: int = _bounded(16, gt=0)
    img_size: int | tuple[int, int] = 224
    in_chans: int = _bounded(3, gt=0)
    channels: list[Any] | None = None
    sensors: dict[str, list[Any]] | None = None
    norm_pix_loss: bool = False
    mask_ratio: float = _bounded(0.75, gt=0, lt=1)
    mask_strategy: str = "random"
    fourier_weight: float = _bounded(0.0, ge=0)
    # Multi-sensor models: {sensor: weight} of its term in the summed loss (unnamed sensors weigh 1). Each
    # term is already a mean over that sensor's masked tokens, so None weighs sensors alike, not tokens.
    sensor_loss_weights: dict[str, float] | None = None
    name: str = "custom"
    # i-MAE: a crop mixed with a partner, lam * x1 + (1 - lam) * x2, lam = mix_ratio when given, else drawn
    # per step from Beta(mix_beta, mix_beta); distill_from names a frozen teacher MAE (run, .ckpt, folder).
    objective: str = "mae"
    mix_ratio: float | None = _bounded(None, ge=0, le=1)
    mix_beta: float = _bounded(1.0, gt=0)
    distill_from: str | None = None
    distill_weight: float = _bounded(1.0, ge=0)

    @property
    def kind(self) -> str:
        return "multisensor" if self.sensors else "channel" if self.channels else "standard"

    def validate(self) -> None:
        """Fail early, naming the field, on values the model cannot be built with."""
        if self.channels is not None and self.sensors is not None:
            raise ValueError("give either channels= (channel-agnostic) or sensors= (multi-sensor), not both")
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:  # an option left unset (mix_ratio) has nothing to check
                continue
            for bound, limit in f.metadata.get("bounds", {}).items():
                check, sign = _BOUND_CHECKS[bound]
                if not check(value, limit):
                    raise ValueError(f"{f.name} must be {sign} {limit}, got {value}")
        for width, heads, what in (
            (self.embed_dim, self.num_heads, "embed_dim/num_heads"),
            (self.decoder_embed_dim, self.decoder_num_heads, "decoder_embed_dim/decoder_num_heads"),
        ):
            if width % heads or width % 4:
                raise ValueError(f"{what}: width {width} must be divisible by {heads} heads and by 4 (2-D sin-cos)")
        if self.mask_strategy not in STRATEGIES:
            raise ValueError(f"mask_strategy {self.mask_strategy!r} is not one of {', '.join(STRATEGIES)}")
        if self.sensor_loss_weights is not None:
            self._validate_sensor_loss_weights(self.sensor_loss_weights)
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective {self.objective!r} is not one of {', '.join(OBJECTIVES)}")
        set_for_imae = [k for k, v in _IMAE_DEFAULTS.items() if k != "objective" and getattr(self, k) != v]
        if self.objective != "imae" and set_for_imae:
            raise ValueError(f"options of objective 'imae' only: {', '.join(set_for_imae)}; set objective: imae")

    def _validate_sensor_loss_weights(self, weights: dict[str, float]) -> None:
        if not self.sensors:
            raise ValueError("sensor_loss_weights applies to multi-sensor models only (this one has one sensor)")
        for sensor, weight in weights.items():
            if sensor not in self.sensors:
                raise ValueError(f"sensor_loss_weights names unknown sensor {sensor!r}; the model's sensors: "
                                 f"{', '.join(self.sensors)}")  # fmt: skip
            if not weight >= 0:  # also refuses NaN
                raise ValueError(f"sensor_loss_weights[{sensor!r}] must be >= 0, got {weight}")
        if not any(weights.get(s, 1.0) > 0 for s in self.sensors):
            raise ValueError("sensor_loss_weights must leave at least one sensor a weight above 0")

    def sensor_loss_weight(self, sensor: str) -> float:
        """The weight of ``sensor``'s term in the loss (1 unless ``sensor_loss_weights`` says otherwise)."""
        return (self.sensor_loss_weights or {}).get(sensor, 1.0)

    def sensor_specs(self) -> dict[str, int | Sequence[ChannelLike]]:
        """``{sensor: in_chans or channel list}``: how the model turns each sensor's images into tokens."""
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
        return {k: v for k, v in out.items() if k not in _OMITTED_AT_DEFAULT or v != _OMITTED_AT_DEFAULT[k]}
