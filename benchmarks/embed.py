"""Embedding export: embeddings/s and peak RSS when exporting 1x and 10x the same data.

Builds a synthetic plate (3-channel 16-bit TIFF fields) and a small channel-agnostic model, then runs
``domainmae.embed`` to Parquet in a fresh subprocess per scale, so each peak RSS (``ru_maxrss``) belongs
to one export alone. The 10x manifest lists the same fields ten times, so only the amount of data
changes. With streamed writing the peak RSS should stay flat while the file grows tenfold. With
``--processes 1 2`` each scale also runs under ``torchrun`` with 2 processes (a folder of Parquet parts);
seconds are rank 0's ``embed`` call, which returns once every process has finished, and RSS is rank 0's.

    python benchmarks/embed.py [--fields 16] [--size 256] [--tile 32] [--embed-dim 384] [--format parquet]
                               [--processes 1 2]
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_plate(root: Path, fields: int, size: int) -> list[dict[str, str]]:
    rng = np.random.default_rng(0)
    import tifffile

    rows = []
    for i in range(fields):
        row = {"Metadata_Plate": "B1", "Metadata_Well": f"W{i:03d}", "Metadata_Site": "1"}
        for channel in ("DNA", "RNA", "AGP"):
            name = f"f{i}_{channel}.tif"
            tifffile.imwrite(root / name, rng.integers(0, 4000, (size, size), dtype=np.uint16))
            row |= {f"FileName_Orig{channel}": name, f"PathName_Orig{channel}": str(root)}
        rows.append(row)
    return rows


def write_manifest(path: Path, rows: list[dict[str, str]], repeat: int) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        for r in range(repeat):
            writer.writerows({**row, "Metadata_Site": str(r + 1)} for row in rows)
    return path


def make_checkpoint(root: Path, manifest: Path, tile: int, embed_dim: int) -> Path:
    import torch

    import domainmae
    from domainmae.recipes import load_recipe
    from domainmae.train.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = domainmae.create_model("vit_small", channels=["DNA", "RNA", "AGP"], patch_size=8, img_size=tile,
                                   embed_dim=embed_dim, depth=2, num_heads=6, decoder_embed_dim=64, decoder_depth=1,
                                   decoder_num_heads=2)  # fmt: skip
    recipe = load_recipe("cellpainting", [f"data.path={manifest}", "data.channels=[DNA, RNA, AGP]",
                                          f"data.crop_size={tile}", "data.num_workers=1", "model.patch_size=8"])  # fmt: skip
    state = {"model_config": model.config.to_dict(), "model": model.state_dict(), "step": 0,
             "recipe": recipe.model_dump(mode="json")}  # fmt: skip
    return save_checkpoint(root / "model.ckpt", state)


def run_one(checkpoint: str, manifest: str, output: str, batch_size: int) -> None:
    """Child process (rank 0 of a torchrun launch reports): one export, then a JSON line with rows, seconds,
    peak RSS and bytes (of every file, for a folder of parts)."""
    import pyarrow.parquet as pq

    import domainmae

    start = time.perf_counter()
    domainmae.embed(checkpoint, data=manifest, output=output, batch_size=batch_size, progress=False)
    seconds = time.perf_counter() - start
    if os.environ.get("RANK", "0") != "0":
        return
    path = Path(output)
    files = [f for f in path.rglob("*") if f.is_file()] if path.is_dir() else [path]
    rows = pq.read_metadata(path / "_metadata" if path.is_dir() else path).num_rows if output.endswith(".parquet") else None
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    print(json.dumps({"rows": rows, "seconds": seconds, "peak_rss_mb": peak_mb,
                      "bytes": sum(f.stat().st_size for f in files)}))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fields", type=int, default=16)
    parser.add_argument("--size", type=int, default=256, help="field side in px")
    parser.add_argument("--tile", type=int, default=32)
    parser.add_argument("--embed-dim", type=int, default=384)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--format", choices=["parquet", "h5ad"], default="parquet")
    parser.add_argument("--processes", type=int, nargs="+", default=[1],
                        help="process counts to compare; above 1 a torchrun launch (parquet only)")  # fmt: skip
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_one(*args.child[:3], int(args.child[3]))
        return
    import torch

    print(f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}, python {platform.python_version()}")  # fmt: skip
    print(f"# {args.fields} fields of {args.size}x{args.size} px x 3 channels, {args.tile} px tiles, "
          f"D={args.embed_dim}, batch {args.batch_size}, {args.format}")  # fmt: skip
    print(f"{'scale':>5} {'procs':>5} {'rows':>8} {'seconds':>8} {'emb/s':>8} {'peak RSS MB':>12} {'file MB':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rows = make_plate(root, args.fields, args.size)
        checkpoint = make_checkpoint(root, write_manifest(root / "x1.csv", rows, 1), args.tile, args.embed_dim)
        for scale, procs in ((scale, procs) for scale in (1, 10) for procs in args.processes):
            manifest = write_manifest(root / f"x{scale}.csv", rows, scale)
            output = root / f"x{scale}-{procs}.{args.format}"
            # torchrun gives each of several processes one OpenMP thread; one process keeps torch's default.
            launch = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(procs)] if procs > 1 else []
            child = [sys.executable, *launch, __file__, "--child", str(checkpoint), str(manifest), str(output),
                     str(args.batch_size)]  # fmt: skip
            result = json.loads(subprocess.run(child, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
            n = result["rows"] or args.fields * scale * (args.size // args.tile) ** 2
            print(f"{scale:>5} {procs:>5} {n:>8} {result['seconds']:>8.1f} {n / result['seconds']:>8.0f} "
                  f"{result['peak_rss_mb']:>12.0f} {result['bytes'] / 2**20:>8.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
