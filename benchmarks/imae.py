"""Linear separability of mixture latents (issue 11, i-MAE): random init vs MAE vs i-MAE, CPU.

    PYTHONPATH=. python benchmarks/imae.py                 # ~4 min on a 2-core CPU
    PYTHONPATH=. python benchmarks/imae.py --steps 300 --seeds 0,1

Pretrains the cellpainting demo's tiny model (ViT 64 wide, 2 blocks, patch 8) on 32 px crops of the bundled
ExampleFly fields, as an MAE and as an i-MAE (``model.objective=imae``, fixed mix ratio), and builds the same
architecture untrained (random init). Then, on held-out images (the bundled ExampleHuman field: other cells,
another organism, the same DNA/PH3/Actin channels; unaugmented crops from the scoring seed stream), mixes
pairs of crops ``lam * a + (1 - lam) * b`` and reports the held-out R² of ridge regression (penalty by
leave-one-out on the fitted pairs) from the mixture's latent to each source's latent, pooled per image and per
grid cell (:func:`domainmae.models.imae.linear_separability`; half the pairs fit, half score): ``low`` is the
fainter source, the one a model must pull out of the mixture.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

import domainmae
from domainmae.models.imae import linear_separability
from domainmae.pipeline import build_training_data
from domainmae.recipes import resolve_recipe
from domainmae.train import load_checkpoint, pretrain
from domainmae.train.logging import read_metrics
from domainmae.train.reconstruct import NO_AUGMENT, SCORE_STREAM, sample_crops

HELD_OUT = Path(__file__).resolve().parents[1] / "datasets" / "samples" / "examplehuman" / "load_data.csv"
LEVELS = ("image", "patch")  # pooled latents, and each grid cell's latent
COMMON = ["data.crop_size=32", "train.log_every=10", "train.warmup_epochs=1"]


def held_out_pairs(recipe: dict, pairs: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    """``pairs`` pairs of held-out crops ``[pairs, C, H, W]`` (neighbouring crops of one read, as in training)."""
    data = resolve_recipe(recipe, [*NO_AUGMENT, f"data.path={HELD_OUT}"]).data
    batch = sample_crops(build_training_data(data), 2 * pairs, seed, SCORE_STREAM)
    return batch["images"][0::2], batch["images"][1::2], batch["channels"]


def train(work: Path, name: str, overrides: list[str], seed: int, steps: int) -> tuple[domainmae.MaskedAutoencoder, str, str, dict]:
    """Pretrain the demo for ``steps``: (model in eval mode, final train loss, seconds, resolved recipe)."""
    start = time.perf_counter()
    run = pretrain("cellpainting", output=work / f"{name}-{seed}", max_steps=steps,
                   overrides=[*COMMON, f"train.seed={seed}", *overrides], quiet=True)  # fmt: skip
    model, state = load_checkpoint(run)
    loss = read_metrics(run / "metrics.jsonl")[-1]["loss"]
    return model.eval(), f"{loss:.3f}", f"{time.perf_counter() - start:.0f}", state["recipe"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--mix", type=float, default=0.3, help="the fainter source's weight, in training and scoring")
    parser.add_argument("--pairs", type=int, default=256, help="held-out pairs (half fit the ridge, half score it)")
    parser.add_argument("--seeds", default="0", help="comma-separated training seeds")
    args = parser.parse_args()
    torch.set_num_threads(2)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for seed in (int(s) for s in args.seeds.split(",")):
            mae, loss, seconds, recipe = train(Path(work), "mae", [], seed, args.steps)
            torch.manual_seed(seed)  # the same architecture, untrained
            rows.append(("random init", seed, domainmae.create_model(mae.config).eval(), "-", "-"))
            rows.append(("MAE", seed, mae, loss, seconds))
            imae = ["model.objective=imae", f"model.mix_ratio={args.mix}"]
            rows.append(("i-MAE", seed, *train(Path(work), "imae", imae, seed, args.steps)[:3]))
    first, second, channels = held_out_pairs(recipe, args.pairs, 0)
    print(f"held-out pairs: {len(first)} of {tuple(first.shape[1:])} crops, mix {args.mix} / {1 - args.mix:.1f}\n")
    print("| model | seed | final train loss | train s | image R² low | image R² high | patch R² low | patch R² high |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for label, seed, model, loss, seconds in rows:
        image, patch = (linear_separability(model, first, second, args.mix, channels, level) for level in LEVELS)
        print(f"| {label} | {seed} | {loss} | {seconds} | {image['low']:.3f} | {image['high']:.3f} "
              f"| {patch['low']:.3f} | {patch['high']:.3f} |")  # fmt: skip


if __name__ == "__main__":
    main()
