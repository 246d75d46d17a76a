"""``evaluate``: linear probe and k-NN beat chance on separable embeddings; grouped splits keep groups apart."""
import json

import numpy as np
import pandas as pd
import pytest

from domainmae.cli import main
from domainmae.export import evaluate
from domainmae.export.evaluate import split_rows
from domainmae.export.tables import feature_names, write_embeddings

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
    for method in ("linear", "knn"):
        assert result["results"][method]["accuracy"] > 0.9 and result["results"][method]["macro_f1"] > 0.9
    assert json.loads((tmp_path / "eval.json").read_text())["results"] == result["results"]
    assert main(["evaluate", str(path), "--label", "Metadata_Label", "--method", "knn"]) == 0
    assert "knn" in capsys.readouterr().out


def test_grouped_split_keeps_groups_apart(tmp_path):
    df = pd.DataFrame({"plate": [f"P{i % 5}" for i in range(50)]})
    train, test = split_rows(df, np.zeros(50), "plate", 0.4, seed=0, multilabel=False)
    assert set(df.plate[train]).isdisjoint(df.plate[test]) and len(train) + len(test) == 50
    with pytest.raises(KeyError, match="'well' is not in the table"):
        split_rows(df, np.zeros(50), "well", 0.4, seed=0, multilabel=False)


def test_multilabel_reports_map(tmp_path):
    path = _embeddings(tmp_path / "multi.parquet", multilabel=True)
    result = evaluate(path, "labels", methods=["linear"])
    assert result["multilabel"] and result["n_classes"] == 4
    assert result["results"]["linear"]["map"] > 0.8
    with pytest.raises(ValueError, match="'labels' holds lists"):
        _embeddings(tmp_path / "multi.h5ad", multilabel=True)
