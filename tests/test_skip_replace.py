"""``data.on_error=skip`` during training: an unreadable item is replaced by a deterministic stand-in, so
the step keeps its size, every process and a resumed run pick the same one, and skips are counted."""
import logging
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from domainmae.data import FieldError
from domainmae.data.loader import SeededItems, collate_samples, skipped_reads
from domainmae.train import pretrain
from domainmae.train.logging import read_metrics

from .conftest import SAMPLES


class Flaky(Dataset):
    """Item ``i``: two crops whose pixels say ``i``, drawn from the seeded RNG; items in ``bad`` fail to read."""

    def __init__(self, n: int, bad: set[int]) -> None:
        self.n, self.bad = n, bad

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> list[dict]:
        if index in self.bad:
            raise FieldError(f"cannot read field{index}.tif")
        noise = torch.rand(())
        return [{"image": torch.full((1, 4, 4), index + noise), "channels": ("a",), "meta": {"field": index}} for _ in range(2)]


def test_an_unreadable_item_is_replaced_by_the_same_stand_in_every_time():
    first = SeededItems(Flaky(10, {3}), on_error="skip")[(3, 123)]
    again = SeededItems(Flaky(10, {3}), on_error="skip")[(3, 123)]  # another process, or a resumed run
    assert len(first) == 2 and first[0]["meta"]["field"] != 3
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(first, again))
    batch = collate_samples([first, SeededItems(Flaky(10, {3}), on_error="skip")[(4, 5)]])
    assert batch["images"].shape[0] == 4  # the step keeps its size
    assert skipped_reads(batch) == ["cannot read field3.tif"]  # counted once per failed read, not per crop


def test_stand_ins_come_from_the_same_group():
    items = SeededItems(Flaky(10, {3}), on_error="skip", groups=["x"] * 5 + ["y"] * 5)
    picks = {items[(3, seed)][0]["meta"]["field"] for seed in range(40)}
    assert picks <= {0, 1, 2, 4} and len(picks) > 1


def test_when_nothing_can_be_read_one_error_names_the_files():
    with pytest.raises(FieldError, match=r"data\.on_error.*field0\.tif") as err:
        SeededItems(Flaky(4, {0, 1, 2, 3}), on_error="skip")[(0, 7)]
    assert all(f"field{i}.tif" in str(err.value) for i in range(4))  # the stand-ins' failures too


def test_without_skip_the_read_error_propagates():
    with pytest.raises(FieldError, match="field3.tif"):
        SeededItems(Flaky(10, {3}))[(3, 1)]


# ------------------------------------------------------------------- end to end on the bundled fields
SKIP = ["data.on_error=skip", "data.crops_per_read=4", "train.log_every=1", "train.checkpoint_every=3",
        "train.preview_every=1000"]  # fmt: skip


def _corrupt_copy(tmp_path: Path, *names: str) -> str:
    fly = tmp_path / "fly"
    shutil.copytree(SAMPLES / "examplefly", fly)
    for name in names:
        (fly / name).write_text("not a tiff")
    return str(fly / "load_data.csv")


@pytest.mark.slow
def test_training_with_an_unreadable_field_keeps_going_counts_and_resumes_exactly(tmp_path, caplog):
    manifest = _corrupt_copy(tmp_path, "01_POS076_F.TIF")
    overrides = [f"data.path={manifest}", *SKIP]
    with caplog.at_level(logging.WARNING, logger="domainmae.train.loop"):
        straight = pretrain("cellpainting", output=tmp_path / "straight", max_steps=6, overrides=overrides, quiet=True)
    records = read_metrics(straight / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 7))
    skipped = [r["skipped"] for r in records]  # running total of the run
    assert skipped == sorted(skipped) and skipped[-1] > 0
    assert "01_POS076_F.TIF" in caplog.text and f"{skipped[-1]} unreadable" in caplog.text  # the end-of-run summary

    crashed = tmp_path / "crashed"  # the run directory as a crash right after step 3 left it
    shutil.copytree(straight, crashed)
    shutil.copyfile(crashed / "checkpoints" / "step_00000003.ckpt", crashed / "checkpoints" / "last.ckpt")
    resumed = read_metrics(pretrain("cellpainting", output=crashed, resume=True, quiet=True) / "metrics.jsonl")
    assert [(r["loss"], r["skipped"]) for r in resumed] == [(r["loss"], r["skipped"]) for r in records]


@pytest.mark.slow
def test_training_on_unreadable_fields_only_is_one_clear_error(tmp_path):
    manifest = _corrupt_copy(tmp_path, "01_POS002_D.TIF", "01_POS076_D.TIF", "01_POS218_D.TIF")
    with pytest.raises(FieldError, match=r"data\.on_error.*01_POS\d+_D\.TIF"):
        pretrain("cellpainting", output=tmp_path / "run", max_steps=2, overrides=[f"data.path={manifest}", *SKIP], quiet=True)


class _Draws(Dataset):
    """Each item: what it draws from torch's, numpy's and Python's global generators."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> tuple[int, float, float]:
        return int(torch.randint(2**62, ()).item()), float(np.random.rand()), random.random()


def test_an_item_draws_the_stream_its_key_seeds_whatever_came_before():
    """The same draws as after ``torch.manual_seed(seed)`` (runs resume onto the same data), and independent
    of anything drawn before the read."""
    items = SeededItems(_Draws())
    torch.manual_seed(7), np.random.seed(7), random.seed(7)
    expected = _Draws()[0]
    torch.rand(5), np.random.rand(3), random.random()  # draws before the read must not matter
    assert items[(0, 7)] == expected
    assert items[(1, 7)] == expected and items[(0, 8)] != expected
