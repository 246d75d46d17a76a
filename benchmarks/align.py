"""Text retrieval after CLIP-style alignment (issue 11) on the mitosis crops: model vs bag of words vs chance, CPU.

    PYTHONPATH=. python benchmarks/align.py --workdir /tmp/align      # ~7 min on a loaded 2-core CPU

Builds the labelled nucleus crops of ``benchmarks/mitosis.py`` (DNA + actin; pH3 left out, as it makes the
label), captions each "a pH3-positive nucleus" or "a pH3-negative nucleus", pretrains the cellpainting demo
model on the crops (``quality.mitosis_recipe``), embeds them with it and with the same architecture untrained,
and aligns each frozen embedding table with a small text tower trained from scratch
(``domainmae.align.align_embeddings``), holding out one source field at a time (leave-one-field-out). It
reports held-out recall@k both ways for the aligned model, the bag-of-words baseline (ridge from the
embeddings to the captions' TF-IDF vectors) and chance. Two captions make image->text recall@1 an accuracy
dominated by the pH3-negative majority (always naming it scores its share) and recall@k>=2 trivially 1, so
image->text is also reported balanced (``i2t_macro@1``: the mean of the two captions' recall, 0.5 for a
constant answer); text->image recall@k asks whether a caption's k best images include one it describes,
which for the rare pH3-positive caption is far from chance. ``--unfreeze`` adds the MAE's encoder fine-tuned
with the head and text tower (``align --unfreeze``; its bag of words is on the fine-tuned embeddings).
"""
from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path

import pandas as pd
import torch

from domainmae.align import TextTowerConfig, align, align_embeddings
from domainmae.train import pretrain

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is a folder of scripts, not a package
import mitosis  # noqa: E402
import quality  # noqa: E402

TEMPLATE = "a pH3-{Metadata_pH3} nucleus"
WAYS = ("i2t@1", "i2t_macro@1", "t2i@1", "t2i@5", "t2i@10")


def captioned_crops(work: Path, crop: int) -> tuple[Path, pd.DataFrame]:
    """The mitosis crops' manifest with a ``Metadata_pH3`` word (positive/negative) for the template."""
    manifest, counts = mitosis.build(work / "crops", crop=crop)
    print(mitosis.format_counts(counts), flush=True)
    rows = pd.read_csv(manifest)
    rows["Metadata_pH3"] = rows[mitosis.LABEL].map({1: "positive", 0: "negative"})
    rows.to_csv(manifest, index=False)
    return manifest, pd.DataFrame(counts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="folder for the crops, run and embeddings (created)")
    parser.add_argument("--pretrain-steps", type=int, default=60)
    parser.add_argument("--align-steps", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--unfreeze", action="store_true", help="also align with the MAE encoder fine-tuned")
    args = parser.parse_args()
    torch.set_num_threads(2)
    began = time.perf_counter()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    manifest, counts = captioned_crops(work, crop=32)
    recipe = quality.mitosis_recipe(manifest, 32, args.seed, 64, [])
    run = pretrain(recipe, output=work / "run", max_steps=args.pretrain_steps, quiet=True)
    tables = {"MAE": quality.embed_crops(run, work / "model.parquet", "mean"),
              "random init": quality.embed_crops(run, work / "random.parquet", "mean", "random", args.seed)}
    aligners = {encoder: partial(align_embeddings, table) for encoder, table in tables.items()}
    if args.unfreeze:  # the MAE's encoder fine-tuned with the head, on the crops themselves
        aligners["MAE fine-tuned"] = partial(align, run, unfreeze=True)
    text = TextTowerConfig(embed_dim=64, width=64, heads=2, layers=2, context_length=16)
    rows = []
    for field in counts.field:
        for encoder, aligner in aligners.items():
            info = aligner(TEMPLATE, work / "aligned" / f"{encoder}-{field.replace('/', '_')}",
                           split=f"{mitosis.FIELD}={field}", text=text, steps=args.align_steps, seed=args.seed,
                           overwrite=True)  # fmt: skip
            scores = info["scores"]
            names = {"aligned": "model", "bag of words": "bag_of_words", "chance": "chance"}
            for name, key in names.items():
                if encoder != "MAE" and name == "chance":
                    continue  # chance depends on the held-out rows only: one row per field
                label = name if name == "chance" else f"{encoder}, {name}"
                rows.append({"field": field, "features": label, "n_test": scores["n_test"],
                             **{w: scores[key][w] for w in WAYS}})  # fmt: skip
            print(f"{field} {encoder}: align loss {info['losses'][0]:.3f} -> {info['losses'][-1]:.3f}", flush=True)
    table = pd.DataFrame(rows)
    print(f"\nheld-out field (leave-one-field-out), pretraining {args.pretrain_steps} steps, align "
          f"{args.align_steps} steps, {time.perf_counter() - began:.0f} s in all\n")
    print(table.to_string(index=False, float_format="{:.3f}".format))
    print("\nmean over fields\n")
    print(table.groupby("features", sort=False)[list(WAYS)].mean().to_string(float_format="{:.3f}".format))


if __name__ == "__main__":
    main()
