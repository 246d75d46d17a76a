"""The recipe schema: one pydantic section per part of a recipe (model, data, train), each value checked
with its key's path before any data is read; :mod:`domainmae.recipes` composes, loads and explains."""
from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterable
from dataclasses import fields
from typing import Annotated, Any, Literal, get_type_hints

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, create_model, field_validator, model_validator

from ._builtin import CONFIGS_DIR
from .models import MODEL_SIZES, OBJECTIVES, STRATEGIES, MAEConfig, model_config
from .models.embed import channel_specs


def _one_of(value: str, allowed: Iterable[str], what: str) -> str:
    """``value`` if it is one of ``allowed``, else an error listing them."""
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; choose one of {', '.join(allowed)}")
    return value


class Section(BaseModel):
    # No inf/NaN: an lr or a weight of .inf passed every bound and failed later without the key's name.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class MaskMix(Section):
    """One masking strategy of a per-batch mixture, drawn from ``start`` (a fraction of the run's steps) on:
    a curriculum, e.g. random masking alone first and whole-sensor batches joining late."""

    strategy: str
    weight: float = Field(1.0, gt=0)
    ratio: float | None = Field(None, gt=0, lt=1)  # default: model.mask_ratio
    start: float = Field(0.0, ge=0, lt=1)

    @field_validator("strategy")
    @classmethod
    def _known(cls, v: str) -> str:
        return _one_of(v, STRATEGIES, "strategy")


# MAEConfig fields a recipe does not set: the data section gives the channels or sensors (never stacked
# in_chans) and the crop size (img_size); model.size gives the name.
_FROM_DATA_AND_SIZE = ("img_size", "in_chans", "channels", "sensors", "name")
# Recipes pretrain on norm-pix targets (the MAE paper's better setting) unless they say otherwise, while
# create_model keeps the reference code's plain-pixel default.
_RECIPE_DEFAULTS = {"norm_pix_loss": True}


def _config_keys() -> dict[str, Any]:
    """A recipe key per MAEConfig hyper-parameter, with the config's type, bounds and default; keys the named
    size sets default to None ("the size's value"), so a recipe states only what differs from its size."""
    types, sized = get_type_hints(MAEConfig), set().union(*MODEL_SIZES.values())
    keys: dict[str, Any] = {}
    for f in fields(MAEConfig):
        if f.name not in _FROM_DATA_AND_SIZE:
            bounds = f.metadata.get("bounds", {})
            default = None if f.name in sized else _RECIPE_DEFAULTS.get(f.name, f.default)
            keys[f.name] = (types[f.name] | None if f.name in sized else types[f.name], Field(default, **bounds))
    return keys


_ConfigKeys = create_model("_ConfigKeys", __base__=Section, **_config_keys())


# Model keys that name one of a set: (the set, what the error calls it).
_CHOICES = {"size": (MODEL_SIZES, "model size"), "mask_strategy": (STRATEGIES, "strategy"),
            "objective": (OBJECTIVES, "objective")}  # fmt: skip


class ModelSection(_ConfigKeys):
    """A named ``size``, MAEConfig hyper-parameters over it (same keys), and what only pretraining uses."""

    size: str = "vit_small"
    mask_mix: list[MaskMix] | None = None  # per batch, one strategy drawn by weight
    pretrained: str | None = None  # natural-image MAE / timm ViT weights to start from

    @field_validator("size", "mask_strategy", "objective")
    @classmethod
    def _known(cls, v: str, info: ValidationInfo) -> str:
        return _one_of(v, *_CHOICES[info.field_name])

    @field_validator("mask_mix")
    @classmethod
    def _mix_starts(cls, v: list[MaskMix] | None) -> list[MaskMix] | None:
        if v and min(m.start for m in v) > 0:
            raise ValueError("every entry starts late (start > 0): the first steps would have no strategy to draw")
        return v

    def to_config(
        self, *, img_size: int, channels: list[Any] | None = None, sensors: dict[str, list[Any]] | None = None
    ) -> MAEConfig:
        """The config of the model this section pretrains on ``channels`` (channel-agnostic) or ``sensors``
        (multi-sensor) at ``img_size`` crops: the named size with every key the recipe sets."""
        keys = {k: getattr(self, k) for k in _ConfigKeys.model_fields if getattr(self, k) is not None}
        return model_config(self.size, img_size=img_size, channels=channels, sensors=sensors, **keys)


class Augment(Section):
    hflip: bool = True
    vflip: bool = True
    rot90: bool = True
    resized_crop_scale: tuple[float, float] | None = None  # e.g. (0.5, 1.0); None = off

    @field_validator("resized_crop_scale")
    @classmethod
    def _area_range(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not 0 < v[0] <= v[1] <= 1:
            raise ValueError("is the (smallest, largest) share of the image's area a crop covers: 0 < low <= high <= 1")
        return v


class SensorRadiometry(Section):
    """One sensor's raw values to physical ones (:class:`domainmae.data.radiometry.Radiometry`)."""

    scale: float = Field(1.0, gt=0)
    offset: float = 0.0  # DN added before scaling, where the file's processing baseline is unknown
    nodata: float | None = Field(None, allow_inf_nan=True)  # raw value of missing pixels in files that declare none
    to_db: bool = False  # linear power -> decibels
    db_floor: float = -50.0
    baseline_offsets: dict[str, float] = Field(default_factory=dict)  # {"04.00": -1000}: offset from a baseline on

    @field_validator("baseline_offsets", mode="before")
    @classmethod
    def _baselines(cls, v: Any) -> Any:
        # An unquoted YAML 04.00 is the float 4.0: say how to write it rather than guess.
        bad = [k for k in (v or {}) if not (isinstance(k, str) and re.fullmatch(r"\d{1,2}\.\d{1,2}", k))]
        if bad:
            raise ValueError(f"keys are processing baselines written as quoted strings like '04.00'; got {bad}")
        return v


class DataSection(Section):
    """Where the images come from and how windows are cut; fields a reader does not use are ignored."""

    kind: Literal["microscopy", "sentinel"]
    format: str  # microscopy: manifest|pattern|stack|zarr|ome-zarr; sentinel: bigearthnet|scene|stack
    axes: Literal["CYX", "YXC"] | None = None  # microscopy stack: the layout of plain TIFFs that do not say
    path: str | None = None
    pattern: str | None = None
    channels: list[str] | None = None  # channels given to the model, in order (microscopy)
    # Microscopy: fields may hold any non-empty subset of `channels` (then the model's vocabulary);
    # every global batch is drawn from fields of one channel set.
    allow_channel_subsets: bool = False
    channel_map: dict[str, str] = Field(default_factory=dict)  # source name -> model channel name
    sensors: dict[str, list[Any]] | None = None  # sentinel: {sensor: [band or {name, wavelength}]}
    radiometry: dict[str, SensorRadiometry] = Field(default_factory=dict)  # sentinel: per sensor, from configs/sensors
    crop_size: int = Field(224, gt=0)
    crops_per_read: int = Field(4, gt=0)  # crops cut from one field/region read
    # Crops one epoch draws, spread over the fields/scenes in proportion to their valid area (a few large
    # scenes then make a full epoch); default: one read of crops_per_read crops per field/scene.
    windows_per_epoch: int | None = Field(None, gt=0)
    normalize: Literal["standardize", "percentile", "stats"] = "standardize"
    band_stats: dict[str, dict[str, dict[str, float]]] | None = None  # {sensor: {band: {mean, std}}}
    min_valid_fraction: float = Field(0.5, ge=0, le=1)
    augment: Augment = Field(default_factory=Augment)
    on_error: Literal["raise", "skip"] = "raise"
    num_workers: int = Field(2, ge=0)

    @field_validator("sensors")
    @classmethod
    def _band_specs(cls, v: dict[str, list[Any]] | None) -> dict[str, list[Any]] | None:
        for sensor, bands in (v or {}).items():
            try:
                channel_specs(bands)
            except (TypeError, ValueError) as err:
                raise ValueError(f"sensor {sensor!r}: {err}") from None
        return v

    @field_validator("band_stats")
    @classmethod
    def _mean_and_std(cls, v: dict[str, dict[str, dict[str, float]]] | None) -> Any:
        for sensor, bands in (v or {}).items():
            for band, stats in bands.items():
                if set(stats) != {"mean", "std"} or not all(map(math.isfinite, stats.values())) or stats["std"] < 0:
                    raise ValueError(f"{sensor}.{band} needs a finite mean and a std >= 0, as {{mean: ..., std: ...}}; "
                                     f"got {stats}")  # fmt: skip
        return v

    @model_validator(mode="after")
    def _sensors_of_sentinel_data(self) -> "DataSection":
        if self.kind != "sentinel":
            return self
        if not self.sensors:
            raise ValueError("data.kind sentinel needs data.sensors ({sensor: [bands]}, from configs/sensors)")
        # A radiometry entry for a sensor no config defines is a misspelling (its sensor would read unscaled);
        # one for a built-in sensor the recipe dropped (`data.sensors={s2: ...}`) is left unused.
        unknown = sorted(set(self.radiometry) - set(self.sensors) - _builtin_sensors())
        if unknown:
            raise ValueError(f"data.radiometry names sensors {unknown} that data.sensors does not have "
                             f"({', '.join(self.sensors)})")  # fmt: skip
        return self

    @field_validator("allow_channel_subsets")
    @classmethod
    def _subsets_need_a_vocabulary(cls, v: bool, info: ValidationInfo) -> bool:
        # kind and channels are declared above, so they are validated (or missing after an error) by now.
        if v and (info.data.get("kind") != "microscopy" or not info.data.get("channels")):
            raise ValueError("needs data.kind microscopy and data.channels (the channel vocabulary)")
        return v


class TrainSection(Section):
    batch_size: int = Field(256, gt=0)  # global batch per optimiser step (all processes, all micro-batches)
    micro_batch: int | None = Field(None, gt=0)  # per process and forward pass; default: all of it
    epochs: int = Field(400, gt=0)
    max_steps: int | None = Field(None, gt=0)
    base_lr: float = Field(1.5e-4, gt=0)
    min_lr: float = Field(0.0, ge=0)
    warmup_epochs: float = Field(40, ge=0)
    weight_decay: float = Field(0.05, ge=0)
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (0.9, 0.95)
    grad_clip: float | None = Field(None, gt=0)
    bf16: bool = True  # autocast on CUDA only; CPU runs fp32
    # ddp: every process holds the whole model. fsdp: parameters, gradients and optimiser state sharded over the
    # processes (one unit per transformer block), for ViT-L/H that do not fit with ddp; with bf16 on CUDA the
    # shards are gathered as bf16 and gradients reduced in fp32. fsdp writes sharded checkpoints (step_N.dcp/)
    # that resume on any number of processes; run alone, it trains the unsharded model (nothing to split).
    strategy: Literal["ddp", "fsdp"] = "ddp"
    activation_checkpointing: bool = False  # recompute block activations in backward: less memory, ~1/3 more compute
    compile: bool = False
    seed: int = 0
    log_every: int = Field(10, gt=0)
    checkpoint_every: int = Field(500, gt=0)
    keep_checkpoints: int = Field(3, gt=0)
    preview_every: int | None = Field(None, gt=0)  # default: every checkpoint
    max_bad_steps: int = Field(5, gt=0)  # non-finite losses in a row before aborting
    tensorboard: bool = False

    @model_validator(mode="after")
    def _min_lr_below_peak(self) -> "TrainSection":
        peak = self.base_lr * self.batch_size / 256  # train.optim.scaled_lr
        if self.min_lr > peak:
            raise ValueError(f"train.min_lr {self.min_lr:g} is above the peak lr (base_lr x batch_size / 256 = "
                             f"{peak:g}): the schedule would rise after its warm-up")  # fmt: skip
        return self


class Recipe(Section):
    name: str
    description: str = ""
    model: ModelSection = Field(default_factory=ModelSection)
    data: DataSection
    train: TrainSection = Field(default_factory=TrainSection)

    @model_validator(mode="after")
    def _crop_fits_patches(self) -> "Recipe":
        if self.data.crop_size % self.model.patch_size:
            raise ValueError(
                f"data.crop_size {self.data.crop_size} is not a multiple of model.patch_size {self.model.patch_size}"
            )
        return self


@functools.cache
def _builtin_sensors() -> frozenset[str]:
    """Sensor names the bundled ``configs/sensors`` define (s1, s2, optical)."""
    return frozenset(name for path in (CONFIGS_DIR / "sensors").glob("*.yaml")
                     for name in ((yaml.safe_load(path.read_text()).get("data") or {}).get("sensors") or {}))  # fmt: skip
