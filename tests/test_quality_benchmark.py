"""The quality benchmarks' helpers: the mitosis dataset builder on one real ExampleFly field (read back with the
toolkit's reader), the EO zone folds, and the mitosis margins with their intervals."""
from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import f1_score

from domainmae.data.tiff import load_data_fields

ROOT = Path(__file__).resolve().parents[1]


def _mitosis():
    # benchmarks/ is a folder of scripts, not a package: load the builder from its file.
    spec = importlib.util.spec_from_file_location("mitosis", ROOT / "benchmarks" / "mitosis.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["mitosis"] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


def test_builder_on_one_fly_field(tmp_path: Path) -> None:
    mitosis = _mitosis()
    manifest, counts = mitosis.build(tmp_path, crop=32, limit=1)
    (count,) = counts
    assert count["field"] == "ExampleFly/POS002"
    # ~300 nuclei in a 1006x1000 field of Kc167 cells; a broken threshold or watershed gives a handful or thousands.
    assert 200 <= count["nuclei"] <= 450
    assert count["positive"] >= 1 and count["negative"] > 10 * count["positive"]  # mitosis is rare
    with open(manifest, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == count["positive"] + count["negative"] == count["nuclei"] - count["dropped"]
    assert {r["Metadata_Mitotic"] for r in rows} == {"0", "1"}
    assert {r["Metadata_SourceField"] for r in rows} == {"ExampleFly/POS002"}
    # Positives are the nuclei whose mean pH3 is above the field's threshold, and only those.
    ph3 = np.array([float(r["Metadata_PH3"]) for r in rows])
    mitotic = np.array([r["Metadata_Mitotic"] == "1" for r in rows])
    assert ph3[mitotic].min() > count["threshold"] >= ph3[~mitotic].max()

    fields = load_data_fields(manifest)  # the normal manifest reader: pH3 is not among the crops' channels
    assert len(fields) == len(rows)
    assert fields[0].channels == ("DNA", "Actin")
    assert fields[0].pixels().shape == (2, 32, 32)
    assert fields[0].meta["Metadata_SourceField"] == "ExampleFly/POS002"


def test_ph3_rule_is_a_robust_outlier_threshold() -> None:
    means = np.array([10.0, 11, 12, 13, 14, 40])
    positive, threshold = _mitosis().ph3_positive(means, k=3.0)
    assert positive.tolist() == [False] * 5 + [True]
    assert threshold == pytest.approx(12.5 + 3 * 1.4826 * 1.5)  # median 12.5, MAD 1.5


def _quality():
    _mitosis()  # quality.py imports it by name
    spec = importlib.util.spec_from_file_location("quality", ROOT / "benchmarks" / "quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_eo_folds_hold_out_whole_utm_zones_of_both_sensors(tmp_path: Path) -> None:
    quality = _quality()
    root = ROOT / "datasets" / "samples" / "bigearthnet-mm"
    folds = quality.zone_folds(root)
    assert folds == {"EPSG:32629": ["36_85", "4_55", "56_35"], "EPSG:32633": ["87_48"], "EPSG:32635": ["69_24", "57_38"]}
    train, test = quality.split_patches(root, folds["EPSG:32635"], tmp_path / "fold")
    for part, keys in ((train, ["36_85", "4_55", "56_35", "87_48"]), (test, ["57_38", "69_24"])):
        for sensor in ("S1", "S2"):
            folders = sorted((part / f"BigEarthNet-{sensor}-Example").iterdir())
            assert sorted(quality.patch_key(f) for f in folders) == keys
            assert all(any(f.glob("*.tif")) for f in folders)


def test_eo_training_patches_are_kept_earliest_acquisition_first(tmp_path: Path) -> None:
    """``--train-patches K`` keeps a fold's K earliest training patches (the snowy February one comes last)."""
    quality = _quality()
    root = ROOT / "datasets" / "samples" / "bigearthnet-mm"
    others = quality.by_acquisition(root, ["57_38", "56_35", "69_24", "4_55", "36_85"])
    assert others == ["36_85", "4_55", "69_24", "56_35", "57_38"]  # June (tie by key), Sep, Dec 2017, Feb 2018
    train, test = quality.split_patches(root, ["87_48"], tmp_path / "fold", others[:2])
    for part, keys in ((train, ["36_85", "4_55"]), (test, ["87_48"])):
        for sensor in ("S1", "S2"):
            assert sorted(quality.patch_key(f) for f in (part / f"BigEarthNet-{sensor}-Example").iterdir()) == keys


def _predictions(rng: np.random.Generator, seeds: tuple[int, ...] = (0, 1)) -> dict:
    """Two held-out fields' cells, each seed's predictions: the model right 90% of the time, raw 60%, random 70%."""
    truths = {field: rng.choice(["False", "True"], n, p=[0.8, 0.2]) for field, n in (("F1", 60), ("F2", 90))}
    by_seed = {}
    for seed in seeds:  # the same held-out cells, each seed's own predictions
        by_seed[seed] = {}
        for field, truth in truths.items():
            n = len(truth)
            noisy = {f: np.where(rng.random(n) < right, truth, rng.choice(["False", "True"], n))
                     for f, right in (("model", 0.9), ("raw", 0.6), ("random", 0.7))}  # fmt: skip
            by_seed[seed][(field, "linear")] = {"truth": truth, **noisy}
    return by_seed


def test_mitosis_differences_centre_on_the_tables_mean_margin() -> None:
    """The printed margin is the score table's: per seed the mean over held-out fields, then over seeds."""
    quality = _quality()
    rng = np.random.default_rng(0)
    by_seed = _predictions(rng)
    gaps = quality.differences(100, "mean", by_seed)
    assert [(g["probe"], g["against"]) for g in gaps] == [("linear", "raw"), ("linear", "random")]
    for gap in gaps:
        expected = np.mean([np.mean([f1_score(fold["truth"], fold["model"], average="macro")
                                     - f1_score(fold["truth"], fold[gap["against"]], average="macro")
                                     for fold in by_seed[seed].values()]) for seed in by_seed])  # fmt: skip
        assert gap["macro_f1"]["delta"] == pytest.approx(expected)
        assert gap["macro_f1"]["low"] < expected < gap["macro_f1"]["high"]
    by_seed[1][("F1", "linear")]["truth"] = by_seed[1][("F1", "linear")]["truth"][::-1]
    with pytest.raises(ValueError, match="held-out cells differ between seeds"):
        quality.differences(100, "mean", by_seed)


def test_summary_pools_the_margins_of_seeds_run_apart(tmp_path: Path, capsys) -> None:
    """Seeds run in two workdirs give, through their saved predictions, the margins of one run of both; a seed
    saved twice, or workdirs that standardised their features differently, do not pool."""
    quality = _quality()
    by_seed = _predictions(np.random.default_rng(1), seeds=(0, 1, 2))
    apart = {"a": {0: by_seed[0]}, "b": {1: by_seed[1], 2: by_seed[2]}}
    for name, seeds in apart.items():
        (tmp_path / name).mkdir()
        quality.write_predictions(tmp_path / name, {(100, "mean"): seeds})
    pooled = quality.read_predictions([tmp_path / "a" / "predictions.parquet", tmp_path / "b" / "predictions.parquet"])
    assert pooled[(100, "mean")].keys() == {0, 1, 2}
    for key, fold in by_seed[2].items():
        assert all(np.array_equal(pooled[(100, "mean")][2][key][k], fold[k]) for k in fold)
    assert quality.differences(100, "mean", pooled[(100, "mean")]) == quality.differences(100, "mean", by_seed)
    with pytest.raises(ValueError, match="appear in two workdirs"):
        quality.read_predictions([tmp_path / "a" / "predictions.parquet"] * 2)

    def summary(normalize_fields: bool, name: str) -> str:
        scores = [{"seed": seed, "steps": 100, "pool": "mean", "field": "F1", "features": f, "probe": probe,
                   "macro_f1": 0.5, "balanced_accuracy": 0.5}
                  for seed in apart[name] for f in ("model", "raw", "random") for probe in ("linear", "linear-balanced")]
        run = {"set": [], "batch": 64, "crop": 32, "k": 3.0, "tune": False, "normalize_fields": normalize_fields,
               "scores": scores}  # fmt: skip
        (tmp_path / name / "mitosis.json").write_text(json.dumps(run))
        return str(tmp_path / name)

    workdirs = [summary(False, "a"), summary(False, "b")]
    quality.run_summary(argparse.Namespace(workdirs=workdirs))
    margins = capsys.readouterr().out.split("model minus baseline")[1]
    expected = quality.differences(100, "mean", by_seed)[0]["macro_f1"]
    assert f"{expected['delta']:+.3f} [{expected['low']:+.3f}, {expected['high']:+.3f}]" in margins
    with pytest.raises(SystemExit, match="different settings"):
        quality.run_summary(argparse.Namespace(workdirs=[workdirs[0], summary(True, "b")]))
