"""Linear-probe and k-NN evaluation of an embeddings file against a label column.

Single-label columns report accuracy and macro-F1; list-valued columns (multi-label, e.g. BigEarthNet
CORINE labels) report subset accuracy, macro-F1 and macro mean average precision. The split is random
(stratified when every class has two rows) or by a group column (plate, scene, ...), so that no group
is on both sides. ``chance`` is the accuracy of always predicting the most frequent training label set.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from sklearn.dummy import DummyClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, average_precision_score, f1_score
from sklearn.model_selection import GroupShuffleSplit, train_test_split
from sklearn.multiclass import OneVsRestClassifier
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MultiLabelBinarizer, StandardScaler

from ..atomic import atomic_write_text
from .tables import read_embeddings

Method = Literal["linear", "knn"]


def _classifier(method: str, k: int, n_train: int, multilabel: bool) -> Any:
    if method == "linear":
        head = LogisticRegression(max_iter=2000)
    elif method == "knn":
        head = KNeighborsClassifier(n_neighbors=min(k, n_train))
    else:
        raise ValueError(f"method must be 'linear' or 'knn', got {method!r}")
    # Standardised features: embeddings' scales differ per dimension; k-NN and the L2 penalty both care.
    return make_pipeline(StandardScaler(), OneVsRestClassifier(head) if multilabel else head)


def split_rows(
    df: pd.DataFrame, y: np.ndarray, split: str, test_size: float, seed: int, multilabel: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Train and test row indices: ``"random"`` or grouped by the column named ``split``."""
    rows = np.arange(len(df))
    if split == "random":
        counts = pd.Series(list(map(str, y)) if multilabel else y).value_counts()
        stratify = None if multilabel or counts.min() < 2 else y
        return train_test_split(rows, test_size=test_size, random_state=seed, stratify=stratify)
    if split not in df.columns:
        raise KeyError(f"split column {split!r} is not in the table; it has {list(df.columns)}")
    groups = df[split].astype(str).to_numpy()
    if len(set(groups)) < 2:
        raise ValueError(f"split column {split!r} has a single group; a grouped split needs at least two")
    return next(GroupShuffleSplit(n_splits=1, test_size=test_size, random_state=seed).split(rows, groups=groups))


def evaluate(
    file: str | Path,
    label: str,
    *,
    split: str = "random",
    methods: Sequence[Method] = ("linear", "knn"),
    test_size: float = 0.25,
    k: int = 5,
    seed: int = 0,
    output: str | Path | None = None,
) -> dict[str, Any]:
    """Fit each method on the train rows and score the test rows; optionally write the result as JSON.

    Returns ``{"file", "label", "split", "n_train", "n_test", "n_classes", "multilabel", "chance",
    "results": {method: {metric: value}}}``.
    """
    df, features, provenance = read_embeddings(file)
    if label not in df.columns:
        raise KeyError(f"label column {label!r} is not in {file}; it has {[c for c in df.columns if c not in features]}")
    df = df[df[label].notna()].reset_index(drop=True)
    x = df[features].to_numpy(np.float32)
    multilabel = isinstance(df[label].iloc[0], (list, tuple, np.ndarray))
    y = MultiLabelBinarizer().fit_transform(df[label]) if multilabel else df[label].astype(str).to_numpy()
    train, test = split_rows(df, y, split, test_size, seed, multilabel)
    if len(np.unique(y[train], axis=0)) < 2:
        raise ValueError(f"the training rows hold a single value of {label!r}; nothing to learn")
    chance = DummyClassifier(strategy="most_frequent").fit(x[train], y[train]).predict(x[test])
    result: dict[str, Any] = {
        "file": str(file), "label": label, "split": split, "n_train": len(train), "n_test": len(test),
        "n_classes": int(y.shape[1]) if multilabel else len(np.unique(y)), "multilabel": multilabel,
        "chance": float(accuracy_score(y[test], chance)), "checkpoint_sha256": provenance.get("checkpoint_sha256"),
        "results": {},
    }  # fmt: skip
    for method in methods:
        model = _classifier(method, k, len(train), multilabel).fit(x[train], y[train])
        predicted = model.predict(x[test])
        scores = {"accuracy": float(accuracy_score(y[test], predicted)),
                  "macro_f1": float(f1_score(y[test], predicted, average="macro", zero_division=0))}  # fmt: skip
        if multilabel:
            present = y[test].any(axis=0)  # AP is undefined for labels absent from the test rows
            proba = model.predict_proba(x[test])
            scores["map"] = float(average_precision_score(y[test][:, present], proba[:, present], average="macro"))
        result["results"][method] = scores
    if output is not None:
        atomic_write_text(output, json.dumps(result, indent=2) + "\n")
    return result


def format_table(result: dict[str, Any]) -> str:
    """The result as a small text table, one row per method."""
    metrics = sorted({m for scores in result["results"].values() for m in scores})
    head = (f"{result['file']}  label={result['label']}  split={result['split']}  "
            f"train={result['n_train']} test={result['n_test']} classes={result['n_classes']} chance={result['chance']:.3f}")  # fmt: skip
    lines = [head, f"{'method':<8}" + "".join(f"{m:>10}" for m in metrics)]
    for method, scores in result["results"].items():
        lines.append(f"{method:<8}" + "".join(f"{scores[m]:>10.3f}" for m in metrics))
    return "\n".join(lines)
