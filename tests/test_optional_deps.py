"""A feature whose optional package is missing says which extra to install, in one line, before any long work
(embedding every image, setting up a run) and without leaving outputs behind."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from domainmae.cli import main
from domainmae.export.stream import Export
from domainmae.train import pretrain

TINY_FLY = ["data.crop_size=64", "model.patch_size=16", "model.embed_dim=32", "model.depth=1", "model.num_heads=2",
            "model.decoder_embed_dim=16", "model.decoder_depth=1", "model.decoder_num_heads=2", "train.batch_size=4",
            "data.crops_per_read=4"]  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pretrain("cellpainting", output=tmp_path_factory.mktemp("run") / "run", max_steps=1, overrides=TINY_FLY,
                    quiet=True)  # fmt: skip


def _embedded(*args, **kwargs):
    raise AssertionError("images were embedded before the missing package was found")


def _one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str], install: str) -> None:
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and install in err, err
    assert err.startswith(f"domainmae {argv[0]}: error: ") and err.count("\n") == 1, err


def test_h5ad_output_without_anndata(run, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "anndata", None)  # what `import anndata` sees when it is not installed
    monkeypatch.setattr(Export, "forward", _embedded)
    out = tmp_path / "cells.h5ad"
    _one_line_error(capsys, ["embed", "--checkpoint", str(run), "--output", str(out), "--quiet"],
                    "pip install 'domainmae[h5ad]'")  # fmt: skip
    assert not out.exists()


def test_align_without_open_clip(run, tmp_path, capsys, monkeypatch) -> None:
    pytest.importorskip("open_clip")  # to make the aligned folder that embed --aligned then reads without it
    from domainmae.align import TextTowerConfig, align

    aligned = tmp_path / "aligned"
    align(run, "site {Metadata_Site}", aligned, text=TextTowerConfig(embed_dim=16, width=32, heads=2, layers=1,
                                                                      context_length=16), steps=1)  # fmt: skip
    monkeypatch.setitem(sys.modules, "open_clip", None)
    monkeypatch.setattr(Export, "forward", _embedded)
    _one_line_error(capsys, ["align", "--checkpoint", str(run), "--text", "site {Metadata_Site}", "--output",
                             str(tmp_path / "again")], "pip install 'domainmae[align]'")  # fmt: skip
    _one_line_error(capsys, ["embed", "--checkpoint", str(run), "--aligned", str(aligned), "--output",
                             str(tmp_path / "a.parquet"), "--quiet"], "pip install 'domainmae[align]'")  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["aligned"]


def test_tensorboard_without_the_package(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    out = tmp_path / "run"
    _one_line_error(capsys, ["pretrain", "--recipe", "cellpainting", "--output", str(out), "--max-steps", "1",
                             "--set", "train.tensorboard=true"], "pip install tensorboard")  # fmt: skip
    assert not out.exists()  # no folder that looks like a run


def test_remote_data_without_fsspec(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "fsspec", None)
    url = "http://127.0.0.1:9/plate/load_data.csv"
    _one_line_error(capsys, ["inspect", url, "--recipe", "cellpainting"], "pip install 'domainmae[remote]'")
