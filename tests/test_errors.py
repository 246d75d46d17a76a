"""Errors a user reads: every kind says what was expected, what was found, and what to change.

No bare exception text (``error: 's2'``) may reach the terminal.
"""
from __future__ import annotations

import pytest

import domainmae.models
from domainmae.cli import main
from domainmae.train.loop import micro_batch_rows

from .conftest import SAMPLES

FLY = str(SAMPLES / "examplefly" / "load_data.csv")


def _fail(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 1
    return capsys.readouterr().err


def test_a_lookup_error_with_a_message_is_printed_as_the_message(capsys, monkeypatch):
    def broken(name: str) -> None:
        raise KeyError("channel 'XX' is not known; this model knows ['DNA']")

    monkeypatch.setattr(domainmae.models, "model_config", broken)
    err = _fail(capsys, ["models"])
    # str(KeyError(msg)) is repr(msg): the message must not arrive wrapped in quotes.
    assert "error: channel 'XX' is not known; this model knows ['DNA']" in err
    assert "error: \"" not in err


def test_a_bare_missing_key_names_the_key_and_where_it_was_looked_up(capsys, monkeypatch):
    def broken(name: str) -> None:
        return {"s1": 1}["s2"]

    monkeypatch.setattr(domainmae.models, "model_config", broken)
    err = _fail(capsys, ["models"])
    assert "error: 's2'" not in err
    assert "no entry 's2'" in err and "test_errors.py" in err  # the key and the place it was looked up
    assert "please report" in err


def test_lowering_only_the_batch_size_trains_with_smaller_micro_batches(tmp_path, capsys):
    # The recipe's micro_batch (a memory cap) is larger than the new batch: one micro-batch of the whole batch.
    argv = ["pretrain", "--recipe", "cellpainting", "--output", str(tmp_path / "run"), "--max-steps", "1", "--quiet",
            "--set", "train.micro_batch=256", "--batch-size", "16"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err


@pytest.mark.parametrize(
    ("batch", "micro", "world", "k", "rows"),
    [(16, 256, 1, 8, 16), (4096, 256, 8, 4, 256), (24, 16, 1, 4, 12), (32, None, 2, 8, 16), (40, 16, 1, 8, 8)],
)
def test_micro_batch_is_the_largest_split_within_the_cap(batch, micro, world, k, rows):
    assert micro_batch_rows(batch, micro, world, k) == rows


def test_a_batch_that_cannot_split_names_the_keys_and_a_value_that_works(tmp_path, capsys):
    argv = ["pretrain", "--recipe", "cellpainting", "--output", str(tmp_path / "run"), "--max-steps", "1", "--quiet",
            "--batch-size", "12"]  # fmt: skip
    err = _fail(capsys, argv)
    # The demo cuts 8 crops per field read: 12 crops cannot be whole reads.
    assert "train.batch_size 12" in err and "data.crops_per_read 8" in err
    assert "train.batch_size=8" in err and "train.batch_size=16" in err


def test_a_recipe_key_error_names_the_key_and_close_names(capsys, tmp_path):
    err = _fail(capsys, ["pretrain", "--recipe", "cellpainting", "--set", "train.batch_sise=8",
                         "--output", str(tmp_path / "r")])  # fmt: skip
    assert "train.batch_sise" in err and "batch_size" in err


def test_a_missing_data_path_names_the_path(capsys, tmp_path):
    missing = tmp_path / "nowhere" / "load_data.csv"
    err = _fail(capsys, ["pretrain", "--recipe", "cellpainting", "--data", str(missing),
                         "--output", str(tmp_path / "r")])  # fmt: skip
    assert str(missing) in err and "does not exist" in err


@pytest.mark.parametrize("overrides", [[], ["--set", "data.format=scene", "--set", "data.sensors={s2: [B02]}"]])
def test_a_file_given_to_a_format_that_reads_a_folder_says_so(capsys, tmp_path, overrides):
    # The sentinel recipe with a manifest: it looked for <load_data.csv>/BigEarthNet-S1-Example, or for band
    # files "under" the CSV, and said neither was there.
    err = _fail(capsys, ["pretrain", "--recipe", "sentinel", "--data", FLY, *overrides, "--output", str(tmp_path / "r")])
    assert f"data.path {FLY} is a file, but format" in err and "reads a folder" in err


def test_channels_that_do_not_match_the_data_name_both_sides(capsys, tmp_path):
    # The full recipe expects the five Cell Painting stains; the fly plate has DNA, PH3 and Actin.
    err = _fail(capsys, ["pretrain", "--recipe", "cellpainting", "--data", FLY, "--output", str(tmp_path / "r")])
    assert "expected channels ['DNA', 'ER', 'RNA', 'AGP', 'Mito']" in err and "found ['DNA', 'PH3', 'Actin']" in err
    assert "data.channels" in err  # the key to change
