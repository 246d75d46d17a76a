"""Real-label quality benchmarks under a fixed CPU budget, each scored against baselines from the same run.

``mitosis``: single-cell crops of the bundled ExampleFly (3 fields) and ExampleHuman (1 field) images,
labelled pH3-positive or not (``benchmarks/mitosis.py`` states the segmentation and the threshold rule).
Per seed: pretrain the cellpainting recipe's demo model on the crops' DNA and actin (pH3 is never given to
the encoder), embed every crop, and probe ``Metadata_Mitotic`` with ``evaluate`` next to its ``raw``
(per-channel pixel statistics, embedded once) and ``random`` (same architecture, initialised from the seed,
embedded once per seed) baselines, on the same rows. The split is leave-one-field-out: each field is the
test set once (``split="Metadata_SourceField=<field>"``). Probes: logistic regression plain and with
balanced class weights (3.9% positives), and 5-NN; ``--tune`` adds both linear probes with C chosen per feature
set by leave-one-field-out inside the training fields. ``--steps 100,300,756`` gives a curve: one full
pretraining run per count. Pretraining is self-supervised on all crops (transductive: no labels, no pH3).
``--normalize-fields`` standardises every feature set's columns per field before probing (label-free, as
per-plate profiling does). Per probe, the model minus each baseline is printed with a 95% paired-bootstrap
interval over the held-out cells (``domainmae.export.compare``; ``quality_margins.py``). Every held-out
cell's predictions are saved as ``predictions.parquet``, so ``summary`` pools the intervals of workdirs
whose seeds ran apart.

``eo-reconstruction``: per seed, pretrain the sentinel recipe's demo model on the six bundled BigEarthNet
S2+S1 patches and score, with ``score_reconstruction``, the masked-patch MSE (random masking at 75%) and the
cross-sensor MSE (S1 rebuilt from all of S2, and S2 from all of S1) of the model beside its reconstruction
baselines (mean of visible patches, interpolation, per-pixel linear regression from the other channels) on
the same crops and masks. By default the crops come from the training patches (a fit score); ``--hold-out
zone`` leaves one UTM zone out per fold (the six patches lie in three): pretrain on the other zones' patches,
score on the held-out zone's, band statistics and the linear baseline's fit from the training patches only.

The budget covers the whole run: building the data, a short timing run, and per seed pretraining and
scoring. Pretraining gets what the measured cost of the rest leaves, as a step count all seeds share.

    python benchmarks/quality.py mitosis --workdir /tmp/q --budget-minutes 10 --seeds 0,1,2
    python benchmarks/quality.py mitosis --workdir /tmp/q --steps 100,300,756 --seeds 0,1,2 --set data.normalize=stats
    python benchmarks/quality.py eo-reconstruction --workdir /tmp/q-eo --budget-minutes 10 --seeds 0,1,2
    python benchmarks/quality.py eo-reconstruction --workdir /tmp/q-eo-zones --steps 6000 --seeds 0 --hold-out zone
    python benchmarks/quality.py summary /tmp/q-seed0 /tmp/q-seed12      # one table (and margins) from both
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
from rasterio.crs import CRS

import domainmae
from domainmae.data.bigearthnet import read_patch_metadata
from domainmae.data.multisensor import PATCH_KEY_PATTERN
from domainmae.export.profile import profile
from domainmae.pipeline import build_training_data
from domainmae.recipes import Recipe, load_recipe
from domainmae.runtime import RunDir
from domainmae.train import pretrain
from domainmae.train.logging import read_metrics
from domainmae.train.reconstruct import score_reconstruction

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is a folder of scripts, not a package
import mitosis  # noqa: E402
from quality_margins import PREDICTIONS, Predictions, differences, probe_folds, read_predictions, write_predictions  # noqa: E402
from quality_tables import FEATURES, print_differences, print_eo, print_mitosis  # noqa: E402

CALIBRATION_STEPS = 20


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


def embed_crops(run: Path, output: Path, pool: str, features: str = "model", seed: int = 0,
                by_field: bool = False) -> Path:  # fmt: skip
    """One row per crop (the crop is one tile), DNA and actin only; ``features`` raw/random for baselines.
    ``by_field``: then each feature standardised over its field's crops (``profile`` center-scale with the
    field as the batch and every row as control, pycytominer's per-plate ``samples="all"``; label-free),
    written beside as ``*-byfield.parquet``."""
    table = domainmae.embed(run, output=output, channels=list(mitosis.ENCODER_CHANNELS), level="tile", pool=pool,
                            features=features, seed=seed, overwrite=True, progress=False)  # fmt: skip
    if not by_field:
        return table
    return profile(table, output.with_name(f"{output.stem}-byfield.parquet"), normalization="center_scale",
                   batch=mitosis.FIELD, overwrite=True)  # fmt: skip


def time_pretraining(recipe: Recipe, run: Path) -> tuple[float, float]:
    """``(seconds per step, start-up seconds)`` of a short pretraining run of ``recipe``."""
    shutil.rmtree(run, ignore_errors=True)
    start = time.perf_counter()
    pretrain(recipe, output=run, max_steps=CALIBRATION_STEPS, quiet=True)
    wall = time.perf_counter() - start
    logged = read_metrics(RunDir(run).metrics)
    per_step = recipe.train.batch_size / logged[-1]["samples_per_s"]  # steady state, without the start-up
    return per_step, max(0.0, wall - CALIBRATION_STEPS * per_step)


def plan_steps(args: argparse.Namespace, began: float, runs: int, per_step: float, per_run_other: float) -> int:
    """Pretraining steps per run (seed, or seed and fold): what the budget leaves after the measured cost of
    everything else."""
    left = (args.budget_minutes * 60 - (time.perf_counter() - began)) / runs - per_run_other
    return max(CALIBRATION_STEPS, int(left / per_step))


def run_mitosis(args: argparse.Namespace) -> dict[str, Any]:
    """Build, calibrate, then per seed (and per step count of ``--steps``) pretrain, embed and probe; print
    and return every score."""
    began = time.perf_counter()
    budget = args.budget_minutes * 60
    seeds = [int(s) for s in args.seeds.split(",")]
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    manifest, counts = mitosis.build(work / "crops", crop=args.crop, k=args.k)
    print(mitosis.format_counts(counts), flush=True)

    recipe = mitosis_recipe(manifest, args.crop, 0, args.batch, args.set)
    per_step, startup = time_pretraining(recipe, work / "calibration")
    pools = args.pool.split(",")
    start = time.perf_counter()
    # The raw statistics depend on the data and its normalisation only: one table serves every run.
    raw = embed_crops(work / "calibration", work / "raw.parquet", "mean", "raw", by_field=args.normalize_fields)
    embed_s = time.perf_counter() - start
    # Per seed and step count: the model's and the random-init embeddings, and 4 folds x 2 probe fits (~1 s).
    schedule = [int(s) for s in args.steps.split(",")] if args.steps else None
    steps_list = schedule or [plan_steps(args, began, len(seeds), per_step, startup + 2 * embed_s + 8)]
    crops = sum(c["positive"] + c["negative"] for c in counts)
    print(f"\ncalibration: {per_step:.2f} s/step (batch {args.batch}), start-up {startup:.1f} s, embedding "
          f"{embed_s:.1f} s; pretraining steps per seed {steps_list} "
          f"({', '.join(f'{s * args.batch / crops:.1f}' for s in steps_list)} epochs)", flush=True)  # fmt: skip

    rows: list[dict[str, Any]] = []
    predicted: dict[tuple[int, str], dict[int, Predictions]] = {}  # (steps, pool) -> seed -> predictions
    for seed in seeds:
        for steps in steps_list:
            run = work / f"run-seed{seed}-steps{steps}"
            shutil.rmtree(run, ignore_errors=True)
            pretrain(mitosis_recipe(manifest, args.crop, seed, args.batch, args.set), output=run, max_steps=steps,
                     quiet=True)  # fmt: skip
            if steps == steps_list[0]:
                # The same architecture untrained, from the seed's own run: normalised by the band statistics
                # this seed's model saw (a run samples them by its seed; the calibration run is seed 0's).
                random_init = {pool: embed_crops(run, work / f"random-{pool}-seed{seed}.parquet", pool, "random",
                                                 seed, args.normalize_fields) for pool in pools}  # fmt: skip
            loss = read_metrics(RunDir(run).metrics)[-1]["loss"]
            for pool in pools:
                table = embed_crops(run, work / f"model-{pool}-seed{seed}-steps{steps}.parquet", pool,
                                    by_field=args.normalize_fields)  # fmt: skip
                scored, predicted.setdefault((steps, pool), {})[seed] = probe_folds(table, [raw, random_init[pool]],
                                                                                    args.tune)  # fmt: skip
                folds = [{"seed": seed, "steps": steps, "pool": pool, **row} for row in scored]
                rows += folds
                means = pd.DataFrame(folds).query("probe == 'linear-balanced'").groupby("features")
                print(f"seed {seed}, {steps} steps, pool {pool}: loss {loss:.4f}; balanced linear (mean of folds) "
                      + ", ".join(f"{f} {means.macro_f1.mean()[f]:.3f}/{means.balanced_accuracy.mean()[f]:.3f}"
                                  for f in FEATURES)
                      + f" (macro-F1/bal. acc.); {time.perf_counter() - began:.0f} s so far", flush=True)  # fmt: skip

    print_mitosis(pd.DataFrame(rows))
    gaps = [row for (steps, pool), by_seed in predicted.items() for row in differences(steps, pool, by_seed)]
    print_differences(gaps, len(seeds))
    write_predictions(work, predicted)
    wall = time.perf_counter() - began
    print(f"\nwall time {wall:.0f} s (budget {budget:.0f} s, used to plan the steps when --steps is not given)")
    summary = {"set": args.set, "pool": args.pool, "counts": counts, "seeds": seeds,
               "steps": steps_list, "batch": args.batch, "crop": args.crop, "k": args.k, "tune": args.tune,
               "normalize_fields": args.normalize_fields,
               "wall_s": wall, "budget_s": budget, "scores": rows, "differences": gaps}  # fmt: skip
    (work / "mitosis.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    return summary


def run_summary(args: argparse.Namespace) -> None:
    """One table from the ``mitosis.json`` or ``eo.json`` of several workdirs (seeds run apart, same settings)."""
    if all((Path(w) / "eo.json").is_file() for w in args.workdirs):
        runs = [json.loads((Path(w) / "eo.json").read_text()) for w in args.workdirs]
        if len({json.dumps([r["set"], r["samples"], r.get("hold_out", "none")]) for r in runs}) > 1:
            raise SystemExit("the workdirs ran different settings, their scores do not pool")
        table = pd.concat([pd.DataFrame(r["scores"]) for r in runs], ignore_index=True)
        table = table if "fold" in table else table.assign(fold="none")  # runs from before --hold-out
        if table.duplicated(["seed", "steps", "fold", *(["trained_on"] if "trained_on" in table else []), "case",
                             "predictor"]).any():  # fmt: skip
            raise SystemExit("a seed appears in two workdirs; pool runs of different seeds")
        print_eo(table, runs[0]["samples"])
        return
    runs = [json.loads((Path(w) / "mitosis.json").read_text()) for w in args.workdirs]
    # Runs from before --tune / --normalize-fields ran without them.
    settings = {json.dumps({k: r.get(k, False if k in ("tune", "normalize_fields") else None)
                            for k in ("set", "batch", "crop", "k", "tune", "normalize_fields")}) for r in runs}  # fmt: skip
    if len(settings) > 1:
        raise SystemExit(f"the workdirs ran different settings, their scores do not pool: {sorted(settings)}")
    # Runs from before --pool took a list hold one pool, named at the top level.
    tables = [pd.DataFrame(r["scores"]) for r in runs]
    scores = pd.concat([t if "pool" in t else t.assign(pool=r.get("pool") or "mean") for t, r in zip(tables, runs)],
                       ignore_index=True)  # fmt: skip
    if scores.duplicated(["seed", "steps", "pool", "field", "features", "probe"]).any():
        raise SystemExit("a seed appears in two workdirs; pool runs of different seeds")
    print_mitosis(scores)
    saved = [Path(w) / PREDICTIONS for w in args.workdirs]
    if not all(p.is_file() for p in saved):  # runs from before their predictions were saved
        print(f"\nno margins with intervals: not every workdir has its {PREDICTIONS}")
        return
    gaps = [row for (steps, pool), by_seed in read_predictions(saved).items() for row in differences(steps, pool, by_seed)]
    print_differences(gaps, scores.seed.nunique())


def eo_recipe(seed: int, overrides: list[str]) -> Recipe:
    """The sentinel recipe's demo: ViT-tiny (D=64, patch 8), S2+S1, 64 px windows of the bundled patches;
    ``overrides`` (``--set``, an ablation) come last."""
    return load_recipe("sentinel", [f"train.seed={seed}", "train.log_every=10", "train.checkpoint_every=100000",
                                    "train.keep_checkpoints=1", *overrides], demo=True)  # fmt: skip


SCORED_RATIO = 0.75  # the masked-patch case's ratio (the demo trains at it)


def eo_scores(run: Path, bands: dict[str, list[str]], samples: int, seed: int,
              data: Path | None = None) -> dict[str, dict[str, float | None]]:
    """``{case: {predictor: MSE}}``: random masking of all sensors, and each sensor rebuilt from all of the other,
    on crops of ``data`` (default: the run's own patches)."""
    held = str(data) if data else None
    # 75% whatever the run trained at: an ablation of model.mask_ratio must be scored on the same masks.
    masked = score_reconstruction(run, data=held, samples=samples, seed=seed, mask_ratio=SCORED_RATIO)
    out = {f"masked {SCORED_RATIO:.0%}": {p: s["overall"] for p, s in masked["scores"].items()}}
    for hidden, shown in (("s1", "s2"), ("s2", "s1")):
        # Ratio 0 with visible channels: the shown sensor whole, the hidden one removed whole.
        result = score_reconstruction(run, data=held, samples=samples, seed=seed, mask_ratio=0.0,
                                      visible_channels=bands[shown])  # fmt: skip
        out[f"{hidden} from {shown}"] = {p: s["sensors"][hidden]["mse"] for p, s in result["scores"].items()}
    return out


def patch_key(folder: Path) -> str:
    """The ``<row>_<col>`` that pairs an S2 patch folder with its S1 partner."""
    found = re.search(PATCH_KEY_PATTERN, folder.name)
    if not found:
        raise SystemExit(f"{folder} is not a BigEarthNet patch folder (no trailing _<row>_<col>)")
    return found.group(1)


def zone_folds(root: Path) -> dict[str, list[str]]:
    """``{"EPSG:<code>": [patch key, ...]}``: the S2 patches under ``root`` grouped by their UTM zone."""
    folds: dict[str, list[str]] = {}
    for meta in sorted(root.glob("BigEarthNet-S2-*/*/*_labels_metadata.json")):
        zone = f"EPSG:{CRS.from_wkt(read_patch_metadata(meta).crs_wkt).to_epsg()}"
        folds.setdefault(zone, []).append(patch_key(meta.parent))
    if len(folds) < 2:
        raise SystemExit(f"--hold-out zone needs patches in two UTM zones or more; {root} has {sorted(folds)}")
    return folds


def by_acquisition(root: Path, keys: list[str]) -> list[str]:
    """``keys`` ordered by their S2 patch's acquisition date, earliest first (ties by key): the order in which
    ``--train-patches`` keeps a fold's training patches, so the last one added is the latest in the year."""
    acquired = {patch_key(meta.parent): read_patch_metadata(meta).acquired
                for meta in root.glob("BigEarthNet-S2-*/*/*_labels_metadata.json")}  # fmt: skip
    return sorted(keys, key=lambda key: (acquired[key], key))


def split_patches(root: Path, held: list[str], out: Path, train: list[str] | None = None) -> tuple[Path, Path]:
    """Copies of ``root``'s patch folders (both sensors): ``out/test`` with the ``held`` keys, ``out/train``
    with the ``train`` keys (default: every other key). Returns ``(train, test)``."""
    shutil.rmtree(out, ignore_errors=True)
    for folder in sorted(root.glob("BigEarthNet-S*-*/*/")):
        key = patch_key(folder)
        part = "test" if key in held else "train" if train is None or key in train else None
        if part:
            shutil.copytree(folder, out / part / folder.parent.name / folder.name)
    return out / "train", out / "test"


def run_eo(args: argparse.Namespace) -> dict[str, Any]:
    """Per seed (and per held-out zone with ``--hold-out zone``): pretrain the sentinel demo, then score
    masked-patch and cross-sensor reconstruction."""
    began = time.perf_counter()
    seeds = [int(s) for s in args.seeds.split(",")]
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    recipe = eo_recipe(0, args.set)
    bands = {sensor: [b["name"] if isinstance(b, dict) else b for b in listed]
             for sensor, listed in recipe.data.sensors.items()}  # fmt: skip
    # (held-out zone, training patches) -> (extra overrides for pretraining, data scored); "none": train and
    # score on every patch (0: all of them).
    folds: dict[tuple[str, int], tuple[list[str], Path | None]] = {("none", 0): ([], None)}
    if args.hold_out != "zone" and (args.folds or args.train_patches):
        raise SystemExit("--folds and --train-patches choose held-out folds: they need --hold-out zone")
    if args.hold_out == "zone":
        folds = {}
        root = Path(recipe.data.path)
        zones = zone_folds(root)
        wanted = args.folds.split(",") if args.folds else list(zones)
        if unknown := sorted(set(wanted) - set(zones)):
            raise SystemExit(f"--folds {','.join(unknown)}: no such zone; the patches lie in {', '.join(zones)}")
        for zone in wanted:
            others = by_acquisition(root, [k for held in zones.values() for k in held if k not in zones[zone]])
            counts = [int(k) for k in args.train_patches.split(",")] if args.train_patches else [len(others)]
            # Every count scores in the units of the fold's whole training set (its band statistics, measured
            # once), so the MSE of runs that trained on fewer patches compares with theirs.
            full, _ = split_patches(root, zones[zone], work / "folds" / zone.replace(":", "-"), others)
            stats = build_training_data(eo_recipe(0, [*args.set, f"data.path={full}"]).data).band_stats
            units = [f"data.band_stats={json.dumps(stats)}"] if counts != [len(others)] else []
            for count in counts:
                if not 1 <= count <= len(others):
                    raise SystemExit(f"--train-patches {count}: fold {zone} has {len(others)} training patches")
                name = zone.replace(":", "-") + ("" if count == len(others) else f"-{count}of{len(others)}")
                train, test = split_patches(root, zones[zone], work / "folds" / name, others[:count])
                folds[(zone, count)] = ([f"data.path={train}", *units], test)
                print(f"fold {zone}: scores patches {zones[zone]}, trains on {others[:count]}", flush=True)
    if args.steps:  # given: no timing run
        steps_list = [int(s) for s in args.steps.split(",")]
    else:
        per_step, startup = time_pretraining(recipe, work / "calibration")
        start = time.perf_counter()
        eo_scores(work / "calibration", bands, args.samples, 0)
        score_s = time.perf_counter() - start
        steps_list = [plan_steps(args, began, len(seeds) * len(folds), per_step, startup + score_s)]
        print(f"calibration: {per_step:.2f} s/step (batch {recipe.train.batch_size}), start-up {startup:.1f} s, "
              f"scoring {score_s:.1f} s; {steps_list[0]} pretraining steps per run", flush=True)  # fmt: skip
    rows = []
    for seed in seeds:
        for steps in steps_list:
            for (fold, count), (overrides, scored) in folds.items():
                # A held-out fold's run is named after its data folder (folds/EPSG-32633/test -> -EPSG-32633).
                run = work / (f"run-seed{seed}-steps{steps}" + ("" if scored is None else f"-{scored.parent.name}"))
                shutil.rmtree(run, ignore_errors=True)
                pretrain(eo_recipe(seed, [*args.set, *overrides]), output=run, max_steps=steps, quiet=True)
                for case, scores in eo_scores(run, bands, args.samples, seed, scored).items():
                    rows += [{"seed": seed, "steps": steps, "fold": fold, "trained_on": count, "case": case,
                              "predictor": p, "mse": v} for p, v in scores.items()]  # fmt: skip
                print(f"seed {seed}, {steps} steps, held out {fold} done; {time.perf_counter() - began:.0f} s so far",
                      flush=True)  # fmt: skip
    print_eo(pd.DataFrame(rows), args.samples)
    wall = time.perf_counter() - began
    print(f"\nwall time {wall:.0f} s (budget {args.budget_minutes * 60:.0f} s, used to plan the steps when --steps "
          "is not given)")  # fmt: skip
    summary = {"set": args.set, "hold_out": args.hold_out, "seeds": seeds, "steps": steps_list,
               "samples": args.samples, "wall_s": wall, "scores": rows}  # fmt: skip
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
    run.add_argument("--steps", default=None,
                     help="pretraining steps per seed (default: from the budget); a comma-separated list gives a "
                          "curve, one full run per count")  # fmt: skip
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="recipe override for an ablation row, e.g. data.normalize=stats (repeatable)")
    m = commands.add_parser("mitosis", parents=[run],
                            help="pH3+ nuclei from DNA+actin crops of the bundled fly/human fields")  # fmt: skip
    m.add_argument("--batch", type=int, default=64, help="pretraining batch (default 64)")
    m.add_argument("--crop", type=int, default=32, help="crop size in pixels, a multiple of 8 (default 32)")
    m.add_argument("--pool", default="mean",
                   help="comma-separated pooled embeddings probed (mean, cls, channels; model and random init; "
                        "default mean)")  # fmt: skip
    m.add_argument("--k", type=float, default=3.0, help="pH3+ above median + k*MAD of the field (default 3)")
    m.add_argument("--tune", action="store_true",
                   help="also probe with the linear probes' C chosen per feature set by leave-one-field-out inside "
                        "the training fields (evaluate --tune; the untuned probes use C=1)")  # fmt: skip
    m.add_argument("--normalize-fields", action="store_true",
                   help="standardise every feature set's columns per field before probing (profile center-scale, "
                        "batch = field, all rows as controls: label-free, as per-plate profiling does)")  # fmt: skip
    e = commands.add_parser("eo-reconstruction", parents=[run],
                            help="masked-patch and cross-sensor MSE on the bundled S2+S1 patches")  # fmt: skip
    e.add_argument("--samples", type=int, default=32, help="crops scored per case (default 32)")
    e.add_argument("--hold-out", choices=("none", "zone"), default="none",
                   help="zone: one fold per UTM zone, pretrained on the other zones' patches and scored on its "
                        "own (default none: scored on crops of the training patches)")  # fmt: skip
    e.add_argument("--folds", default=None, help="with --hold-out zone: comma-separated zones held out, e.g. "
                   "EPSG:32633 (default every zone)")  # fmt: skip
    e.add_argument("--train-patches", default=None, metavar="K[,K...]",
                   help="with --hold-out zone: pretrain each fold on its K earliest-acquired training patches only, "
                        "one run per K (a curve of held-out error against training land; default all)")  # fmt: skip
    summary = commands.add_parser("summary", help="one table from several workdirs of one benchmark (seeds run apart)")
    summary.add_argument("workdirs", nargs="+", help="workdirs holding mitosis.json, or all holding eo.json")
    args = parser.parse_args()
    {"mitosis": run_mitosis, "eo-reconstruction": run_eo, "summary": run_summary}[args.command](args)


if __name__ == "__main__":
    main()
