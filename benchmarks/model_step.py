"""Throughput and memory of one MAE training step (forward + backward + AdamW).

Compares the standard MAE (3 stacked channels) with the channel-agnostic one (5 channels, so 5x the
tokens) in the same run, and reports the cost per VISIBLE token, which is what the channel-agnostic
design should keep close to the standard model's (target: within 1.2x).

    python benchmarks/model_step.py                      # CPU: vit_small and vit_base, batch 8, 224 px
    python benchmarks/model_step.py --sizes vit_small --steps 2 --batch 4
    python benchmarks/model_step.py --device cuda --batch 256 --bf16 --compile   # GPU: adds MFU

Each configuration runs in its own process so that peak memory (RSS on CPU, allocator peak on GPU)
belongs to that configuration alone.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

import domainmae

CHANNELS = ["DNA", "ER", "RNA", "AGP", "Mito"]
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense tensor-core peaks


def _cpu_attention_flops() -> dict:
    """FLOP formulas for the CPU flash-attention kernels, which FlopCounterMode does not count
    (it does count the CUDA ones); without them attention, quadratic in tokens, would vanish from
    the channel-agnostic model's count."""
    aten = torch.ops.aten

    # The counter hands these functions the arguments' shapes, not the tensors.
    def forward(query, key, value, *args, out_shape=None, **kwargs) -> int:
        return flop_counter.sdpa_flop_count(query, key, value)

    def backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
        return flop_counter.sdpa_backward_flop_count(grad_out, query, key, value)

    return {
        aten._scaled_dot_product_flash_attention_for_cpu: forward,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: backward,
    }


def build(size: str, kind: str, img: int):
    if kind == "standard":
        return domainmae.create_model(size, in_chans=3, img_size=img), {}
    return domainmae.create_model(size, channels=CHANNELS, img_size=img), {"channels": CHANNELS}


def run_one(size: str, kind: str, batch: int, img: int, steps: int, device: str, bf16: bool,
            compile_: str | None) -> dict:
    """One configuration; ``compile_`` is None (eager) or a ``torch.compile`` mode ('default', 'reduce-overhead')."""
    """Time ``steps`` training steps after one warm-up step (two with compile)."""
    torch.manual_seed(0)
    model, kwargs = build(size, kind, img)
    model.to(device)
    chans = 3 if kind == "standard" else len(CHANNELS)
    x = torch.randn(batch, chans, img, img, device=device)
    fused = device == "cuda"
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05, fused=fused)
    forward = torch.compile(model, mode=None if compile_ == "default" else compile_) if compile_ else model
    autocast = torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16)

    def step() -> None:
        with autocast:
            loss = forward(x, **kwargs).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    with FlopCounterMode(display=False, custom_mapping=_cpu_attention_flops()) as counter:  # forward + backward
        with autocast:
            model(x, **kwargs).loss.backward()
    opt.zero_grad(set_to_none=True)
    flops = counter.get_total_flops()

    for _ in range(2 if compile_ else 1):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    tokens = chans if kind != "standard" else 1
    grid = (img // model.patch_size) ** 2
    visible = batch * round(tokens * grid * (1 - model.mask_ratio))
    out = {
        "size": size, "kind": kind, "channels": chans, "batch": batch, "img": img, "device": device,
        "bf16": bf16, "compile": compile_, "step_s": seconds, "images_per_s": batch / seconds,
        "us_per_visible_token": 1e6 * seconds / visible, "gflop_per_step": flops / 1e9,
        "mflop_per_visible_token": flops / visible / 1e6,
    }  # fmt: skip
    if device == "cuda":
        out["peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
        out["gpu"] = name
        if peak and bf16:
            out["mfu"] = flops / seconds / (peak * 1e12)
    else:
        out["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", default=["vit_small", "vit_base"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--img", type=int, default=224)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU)")
    p.add_argument("--compile", nargs="?", const="default", metavar="MODE",
                   help="torch.compile the model (optional mode: reduce-overhead uses CUDA graphs)")
    p.add_argument("--one", nargs=2, metavar=("SIZE", "KIND"), help=argparse.SUPPRESS)  # child process
    args = p.parse_args()
    if args.one:
        r = run_one(args.one[0], args.one[1], args.batch, args.img, args.steps, args.device, args.bf16, args.compile)
        print(json.dumps(r))
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    header = f"{'size':<10} {'kind':<9} {'C':>2} {'img/s':>8} {'us/vis.tok':>10} {'GFLOP':>8} {'peak MB':>8}"
    print(header + ("  MFU" if args.device == "cuda" else ""))
    flags = ["--bf16"] * args.bf16 + (["--compile", args.compile] if args.compile else [])
    for size in args.sizes:
        results = {}
        for kind in ("standard", "channel"):
            cmd = [sys.executable, __file__, "--one", size, kind, "--batch", str(args.batch), "--img", str(args.img),
                   "--steps", str(args.steps), "--device", args.device, *flags]  # fmt: skip
            r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
            results[kind] = r
            mfu = f"  {r['mfu']:.1%}" if "mfu" in r else ""
            print(f"{size:<10} {kind:<9} {r['channels']:>2} {r['images_per_s']:>8.2f} {r['us_per_visible_token']:>10.1f} "
                  f"{r['gflop_per_step']:>8.0f} {r['peak_mb']:>8.0f}{mfu}")  # fmt: skip
        ch, st = results["channel"], results["standard"]
        time_ratio = ch["us_per_visible_token"] / st["us_per_visible_token"]
        flop_ratio = ch["mflop_per_visible_token"] / st["mflop_per_visible_token"]
        print(f"{size:<10} channel-agnostic per visible token: {time_ratio:.2f}x the standard model's time, "
              f"{flop_ratio:.2f}x its FLOPs (target <= 1.2x)")  # fmt: skip


if __name__ == "__main__":
    main()
