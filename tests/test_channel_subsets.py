"""Fields that hold different subsets of the channel vocabulary (``data.allow_channel_subsets``):
readers, the grouped step sampler, and pretraining on the real ExampleFly images."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import tifffile

from domainmae.data.fields import resolve_channels
from domainmae.data.loader import StepBatchSampler
from domainmae.data.tiff import pattern_fields
from domainmae.pipeline import build_training_data, microscopy_fields
from domainmae.recipes import RecipeError, load_recipe
from domainmae.train import load_checkpoint, pretrain
from domainmae.train.logging import read_metrics
from domainmae.train.loop import Trainer

from .conftest import SAMPLES

FLY = SAMPLES / "examplefly"
VOCAB = ["DNA", "PH3", "Actin"]
FULL, NO_ACTIN = ("DNA", "PH3", "Actin"), ("DNA", "PH3")


# --- the grouped sampler --------------------------------------------------------------------------------


def _global_batches(sampler: StepBatchSampler, micro: int = 1) -> list[list[tuple[int, int]]]:
    batches = list(sampler)
    return [sum(batches[s * micro : (s + 1) * micro], []) for s in range(len(batches) // micro)]


# Two interleaved groups of different sizes: 10 items of "a", 7 of "b".
GROUPS = ["a", "b"] * 7 + ["a"] * 3


def test_grouped_steps_hold_one_group_and_cover_each_group_per_epoch():
    sampler = StepBatchSampler(17, 4, seed=5, total_steps=9, groups=GROUPS)
    assert sampler.steps_per_epoch == 10 // 4 + 7 // 4
    steps = _global_batches(sampler)
    assert all(len({GROUPS[i] for i, _ in step}) == 1 for step in steps)
    for epoch in range(3):
        items = [i for step in steps[3 * epoch : 3 * epoch + 3] for i, _ in step]
        assert len(set(items)) == 12  # distinct within the epoch; each group dropped its own remainder
        assert sorted(GROUPS[i] for i in items) == ["a"] * 8 + ["b"] * 4
    # the order of groups changes between epochs (the batches are shuffled, not group after group)
    assert len({tuple(GROUPS[step[0][0]] for step in steps[e * 3 : e * 3 + 3]) for e in range(3)}) > 1
    assert len({key[1] for step in steps for key in step}) == 36  # every item of every epoch its own seed


def test_grouped_stream_is_deterministic_resumable_and_split_like_one_process():
    kw = {"seed": 2, "total_steps": 8, "groups": GROUPS}
    one = _global_batches(StepBatchSampler(17, 4, **kw))
    assert one == _global_batches(StepBatchSampler(17, 4, **kw))
    assert _global_batches(StepBatchSampler(17, 4, start_step=5, **kw)) == one[5:]
    ranks = [list(StepBatchSampler(17, 4, world=2, rank=r, micro=2, **kw)) for r in (0, 1)]
    for step in range(8):  # micro-batch j of rank r is chunk j * world + r
        chunks = [ranks[0][2 * step], ranks[1][2 * step], ranks[0][2 * step + 1], ranks[1][2 * step + 1]]
        assert sum(chunks, []) == one[step]


def test_a_single_group_keeps_the_plain_stream():
    plain = _global_batches(StepBatchSampler(20, 8, seed=3, total_steps=6))
    assert _global_batches(StepBatchSampler(20, 8, seed=3, total_steps=6, groups=["x"] * 20)) == plain
    for epoch in range(3):  # the documented order: one permutation of all items per epoch
        order = np.random.default_rng([3, epoch]).permutation(20)[:16].tolist()
        assert [i for step in plain[2 * epoch : 2 * epoch + 2] for i, _ in step] == order


def test_a_group_smaller_than_a_step_is_refused():
    with pytest.raises(ValueError, match=r"group\(s\) \{'b': 3\}.*the 4 one step needs"):
        StepBatchSampler(9, 4, total_steps=1, groups=["a"] * 6 + ["b"] * 3)


# --- readers --------------------------------------------------------------------------------------------


def test_resolve_channels_takes_the_vocabulary_order_and_names_strangers():
    assert resolve_channels(["Actin", "DNA"], "src", channels=VOCAB, subsets=True) == (("DNA", "Actin"), [1, 0])
    with pytest.raises(ValueError, match=r"src: channels \['GFP'\] are not in the vocabulary"):
        resolve_channels(["DNA", "GFP"], "src", channels=VOCAB, subsets=True)
    assert resolve_channels(["DNA", "GFP"], "src", {"GFP": "Actin"}, VOCAB, subsets=True) == (("DNA", "Actin"), [0, 1])
    with pytest.raises(ValueError, match="missing"):  # without subsets every channel is still required
        resolve_channels(["DNA"], "src", channels=VOCAB)


def _fly_manifest(path: Path, rows: int, drop_actin: set[int], rename: dict[str, str] | None = None) -> Path:
    """A load_data CSV over the real ExampleFly files (cycled), Actin column first, with empty Actin
    cells on the rows in ``drop_actin``; ``rename`` renames channel columns (e.g. OrigActin -> OrigGFP)."""
    with open(FLY / "load_data.csv", newline="") as handle:
        source = list(csv.DictReader(handle))
    out = []
    for n in range(rows):
        row = source[n % len(source)]
        new = {"Metadata_Site": row["Metadata_Site"]}
        for channel in ("Actin", "DNA", "PH3"):
            name = (rename or {}).get(f"Orig{channel}", f"Orig{channel}")
            empty = channel == "Actin" and n in drop_actin
            new[f"FileName_{name}"] = "" if empty else row[f"FileName_Orig{channel}"]
            new[f"PathName_{name}"] = "" if empty else str(FLY)
        out.append(new)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(out[0]))
        writer.writeheader()
        writer.writerows(out)
    return path


def _recipe(manifest: Path, *extra: str, subsets: bool = True):
    return load_recipe("cellpainting", [f"data.path={manifest}", f"data.allow_channel_subsets={subsets}", *extra],
                       demo=True)  # fmt: skip


def test_manifest_rows_without_a_channel_become_subset_fields(tmp_path):
    manifest = _fly_manifest(tmp_path / "mixed.csv", 3, drop_actin={1})
    with pytest.raises(FileNotFoundError, match=r"row 2 of .*mixed.csv has no FileName_OrigActin"):
        microscopy_fields(_recipe(manifest, subsets=False).data)
    fields = microscopy_fields(_recipe(manifest).data)
    assert [f.channels for f in fields] == [FULL, NO_ACTIN, FULL]
    stem = FLY / "01_POS076"
    want = np.stack([tifffile.imread(f"{stem}_D.TIF"), tifffile.imread(f"{stem}_F.TIF")]).astype(np.float32)
    np.testing.assert_array_equal(fields[1].pixels(), want)
    assert set(fields[1].meta["files"]) == {"DNA", "PH3"}
    full = fields[0].pixels()  # vocabulary order although the manifest lists Actin first
    np.testing.assert_array_equal(full[2], tifffile.imread(FLY / "01_POS002_R.TIF").astype(np.float32))

    data = build_training_data(_recipe(manifest).data)
    assert data.channels == VOCAB and data.channel_sets == [FULL, NO_ACTIN, FULL]
    crops = data.dataset[(1, 0)]
    assert {c["channels"] for c in crops} == {NO_ACTIN} and crops[0]["image"].shape == (2, 64, 64)
    assert data.steps_per_epoch(1) == 3
    with pytest.raises(ValueError, match=r"channel set \['DNA', 'PH3'\] has 1 fields/regions but one step needs 2"):
        data.steps_per_epoch(2)


def test_unknown_channels_are_named_unless_mapped_into_the_vocabulary(tmp_path):
    manifest = _fly_manifest(tmp_path / "gfp.csv", 2, drop_actin=set(), rename={"OrigActin": "OrigGFP"})
    with pytest.raises(ValueError, match=r"gfp.csv: channels \['GFP'\] are not in the vocabulary"):
        microscopy_fields(_recipe(manifest).data)
    fields = microscopy_fields(_recipe(manifest, "data.channel_map={GFP: Actin}").data)
    assert [f.channels for f in fields] == [FULL, FULL]


def test_pattern_fields_hold_the_channels_they_have_files_for(tmp_path):
    for name in ("01_POS002_D.TIF", "01_POS002_F.TIF", "01_POS076_D.TIF"):
        (tmp_path / name).symlink_to(FLY / name)
    pattern, names = r"(?P<field>.+)_(?P<channel>[DFR])\.TIF", {"D": "DNA", "F": "PH3"}
    fields = pattern_fields(tmp_path, pattern, names, channels=VOCAB, subsets=True)
    assert [f.channels for f in fields] == [("DNA", "PH3"), ("DNA",)]
    with pytest.raises(OSError, match="no file for channel"):
        pattern_fields(tmp_path, pattern, names, channels=["DNA", "PH3"])


def test_recipe_refuses_subsets_without_a_vocabulary():
    with pytest.raises(RecipeError, match="data.allow_channel_subsets: .*data.channels"):
        load_recipe("sentinel", ["data.allow_channel_subsets=true"], demo=True)


# --- pretraining ----------------------------------------------------------------------------------------


def test_pretrain_on_mixed_channel_sets(tmp_path, monkeypatch):
    # 6 fields, 3 without Actin; 2 fields (8 crops) per step in 2 micro-batches of 4 crops.
    manifest = _fly_manifest(tmp_path / "mixed.csv", 6, drop_actin={1, 3, 5})
    seen: list[list[tuple[str, ...]]] = []
    train_step = Trainer.train_step

    def spy(self, batches):
        seen.append([tuple(b["channels"]) for b in batches])
        return train_step(self, batches)

    monkeypatch.setattr(Trainer, "train_step", spy)
    overrides = [f"data.path={manifest}", "data.allow_channel_subsets=true", "data.crops_per_read=4",
                 "train.batch_size=8", "train.micro_batch=4", "train.log_every=1", "train.checkpoint_every=100"]  # fmt: skip
    run = pretrain("cellpainting", output=tmp_path / "run", max_steps=6, overrides=overrides, quiet=True)
    assert len(seen) == 6 and all(len(set(step)) == 1 and len(step) == 2 for step in seen)
    assert {step[0] for step in seen} == {FULL, NO_ACTIN}
    records = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 7))
    assert all(math.isfinite(r["loss"]) and r["loss"] > 0 for r in records)
    assert [r["epoch"] for r in records] == [0, 0, 1, 1, 2, 2]  # 3 + 3 fields -> one 2-field step per set
    model, _ = load_checkpoint(run)
    assert [c["name"] for c in model.config.channels] == VOCAB


def test_channel_masking_refuses_one_channel_fields_before_training(tmp_path):
    source = list(csv.DictReader(open(FLY / "load_data.csv", newline="")))
    manifest = tmp_path / "dna_actin.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["Metadata_Site", "FileName_OrigDNA", "PathName_OrigDNA",
                                                   "FileName_OrigActin", "PathName_OrigActin"])  # fmt: skip
        writer.writeheader()
        for n, row in enumerate(source):  # the middle field has DNA only
            actin = ("", "") if n == 1 else (row["FileName_OrigActin"], str(FLY))
            writer.writerow({"Metadata_Site": row["Metadata_Site"], "FileName_OrigDNA": row["FileName_OrigDNA"],
                             "PathName_OrigDNA": str(FLY), "FileName_OrigActin": actin[0], "PathName_OrigActin": actin[1]})  # fmt: skip
    overrides = [f"data.path={manifest}", "data.allow_channel_subsets=true", "data.channels=[DNA,Actin]",
                 "data.crops_per_read=8", "model.mask_strategy=channel"]  # fmt: skip
    with pytest.raises(ValueError, match=r"fields with only \[\('DNA',\)\] would have nothing left to see"):
        pretrain("cellpainting", output=tmp_path / "run", max_steps=2, overrides=overrides, quiet=True)
