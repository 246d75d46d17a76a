"""Real-label quality benchmarks under a fixed CPU budget, each scored against baselines from the same run.

``mitosis``: single-cell crops of the bundled ExampleFly (3 fields) and ExampleHuman (1 field) images,
labelled pH3-positive or not (``benchmarks/mitosis.py`` states the segmentation and the threshold rule).
Per seed: pretrain the cellpainting recipe's demo model on the crops' DNA and actin (pH3 is never given to
the encoder), embed every crop, and probe ``Metadata_Mitotic`` with ``evaluate`` next to its ``raw``
(per-channel pixel statistics) and ``random`` (same architecture, random init) baselines, on the same rows.
The split is leave-one-field-out: each field is the test set once. ``evaluate``'s grouped split holds out
one of the four fields, chosen by its seed; for each field the benchmark uses the first seed (from
``100 * seed`` on) whose split holds that field out, so the folds are fixed and that seed also initialises
the random baseline. Pretraining is self-supervised on all crops (transductive: no labels, no pH3).

``eo-reconstruction``: per seed, pretrain the sentinel recipe's demo model on the six bundled BigEarthNet
S2+S1 patches and score, with ``score_reconstruction``, the masked-patch MSE (random masking at 75%) and the
cross-sensor MSE (S1 rebuilt from all of S2, and S2 from all of S1) of the model beside its reconstruction
baselines (mean of visible patches, interpolation, per-pixel linear regression from the other channels) on
the same crops and masks. The crops come from the training patches: six patches leave none to hold out.

The budget covers the whole run: building the data, a short timing run, and per seed pretraining and
scoring. Pretraining gets what the measured cost of the rest leaves, as a step count all seeds share.

    python benchmarks/quality.py mitosis --workdir /tmp/q --budget-minutes 10 --seeds 0,1,2
    python benchmarks/quality.py eo-reconstruction --workdir /tmp/q-eo --budget-minutes 10 --seeds 0,1,2
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd

import domainmae
from domainmae.export.evaluate import evaluate
from domainmae.export.splits import split_rows
from domainmae.recipes import Recipe, load_recipe
from domainmae.train import pretrain
from domainmae.train.reconstruct import score_reconstruction

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is a folder of scripts, not a package
import mitosis  # noqa: E402

FEATURES = ("model", "raw", "random")
METHODS = ("linear", "knn")
METRICS = ("macro_f1", "balanced_accuracy")
CALIBRATION_STEPS = 20
TEST_SIZE = 0.25  # evaluate's grouped split: ceil(0.25 * 4 fields) = 1 field held out


def mitosis_recipe(manifest: Path, crop: int, seed: int, batch: int, overrides: list[str]) -> Recipe:
    """The cellpainting demo model (ViT-tiny, D=64, patch 8) on the crops' DNA and actin; ``overrides``
    (``--set``, an ablation) come last."""
    return load_recipe("cellpainting", [
        f"data.path={manifest}", f"data.channels=[{','.join(mitosis.ENCODER_CHANNELS)}]", f"data.crop_size={crop}",
        "data.crops_per_read=1",  # a crop is the whole field: one read, one sample
        "data.num_workers=0",  # two cores: a loader worker would only compete with torch's threads
        f"train.batch_size={batch}", "train.base_lr=0.006",  # lr = 0.006 * 64 / 256 = 1.5e-3, as the demo's ~1e-3
        "train.warmup_epochs=1", "train.log_every=10", "train.checkpoint_every=100000", "train.keep_checkpoints=1",
        f"train.seed={seed}", *overrides,
    ], demo=True)  # fmt: skip


def embed_crops(run: Path, output: Path) -> Path:
    """One row per crop (the crop is one tile), DNA and actin only."""
    return domainmae.embed(run, output=output, channels=list(mitosis.ENCODER_CHANNELS), level="tile",
                           overwrite=True, progress=False)  # fmt: skip


def fold_seeds(table: Path, start: int) -> dict[str, int]:
    """``{field: seed}``: for each field the first seed from ``start`` whose grouped split holds it out."""
    df = pd.read_parquet(table, columns=[mitosis.FIELD, mitosis.LABEL])
    fields = df[mitosis.FIELD].to_numpy()
    y = df[mitosis.LABEL].astype(str).to_numpy()
    found: dict[str, int] = {}
    for seed in range(start, start + 1000):
        _, test, _ = split_rows(df, y, mitosis.FIELD, TEST_SIZE, seed, False)
        held = set(fields[test])
        if len(held) == 1 and (field := held.pop()) not in found:
            found[field] = seed
        if len(found) == len(set(fields)):
            return dict(sorted(found.items()))
    raise RuntimeError(f"no split seed in [{start}, {start + 1000}) holds out each of the fields {sorted(set(fields))}")


def time_pretraining(recipe: Recipe, run: Path) -> tuple[float, float]:
    """``(seconds per step, start-up seconds)`` of a short pretraining run of ``recipe``."""
    shutil.rmtree(run, ignore_errors=True)
    start = time.perf_counter()
    pretrain(recipe, output=run, max_steps=CALIBRATION_STEPS, quiet=True)
    wall = time.perf_counter() - start
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    per_step = recipe.train.batch_size / logged[-1]["samples_per_s"]  # steady state, without the start-up
    return per_step, max(0.0, wall - CALIBRATION_STEPS * per_step)


def plan_steps(args: argparse.Namespace, began: float, seeds: list[int], per_step: float, per_seed_other: float) -> int:
    """Pretraining steps per seed: what the budget leaves after the measured cost of everything else."""
    left = (args.budget_minutes * 60 - (time.perf_counter() - began)) / len(seeds) - per_seed_other
    return args.steps or max(CALIBRATION_STEPS, int(left / per_step))


def spread(values: list[float]) -> str:
    """``mean ± sd`` (sample sd; only the mean for one value)."""
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def run_mitosis(args: argparse.Namespace) -> dict[str, Any]:
    """Build, calibrate, then per seed pretrain, embed and probe; print and return every score."""
    began = time.perf_counter()
    budget = args.budget_minutes * 60
    seeds = [int(s) for s in args.seeds.split(",")]
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    manifest, counts = mitosis.build(work / "crops", crop=args.crop, k=args.k)
    print(mitosis.format_counts(counts), flush=True)
    n_fields = len(counts)

    recipe = mitosis_recipe(manifest, args.crop, 0, args.batch, args.set)
    per_step, startup = time_pretraining(recipe, work / "calibration")
    start = time.perf_counter()
    embed_crops(work / "calibration", work / "calibration.parquet")
    embed_s = time.perf_counter() - start
    # Per seed: one model embedding, and per fold two baseline embeddings inside evaluate (probes are ~1 s).
    steps = plan_steps(args, began, seeds, per_step, startup + embed_s * (1 + 2 * n_fields) + 2 * n_fields)
    crops = sum(c["positive"] + c["negative"] for c in counts)
    print(f"\ncalibration: {per_step:.2f} s/step (batch {args.batch}), start-up {startup:.1f} s, embedding "
          f"{embed_s:.1f} s; {steps} pretraining steps per seed ({steps * args.batch / crops:.1f} epochs)", flush=True)

    rows: list[dict[str, Any]] = []
    for seed in seeds:
        run = work / f"run-seed{seed}"
        shutil.rmtree(run, ignore_errors=True)
        recipe = mitosis_recipe(manifest, args.crop, seed, args.batch, args.set)
        pretrain(recipe, output=run, max_steps=steps, quiet=True)
        loss = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["loss"]
        table = embed_crops(run, work / f"model-seed{seed}.parquet")
        for field, split_seed in fold_seeds(table, 100 * seed).items():
            result = evaluate(table, mitosis.LABEL, split=mitosis.FIELD, methods=METHODS, test_size=TEST_SIZE,
                              seed=split_seed, baselines=("raw", "random"))  # fmt: skip
            for features, methods in result["features"].items():
                for method, scores in methods.items():
                    rows.append({"seed": seed, "field": field, "features": features, "method": method,
                                 **{m: scores[m] for m in METRICS}})  # fmt: skip
            model = result["features"]["model"]["linear"]["macro_f1"]
            print(f"seed {seed}  test {field:<30} (split seed {split_seed}, train {result['n_train']}, test "
                  f"{result['n_test']}): linear macro-F1 model {model:.3f} raw "
                  f"{result['features']['raw']['linear']['macro_f1']:.3f} random "
                  f"{result['features']['random']['linear']['macro_f1']:.3f}", flush=True)  # fmt: skip
        print(f"seed {seed}: final pretraining loss {loss:.4f}; {time.perf_counter() - began:.0f} s so far", flush=True)

    scores = pd.DataFrame(rows)
    # Per seed the mean over the leave-one-field-out folds; then mean and spread over seeds.
    per_seed = scores.groupby(["features", "method", "seed"])[list(METRICS)].mean().reset_index()
    print(f"\nmitosis (pH3+) from DNA+actin crops, leave-one-field-out ({n_fields} folds), {len(seeds)} seed(s) "
          f"{seeds}, {steps} steps: mean over folds, then mean ± sd over seeds")  # fmt: skip
    print(f"{'features':<10}{'probe':<8}" + "".join(f"{m:>24}" for m in METRICS))
    for (features, method), group in per_seed.groupby(["features", "method"], sort=False):
        print(f"{features:<10}{method:<8}" + "".join(f"{spread(group[m].tolist()):>24}" for m in METRICS))
    by_field = scores[scores.method == "linear"].pivot_table(index="field", columns="features", values="macro_f1")
    print("\nlinear macro-F1 per held-out field (mean over seeds)\n" + by_field[list(FEATURES)].round(3).to_string())
    wall = time.perf_counter() - began
    print(f"\nwall time {wall:.0f} s of a {budget:.0f} s budget")
    summary = {"set": args.set, "counts": counts, "seeds": seeds,
               "steps": steps, "batch": args.batch, "crop": args.crop, "k": args.k,
               "wall_s": wall, "budget_s": budget, "scores": rows}  # fmt: skip
    (work / "mitosis.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    return summary


def eo_recipe(seed: int, overrides: list[str]) -> Recipe:
    """The sentinel recipe's demo: ViT-tiny (D=64, patch 8), S2+S1, 64 px windows of the bundled patches;
    ``overrides`` (``--set``, an ablation) come last."""
    return load_recipe("sentinel", [f"train.seed={seed}", "train.log_every=10", "train.checkpoint_every=100000",
                                    "train.keep_checkpoints=1", *overrides], demo=True)  # fmt: skip


def eo_scores(run: Path, bands: dict[str, list[str]], samples: int, seed: int) -> dict[str, dict[str, float | None]]:
    """``{case: {predictor: MSE}}``: random masking of all sensors, and each sensor rebuilt from all of the other."""
    masked = score_reconstruction(run, samples=samples, seed=seed)
    out = {"masked 75%": {p: s["overall"] for p, s in masked["scores"].items()}}
    for hidden, shown in (("s1", "s2"), ("s2", "s1")):
        # Ratio 0 with visible channels: the shown sensor whole, the hidden one removed whole.
        result = score_reconstruction(run, samples=samples, seed=seed, mask_ratio=0.0, visible_channels=bands[shown])
        out[f"{hidden} from {shown}"] = {p: s["sensors"][hidden]["mse"] for p, s in result["scores"].items()}
    return out


def run_eo(args: argparse.Namespace) -> dict[str, Any]:
    """Per seed: pretrain the sentinel demo, then score masked-patch and cross-sensor reconstruction."""
    began = time.perf_counter()
    seeds = [int(s) for s in args.seeds.split(",")]
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    recipe = eo_recipe(0, args.set)
    bands = {sensor: [b["name"] if isinstance(b, dict) else b for b in listed]
             for sensor, listed in recipe.data.sensors.items()}  # fmt: skip
    per_step, startup = time_pretraining(recipe, work / "calibration")
    start = time.perf_counter()
    eo_scores(work / "calibration", bands, args.samples, 0)
    score_s = time.perf_counter() - start
    steps = plan_steps(args, began, seeds, per_step, startup + score_s)
    print(f"calibration: {per_step:.2f} s/step (batch {recipe.train.batch_size}), start-up {startup:.1f} s, "
          f"scoring {score_s:.1f} s; {steps} pretraining steps per seed", flush=True)  # fmt: skip
    rows = []
    for seed in seeds:
        run = work / f"run-seed{seed}"
        shutil.rmtree(run, ignore_errors=True)
        pretrain(eo_recipe(seed, args.set), output=run, max_steps=steps, quiet=True)
        for case, scores in eo_scores(run, bands, args.samples, seed).items():
            rows += [{"seed": seed, "case": case, "predictor": p, "mse": v} for p, v in scores.items()]
        print(f"seed {seed} done; {time.perf_counter() - began:.0f} s so far", flush=True)
    table = pd.DataFrame(rows)
    print(f"\nEO reconstruction, BigEarthNet S2+S1 demo patches ({args.samples} crops of the training patches, the "
          f"same masks for every predictor), {len(seeds)} seed(s) {seeds}, {steps} steps: MSE in standardised units, "
          "mean ± sd over seeds (n/a: the baseline has no prediction there)")  # fmt: skip
    predictors = list(dict.fromkeys(table.predictor))
    print(f"{'case':<14}" + "".join(f"{p:>20}" for p in predictors))
    for case, group in table.groupby("case", sort=False):
        cells = [group[group.predictor == p].mse.tolist() for p in predictors]
        print(f"{case:<14}" + "".join(f"{'n/a' if None in c or any(pd.isna(c)) else spread(c):>20}" for c in cells))
    wall = time.perf_counter() - began
    print(f"\nwall time {wall:.0f} s of a {args.budget_minutes * 60:.0f} s budget")
    summary = {"set": args.set, "seeds": seeds, "steps": steps, "samples": args.samples, "wall_s": wall, "scores": rows}
    (work / "eo.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    # What both benchmarks share: where they work, their budget and their seeds (argparse parent parser).
    run = argparse.ArgumentParser(add_help=False)
    run.add_argument("--workdir", required=True, help="folder for the data, runs and embeddings (created)")
    run.add_argument("--budget-minutes", type=float, default=10.0, help="wall-clock budget of the whole run")
    run.add_argument("--seeds", default="0,1,2", help="comma-separated pretraining seeds (default 0,1,2)")
    run.add_argument("--steps", type=int, default=None, help="pretraining steps per seed (default: from the budget)")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="recipe override for an ablation row, e.g. data.normalize=stats (repeatable)")
    m = commands.add_parser("mitosis", parents=[run],
                            help="pH3+ nuclei from DNA+actin crops of the bundled fly/human fields")  # fmt: skip
    m.add_argument("--batch", type=int, default=64, help="pretraining batch (default 64)")
    m.add_argument("--crop", type=int, default=32, help="crop size in pixels, a multiple of 8 (default 32)")
    m.add_argument("--k", type=float, default=3.0, help="pH3+ above median + k*MAD of the field (default 3)")
    e = commands.add_parser("eo-reconstruction", parents=[run],
                            help="masked-patch and cross-sensor MSE on the bundled S2+S1 patches")  # fmt: skip
    e.add_argument("--samples", type=int, default=32, help="crops scored per case (default 32)")
    args = parser.parse_args()
    (run_mitosis if args.command == "mitosis" else run_eo)(args)


if __name__ == "__main__":
    main()
