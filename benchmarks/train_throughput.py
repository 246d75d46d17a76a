"""Is the data path the bottleneck? Samples/s of the full pipeline vs the model step alone vs the data alone.

Runs a recipe's demo data (bundled samples) through the real training engine, measured three ways in
one run:

* ``data``:     the training DataLoader alone (read, crop, normalise, augment, collate);
* ``model``:    ``Trainer.train_step`` on one batch held in memory (forward, backward, AdamW);
* ``pipeline``: both, as ``pretrain`` runs them.

    python benchmarks/train_throughput.py                              # cellpainting, ViT-S/16, 224 px
    python benchmarks/train_throughput.py --recipe sentinel --set data.crop_size=112
    python benchmarks/train_throughput.py --size vit_tiny --steps 5 --workers 0
"""
from __future__ import annotations

import argparse
import tempfile
import time
from itertools import islice
from pathlib import Path

import torch

from domainmae.distributed import setup_distributed
from domainmae.pipeline import training_loader
from domainmae.recipes import load_recipe
from domainmae.train.loop import Trainer, _to


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="cellpainting")
    p.add_argument("--size", default="vit_small")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--device", default="auto")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args()
    patch = 16 if args.size != "vit_tiny" else 8
    overrides = [  # the demo's data, the real model size
        f"model.size={args.size}", f"model.patch_size={patch}", "model.embed_dim=null", "model.depth=null",
        "model.num_heads=null", "model.decoder_embed_dim=null", "model.decoder_depth=null",
        "model.decoder_num_heads=null", "data.crop_size=224", "data.crops_per_read=8",
        f"data.num_workers={args.workers}", f"train.batch_size={args.batch}", f"train.max_steps={4 * args.steps}",
        *args.set,
    ]  # fmt: skip
    recipe = load_recipe(args.recipe, overrides, demo=True)
    info = setup_distributed(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(recipe, Path(tmp), info, resume=False, quiet=True)
        t = recipe.train

        def batches(start: int):
            loader = training_loader(trainer.data, recipe, rank=info.rank, world=info.world,
                                     pin_memory=info.device.type == "cuda", start_step=start,
                                     total_steps=trainer.total_steps, micro=1)  # fmt: skip
            return (_to(b, info.device) for b in loader)

        def rate(fn, steps: int) -> float:
            fn(1)  # warm-up: worker start, first reads, allocator
            if info.device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn(steps)
            if info.device.type == "cuda":
                torch.cuda.synchronize()
            return steps * t.batch_size / (time.perf_counter() - start)

        held = next(batches(0))
        data = rate(lambda n: list(islice(batches(n), n)), args.steps)
        model = rate(lambda n: [trainer.train_step([held]) for _ in range(n)], args.steps)
        pipeline = rate(lambda n: [trainer.train_step([b]) for b in islice(batches(2 * n), n)], args.steps)

    shape = tuple(held["images"].shape) if torch.is_tensor(held["images"]) else {k: tuple(v.shape) for k, v in held["images"].items()}
    print(f"{args.recipe}: {args.size}/{patch}, batch {tuple(shape) if not isinstance(shape, dict) else shape}, "
          f"{args.workers} worker(s), {torch.get_num_threads()} torch threads, {info.device}")  # fmt: skip
    print(f"{'data only':<12} {data:8.1f} samples/s")
    print(f"{'model only':<12} {model:8.1f} samples/s")
    print(f"{'pipeline':<12} {pipeline:8.1f} samples/s  ({pipeline / model:.0%} of the model step alone)")


if __name__ == "__main__":
    main()
