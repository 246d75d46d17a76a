"""``train.strategy: fsdp``: the model's parameters, gradients and optimiser state sharded over the processes
(PyTorch's FSDP2 ``fully_shard``), for models that do not fit on one device with DDP (ViT-L/H).

Each transformer block (encoder and decoder) is its own unit: its parameters are all-gathered just before it
runs and freed after, so a process holds one block's full weights at a time besides its shards. The rest
(patch and channel embeddings, tokens, norms, pixel heads: small) forms the root unit.
"""
from __future__ import annotations

import torch
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from ..distributed import DistInfo
from ..models import MaskedAutoencoder


def mixed_precision(device: torch.device, bf16: bool) -> MixedPrecisionPolicy:
    """bf16 gathered parameters with fp32 gradient reduction on CUDA when ``train.bf16``, as its autocast is;
    fp32 throughout on the CPU (bf16 matmuls there are slow or missing, and fp32 keeps CPU runs comparable
    with DDP ones). The shards and the optimiser stay fp32 either way."""
    if bf16 and device.type == "cuda":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def shard_model(model: MaskedAutoencoder, info: DistInfo, bf16: bool) -> None:
    """Shard ``model`` (already on ``info.device``) in place over all ``info.world`` processes, one unit per
    block. Build the optimiser after this: it must hold the sharded parameters."""
    mesh = init_device_mesh(info.device.type, (info.world,))
    policy = mixed_precision(info.device, bf16)
    for block in [*model.blocks, *model.decoder_blocks]:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
