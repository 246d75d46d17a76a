"""Sharing models safely: safetensors + config.json, export-model, weights-only checkpoints, hub ids."""
import json
from pathlib import Path

import huggingface_hub
import pytest
import torch
import yaml

import domainmae
from domainmae.cli import main
from domainmae.export import read_embeddings
from domainmae.train import load_checkpoint, pretrain
from domainmae.train.checkpoint import FORMAT

from .conftest import TINY

CHANNELS = [{"name": "DNA", "wavelength": 461.0}, {"name": "Mito", "wavelength": 599.0}]


def _tiny() -> domainmae.MaskedAutoencoder:
    return domainmae.create_model("vit_tiny", channels=CHANNELS, **TINY).eval()


def test_save_pretrained_round_trips_weights_and_config(tmp_path):
    model = _tiny()
    folder = model.save_pretrained(tmp_path / "shared", normalization={"method": "standardize", "band_stats": None})
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["model_config"]["channels"] == CHANNELS and config["model_config"]["patch_size"] == 8
    assert config["normalization"] == {"method": "standardize", "band_stats": None}
    loaded = domainmae.MaskedAutoencoder.from_pretrained(folder)
    assert loaded.config == model.config and not loaded.training
    images = torch.randn(2, 2, 32, 32)
    torch.testing.assert_close(loaded.embed(images, ["DNA", "Mito"]), model.embed(images, ["DNA", "Mito"]), rtol=0, atol=0)


def test_from_pretrained_errors_name_the_folder_or_hub_id(tmp_path, monkeypatch):
    folder = _tiny().save_pretrained(tmp_path / "shared")
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"shared.*model\.safetensors"):
        domainmae.MaskedAutoencoder.from_pretrained(folder)
    # A name that is no existing folder is a Hub id; offline, the error names it.
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(FileNotFoundError, match="someone/no-such-model.*Hugging Face Hub"):
        domainmae.MaskedAutoencoder.from_pretrained("someone/no-such-model")
    with pytest.raises(FileNotFoundError, match="runs/typo"):
        domainmae.MaskedAutoencoder.from_pretrained("runs/typo")


def test_a_hub_id_loads_the_downloaded_folder(tmp_path, monkeypatch):
    folder = _tiny().save_pretrained(tmp_path / "snapshot")
    asked = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id: asked.append(repo_id) or str(folder))
    loaded = domainmae.MaskedAutoencoder.from_pretrained("someone/tiny-mae")
    assert asked == ["someone/tiny-mae"] and loaded.config == _tiny().config
    asked.clear()
    domainmae.MaskedAutoencoder.from_pretrained(folder)  # an existing folder never asks the Hub
    assert asked == []


class _WritesAFile:
    """Unpickling this calls ``open(path, "w")``: what a hostile checkpoint could do."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


def test_a_malicious_checkpoint_is_refused_without_running_it(tmp_path, capsys):
    marker = tmp_path / "pwned"
    bad = tmp_path / "run" / "checkpoints" / "last.ckpt"
    bad.parent.mkdir(parents=True)
    torch.save({"format": FORMAT, "model": _WritesAFile(marker)}, bad)
    with pytest.raises(ValueError, match=r"last\.ckpt"):
        load_checkpoint(bad)
    assert main(["embed", "--checkpoint", str(tmp_path / "run"), "--output", str(tmp_path / "e.parquet")]) == 1
    assert "last.ckpt" in capsys.readouterr().err
    assert not marker.exists()


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A two-step run of the sentinel demo (tiny model, band statistics measured on the data)."""
    out = tmp_path_factory.mktemp("pretrained") / "run"
    return pretrain("sentinel", output=out, max_steps=2, overrides=["train.checkpoint_every=2"], quiet=True)


@pytest.mark.slow
def test_pretrain_checkpoints_load_weights_only(run, monkeypatch):
    calls = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    model, state = load_checkpoint(run)
    assert [kw.get("weights_only") for kw in calls] == [True]
    assert state["step"] == 2 and "optimizer" in state and "rng" in state  # resume state is all there


@pytest.mark.slow
def test_exported_model_embeds_and_reconstructs_as_the_run(run, tmp_path, capsys):
    shared = tmp_path / "shared"
    assert main(["export-model", str(run), str(shared)]) == 0
    assert sorted(p.name for p in shared.iterdir()) == ["config.json", "model.safetensors", "recipe.yaml"]
    config = json.loads((shared / "config.json").read_text())
    recipe = yaml.safe_load((shared / "recipe.yaml").read_text())
    assert config["step"] == 2 and config["crop_size"] == recipe["data"]["crop_size"] == 64
    assert config["normalization"]["method"] == "stats"
    assert set(config["normalization"]["band_stats"]) == {"s2", "s1"}  # measured by the run
    assert config["model_config"]["sensors"]["s2"][1]["wavelength"] > 0  # band wavelengths travel with it

    run_model, _ = load_checkpoint(run)
    assert domainmae.MaskedAutoencoder.from_pretrained(shared).config == run_model.config

    outputs = {}
    for name, source in (("run", run), ("shared", shared)):
        outputs[name] = tmp_path / f"{name}.parquet"
        args = ["--output", str(outputs[name]), "--crs", "EPSG:4326", "--quiet"]  # the demo scenes span 3 UTM zones
        assert main(["embed", "--checkpoint", str(source), *args]) == 0
    (a, features, prov_a), (b, _, prov_b) = read_embeddings(outputs["run"]), read_embeddings(outputs["shared"])
    assert len(a) > 0 and a[features].equals(b[features])
    assert prov_b["checkpoint"] == str(shared / "model.safetensors") and prov_b["step"] == prov_a["step"] == 2
    assert prov_b["model_config"] == prov_a["model_config"] and prov_b["recipe"] == prov_a["recipe"] == "sentinel"

    png = tmp_path / "rec.png"
    assert main(["reconstruct", "--checkpoint", str(shared), "--output", str(png)]) == 0
    assert png.is_file()

    # An existing folder is kept unless asked; a run directory is never replaced by an export.
    assert main(["export-model", str(run), str(shared)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main(["export-model", str(shared), str(shared), "--overwrite"]) == 0
    assert main(["export-model", str(shared), str(run), "--overwrite"]) == 1
    assert "not an exported model" in capsys.readouterr().err and (run / "checkpoints" / "last.ckpt").is_file()
