"""Paired bootstrap of score differences: scikit-learn's scores on every resample, intervals that tell a real
gap from noise, whole groups drawn when the test rows span enough of them, folds and repeats averaged; and
``evaluate`` reporting the file's features minus each baseline."""
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

from domainmae.export import evaluate
from domainmae.export.compare import MIN_GROUPS, multilabel_scores, paired_bootstrap, single_label_scores
from domainmae.export.evaluate import format_table
from domainmae.export.writers.tables import feature_names, write_embeddings


def _noisy(y: np.ndarray, right: float, rng: np.random.Generator) -> np.ndarray:
    """``y`` with a share ``1 - right`` of the rows replaced by a random class of ``y``'s."""
    return np.where(rng.random(len(y)) < right, y, rng.choice(np.unique(y), len(y)))


def test_resampled_scores_equal_scikit_learn_on_the_drawn_rows():
    rng = np.random.default_rng(0)
    y = rng.choice(["a", "b", "rare"], 150, p=[0.8, 0.17, 0.03])
    predicted = np.where(rng.random(150) < 0.7, y, rng.choice(["a", "b", "rare", "never"], 150))
    weights = rng.multinomial(150, np.full(150, 1 / 150), size=20)  # some draws lose the rare class entirely
    scores = single_label_scores(y, predicted, weights)
    for i, w in enumerate(weights):
        rows = np.repeat(np.arange(150), w)
        assert scores["accuracy"][i] == pytest.approx(accuracy_score(y[rows], predicted[rows]))
        assert scores["macro_f1"][i] == pytest.approx(f1_score(y[rows], predicted[rows], average="macro", zero_division=0))
        with warnings.catch_warnings():  # scikit-learn warns of predicted classes absent from the truth
            warnings.simplefilter("ignore", UserWarning)
            assert scores["balanced_accuracy"][i] == pytest.approx(balanced_accuracy_score(y[rows], predicted[rows]))
    y, predicted = rng.random((80, 5)) < 0.3, rng.random((80, 5)) < 0.3
    y[:, 4] = predicted[:, 4] = False  # a label neither true nor predicted in the test rows does not count
    y[:70, 3] = predicted[:70, 3] = False  # one seen in a few rows only: some resamples lose it
    weights = rng.multinomial(80, np.full(80, 1 / 80), size=10)
    scores = multilabel_scores(y, predicted, weights)
    for i, w in enumerate(weights):
        rows = np.repeat(np.arange(80), w)
        seen = np.flatnonzero(y[rows].any(axis=0) | predicted[rows].any(axis=0))
        assert scores["accuracy"][i] == pytest.approx(accuracy_score(y[rows], predicted[rows]))
        assert scores["macro_f1"][i] == pytest.approx(
            f1_score(y[rows], predicted[rows], average="macro", labels=seen, zero_division=0))


def test_the_interval_separates_a_real_gap_from_noise():
    rng = np.random.default_rng(1)
    y = rng.choice(["a", "b"], 400)
    good, poor = _noisy(y, 0.9, rng), _noisy(y, 0.5, rng)
    same, kind = paired_bootstrap(y, good, good)
    assert kind == "rows" and all(d == (0.0, 0.0, 0.0) for d in same.values())
    gap, _ = paired_bootstrap(y, good, poor)
    assert gap["accuracy"].delta == pytest.approx(accuracy_score(y, good) - accuracy_score(y, poor))
    assert gap["accuracy"].low > 0.1 and gap["macro_f1"].low > 0.1
    # Two predictions a few rows apart on 40 rows: the data cannot tell them apart.
    small, close = y[:40], good[:40].copy()
    close[:3] = np.where(close[:3] == "a", "b", "a")
    near, _ = paired_bootstrap(small, good[:40], close)
    assert near["macro_f1"].low <= 0 <= near["macro_f1"].high
    assert paired_bootstrap(y, good, poor, seed=3) == paired_bootstrap(y, good, poor, seed=3)
    with pytest.raises(ValueError, match="do not match the labels"):
        paired_bootstrap(y, good[:10], poor)


def test_whole_groups_are_drawn_when_rows_of_a_group_err_together():
    rng = np.random.default_rng(2)
    groups = np.repeat(np.arange(MIN_GROUPS * 2), 20)  # 20 groups of 20 rows
    y = rng.choice(["a", "b"], len(groups))
    # a is right everywhere; b is wrong on whole groups: its errors are one event per group, not 20.
    wrong = np.isin(groups, rng.choice(MIN_GROUPS * 2, 5, replace=False))
    b = np.where(wrong, np.where(y == "a", "b", "a"), y)
    by_rows, kind_rows = paired_bootstrap(y, y, b)
    by_groups, kind_groups = paired_bootstrap(y, y, b, groups=groups)
    assert (kind_rows, kind_groups) == ("rows", "groups")
    width = {name: d["accuracy"].high - d["accuracy"].low for name, d in (("rows", by_rows), ("groups", by_groups))}
    assert width["groups"] > 1.5 * width["rows"]
    few, kind = paired_bootstrap(y[:100], y[:100], b[:100], groups=groups[:100])  # 5 groups: rows drawn
    assert kind == "rows"


def test_folds_and_repeats_are_averaged_per_resample():
    rng = np.random.default_rng(3)
    y = rng.choice(["a", "b", "c"], 300)
    folds = np.repeat([0, 1, 2], 100)
    a = np.stack([_noisy(y, 0.8, rng), _noisy(y, 0.6, rng)])  # two repeats (seeds)
    b = _noisy(y, 0.5, rng)
    found, _ = paired_bootstrap(y, a, b, strata=folds)

    def macro(p, rows):
        return f1_score(y[rows], p[rows], average="macro", zero_division=0)

    expected = np.mean([np.mean([macro(r, folds == f) for r in a]) - macro(b, folds == f) for f in range(3)])
    assert found["macro_f1"].delta == pytest.approx(expected)
    assert found["macro_f1"].low < found["macro_f1"].delta < found["macro_f1"].high


def test_evaluate_reports_the_model_minus_each_baseline(tmp_path):
    rng = np.random.default_rng(4)
    labels = np.repeat(["a", "b"], 100)
    informative = np.where(labels == "a", 1.5, -1.5)[:, None] + rng.normal(0, 1, (200, 8))
    files = {}
    for name, x in (("model", informative), ("noise", rng.normal(0, 1, (200, 8)))):
        df = pd.DataFrame(x.astype(np.float32), columns=feature_names(8))
        df.insert(0, "Metadata_Label", labels)
        files[name] = write_embeddings(tmp_path / f"{name}.parquet", df, feature_names(8), {})
    result = evaluate(files["model"], "Metadata_Label", against=[("noise", files["noise"])], methods=["linear"],
                      test_size=0.5, predictions=True)  # fmt: skip
    diff = result["differences"]["noise"]["linear"]
    assert diff["macro_f1"]["low"] > 0.2 and result["resampled"] == "rows"
    scores = result["features"]
    assert diff["accuracy"]["delta"] == pytest.approx(scores["model"]["linear"]["accuracy"] - scores["noise"]["linear"]["accuracy"])
    # The predictions reproduce the reported score on the test rows they name.
    truth = labels[result["test_rows"]]
    assert accuracy_score(truth, result["predictions"]["model"]["linear"]) == pytest.approx(scores["model"]["linear"]["accuracy"])
    assert "noise   linear  accuracy +" in format_table(result)
    alone = evaluate(files["model"], "Metadata_Label", methods=["linear"])
    assert "differences" not in alone and "predictions" not in alone
