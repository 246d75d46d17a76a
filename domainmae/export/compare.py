"""Is one feature set's score better than another's beyond the noise of the test rows? A paired bootstrap.

Both feature sets are scored on the same test rows, so their scores share the rows' sampling noise: a
difference is judged by resampling the test rows (the same draw for both predictions) and reading the 2.5th
and 97.5th percentiles of the resampled differences. With a few dozen positives of a rare class, a macro-F1
gap of several points can sit inside that interval: then the data cannot tell the two apart.

Rows of one test group (a field's cells, a block's windows) are not independent draws; when the test rows
span at least :data:`MIN_GROUPS` groups, whole groups are resampled (a cluster bootstrap), else rows, and
the result says which. Test folds (``strata``: e.g. leave-one-field-out, each field the test set once) are
resampled apart and the score is their mean, as a benchmark's mean of folds. The interval covers the test
rows' sampling only: not a different training set, seed or split.

Every resample is scored from confusion counts weighted by how often it drew each row, so a thousand
resamples cost a few matrix products; the scores equal scikit-learn's ``accuracy_score``,
``balanced_accuracy_score`` and ``f1_score(average="macro", zero_division=0)`` on the drawn rows.
Multi-label rows (0/1 indicator matrices) get subset accuracy and macro-F1 over the labels true or predicted
in the drawn rows (:func:`seen_labels`; mAP ranks scores, not labels: no interval for it).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

#: Fewer test groups than this and a cluster bootstrap has too few units to draw from: rows are resampled.
MIN_GROUPS = 10
RESAMPLES = 1000


class Difference(NamedTuple):
    """``a - b`` on the test rows as they are, and the bootstrap's 95% percentile interval of it."""

    delta: float
    low: float
    high: float


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` with 0 where ``den`` is 0 (scikit-learn's ``zero_division=0``)."""
    return np.divide(num, den, out=np.zeros_like(num, dtype=float), where=den > 0)


def single_label_scores(y: np.ndarray, predicted: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
    """Scores of ``predicted`` against ``y`` (``[n]`` labels) for each row of ``weights`` ``[R, n]`` (row
    counts of a resample) -> ``{metric: [R]}``. Classes absent from a resample's truth and predictions do
    not count, as in scikit-learn."""
    classes, codes = np.unique(np.concatenate([y, predicted]), return_inverse=True)
    k, n = len(classes), len(y)
    cell = codes[:n] * k + codes[n:]  # the confusion-matrix cell of each row: (true, predicted)
    confusion = np.zeros((weights.shape[0], k * k))
    for c in np.unique(cell):
        confusion[:, c] = weights[:, cell == c].sum(axis=1)
    confusion = confusion.reshape(-1, k, k)
    hits = np.diagonal(confusion, axis1=1, axis2=2)
    truth, calls = confusion.sum(axis=2), confusion.sum(axis=1)
    seen, present = (truth + calls) > 0, truth > 0
    f1 = _ratio(2 * hits, truth + calls)
    recall = _ratio(hits, truth)
    return {"accuracy": hits.sum(axis=1) / weights.sum(axis=1),
            "balanced_accuracy": (recall * present).sum(axis=1) / present.sum(axis=1),
            "macro_f1": (f1 * seen).sum(axis=1) / seen.sum(axis=1)}  # fmt: skip


def multilabel_scores(y: np.ndarray, predicted: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
    """Subset accuracy and macro-F1 of 0/1 ``[n, L]`` predictions per resample; a label neither true nor
    predicted in a resample's rows does not count (:func:`seen_labels`, as for single labels)."""
    y, predicted = y.astype(bool), predicted.astype(bool)
    hits = weights @ (y & predicted)
    marked = weights @ y + weights @ predicted  # true + predicted = 2 hits + false positives + false negatives
    seen = marked > 0
    return {"accuracy": weights @ (y == predicted).all(axis=1) / weights.sum(axis=1),
            "macro_f1": _ratio((_ratio(2 * hits, marked) * seen).sum(axis=1), seen.sum(axis=1))}  # fmt: skip


def seen_labels(y: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Columns of 0/1 ``[n, L]`` labels true or predicted in some row: the labels a multi-label macro-F1 averages.

    scikit-learn averages a single-label macro-F1 over the classes in the truth or the predictions, but a
    multi-label one over every column, so a label absent from the test rows and rightly never predicted
    scores 0 and drags the mean down (mAP skips such labels)."""
    return np.flatnonzero(np.asarray(y).any(axis=0) | np.asarray(predicted).any(axis=0))


def resample_weights(n: int, groups: np.ndarray | None, resamples: int,
                     rng: np.random.Generator) -> tuple[np.ndarray, str]:  # fmt: skip
    """``([1 + resamples, n] row counts, "rows" | "groups")`` for ``n`` rows; the first row is the sample as
    it is (all ones). Whole groups are drawn when ``groups`` (``[n]``) holds :data:`MIN_GROUPS` of them."""
    units, index = np.unique(groups, return_inverse=True) if groups is not None else ((), None)
    if len(units) < MIN_GROUPS:
        return np.vstack([np.ones(n), rng.multinomial(n, np.full(n, 1 / n), size=resamples)]), "rows"
    drawn = rng.multinomial(len(units), np.full(len(units), 1 / len(units)), size=resamples)  # [R, G]
    return np.vstack([np.ones(n), drawn[:, index]]), "groups"


def paired_bootstrap(
    y: np.ndarray, a: np.ndarray, b: np.ndarray, *, groups: np.ndarray | None = None,
    strata: np.ndarray | None = None, resamples: int = RESAMPLES, seed: int = 0,
) -> tuple[dict[str, Difference], str]:  # fmt: skip
    """Differences ``a - b`` in every metric between two predictions of the same test rows ``y``.

    Args:
        y: ``[n]`` labels, or ``[n, L]`` 0/1 indicators (multi-label).
        a, b: predictions shaped like ``y``, or ``[S, ...]`` stacks of them (repeats, e.g. one per pretraining
            seed): each resample's score is then the mean over repeats, all scored on the same draw of rows.
        groups: ``[n]`` each row's group; whole groups are resampled when there are :data:`MIN_GROUPS`.
        strata: ``[n]`` each row's test fold; resampled apart, scores averaged over folds.

    Returns ``({metric: Difference}, "rows" | "groups")`` (``"groups"`` only when every fold drew groups).
    """
    if resamples < 1:
        raise ValueError(f"a bootstrap needs at least one resample, got {resamples}")
    a, b = (np.asarray(p) if np.ndim(p) > np.ndim(y) else np.asarray(p)[None] for p in (a, b))
    if a.shape[1:] != y.shape or b.shape[1:] != y.shape:
        raise ValueError(f"predictions {a.shape[1:]} and {b.shape[1:]} do not match the labels {y.shape}")
    rng = np.random.default_rng(seed)
    scores = single_label_scores if y.ndim == 1 else multilabel_scores
    strata = np.zeros(len(y), dtype=int) if strata is None else np.asarray(strata)
    groups = None if groups is None else np.asarray(groups)

    def mean_score(predictions: np.ndarray, rows: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
        repeats = [scores(y[rows], p[rows], weights) for p in predictions]
        return {m: np.mean([r[m] for r in repeats], axis=0) for m in repeats[0]}

    per_fold, units = [], set()
    for fold in np.unique(strata):
        rows = strata == fold
        weights, unit = resample_weights(int(rows.sum()), None if groups is None else groups[rows], resamples, rng)
        units.add(unit)
        ours, theirs = mean_score(a, rows, weights), mean_score(b, rows, weights)
        per_fold.append({m: ours[m] - theirs[m] for m in ours})
    differences = {}
    for metric in per_fold[0]:
        delta = np.mean([fold[metric] for fold in per_fold], axis=0)  # [1 + R]: mean over folds per resample
        low, high = np.percentile(delta[1:], [2.5, 97.5])
        differences[metric] = Difference(float(delta[0]), float(low), float(high))
    return differences, "groups" if units == {"groups"} else "rows"
