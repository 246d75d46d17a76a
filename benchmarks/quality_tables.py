"""The tables ``quality.py`` prints: mitosis probe scores and the model's differences from its baselines, EO
reconstruction MSE; mean ± sd over seeds."""
from __future__ import annotations

import statistics
from typing import Any

import pandas as pd

FEATURES = ("model", "raw", "random")
METRICS = ("macro_f1", "balanced_accuracy")


def spread(values: list[float]) -> str:
    """``mean ± sd`` (sample sd; only the mean for one value)."""
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def print_mitosis(scores: pd.DataFrame) -> None:
    """The score table (per seed the mean over the leave-one-field-out folds, then mean ± sd over seeds) and
    the balanced probe's macro-F1 per held-out field at the largest step count and the first pool."""
    seeds = sorted(int(s) for s in scores.seed.unique())
    per_seed = scores.groupby(["steps", "pool", "features", "probe", "seed"])[list(METRICS)].mean().reset_index()
    print(f"\nmitosis (pH3+) from DNA+actin crops, leave-one-field-out ({scores.field.nunique()} folds), "
          f"{len(seeds)} seed(s) {seeds}: mean over folds, then mean ± sd over seeds")  # fmt: skip
    print(f"{'steps':>6}  {'pool':<10}{'features':<10}{'probe':<23}{'seeds':>6}" + "".join(f"{m:>24}" for m in METRICS))
    for (steps, pool, features, probe), group in per_seed.groupby(["steps", "pool", "features", "probe"]):
        print(f"{steps:>6}  {pool:<10}{features:<10}{probe:<23}{len(group):>6}"
              + "".join(f"{spread(group[m].tolist()):>24}" for m in METRICS))  # fmt: skip
    steps, pool = scores.steps.max(), scores.pool.iloc[0]
    last = scores[(scores.steps == steps) & (scores.probe == "linear-balanced") & (scores.pool == pool)]
    by_field = last.pivot_table(index="field", columns="features", values="macro_f1")
    print(f"\nbalanced linear macro-F1 per held-out field at {steps} steps, pool {pool} (mean over seeds)\n"
          + by_field[list(FEATURES)].round(3).to_string())  # fmt: skip
    if "C" in scores:  # tuned probes: which penalties the inner cross-validation chose, over folds and seeds
        chosen = scores.dropna(subset=["C"]).groupby(["steps", "pool", "features", "probe"]).C
        print("\nC chosen by the tuned probes (count over folds x seeds)\n"
              + chosen.apply(lambda c: ", ".join(f"{v:g} x{n}" for v, n in sorted(c.value_counts().items()))).to_string())


def print_differences(gaps: list[dict[str, Any]], seeds: int) -> None:
    """The model minus each baseline per probe, with the paired-bootstrap interval over held-out cells."""
    print(f"\nmodel minus baseline (mean over folds and {seeds} seed(s)), 95% paired-bootstrap interval over the "
          "held-out cells: an interval across 0 means these cells cannot tell the two apart")  # fmt: skip
    print(f"{'steps':>6}  {'pool':<10}{'probe':<23}{'against':<9}" + "".join(f"{m:>28}" for m in METRICS))
    for gap in gaps:
        cells = [f"{gap[m]['delta']:+.3f} [{gap[m]['low']:+.3f}, {gap[m]['high']:+.3f}]" for m in METRICS]
        print(f"{gap['steps']:>6}  {gap['pool']:<10}{gap['probe']:<23}{gap['against']:<9}"
              + "".join(f"{c:>28}" for c in cells))  # fmt: skip


def print_eo(table: pd.DataFrame, samples: int) -> None:
    """MSE per step count, held-out fold, training patches and case, and predictor: mean ± sd over seeds; with
    several folds, each trained on all its patches, also per seed the mean over folds, then mean ± sd over seeds."""
    seeds = sorted(int(s) for s in table.seed.unique())
    where = ("crops of the training patches" if set(table.fold) == {"none"}
             else "crops of the held-out zone's patches, pretrained on the other zones'")  # fmt: skip
    print(f"\nEO reconstruction, BigEarthNet S2+S1 demo patches ({samples} {where}, the same masks for every "
          f"predictor), {len(seeds)} seed(s) {seeds}: MSE in standardised units (the training patches' band "
          "statistics), mean ± sd over seeds (n/a: the baseline has no prediction there)")  # fmt: skip
    predictors = list(dict.fromkeys(table.predictor))
    # How many patches pretrained the fold (0 or absent: all of them, as before --train-patches).
    table = table.assign(trained_on=table.get("trained_on", 0)).fillna({"trained_on": 0}).astype({"trained_on": int})
    if table.fold.nunique() > 1 and table.groupby("fold").trained_on.nunique().max() == 1:
        folds_mean = table.groupby(["steps", "case", "predictor", "seed"], sort=False).mse.mean().reset_index()
        table = pd.concat([table, folds_mean.assign(fold="mean of folds", trained_on=0)], ignore_index=True)
    print(f"{'steps':>6}  {'held out':<14}{'trained on':>10}  {'case':<14}" + "".join(f"{p:>20}" for p in predictors))
    for (steps, fold, count, case), group in table.groupby(["steps", "fold", "trained_on", "case"], sort=False):
        cells = [group[group.predictor == p].mse.tolist() for p in predictors]
        print(f"{steps:>6}  {fold:<14}{count or 'all':>10}  {case:<14}"
              + "".join(f"{'n/a' if None in c or any(pd.isna(c)) else spread(c):>20}" for c in cells))  # fmt: skip
