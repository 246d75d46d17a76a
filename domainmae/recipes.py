"""Recipes: the YAML that says what to pretrain on what, validated before any data is read.

A recipe is composed from reusable pieces in ``configs/`` (``include:``, merged in order, the
recipe's own keys last), may carry a ``demo:`` section (overrides used when no ``--data`` is
given: bundled samples and a short schedule), and takes ``--set dotted.key=value`` overrides.
Every mistake is reported with the key's path and, for misspellings, the closest valid names.
"""
from __future__ import annotations

import copy
import difflib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import fields
from importlib.resources import files
from pathlib import Path
from typing import Any, Literal, get_type_hints

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)  # fmt: skip

from .atomic import atomic_write_text
from .models import MODEL_SIZES, OBJECTIVES, STRATEGIES, MAEConfig, model_config


def _builtin_dir(name: str) -> Path:
    """A folder of built-in data installed with the package (``recipes``, ``configs``, ``samples``).

    setup.py maps the top-level ``recipes/``, ``configs/`` and ``datasets/samples/`` folders to
    ``domainmae._builtin.*``, so this finds them in a wheel install and in an editable one alike,
    whatever the working directory.
    """
    folder = files(f"{__package__}._builtin.{name}")
    if not isinstance(folder, Path):  # e.g. imported from a zip: the readers need real files
        raise ImportError(f"domainmae's built-in {name} are not on the file system ({folder}); install it unzipped")
    return folder


RECIPES_DIR = _builtin_dir("recipes")
CONFIGS_DIR = _builtin_dir("configs")
SAMPLES_DIR = _builtin_dir("samples")
# Demo sections name bundled samples as in the checkout; they resolve against the installed copy.
SAMPLES_PREFIX = ("datasets", "samples")


class RecipeError(ValueError):
    """A recipe that cannot be used; the message names the key(s) at fault."""


def _one_of(value: str, allowed: Iterable[str], what: str) -> str:
    """``value`` if it is one of ``allowed``, else an error listing them."""
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; choose one of {', '.join(allowed)}")
    return value


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


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


class ModelSection(_ConfigKeys):
    """A named ``size``, MAEConfig hyper-parameters over it (same keys), and what only pretraining uses."""

    size: str = "vit_small"
    mask_mix: list[MaskMix] | None = None  # per batch, one strategy drawn by weight
    pretrained: str | None = None  # natural-image MAE / timm ViT weights to start from

    @field_validator("size")
    @classmethod
    def _size(cls, v: str) -> str:
        return _one_of(v, MODEL_SIZES, "model size")

    @field_validator("mask_mix")
    @classmethod
    def _mix_starts(cls, v: list[MaskMix] | None) -> list[MaskMix] | None:
        if v and min(m.start for m in v) > 0:
            raise ValueError("every entry starts late (start > 0): the first steps would have no strategy to draw")
        return v

    @field_validator("mask_strategy")
    @classmethod
    def _strategy(cls, v: str) -> str:
        return _one_of(v, STRATEGIES, "strategy")

    @field_validator("objective")
    @classmethod
    def _objective(cls, v: str) -> str:
        return _one_of(v, OBJECTIVES, "objective")

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


class SensorRadiometry(Section):
    """One sensor's raw values to physical ones (:class:`domainmae.data.radiometry.Radiometry`)."""

    scale: float = Field(1.0, gt=0)
    offset: float = 0.0  # DN added before scaling, where the file's processing baseline is unknown
    nodata: float | None = None  # raw value of missing pixels in files that declare none
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
    betas: tuple[float, float] = (0.9, 0.95)
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


# --------------------------------------------------------------------------- loading
def _merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """Deep merge: mappings merge key by key, anything else in ``top`` replaces."""
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise RecipeError(f"recipe file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise RecipeError(f"{path} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise RecipeError(f"{path} must hold a mapping at the top level")
    return data


def _compose(path: Path) -> dict[str, Any]:
    """A YAML file with its ``include:`` pieces (paths relative to ``configs/``) merged under it."""
    data = _read_yaml(path)
    merged: dict[str, Any] = {}
    for piece in data.pop("include", []) or []:
        merged = _merge(merged, _compose(CONFIGS_DIR / piece))
    return _merge(merged, data)


def recipe_path(name_or_path: str | Path) -> Path:
    """``recipes/<name>.yaml`` for a built-in name, else the path itself."""
    candidate = RECIPES_DIR / f"{name_or_path}.yaml"
    if candidate.is_file():
        return candidate
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    raise RecipeError(f"unknown recipe {str(name_or_path)!r}; built-in recipes: {', '.join(list_recipes())}")


def list_recipes() -> dict[str, str]:
    """Built-in recipe names with their one-line descriptions."""
    return {p.stem: (_read_yaml(p).get("description") or "").strip().splitlines()[0]
            for p in sorted(RECIPES_DIR.glob("*.yaml"))}  # fmt: skip


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.batch_size=64"`` -> (["train", "batch_size"], 64); values are read as YAML."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise RecipeError(f"override {text!r} must look like dotted.key=value")
    try:
        return key.strip().split("."), yaml.safe_load(value)
    except yaml.YAMLError as err:
        raise RecipeError(f"override {text!r}: the value is not valid YAML ({err.problem or err})") from err


def _set(data: dict[str, Any], keys: Sequence[str], value: Any) -> None:
    node = data
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise RecipeError(f"cannot set {'.'.join(keys)}: {k} is not a section")
    node[keys[-1]] = value


def _allowed(model: type[BaseModel], loc: Sequence[Any]) -> list[str]:
    """Valid field names at ``loc`` (for 'did you mean')."""
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def _explain(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = [p for p in e["loc"]]
        where = ".".join(str(p) for p in loc) or "recipe"
        if e["type"] == "extra_forbidden":
            allowed = _allowed(Recipe, loc)
            close = difflib.get_close_matches(str(loc[-1]), allowed, n=3)
            hint = f"did you mean {', '.join(close)}?" if close else f"valid keys: {', '.join(allowed)}"
            lines.append(f"{where}: unknown key; {hint}")
        elif e["type"] == "missing":
            lines.append(f"{where}: required key is missing")
        else:
            got = e.get("input")
            lines.append(f"{where}: {e['msg']} (got {got!r})")
    return "invalid recipe:\n  " + "\n  ".join(lines)


def bundled_sample_path(path: str) -> str:
    """A demo section's data path: ``datasets/samples/...`` names the bundled samples installed with the
    package (found wherever the command runs); any other path is left as written (relative to the working
    directory, like ``--data``)."""
    parts = Path(path).parts
    if parts[: len(SAMPLES_PREFIX)] == SAMPLES_PREFIX:
        return str(SAMPLES_DIR.joinpath(*parts[len(SAMPLES_PREFIX) :]))
    return path


def resolve_recipe(data: Mapping[str, Any], overrides: Sequence[str] = (), demo: bool = False) -> Recipe:
    """Validate a recipe dict after applying the demo section (if asked) and ``--set`` overrides."""
    data = copy.deepcopy(dict(data))
    demo_section = data.pop("demo", None)
    if demo:
        if not demo_section:
            raise RecipeError(f"recipe {data.get('name')!r} has no demo section; pass --data")
        demo_path = (demo_section.get("data") or {}).get("path")
        if demo_path:
            demo_section = _merge(demo_section, {"data": {"path": bundled_sample_path(demo_path)}})
        data = _merge(data, demo_section)
    for text in overrides:
        _set(data, *parse_override(text))
    try:
        return Recipe.model_validate(data)
    except ValidationError as err:
        raise RecipeError(_explain(err)) from None


def load_recipe(name_or_path: str | Path, overrides: Sequence[str] = (), demo: bool = False) -> Recipe:
    """Load, compose and validate a recipe by built-in name or YAML path.

    Args:
        overrides: ``dotted.key=value`` strings applied last.
        demo: apply the recipe's ``demo:`` section (bundled samples, short schedule).
    """
    return resolve_recipe(_compose(recipe_path(name_or_path)), overrides, demo)


def save_recipe(recipe: Recipe, path: Path) -> None:
    """Write the resolved recipe as YAML (what a run actually used)."""
    atomic_write_text(path, yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))
