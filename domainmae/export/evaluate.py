"""Linear-probe and k-NN evaluation of an embeddings file against a label column, beside other feature sets.

Single-label columns report accuracy, macro-F1 and balanced accuracy; list-valued columns (multi-label,
e.g. BigEarthNet CORINE labels) report subset accuracy, macro-F1 and macro mean average precision, the
macro averages over the labels the test rows hold (macro-F1: true or predicted there; mAP: true there). The
split (:mod:`~domainmae.export.splits`) is random (stratified when every class has two rows), by a group
column (plate, scene, ...) or by spatial blocks with a gap. ``chance`` is the accuracy of always
predicting the most frequent training label (multi-label: each label's more frequent training value).

Baselines answer "is the model better than the obvious?": ``raw`` (per-channel pixel statistics of each
tile) and ``random`` (the same architecture at random init) files of the same rows, and files of other
checkpoints, join with ``against``: checked to hold the same rows in the same order, and scored on the very
same train and test rows. Evaluation only reads embedding files (Parquet, GeoParquet, h5ad, per-patch
GeoTIFF/Zarr), so it runs without the model, torch or the data; baseline files are made on the embed side,
by :func:`~domainmae.export.embed.embed_baselines` (``domainmae evaluate --baselines`` calls it first)::

    with tempfile.TemporaryDirectory() as folder:
        files = embed_baselines("emb.parquet", ["raw", "random"], folder)  # {"raw": path, "random": path}
        result = evaluate("emb.parquet", "Metadata_pert", against=files.items())

Rare classes (a few % mitotic cells) leave an unweighted probe predicting the majority class: ``balanced``
weights the linear probe's classes inversely to their training frequency (k-NN has no class weights).

The linear probe's L2 penalty is fixed (``C=1`` on standardised features) unless ``tune``: then ``C`` is
chosen per feature set from :data:`C_GRID` by 3-fold cross-validation inside the training rows on macro-F1
(multi-label: mAP, the ranking score that probe reports),
folds grouped like the split (a field, plate or spatial block never on both sides of an inner fold), and
the probe refitted on all training rows. Every feature set gets the same search, so a set is not ranked
by how well one fixed penalty happens to suit its dimension and noise.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from sklearn.dummy import DummyClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, average_precision_score, balanced_accuracy_score, f1_score, make_scorer
from sklearn.model_selection import GridSearchCV, GroupKFold, KFold, StratifiedKFold
from sklearn.multiclass import OneVsRestClassifier
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MultiLabelBinarizer, StandardScaler

from ..atomic import atomic_write_text, check_output_file
from .compare import paired_bootstrap, seen_labels
from .labels import LABEL, raster_table
from .splits import default_gap, split_rows, too_near, with_ground_boxes
from .writers.tables import read_embeddings

Method = Literal["linear", "knn"]
#: A file named by its provenance's ``features`` (else its file name), or a ``(name, file)`` pair.
Against = str | Path | tuple[str, str | Path]
#: Inverse L2 strengths a tuned linear probe chooses from (1 is the untuned probe's). Down to 1e-6: with a grid
#: from 1e-4, the mitosis benchmark's raw statistics chose its edge in every fold (benchmarks/README.md).
C_GRID = tuple(10.0**e for e in range(-6, 3))
INNER_FOLDS = 3


def finite_features(df: pd.DataFrame, features: Sequence[str], path: Path) -> np.ndarray:
    """``df[features]`` as float32 ``[N, D]``; an error naming the first column (and ``path``) that holds NaN or
    infinity, which the probes would otherwise reject with no name."""
    x = df[list(features)].to_numpy(np.float32)
    bad = ~np.isfinite(x)
    if bad.any():
        column = int(np.flatnonzero(bad.any(axis=0))[0])
        raise ValueError(f"feature column {features[column]!r} of {path} is not finite in {int(bad[:, column].sum())} "
                         f"row(s) (NaN or infinity); the probes need a value in every feature")
    return x


def _classifier(method: str, k: int, n_train: int, multilabel: bool, balanced: bool) -> Any:
    if method == "linear":
        head = LogisticRegression(max_iter=2000, class_weight="balanced" if balanced else None)
    elif method == "knn":
        head = KNeighborsClassifier(n_neighbors=min(k, n_train))
    else:
        raise ValueError(f"method must be 'linear' or 'knn', got {method!r}")
    # Standardised features: embeddings' scales differ per dimension; k-NN and the L2 penalty both care.
    return make_pipeline(StandardScaler(), OneVsRestClassifier(head) if multilabel else head)


def same_rows(file: Path, df: pd.DataFrame, other: pd.DataFrame, features: Sequence[str], name: str) -> None:
    """Raise unless ``other`` holds the rows of ``df`` in the same order (same metadata columns and values)."""
    meta = [c for c in df.columns if c not in features]
    missing = [c for c in meta if c not in other.columns]
    if len(other) != len(df) or missing:
        raise ValueError(f"the {name} baseline's rows do not line up with {file}: {len(other)} rows against "
                         f"{len(df)}, columns {missing} missing; was the file, or the data, changed?")  # fmt: skip
    # As text: list cells (CORINE labels) and nulls compare too.
    unequal = (df[meta].astype(str).to_numpy() != other[meta].astype(str).to_numpy()).any(axis=1)
    if unequal.any():
        first = int(np.flatnonzero(unequal)[0])
        raise ValueError(f"the {name} baseline's rows do not line up with {file}: {int(unequal.sum())} rows differ, "
                         f"the first at row {first}; was the file reordered, or the data changed?")  # fmt: skip


def inner_folds(y: np.ndarray, groups: np.ndarray | None, seed: int, multilabel: bool) -> list[tuple[np.ndarray, np.ndarray]]:
    """Cross-validation folds of the training rows for tuning: by group when the split has groups (at
    least two needed), else stratified when every class has :data:`INNER_FOLDS` rows."""
    rows = np.arange(len(y))
    if groups is not None:
        distinct = len(set(groups))
        if distinct < 2:
            raise ValueError(f"tuning the linear probe needs two groups in the training rows to cross-validate "
                             f"without leaking; the split leaves {distinct}")  # fmt: skip
        folds = list(GroupKFold(n_splits=min(INNER_FOLDS, distinct)).split(rows, groups=groups))
        for fit, held in folds:
            if not multilabel and len(set(y[fit])) < 2:
                raise ValueError(f"tuning the linear probe: the inner fold that holds out groups "
                                 f"{sorted(map(str, set(groups[held])))} trains on one class only "
                                 f"({str(y[fit][0])!r}): the other training groups hold no other class")  # fmt: skip
        return folds
    counts = pd.Series(y if not multilabel else list(map(str, y))).value_counts()
    if not multilabel and counts.min() >= INNER_FOLDS:
        return list(StratifiedKFold(INNER_FOLDS, shuffle=True, random_state=seed).split(rows, y))
    return list(KFold(INNER_FOLDS, shuffle=True, random_state=seed).split(rows))


def tuning_folds(df: pd.DataFrame, y: np.ndarray, train: np.ndarray, groups: np.ndarray | None, split: str,
                 gap: int | None, seed: int, multilabel: bool) -> list[tuple[np.ndarray, np.ndarray]]:  # fmt: skip
    """:func:`inner_folds` of the ``train`` rows; for a blocks split each fold's fitting rows also keep the outer
    split's gap from the blocks it holds out (:func:`~.splits.too_near`), so that tuning does not leak either."""
    folds = inner_folds(y[train], None if groups is None else groups[train], seed, multilabel)
    if not split.startswith("blocks:"):
        return folds
    gap = default_gap(df) if gap is None else gap
    kept = [(fit[~too_near(df, train[fit], train[held], gap)], held) for fit, held in folds]
    for fit, held in kept:
        if len(np.unique(y[train[fit]], axis=0)) < 2:
            raise ValueError(f"tuning the linear probe: the gap of {gap} px leaves the inner fold that holds out blocks "
                             f"{sorted(map(str, set(groups[train[held]])))[:3]}... one class or none to fit on; "
                             "use larger blocks, a smaller --gap or no --tune")  # fmt: skip
    return kept


def mean_average_precision(y: np.ndarray, proba: np.ndarray) -> float:
    """Macro mAP of ``[n, L]`` scores over the labels present in ``y`` (AP is undefined for an absent one)."""
    present = y.any(axis=0)
    return float(average_precision_score(y[:, present], proba[:, present], average="macro"))


def _fit(method: str, x: np.ndarray, y: np.ndarray, k: int, multilabel: bool, balanced: bool,
         folds: list[tuple[np.ndarray, np.ndarray]] | None) -> tuple[Any, float | None]:  # fmt: skip
    """The probe fitted on ``x``; with ``folds`` (linear only) its C chosen first. Returns ``(model, C)``."""
    model = _classifier(method, k, len(x), multilabel, balanced)
    if folds is None or method != "linear":
        return model.fit(x, y), None
    name = "onevsrestclassifier__estimator__C" if multilabel else "logisticregression__C"
    scoring = make_scorer(mean_average_precision, response_method="predict_proba") if multilabel else "f1_macro"
    search = GridSearchCV(model, {name: list(C_GRID)}, scoring=scoring, cv=folds, error_score="raise")
    try:
        search.fit(x, y)
    except ValueError as err:  # e.g. an inner fold whose training part holds one class only
        raise ValueError(f"tuning the linear probe's C by cross-validation in the training rows failed: {err}") from err
    return search.best_estimator_, float(search.best_params_[name])


def score(x: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray, methods: Sequence[str], k: int,
          multilabel: bool, balanced: bool = False,
          folds: list[tuple[np.ndarray, np.ndarray]] | None = None,
          ) -> tuple[dict[str, dict[str, float]], dict[str, np.ndarray]]:  # fmt: skip
    """``({method: {metric: value}}, {method: predictions of the test rows})`` of probes fit on ``x[train]``
    and scored on ``x[test]``; with ``folds`` (:func:`inner_folds` of the training rows) the linear probe's C
    is tuned and reported as ``C``."""
    results, predictions = {}, {}
    for method in methods:
        model, c = _fit(method, x[train], y[train], k, multilabel, balanced, folds)
        predicted = predictions[method] = model.predict(x[test])
        labels = seen_labels(y[test], predicted) if multilabel else None
        scores = {"accuracy": float(accuracy_score(y[test], predicted)),
                  "macro_f1": float(f1_score(y[test], predicted, average="macro", labels=labels, zero_division=0))
                  if labels is None or len(labels) else 0.0}  # fmt: skip
        if multilabel:
            scores["map"] = mean_average_precision(y[test], model.predict_proba(x[test]))
        else:
            scores["balanced_accuracy"] = float(balanced_accuracy_score(y[test], predicted))
        if c is not None:
            scores["C"] = c
        results[method] = scores
    return results, predictions


def differences(y: np.ndarray, predictions: dict[str, dict[str, np.ndarray]], groups: np.ndarray | None,
                seed: int) -> tuple[dict[str, Any], str | None]:  # fmt: skip
    """The first feature set against each other one on the test rows ``y``: ``{other: {method: {metric:
    {"delta", "low", "high"}}}}`` (:func:`~domainmae.export.compare.paired_bootstrap`), and what was resampled."""
    (_, ours), *others = predictions.items()
    out, resampled = {}, None
    for name, theirs in others:
        out[name] = {}
        for method in ours:
            found, resampled = paired_bootstrap(y, ours[method], theirs[method], groups=groups, seed=seed)
            out[name][method] = {metric: d._asdict() for metric, d in found.items()}
    return out, resampled


def evaluate(
    file: str | Path,
    label: str | None = None,
    *,
    split: str = "random",
    methods: Sequence[Method] = ("linear", "knn"),
    test_size: float = 0.25,
    k: int = 5,
    seed: int = 0,
    against: Iterable[Against] = (),
    balanced: bool = False,
    tune: bool = False,
    gap: int | None = None,
    labels: str | Path | None = None,
    label_field: str | None = None,
    purity: float = 0.5,
    predictions: bool = False,
    output: str | Path | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Fit each method on the train rows and score the test rows, for the file's features and each ``against``.

    Args:
        split: ``random``, a group column (plate, well, ``scene_id``...) kept on one side, ``COLUMN=VALUE,...``
            (those groups are the test set), or ``blocks:SIZE`` (GeoParquet windows: SIZE x SIZE source-pixel
            blocks on the ground held out whole, shared by scenes over the same place; training windows nearer
            than ``gap`` px to a test window of any scene dropped, default one window).
        against: more embedding files of the same rows in the same order (an error if not), scored on the
            same split: ``raw``/``random`` baselines (``embed_baselines(...).items()``), other checkpoints.
            Each is a path, named by its provenance's features (``model``, ``raw``, ``random``), or a
            ``(name, path)`` pair; a name already taken falls back to the file name.
        balanced: class weights inversely proportional to class frequency in the linear probe.
        tune: choose the linear probe's C per feature set by cross-validation inside the training rows,
            grouped like the split (module docstring); each linear score then carries its ``C``.
        labels: categorical labels for ``file``, a per-patch embedding GeoTIFF/Zarr: a raster, or a vector
            file of polygons or points (GeoPackage, GeoJSON, Shapefile, GeoParquet) whose class column is
            ``label_field`` (needed when it has more than one); any CRS. Each patch takes its majority class
            when at least ``purity`` of its valid label pixels hold it (:mod:`~domainmae.export.labels`); the
            label column is then ``label``.
        predictions: also return each test row's predicted label per feature set and method
            (``"predictions": {name: {method: [label, ...]}}``, label lists for multi-label) and the test rows'
            positions in ``file`` (``"test_rows"``), e.g. to pool leave-one-group-out folds.
        output: also write the result as JSON here; an existing file is replaced only with ``overwrite``, and
            never when it is one of the inputs (``file``, ``labels``, an ``against`` file).

    With ``against``, ``"differences"`` holds the file's features minus each other set's, per method and
    metric, with a paired-bootstrap 95% interval over the test rows (:mod:`~domainmae.export.compare`; whole
    split groups resampled when the test rows span enough of them, named by ``"resampled"``).

    Returns ``{"file", "label", "split", "n_train", "n_test", "n_dropped", "n_classes", "multilabel",
    "chance", "checkpoint_sha256", "seed", "features": {name: {method: {metric: value}}}}``, the file's own
    features first (named by its provenance: ``model`` unless it holds a baseline), and ``"differences"``,
    ``"resampled"`` with ``against``, ``"test_rows"``, ``"predictions"`` with ``predictions``.
    """
    file = Path(file)
    if output is not None:  # before the probes, not after them
        check_output_file(output, overwrite=overwrite, inputs=(file, labels))
    if labels is not None:
        if label not in (None, LABEL):
            raise ValueError(f"with a label file (labels=) the label column is {LABEL!r}, not {label!r}")
        label = LABEL

        def read(path: Path) -> tuple[pd.DataFrame, list[str], dict[str, Any]]:
            return raster_table(path, Path(labels), purity, label_field)
    elif label_field is not None:
        raise ValueError(f"a label field ({label_field!r}) names the class column of a vector label file (labels=, "
                         "--labels); without one, the label column is label= (--label)")
    elif label is None:
        raise ValueError(f"evaluate {file} needs a label column (label=, --label) or a label raster (labels=, --labels)")
    else:
        read = read_embeddings
    if split.split("=", 1)[0] == label:  # before reading (and embedding baselines): every test class is unseen
        raise ValueError(f"split {split!r}: the split column is the label column {label!r}, so no test row's label "
                         "occurs in training and every score would be 0; split by another column (plate, scene_id)")
    df, features, provenance = read(file)
    if label not in df.columns:
        raise KeyError(f"label column {label!r} is not in {file}; it has {[c for c in df.columns if c not in features]}")
    if df.empty:
        raise ValueError(f"{file} has no rows to evaluate")
    sets = {provenance.get("features", "model"): finite_features(df, features, file)}

    def join(path: Path, name: str | None) -> None:
        if output is not None:  # against files come lazily (baselines are embedded on demand): checked as they come
            check_output_file(output, overwrite=overwrite, inputs=(path,))
        other, other_features, other_provenance = read(path)
        name = name or other_provenance.get("features", "model")
        name = name if name not in sets else path.stem
        if name in sets:
            raise ValueError(f"two feature sets are named {name!r} ({path}); rename one of the files")
        same_rows(file, df, other, features, name)
        sets[name] = finite_features(other, other_features, path)

    for entry in against:
        name, path = entry if isinstance(entry, tuple) else (None, entry)
        join(Path(path), name)
    if split.startswith("blocks:") and labels is None:
        df = with_ground_boxes(df, file)  # windows of a GeoParquet: blocks and the gap on the ground
    labelled = df[label].notna().to_numpy()
    df = df[labelled].reset_index(drop=True)
    if df.empty:
        raise ValueError(f"label column {label!r} of {file} has no non-null values")
    multilabel = isinstance(df[label].iloc[0], (list, tuple, np.ndarray))
    binarizer = MultiLabelBinarizer()
    y = binarizer.fit_transform(df[label]) if multilabel else df[label].astype(str).to_numpy()
    train, test, dropped, groups = split_rows(df, y, split, test_size, seed, multilabel, gap=gap)
    if len(train) == 0:
        raise ValueError(f"split {split!r}: the gap{'' if gap is None else f' of {gap} px'} dropped every training "
                         f"row ({dropped}) as too near the test rows; use larger blocks, a smaller --gap or more data")
    if len(np.unique(y[train], axis=0)) < 2:
        raise ValueError(f"the training rows hold a single value of {label!r}; nothing to learn")
    seen = y[train].any(axis=0) if multilabel else np.unique(y[train])
    if not (y[test][:, seen].any() if multilabel else np.isin(y[test], seen).any()):
        raise ValueError(f"split {split!r}: no test row's {label!r} occurs in the training rows, so every score "
                         "would be 0; hold out other groups or split by another column")
    folds = tuning_folds(df, y, train, groups, split, gap, seed, multilabel) if tune else None
    scored = {name: score(x[labelled], y, train, test, methods, k, multilabel, balanced, folds)
              for name, x in sets.items()}  # fmt: skip
    predicted = {name: by_method for name, (_, by_method) in scored.items()}
    chance = DummyClassifier(strategy="most_frequent").fit(np.zeros((len(train), 1)), y[train]).predict(test[:, None])
    result: dict[str, Any] = {
        "file": str(file), "label": label, "split": split, "n_train": len(train), "n_test": len(test),
        "n_dropped": dropped, "n_classes": int(y.shape[1]) if multilabel else len(np.unique(y)),
        "multilabel": multilabel, "chance": float(accuracy_score(y[test], chance)),
        "checkpoint_sha256": provenance.get("checkpoint_sha256"), "seed": seed, "balanced": balanced, "tune": tune,
        "features": {name: scores for name, (scores, _) in scored.items()},
    }  # fmt: skip
    if len(sets) > 1:
        result["differences"], result["resampled"] = differences(
            y[test], predicted, None if groups is None else groups[test], seed)
    if predictions:
        result["test_rows"] = np.flatnonzero(labelled)[test].tolist()
        result["predictions"] = {
            name: {method: ([list(row) for row in binarizer.inverse_transform(p)] if multilabel else p.tolist())
                   for method, p in by_method.items()}
            for name, by_method in predicted.items()}  # fmt: skip
    if output is not None:
        atomic_write_text(output, json.dumps(result, indent=2) + "\n")
    return result


def format_table(result: dict[str, Any]) -> str:
    """The result as a small text table, one row per feature set and method."""
    rows = [(name, method, scores) for name, by_method in result["features"].items() for method, scores in by_method.items()]
    metrics = [m for m in ("accuracy", "balanced_accuracy", "macro_f1", "map", "C") if any(m in s for _, _, s in rows)]
    dropped = f" dropped(gap)={result['n_dropped']}" if result.get("n_dropped") else ""
    head = (f"{result['file']}  label={result['label']}  split={result['split']}  train={result['n_train']} "
            f"test={result['n_test']}{dropped} classes={result['n_classes']} chance={result['chance']:.3f}")  # fmt: skip
    lines = [head, f"{'features':<10}{'method':<8}" + "".join(f"{m:>19}" for m in metrics)]
    for name, method, scores in rows:
        # C (a tuned linear probe's) spans decades and k-NN has none.
        cells = [f"{scores[m]:>19g}" if m == "C" else f"{scores[m]:>19.3f}" for m in metrics if m in scores]
        lines.append(f"{name:<10}{method:<8}" + "".join(cells))
    if result.get("differences"):
        first = next(iter(result["features"]))
        lines.append(f"{first} minus each baseline, on the same test rows, with a 95% paired-bootstrap interval "
                     f"(test {result['resampled']} resampled):")  # fmt: skip
        for name, by_method in result["differences"].items():
            for method, by_metric in by_method.items():
                cells = [f"{m} {d['delta']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]" for m, d in by_metric.items()]
                lines.append(f"  - {name:<8}{method:<8}" + "   ".join(cells))
    return "\n".join(lines)
