"""``evaluate``: probes beat chance on separable embeddings; grouped and block splits keep test rows apart;
baselines (raw pixels, random init; ``embed_baselines``) and other files are scored on the same rows and split."""
import json
import warnings
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
from shapely.geometry import box
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.multiclass import OneVsRestClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from domainmae.cli import main
from domainmae.export import evaluate, profile, read_embeddings
from domainmae.export.embed import embed, embed_baselines
from domainmae.export.evaluate import C_GRID, inner_folds, mean_average_precision, tuning_folds
from domainmae.export.splits import split_rows, with_ground_boxes
from domainmae.export.writers.tables import feature_names, write_embeddings
from tests import test_export_tables

plate = test_export_tables.plate  # its module fixture: a two-plate manifest and a tiny checkpoint

DIM = 16


def _embeddings(path, multilabel: bool = False):
    """120 rows in 3 Gaussian clusters (labels) spread over 6 plates; multi-label: cluster + a 'big' flag."""
    rng = np.random.default_rng(0)
    labels = np.repeat(["a", "b", "c"], 40)
    centers = {k: rng.normal(0, 3, DIM) for k in "abc"}
    x = np.stack([centers[k] for k in labels]) + rng.normal(0, 1, (120, DIM))
    df = pd.DataFrame(x.astype(np.float32), columns=feature_names(DIM))
    df.insert(0, "Metadata_Plate", [f"P{i % 6}" for i in range(120)])
    if multilabel:
        df.insert(1, "labels", [[k, "big"] if x[i, 0] > centers[k][0] else [k] for i, k in enumerate(labels)])
    else:
        df.insert(1, "Metadata_Label", labels)
    return write_embeddings(path, df, feature_names(DIM), {"checkpoint_sha256": "abc"})


def test_probes_beat_chance_with_a_grouped_split(tmp_path, capsys):
    path = _embeddings(tmp_path / "emb.parquet")
    result = evaluate(path, "Metadata_Label", split="Metadata_Plate", output=tmp_path / "eval.json")
    assert result["chance"] < 0.5 and result["n_classes"] == 3 and result["checkpoint_sha256"] == "abc"
    for scores in result["features"]["model"].values():
        assert scores["accuracy"] > 0.9 and scores["macro_f1"] > 0.9 and scores["balanced_accuracy"] > 0.9
    assert json.loads((tmp_path / "eval.json").read_text())["features"] == result["features"]
    assert main(["evaluate", str(path), "--label", "Metadata_Label", "--method", "knn"]) == 0
    assert "knn" in capsys.readouterr().out


def test_grouped_split_keeps_groups_apart(tmp_path):
    df = pd.DataFrame({"plate": [f"P{i % 5}" for i in range(50)]})
    train, test, dropped, _ = split_rows(df, np.zeros(50), "plate", 0.4, seed=0, multilabel=False)
    assert set(df.plate[train]).isdisjoint(df.plate[test]) and len(train) + len(test) == 50 and dropped == 0
    with pytest.raises(KeyError, match="'well' is not in the table"):
        split_rows(df, np.zeros(50), "well", 0.4, seed=0, multilabel=False)


def test_multilabel_reports_map(tmp_path):
    path = _embeddings(tmp_path / "multi.parquet", multilabel=True)
    result = evaluate(path, "labels", methods=["linear"])
    assert result["multilabel"] and result["n_classes"] == 4
    assert result["features"]["model"]["linear"]["map"] > 0.8
    # Against itself: no difference; predictions come back as label lists naming the test rows' classes.
    itself = evaluate(path, "labels", methods=["linear"], against=[("same", path)], predictions=True)
    assert all(d == {"delta": 0.0, "low": 0.0, "high": 0.0} for d in itself["differences"]["same"]["linear"].values())
    assert set(itself["differences"]["same"]["linear"]) == {"accuracy", "macro_f1"}
    rows = pd.read_parquet(path)["labels"].iloc[itself["test_rows"]]
    hits = [set(p) == set(t) for p, t in zip(itself["predictions"]["model"]["linear"], rows)]
    assert np.mean(hits) == pytest.approx(itself["features"]["model"]["linear"]["accuracy"])
    with pytest.raises(ValueError, match="'labels' holds lists"):
        _embeddings(tmp_path / "multi.h5ad", multilabel=True)


def _windows(stride: int) -> pd.DataFrame:
    """Two scenes of 32 px windows on a 320 x 320 px grid at ``stride``, as a GeoParquet table has them."""
    starts = range(0, 320 - 32 + 1, stride)
    rows = [(scene, r, c) for scene in ("S1", "S2") for r in starts for c in starts]
    df = pd.DataFrame(rows, columns=["scene_id", "window_row", "window_col"])
    return df.assign(window_height=32, window_width=32)


def _gap(a: pd.Series, b: pd.Series) -> int:
    """Pixels between two windows' boxes (Chebyshev; negative when they overlap), one pair at a time."""
    rows = max(b.window_row - (a.window_row + 32), a.window_row - (b.window_row + 32))
    cols = max(b.window_col - (a.window_col + 32), a.window_col - (b.window_col + 32))
    return max(rows, cols)


@pytest.mark.parametrize("stride, gap", [(32, None), (16, None), (32, 0), (16, 64)])
def test_blocks_split_holds_out_whole_blocks_and_keeps_train_a_gap_away(stride, gap):
    df = _windows(stride)
    train, test, dropped, groups = split_rows(df, np.zeros(len(df)), "blocks:96", 0.3, seed=1, multilabel=False, gap=gap)
    assert len(train) + len(test) + dropped == len(df) and len(train) > 0
    assert (dropped > 0) == (gap != 0 or stride < 32)  # side by side, windows at stride 32 only touch
    block = df.scene_id + "/" + (df.window_row // 96).astype(str) + "/" + (df.window_col // 96).astype(str)
    assert (groups == block.to_numpy()).all()  # what a tuned probe's inner folds group by
    assert set(np.flatnonzero(block.isin(set(block[test])))) == set(test)  # every row of a test block, only them
    assert set(block[train]).isdisjoint(block[test])
    for i in train:
        near = df.loc[test][df.scene_id[test] == df.scene_id[i]]
        assert all(_gap(df.loc[i], near.loc[j]) >= (32 if gap is None else gap) for j in near.index)


def test_blocks_split_names_what_it_lacks():
    df = pd.DataFrame({"Metadata_Plate": ["P1", "P2"] * 5})
    with pytest.raises(KeyError, match=r"lacks \['scene_id', 'window_row'"):
        split_rows(df, np.zeros(10), "blocks:64", 0.3, seed=0, multilabel=False)
    with pytest.raises(ValueError, match="blocks:SIZE takes a block size"):
        split_rows(df, np.zeros(10), "blocks:big", 0.3, seed=0, multilabel=False)

def test_a_gap_that_leaves_no_training_rows_says_so(tmp_path):
    df = _windows(32).assign(lab=lambda d: np.where(d.window_col < 160, "a", "b"))
    rng = np.random.default_rng(0)
    table = pd.concat([df, pd.DataFrame(rng.normal(size=(len(df), 4)).astype(np.float32), columns=feature_names(4))],
                      axis=1)  # fmt: skip
    path = write_embeddings(tmp_path / "windows.parquet", table, feature_names(4), {})
    with pytest.raises(ValueError, match=r"gap of 400 px dropped every training row.*smaller --gap"):
        evaluate(path, "lab", split="blocks:160", test_size=0.5, gap=400)


def test_evaluate_scores_every_feature_set_on_the_same_split(plate, tmp_path, capsys):
    path = embed(plate["run"], output=tmp_path / "emb.parquet", progress=False)
    baselines = embed_baselines(path, ["raw", "random"], tmp_path / "baselines")
    result = evaluate(path, "Metadata_pert", split="Metadata_Plate", against=baselines.items(),
                      output=tmp_path / "eval.json")  # fmt: skip
    assert list(result["features"]) == ["model", "raw", "random"]
    for scores in result["features"].values():
        assert set(scores) == {"linear", "knn"}
        assert set(scores["linear"]) == {"accuracy", "macro_f1", "balanced_accuracy"}
    assert result["n_train"] + result["n_test"] == 48 and result["n_test"] == 24  # one plate of two held out
    assert json.loads((tmp_path / "eval.json").read_text())["features"] == result["features"]
    assert main(["evaluate", str(path), "--label", "Metadata_pert", "--baselines", "raw"]) == 0
    table = capsys.readouterr().out
    assert "model" in table and "raw" in table and "balanced_accuracy" in table


def test_a_wrong_label_is_reported_before_baselines_are_embedded(plate, tmp_path, capsys, monkeypatch):
    path = embed(plate["run"], output=tmp_path / "emb.parquet", progress=False)

    def too_early(*args, **kwargs):
        raise AssertionError("baselines embedded before the label was checked")

    monkeypatch.setattr("domainmae.export.embed.embed_baselines", too_early)
    assert main(["evaluate", str(path), "--label", "Metadata_nope", "--baselines", "raw,random"]) != 0
    assert "label column 'Metadata_nope' is not in" in capsys.readouterr().err


def test_baseline_rows_that_do_not_line_up_are_an_error(plate, tmp_path):
    df, features, provenance = read_embeddings(embed(plate["run"], output=tmp_path / "emb.parquet", progress=False))
    shuffled = write_embeddings(tmp_path / "shuffled.parquet", df.iloc[::-1].reset_index(drop=True), features, provenance)
    baselines = embed_baselines(shuffled, ["raw"], tmp_path / "baselines")
    with pytest.raises(ValueError, match="raw baseline's rows do not line up"):
        evaluate(shuffled, "Metadata_pert", against=baselines.items())


def test_named_groups_are_the_test_set(tmp_path):
    df = pd.DataFrame({"plate": [f"P{i % 5}" for i in range(50)]})
    train, test, dropped, _ = split_rows(df, np.zeros(50), "plate=P1,P3", 0.4, seed=0, multilabel=False)
    assert set(df.plate[test]) == {"P1", "P3"} and set(df.plate[train]) == {"P0", "P2", "P4"}
    assert len(train) + len(test) == 50 and dropped == 0
    with pytest.raises(ValueError, match=r"\['P9'\] not among the values of 'plate'"):
        split_rows(df, np.zeros(50), "plate=P1,P9", 0.4, seed=0, multilabel=False)
    with pytest.raises(ValueError, match="holds out every row"):
        split_rows(df, np.zeros(50), "plate=P0,P1,P2,P3,P4", 0.4, seed=0, multilabel=False)
    path = _embeddings(tmp_path / "emb.parquet")
    result = evaluate(path, "Metadata_Label", split="Metadata_Plate=P0", methods=["linear"])
    assert result["n_test"] == 20 and result["n_train"] == 100


def test_balanced_probe_finds_a_rare_class_the_plain_probe_ignores(tmp_path):
    """5% positives shifted by one sd in one of 8 dimensions: an unweighted probe says "negative" to all."""
    rng = np.random.default_rng(0)
    y = np.array(["pos" if i % 20 == 0 else "neg" for i in range(400)])
    x = rng.normal(0, 1, (400, 8)) + np.where(y == "pos", 1.5, 0.0)[:, None] * np.eye(8)[0]
    df = pd.DataFrame(x.astype(np.float32), columns=feature_names(8))
    df.insert(0, "Metadata_Mitotic", y)
    df.insert(0, "Metadata_Field", [f"F{i % 3}" for i in range(400)])
    path = write_embeddings(tmp_path / "rare.parquet", df, feature_names(8), {})
    plain = evaluate(path, "Metadata_Mitotic", split="Metadata_Field=F0", methods=["linear"])
    weighted = evaluate(path, "Metadata_Mitotic", split="Metadata_Field=F0", methods=["linear"], balanced=True)
    assert plain["features"]["model"]["linear"]["balanced_accuracy"] == 0.5  # the majority class, always
    assert weighted["features"]["model"]["linear"]["balanced_accuracy"] > 0.65 and weighted["balanced"]


def test_files_embedded_once_join_like_baselines(plate, tmp_path, capsys):
    path = embed(plate["run"], output=tmp_path / "emb.parquet", progress=False)
    raw = embed(plate["run"], output=tmp_path / "raw.parquet", features="raw", progress=False)
    joined = evaluate(path, "Metadata_pert", split="Metadata_Plate", against=[raw])
    again = evaluate(path, "Metadata_pert", split="Metadata_Plate",
                     against=embed_baselines(path, ["raw"], tmp_path / "baselines").items())  # fmt: skip
    assert list(joined["features"]) == ["model", "raw"] and joined["features"] == again["features"]
    named = evaluate(path, "Metadata_pert", split="Metadata_Plate", against=[("pixels", raw)])
    assert list(named["features"]) == ["model", "pixels"] and named["features"]["pixels"] == joined["features"]["raw"]
    df, features, provenance = read_embeddings(raw)
    shuffled = write_embeddings(tmp_path / "shuffled.parquet", df.iloc[::-1].reset_index(drop=True), features,
                                provenance)  # fmt: skip
    with pytest.raises(ValueError, match="raw baseline's rows do not line up"):
        evaluate(path, "Metadata_pert", against=[shuffled])
    assert main(["evaluate", str(path), "--label", "Metadata_pert", "--against", str(raw), "--balanced"]) == 0
    assert "raw" in capsys.readouterr().out
    assert main(["evaluate", str(path), "--label", "Metadata_pert", "--against", f"pixels={raw}"]) == 0
    assert "\npixels " in capsys.readouterr().out


def test_channels_pool_writes_a_block_per_channel_and_its_baselines_follow(plate, tmp_path):
    path = embed(plate["run"], output=tmp_path / "emb.parquet", pool="channels", channels=["DNA", "RNA"],
                 progress=False)  # fmt: skip
    df, features, provenance = read_embeddings(path)
    assert len(features) == 2 * 32 and provenance["pool"] == "channels"
    mean = read_embeddings(embed(plate["run"], output=tmp_path / "mean.parquet", channels=["DNA", "RNA"],
                                 progress=False))[0]  # fmt: skip
    blocks = df[features].to_numpy().reshape(len(df), 2, 32)
    np.testing.assert_allclose(blocks.mean(axis=1), mean[feature_names(32)].to_numpy(), atol=1e-5)
    random = embed_baselines(path, ["random"], tmp_path / "baselines")
    result = evaluate(path, "Metadata_pert", split="Metadata_Plate", against=random.items(), methods=["linear"])
    assert list(result["features"]) == ["model", "random"]  # the random init re-embedded with the same pool
    with pytest.raises(ValueError, match="pool='channels' needs one channel set"):
        embed(plate["run"], output=tmp_path / "subsets.parquet", pool="channels", progress=False,
              overrides=["data.allow_channel_subsets=true"])  # fmt: skip


def _many_weak_features(path, n: int = 120, dims: int = 200):
    """Two classes, each of the first 40 of 200 dimensions shifted 0.35 sd: with 90 training rows a probe at
    C=1 fits the noise; a stronger penalty finds the shared direction. Fields F0-F3 hold both classes."""
    rng = np.random.default_rng(0)
    y = np.array(["a", "b"] * (n // 2))
    x = rng.normal(0, 1, (n, dims)) + np.where(y == "b", 0.35, 0.0)[:, None] * (np.arange(dims) < 40)
    df = pd.DataFrame(x.astype(np.float32), columns=feature_names(dims))
    df.insert(0, "Metadata_Label", y)
    df.insert(0, "Metadata_Field", [f"F{(i // 2) % 4}" for i in range(n)])
    return write_embeddings(path, df, feature_names(dims), {})


def test_a_tuned_probe_chooses_its_penalty_inside_the_training_rows(tmp_path, capsys):
    path = _many_weak_features(tmp_path / "weak.parquet")
    fixed = evaluate(path, "Metadata_Label", split="Metadata_Field=F0", methods=["linear"])
    tuned = evaluate(path, "Metadata_Label", split="Metadata_Field=F0", methods=["linear", "knn"], tune=True)
    linear = tuned["features"]["model"]["linear"]
    assert tuned["tune"] and linear["C"] < 1 and "C" not in tuned["features"]["model"]["knn"]
    assert linear["macro_f1"] > fixed["features"]["model"]["linear"]["macro_f1"] + 0.05
    assert main(["evaluate", str(path), "--label", "Metadata_Label", "--split", "Metadata_Field=F0", "--tune"]) == 0
    header = [line for line in capsys.readouterr().out.splitlines() if line.startswith("features")][0]
    assert header.split()[-1] == "C"


def test_tuning_folds_keep_groups_apart_and_need_two(tmp_path):
    groups = np.array([f"G{i % 5}" for i in range(50)])
    y = np.array(["a", "b"] * 25)
    for fit, held in inner_folds(y, groups, seed=0, multilabel=False):
        assert not set(groups[fit]) & set(groups[held])
    path = _many_weak_features(tmp_path / "weak.parquet")
    with pytest.raises(ValueError, match="needs two groups in the training rows"):
        evaluate(path, "Metadata_Label", split="Metadata_Field=F0,F1,F2", methods=["linear"], tune=True)
    one_class = np.array(["a"] * 10 + ["a", "b"] * 20)
    with pytest.raises(ValueError, match=r"trains on one class only \('a'\)"):
        inner_folds(one_class, np.array(["G0"] * 10 + ["G1"] * 40), seed=0, multilabel=False)


def test_a_random_split_of_overlapping_windows_warns_that_it_leaks():
    """Windows at stride 16 overlap their neighbours: a random split scores interpolation between them."""
    df = _windows(16)
    with pytest.warns(UserWarning, match=r"random split of 722 windows from 2 scenes.*blocks:SIZE"):
        split_rows(df, np.zeros(len(df)), "random", 0.3, seed=0, multilabel=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        split_rows(df, np.zeros(len(df)), "blocks:96", 0.3, seed=0, multilabel=False)
        split_rows(df.drop(columns="window_row"), np.zeros(len(df)), "random", 0.3, seed=0, multilabel=False)


def test_a_tuned_multilabel_probe_chooses_its_penalty_by_map(tmp_path):
    """Three labels (50/20/10% of rows) weakly shifting 20 of 60 dimensions: inner-fold macro-F1 and mAP
    disagree on C here; the tuned multi-label probe takes the C with the best inner mAP, the score it reports."""
    rng = np.random.default_rng(1)
    n, dims = 160, 60
    y = (rng.random((n, 3)) < [0.5, 0.2, 0.1]).astype(int)
    x = rng.normal(0, 1, (n, dims)) + 0.5 * y @ rng.normal(0, 1, (3, dims)) * (np.arange(dims) < 20)
    fields = np.array([f"G{i % 4}" for i in range(n)])
    df = pd.DataFrame(x.astype(np.float32), columns=feature_names(dims))
    df.insert(0, "labels", [[f"l{j}" for j in np.flatnonzero(row)] for row in y])
    df.insert(0, "Metadata_Field", fields)
    path = write_embeddings(tmp_path / "multi.parquet", df, feature_names(dims), {})
    chosen = evaluate(path, "labels", split="Metadata_Field=G0", methods=["linear"], tune=True)
    train = np.flatnonzero(fields != "G0")
    inner = {"map": [], "macro_f1": []}
    for c in C_GRID:
        per_fold = {"map": [], "macro_f1": []}
        for fit, held in inner_folds(y[train], fields[train], seed=0, multilabel=True):
            probe = make_pipeline(StandardScaler(), OneVsRestClassifier(LogisticRegression(C=c, max_iter=2000)))
            probe.fit(x[train][fit], y[train][fit])
            per_fold["map"].append(mean_average_precision(y[train][held], probe.predict_proba(x[train][held])))
            per_fold["macro_f1"].append(f1_score(y[train][held], probe.predict(x[train][held]), average="macro",
                                                 zero_division=0))  # fmt: skip
        for metric, values in per_fold.items():
            inner[metric].append(np.mean(values))
    by_map, by_f1 = (int(np.argmax(inner[m])) for m in ("map", "macro_f1"))
    assert inner["map"][by_map] > inner["map"][by_f1] + 0.05  # the two criteria do disagree on this table
    assert chosen["features"]["model"]["linear"]["C"] == C_GRID[by_map]


def test_the_cli_prints_the_leak_warning_as_a_sentence(tmp_path, capsys):
    df = _windows(16)
    rng = np.random.default_rng(0)
    features = pd.DataFrame(rng.normal(0, 1, (len(df), 4)).astype(np.float32), columns=feature_names(4))
    table = pd.concat([df.assign(label=np.where(rng.random(len(df)) < 0.5, "a", "b")), features], axis=1)
    path = write_embeddings(tmp_path / "windows.parquet", table, feature_names(4), {})
    assert main(["evaluate", str(path), "--label", "label", "--method", "linear"]) == 0
    err = capsys.readouterr().err
    assert "domainmae evaluate: warning: a random split of 722 windows" in err and "UserWarning" not in err


def test_baselines_of_a_profiled_file_go_through_its_profile_steps(plate, tmp_path):
    """Wells aggregated from tiles and standardised per plate: the baselines must be too, or evaluate would set
    per-plate-normalised embeddings against raw tile statistics (or rows that do not line up)."""
    tiles = embed(plate["run"], output=tmp_path / "tiles.parquet", progress=False)
    steps = dict(level="well", normalization="center_scale", controls="Metadata_pert_type == 'negcon'",
                 batch="Metadata_Plate")  # fmt: skip
    wells = profile(tiles, tmp_path / "wells.parquet", **steps)
    baselines = embed_baselines(wells, ["raw"], tmp_path / "baselines")
    raw_tiles = embed(plate["run"], output=tmp_path / "raw_tiles.parquet", features="raw", progress=False)
    expected = read_embeddings(profile(raw_tiles, tmp_path / "raw_wells.parquet", **steps))
    got = read_embeddings(baselines["raw"])
    pd.testing.assert_frame_equal(got[0], expected[0])
    assert got[2]["profile"] == read_embeddings(wells)[2]["profile"]
    result = evaluate(wells, "Metadata_pert", split="Metadata_Plate", against=baselines.items(), methods=["knn"])
    assert list(result["features"]) == ["model", "raw"] and result["n_train"] + result["n_test"] == 8


def test_multilabel_macro_f1_counts_the_labels_the_test_rows_have():
    """A label absent from the test rows and never predicted there says nothing about the probe (mAP skips it
    too): macro-F1 is over the labels true or predicted in the test rows, as scikit-learn does for one label."""
    from domainmae.export.evaluate import score

    rng = np.random.default_rng(0)
    y = (rng.random((120, 3)) < 0.4).astype(int)
    y[:, 2] = np.r_[np.ones(10, int), np.zeros(110, int)]  # label 2: in training rows only
    x = np.c_[y[:, :2] * 4.0 + rng.normal(0, 0.1, (120, 2)), rng.normal(0, 1, (120, 2))]
    train, test = np.arange(60), np.arange(60, 120)
    results, predicted = score(x, y, train, test, ["linear"], k=5, multilabel=True)
    assert not predicted["linear"][:, 2].any()  # the probe learnt it is rare: never predicted on the test rows
    assert results["linear"]["macro_f1"] == pytest.approx(f1_score(y[test], predicted["linear"], average="macro",
                                                                   labels=[0, 1]))  # fmt: skip
    assert results["linear"]["macro_f1"] > 0.95  # (was 2/3 with the absent label counted as 0)


def test_an_output_that_is_a_folder_is_refused_before_the_probes_and_kept(tmp_path, capsys):
    """``--output results`` where ``results/`` holds the user's files: refused, nothing deleted."""
    path = _embeddings(tmp_path / "emb.parquet")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "notes.txt").write_text("precious")
    assert main(["evaluate", str(path), "--label", "Metadata_Label", "--output", str(tmp_path / "results")]) == 1
    assert "results is a folder" in capsys.readouterr().err
    assert (tmp_path / "results" / "notes.txt").read_text() == "precious"


def _two_dates(tmp_path) -> Path:
    """Two dates of one 320 x 320 px tile at 10 m in EPSG:32633 (two scene_ids over the same ground), 32 px
    windows at stride 32 with their footprints, as ``embed`` writes GeoParquet; labels by column."""
    df = pd.concat([_windows(32)[lambda d: d.scene_id == "S1"].assign(scene_id=scene) for scene in ("T1", "T2")],
                   ignore_index=True)  # fmt: skip
    left, top = 500000 + 10 * df.window_col, 4000000 - 10 * df.window_row
    geometry = [box(x, y - 320, x + 320, y) for x, y in zip(left, top)]
    rng = np.random.default_rng(0)
    features = pd.DataFrame(rng.normal(size=(len(df), 4)).astype(np.float32), columns=feature_names(4))
    table = gpd.GeoDataFrame(pd.concat([df.assign(lab=np.where(df.window_col < 160, "a", "b")), features], axis=1),
                             geometry=geometry, crs="EPSG:32633")  # fmt: skip
    table.to_parquet(tmp_path / "dates.parquet")
    return tmp_path / "dates.parquet"


def test_blocks_are_cut_on_the_ground_so_scenes_over_the_same_place_do_not_leak(tmp_path):
    """Two dates of one tile are two scenes: blocks and the gap are taken from the footprints, so a block is
    held out on both dates and no training window of either date comes within the gap of a test window."""
    path = _two_dates(tmp_path)
    df = with_ground_boxes(read_embeddings(path)[0], path)
    train, test, dropped, groups = split_rows(df, df.lab.to_numpy(), "blocks:96", 0.3, seed=1, multilabel=False)
    assert len(train) > 0 and dropped > 0 and set(groups[train]).isdisjoint(groups[test])
    ground = df[["window_row", "window_col"]].to_numpy()  # both dates share the pixel grid
    for i in train:
        apart = np.maximum(np.abs(ground[test] - ground[i]) - 32, 0).max(axis=1)  # Chebyshev gap between windows
        assert apart.min() >= 32
    result = evaluate(path, "lab", split="blocks:96", test_size=0.3, seed=1, methods=["knn"])
    assert (result["n_train"], result["n_test"], result["n_dropped"]) == (len(train), len(test), dropped)


@pytest.mark.parametrize("crs", ["EPSG:3857", "EPSG:4326"])
def test_blocks_and_the_gap_are_measured_in_each_scenes_own_pixels(tmp_path, crs):
    """Two 50 m scenes, at 5 N (EPSG:32631) and 62.8 N (EPSG:32635), their footprints written in one CRS. The
    gap and the block size were converted to the file's units with one median pixel size: in Web Mercator a
    northern pixel measures 2.3 of the southern ones, so northern training windows stayed 64 px from test
    windows under --gap 128, and its blocks were 113 px wide, not 256."""
    scenes = {"south": ("EPSG:32631", 500_000, 552_000), "north": ("EPSG:32635", 500_000, 6_965_000)}
    starts = range(0, 640 - 32 + 1, 32)
    frames = []
    for scene, (utm, x0, y0) in scenes.items():
        rows = pd.DataFrame([(scene, r, c) for r in starts for c in starts], columns=["scene_id", "window_row",
                                                                                     "window_col"])  # fmt: skip
        boxes = [box(x0 + 50 * c, y0 - 50 * (r + 32), x0 + 50 * (c + 32), y0 - 50 * r)
                 for r, c in zip(rows.window_row, rows.window_col)]  # fmt: skip
        frames.append(gpd.GeoDataFrame(rows.assign(window_height=32, window_width=32), geometry=boxes,
                                       crs=utm).to_crs(crs))  # fmt: skip
    df = pd.concat(frames, ignore_index=True)
    df = df.assign(lab=np.where(df.window_col < 320, "a", "b"), **{"emb_0000": np.zeros(len(df), np.float32)})
    path = tmp_path / "two.parquet"
    gpd.GeoDataFrame(df, geometry="geometry", crs=crs).to_parquet(path)
    table = with_ground_boxes(read_embeddings(path)[0], path)
    train, test, _, groups = split_rows(table, table.lab.to_numpy(), "blocks:256", 0.3, seed=0, multilabel=False,
                                        gap=128)  # fmt: skip
    for scene in scenes:
        ours, theirs = table.loc[train][table.scene_id[train] == scene], table.loc[test][table.scene_id[test] == scene]
        nearest = min((_gap(ours.loc[i], theirs.loc[j]) for i in ours.index for j in theirs.index), default=None)
        assert nearest is None or nearest >= 128, f"{scene}: a training window {nearest} px from a test window"
        per_block = pd.Series(groups[(table.scene_id == scene).to_numpy()]).value_counts()
        assert per_block.max() > 16, f"{scene}: blocks narrower than 128 px"  # 113 px blocks hold at most 4 x 4
        if crs == "EPSG:3857":  # in one UTM zone for the whole file (4326) a scene zones away turns: blocks grow
            assert per_block.max() <= 81, f"{scene}: {per_block.max()} windows in a block of 256 px"


def test_tuning_folds_of_a_blocks_split_keep_the_gap_too(tmp_path):
    """Inside the training rows, the tuned probe's folds hold out whole blocks and drop fitting windows as near
    to them as the outer split drops training windows: overlapping windows (stride 16) would leak otherwise."""
    df = _windows(16).assign(lab=lambda d: np.where((d.window_col // 96) % 2 == 0, "a", "b"))
    y = df.lab.to_numpy()
    train, test, dropped, groups = split_rows(df, y, "blocks:96", 0.3, seed=1, multilabel=False)
    folds = tuning_folds(df, y, train, groups, "blocks:96", None, seed=0, multilabel=False)
    for fit, held in folds:
        assert set(groups[train[fit]]).isdisjoint(groups[train[held]])
        for i in train[fit]:
            near = df.loc[train[held]][df.scene_id[train[held]] == df.scene_id[i]]
            assert all(_gap(df.loc[i], near.loc[j]) >= 32 for j in near.index)


def test_an_existing_output_is_kept_without_overwrite_and_the_input_always(tmp_path, capsys):
    """``evaluate emb.parquet --output emb.parquet`` once replaced the embeddings with the JSON result."""
    path = _embeddings(tmp_path / "emb.parquet")
    before = path.read_bytes()
    for extra in ([], ["--overwrite"]):
        assert main(["evaluate", str(path), "--label", "Metadata_Label", "--output", str(path), *extra]) == 1
        assert f"{path} is an input of this command" in capsys.readouterr().err
    assert path.read_bytes() == before
    report = tmp_path / "eval.json"
    report.write_text("earlier")
    assert main(["evaluate", str(path), "--label", "Metadata_Label", "--output", str(report)]) == 1
    assert f"{report} already exists" in capsys.readouterr().err and report.read_text() == "earlier"
    assert main(["evaluate", str(path), "--label", "Metadata_Label", "--output", str(report), "--overwrite"]) == 0
    assert json.loads(report.read_text())["label"] == "Metadata_Label"
    with pytest.raises(FileExistsError, match="overwrite=True"):  # the API keeps an existing file too
        evaluate(path, "Metadata_Label", output=report)
    other = _embeddings(tmp_path / "other.parquet")
    with pytest.raises(ValueError, match="is an input of this command"):  # an --against file is an input too
        evaluate(path, "Metadata_Label", against=[other], output=other, overwrite=True)


def test_a_split_that_leaves_no_test_label_in_training_is_refused(tmp_path, capsys):
    """``--label X --split X`` once printed scores of 0 and chance 0 as results."""
    path = _embeddings(tmp_path / "emb.parquet")
    for split in ("Metadata_Label", "Metadata_Label=a"):
        assert main(["evaluate", str(path), "--label", "Metadata_Label", "--split", split]) == 1
        assert "split column is the label column 'Metadata_Label'" in capsys.readouterr().err
    df, features, provenance = read_embeddings(path)
    df["Metadata_Label"] = np.where(df.Metadata_Plate == "P0", "x", df.Metadata_Label)
    other = write_embeddings(tmp_path / "plate_label.parquet", df, features, provenance)
    with pytest.raises(ValueError, match=r"no test row's 'Metadata_Label' occurs in the training rows"):
        evaluate(other, "Metadata_Label", split="Metadata_Plate=P0")



def test_no_labels_no_rows_and_nan_features_name_the_file_and_column(tmp_path, capsys):
    path = _embeddings(tmp_path / "emb.parquet")
    df, features, provenance = read_embeddings(path)
    unlabelled = write_embeddings(tmp_path / "unlabelled.parquet", df.assign(lab=np.nan), features, provenance)
    assert main(["evaluate", str(unlabelled), "--label", "lab"]) == 1
    assert f"label column 'lab' of {unlabelled} has no non-null values" in capsys.readouterr().err
    empty = write_embeddings(tmp_path / "empty.parquet", df.iloc[:0], features, provenance)
    assert main(["evaluate", str(empty), "--label", "Metadata_Label"]) == 1
    assert f"{empty} has no rows" in capsys.readouterr().err
    df.loc[[3, 7], "emb_0003"] = np.nan
    holes = write_embeddings(tmp_path / "holes.parquet", df, features, provenance)
    assert main(["evaluate", str(holes), "--label", "Metadata_Label"]) == 1
    assert f"feature column 'emb_0003' of {holes} is not finite in 2 row(s)" in capsys.readouterr().err
    with pytest.raises(ValueError, match="feature column 'emb_0003' of .*holes.parquet"):  # an against file too
        evaluate(path, "Metadata_Label", against=[holes])
