"""Recipes: the YAML that says what to pretrain on what, validated before any data is read.

A recipe is composed from reusable pieces in ``configs/`` (``include:``, merged in order, the
recipe's own keys last), may carry a ``demo:`` section (overrides used when no ``--data`` is
given: bundled samples and a short schedule), and takes ``--set dotted.key=value`` overrides.
Every mistake is reported with the key's path and, for misspellings, the closest valid names.
"""
from __future__ import annotations

import copy
import difflib
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from ._builtin import CONFIGS_DIR, RECIPES_DIR, SAMPLES_DIR, SAMPLES_PREFIX
from .atomic import atomic_write_text
from .recipe_schema import (  # the schema's classes are the recipe API too
    Augment,
    DataSection,
    MaskMix,
    ModelSection,
    Recipe,
    SensorRadiometry,
    TrainSection,
)  # fmt: skip

__all__ = ["Augment", "DataSection", "MaskMix", "ModelSection", "Recipe", "RecipeError", "SensorRadiometry",
           "TrainSection", "list_recipes", "load_recipe", "parse_override", "recipe_path", "resolve_recipe",
           "save_recipe", "bundled_sample_path", "existing_or_bundled", "CONFIGS_DIR", "RECIPES_DIR",
           "SAMPLES_DIR"]  # fmt: skip


class RecipeError(ValueError):
    """A recipe that cannot be used; the message names the key(s) at fault."""



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
    """Valid field names at ``loc`` (for 'did you mean'), through optional, dict and list fields
    (``data.radiometry.<sensor>.<key>``, ``model.mask_mix.<i>.<key>``)."""
    node: Any = model
    parts = list(loc[:-1])
    while parts:
        origin, args = get_origin(node), [a for a in get_args(node) if a is not type(None)]
        if isinstance(node, type) and issubclass(node, BaseModel):
            node = getattr(node.model_fields.get(str(parts.pop(0))), "annotation", None)
        elif origin in (Union, types.UnionType) and len(args) == 1:  # X | None
            node = args[0]
        elif origin in (dict, list) and args:  # the part is a key or an index: its value's type
            node, _ = args[-1], parts.pop(0)
        else:
            return []
    return list(node.model_fields) if isinstance(node, type) and issubclass(node, BaseModel) else []


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
            got = e.get("input")  # a section's own check gets the whole section: not worth echoing
            lines.append(f"{where}: {e['msg']}" + ("" if isinstance(got, Mapping) else f" (got {got!r})"))
    return "invalid recipe:\n  " + "\n  ".join(lines)


def bundled_sample_path(path: str) -> str:
    """A demo section's data path: ``datasets/samples/...`` names the bundled samples installed with the
    package (found wherever the command runs); any other path is left as written (relative to the working
    directory, like ``--data``)."""
    parts = Path(path).parts
    if parts[: len(SAMPLES_PREFIX)] == SAMPLES_PREFIX:
        return str(SAMPLES_DIR.joinpath(*parts[len(SAMPLES_PREFIX) :]))
    return path


def existing_or_bundled(path: Path) -> Path:
    """``path`` when it exists; else, for a ``datasets/samples/...`` path, the bundled sample of that name when
    there is one, so the README's sample commands run from a wheel install in any folder, as the demos do."""
    if path.exists():
        return path
    bundled = Path(bundled_sample_path(str(path)))
    return bundled if bundled.exists() else path


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
