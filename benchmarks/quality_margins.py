"""The mitosis benchmark's probes and margins: leave-one-field-out scores, each held-out cell's prediction,
the model minus each baseline with a paired-bootstrap interval, and the predictions saved beside a run so
``quality.py summary`` can pool intervals over workdirs whose seeds ran apart."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import mitosis
import numpy as np
import pandas as pd
from quality_tables import FEATURES, METRICS

from domainmae.atomic import atomic_path
from domainmae.export.compare import paired_bootstrap
from domainmae.export.evaluate import evaluate

METHODS = ("linear", "knn")
PREDICTIONS = "predictions.parquet"  # in the workdir: every held-out cell's label and predictions, per run

Predictions = dict[tuple[str, str], dict[str, np.ndarray]]  # (field, probe) -> {"truth" | features: [n]}


def probe_folds(model: Path, against: list[Path], tune: bool = False) -> tuple[list[dict[str, Any]], Predictions]:
    """Leave-one-field-out: per held-out field, every feature set under each probe (plain and class-weighted
    linear, 5-NN), one row per (field, features, probe); ``tune`` adds both linear probes with their C chosen
    by leave-one-field-out inside the training fields (``linear-tuned``, ``linear-balanced-tuned``). Also the
    held-out cells' labels and each feature set's predictions per (field, probe), for :func:`differences`."""
    table = pd.read_parquet(model, columns=[mitosis.FIELD, mitosis.LABEL])
    fields = sorted(table[mitosis.FIELD].unique())
    # (balanced, tuned, methods): the untuned probes always, so a tuned run also has the rows of an untuned one.
    probes = [(False, False, METHODS), (True, False, ("linear",))]
    probes += [(False, True, ("linear",)), (True, True, ("linear",))] if tune else []
    rows, predicted = [], {}
    for field in fields:
        for balanced, tuned, methods in probes:
            result = evaluate(model, mitosis.LABEL, split=f"{mitosis.FIELD}={field}", against=against,
                              methods=methods, balanced=balanced, tune=tuned, predictions=True)  # fmt: skip
            truth = table[mitosis.LABEL].astype(str).to_numpy()[result["test_rows"]]  # as evaluate reads labels
            for features, by_method in result["features"].items():
                for method, scores in by_method.items():
                    probe = method + ("-balanced" if balanced else "") + ("-tuned" if tuned else "")
                    rows.append({"field": field, "features": features, "probe": probe,
                                 **{m: scores[m] for m in (*METRICS, "C") if m in scores}})  # fmt: skip
                    fold = predicted.setdefault((field, probe), {"truth": truth})
                    fold[features] = np.asarray(result["predictions"][features][method])
    return rows, predicted


def differences(steps: int, pool: str, by_seed: dict[int, Predictions]) -> list[dict[str, Any]]:
    """Per probe, the model minus each baseline as the score table has it (mean over held-out fields, then
    over seeds), with a 95% paired-bootstrap interval over the held-out cells (each field resampled apart,
    the same draw for every seed: :func:`~domainmae.export.compare.paired_bootstrap`)."""
    seeds = sorted(by_seed)
    first = by_seed[seeds[0]]  # every seed scores the same held-out cells: its labels serve all
    out = []
    for probe in dict.fromkeys(p for _, p in first):
        folds = [key for key in first if key[1] == probe]
        if any(not np.array_equal(by_seed[s][key]["truth"], first[key]["truth"]) for s in seeds for key in folds):
            raise ValueError(f"the held-out cells differ between seeds {seeds} ({probe}): their margins cannot be paired")
        truth = np.concatenate([first[key]["truth"] for key in folds])
        strata = np.repeat(np.arange(len(folds)), [len(first[key]["truth"]) for key in folds])  # each cell's field
        stacked = {f: np.stack([np.concatenate([by_seed[s][key][f] for key in folds]) for s in seeds])
                   for f in FEATURES}  # fmt: skip  # [seeds, cells]
        for baseline in FEATURES[1:]:
            found, _ = paired_bootstrap(truth, stacked["model"], stacked[baseline], strata=strata)
            out.append({"steps": steps, "pool": pool, "probe": probe, "against": baseline,
                        **{m: found[m]._asdict() for m in METRICS}})  # fmt: skip
    return out


def write_predictions(work: Path, predicted: dict[tuple[int, str], dict[int, Predictions]]) -> Path:
    """``work/predictions.parquet``: one row per (steps, pool, seed, held-out field, probe, cell) with the
    cell's label and each feature set's prediction (strings, as ``evaluate`` reads the labels)."""
    frames = [
        pd.DataFrame({"steps": steps, "pool": pool, "seed": seed, "field": field, "probe": probe,
                      "cell": np.arange(len(fold["truth"])), **{k: fold[k] for k in ("truth", *FEATURES)}})
        for (steps, pool), by_seed in predicted.items() for seed, folds in by_seed.items()
        for (field, probe), fold in folds.items()
    ]  # fmt: skip
    path = work / PREDICTIONS
    with atomic_path(path) as tmp:
        pd.concat(frames, ignore_index=True).to_parquet(tmp, index=False)
    return path


def read_predictions(paths: list[Path]) -> dict[tuple[int, str], dict[int, Predictions]]:
    """The predictions :func:`write_predictions` saved in several workdirs, as one ``(steps, pool) -> seed ->
    predictions`` mapping for :func:`differences`; a seed saved twice is an error (it would count twice)."""
    table = pd.concat([pd.read_parquet(p) for p in paths], ignore_index=True)
    if table.duplicated(["steps", "pool", "seed", "field", "probe", "cell"]).any():
        raise ValueError("a seed's predictions appear in two workdirs; pool runs of different seeds")
    predicted: dict[tuple[int, str], dict[int, Predictions]] = {}
    for (steps, pool, seed, field, probe), fold in table.sort_values("cell", kind="stable").groupby(
            ["steps", "pool", "seed", "field", "probe"], sort=False):  # fmt: skip
        by_seed = predicted.setdefault((int(steps), str(pool)), {}).setdefault(int(seed), {})
        by_seed[(field, probe)] = {k: fold[k].to_numpy() for k in ("truth", *FEATURES)}
    return predicted
