#!/usr/bin/env bash
# The one prepared GPU check (H100/H200, through the device tool, from the repository root):
#   bash benchmarks/gpu.sh
# ViT-B standard MAE (3 channels) vs channel-agnostic MAE (5 channels) at 224 px, batch 256, bf16
# autocast, eager and torch.compile: images/s, cost per visible token, model FLOPs utilisation and
# peak memory. Needs only torch + timm (both in the GPU image), so nothing is carried.
# Target (issue 4): >= 40% MFU on an H100 for ViT-B at batch 256.
# Then mask sampling on the GPU (issue 12, item 1): today's samplers drawn on cuda against the old loop
# samplers on the CPU, ms per step at batch 256/1024/4096.
set -euo pipefail
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__)"
python3 benchmarks/model_step.py --device cuda --sizes vit_base --batch 256 --steps 10 --bf16
python3 benchmarks/model_step.py --device cuda --sizes vit_base --batch 256 --steps 10 --bf16 --compile
python3 benchmarks/masking.py --device cuda --repeats 3
