"""One model config: recipes and ``create_model`` build exactly the models they built before it was one.

``snapshots/model_configs.json`` holds, per case, the ``config.to_dict()`` and a digest of the parameter
names and shapes of the model built before the recipe section and the factory shared one config; run this
file as a script (``python -m tests.test_model_config``) to rewrite it after a deliberate change.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

import domainmae
from domainmae.models import MODEL_SIZES, model_config
from domainmae.recipes import RecipeError, list_recipes, load_recipe
from domainmae.train.loop import _model_for

SNAPSHOT = Path(__file__).parent / "snapshots" / "model_configs.json"
TOKENS: dict[str, dict[str, Any]] = {
    "standard": {},
    "channel": {"channels": ["DNA", "ER", "RNA", "AGP", "Mito"]},
    "multisensor": {"sensors": {"s2": [{"name": "B04", "wavelength": 664.6}, "B08"], "s1": ["VV", "VH"]}},
}


def _recipe_model(name: str, demo: bool) -> domainmae.MaskedAutoencoder:
    """The model pretraining builds for a built-in recipe, with the channels/sensors its data section lists."""
    recipe = load_recipe(name, demo=demo)
    data = recipe.data
    if data.kind == "microscopy":  # as pipeline.build_training_data hands them to the engine
        tokens = SimpleNamespace(channels=list(data.channels), sensors=None)
    else:
        tokens = SimpleNamespace(channels=None, sensors={k: list(v) for k, v in data.sensors.items()})
    return _model_for(recipe, tokens)


def _builders() -> dict[str, Any]:
    cases: dict[str, Any] = {}
    for name in list_recipes():
        for demo in (False, True):
            cases[f"recipe:{name}{':demo' if demo else ''}"] = lambda n=name, d=demo: _recipe_model(n, d)
    for size in MODEL_SIZES:
        for kind, tokens in TOKENS.items():
            cases[f"create_model:{size}:{kind}"] = lambda s=size, t=tokens: domainmae.create_model(s, **t)
    cases["create_model:{}"] = lambda: domainmae.create_model({})
    return cases


def _describe(build: Any) -> dict[str, Any]:
    """The config and a digest of every parameter's name and shape (built on the meta device: no memory)."""
    with torch.device("meta"):
        model = build()
    shapes = [(name, list(p.shape)) for name, p in model.named_parameters()]
    digest = hashlib.sha256(json.dumps(shapes).encode()).hexdigest()
    return {"config": model.config.to_dict(), "parameters": sum(p.numel() for p in model.parameters()),
            "shapes_sha256": digest}  # fmt: skip


@pytest.mark.parametrize("case", sorted(_builders()))
def test_model_is_the_one_built_before(case):
    expected = json.loads(SNAPSHOT.read_text())
    assert _describe(_builders()[case]) == expected[case]


@pytest.mark.parametrize("case", sorted(_builders()))
def test_configs_saved_before_still_load(case):
    saved = json.loads(SNAPSHOT.read_text())[case]["config"]  # as checkpoints and config.json stored it
    assert model_config(saved).to_dict() == saved


def test_recipe_model_keys_are_the_config_fields_with_their_bounds():
    recipe = load_recipe("cellpainting", ["model.embed_dim=64", "model.num_heads=2", "model.mlp_ratio=2"])
    config = recipe.model.to_config(img_size=32, channels=["DNA"])
    assert (config.name, config.embed_dim, config.depth, config.mlp_ratio) == ("vit_small", 64, 12, 2.0)
    assert config.norm_pix_loss and config.img_size == 32 and config.kind == "channel"
    with pytest.raises(RecipeError, match=r"model\.decoder_depth: .*greater than 0"):
        load_recipe("cellpainting", ["model.decoder_depth=0"])
    with pytest.raises(RecipeError, match=r"model\.img_size: unknown key"):  # the crop size decides it
        load_recipe("cellpainting", ["model.img_size=64"])


def test_every_snapshot_case_is_still_built():
    assert sorted(_builders()) == sorted(json.loads(SNAPSHOT.read_text()))


if __name__ == "__main__":
    SNAPSHOT.write_text(json.dumps({k: _describe(b) for k, b in sorted(_builders().items())}, indent=1) + "\n")
