"""Sharded checkpoints of ``train.strategy: fsdp`` runs, and loading any checkpoint into a whole or sharded model.

A sharded checkpoint is a folder ``checkpoints/step_N.dcp/``: ``torch.distributed.checkpoint`` files with the
weights and optimiser state (each process writes its own shards, ``.metadata`` says where every piece of every
tensor lies) and ``state.ckpt`` (:data:`~domainmae.runtime.SHARDED_STATE`), the rest of what a ``.ckpt`` holds:
model config, scheduler, step, RNG states, recipe. ``checkpoints/last.dcp`` links to the newest. The metadata
gives every tensor's whole shape, so a folder written by N processes loads into M processes, or into one
process with the unsharded model, alike; and a ``.ckpt`` loads into a sharded model.

``torch.distributed.checkpoint`` is imported where it is used: importing it costs every command a second.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import FSDPModule

from ..atomic import atomic_dir
from ..distributed import DistInfo
from ..runtime import SHARDED_STATE, RunDir, is_sharded, single_process_dcp
from .checkpoint import save_checkpoint


def _from_main(value: Any, info: DistInfo) -> Any:
    """The main process's ``value`` on every process."""
    if info.world == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _point(link: Path, target: Path) -> None:
    """Make ``link`` a relative symlink to ``target`` (a sibling) atomically: a new link renamed over the old."""
    tmp = link.with_name(f".{link.name}.tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target.name)
    os.replace(tmp, link)


def save_sharded(
    run: RunDir, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any], info: DistInfo
) -> Path:
    """Write ``run``'s sharded checkpoint of ``step``: every process its shards of ``model`` and ``optimizer``,
    the main process ``state`` (the rest of the run's state) beside them. Every process must call it.

    The folder is written under a temporary name and renamed when complete; then ``last.dcp`` points at it and
    ``last.ckpt`` (from an earlier ddp part of the run; its ``step_N.ckpt`` copy stays) is removed, so the
    newest checkpoint is the one resume and loading find.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    weights, optimizer_state = get_state_dict(model, optimizer)
    folder = run.sharded_checkpoint(step)
    with atomic_dir(folder) if info.is_main else contextlib.nullcontext() as tmp:
        tmp = _from_main(tmp, info)  # all processes write into the one temporary folder the main one made
        with single_process_dcp():
            dcp.save({"model": weights, "optimizer": optimizer_state}, checkpoint_id=tmp)
        # dcp.save returns on every process once all shards and the metadata are written.
        if info.is_main:
            save_checkpoint(Path(tmp) / SHARDED_STATE, state)
    if info.is_main:
        _point(run.last_sharded, folder)
        run.last.unlink(missing_ok=True)
    return folder


def _named(model: nn.Module, optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> dict[str, Any]:
    """A ``torch.optim`` state dict (parameters numbered in ``optimizer``'s param-group order, as
    ``Optimizer.state_dict`` writes them) keyed by parameter names, the form ``set_optimizer_state_dict``
    takes. ``optimizer`` is built like the saved one (``build_optimizer``), so the numbers match."""
    names = {param: name for name, param in model.named_parameters()}
    order = [names[param] for group in optimizer.param_groups for param in group["params"]]
    return {
        "state": {order[i]: value for i, value in saved["state"].items()},
        "param_groups": [{**group, "params": [order[i] for i in group["params"]]} for group in saved["param_groups"]],
    }


def load_training_state(model: nn.Module, optimizer: torch.optim.Optimizer, source: Path, state: dict[str, Any]) -> None:
    """Load checkpoint ``source`` (``state``: what :func:`~domainmae.runtime.read_checkpoint` read from it)
    into ``model`` and ``optimizer``, each whole or sharded, whatever number of processes wrote it."""
    if is_sharded(source):
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        # The model's and optimiser's own state dicts say which pieces this process holds; dcp.load fills them.
        weights, optimizer_state = get_state_dict(model, optimizer)
        with single_process_dcp():
            dcp.load({"model": weights, "optimizer": optimizer_state}, checkpoint_id=source)
        set_state_dict(model, optimizer, model_state_dict=weights, optim_state_dict=optimizer_state)
    elif isinstance(model, FSDPModule):
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )  # fmt: skip

        whole = StateDictOptions(full_state_dict=True)  # every process read the whole file and keeps its shards
        set_model_state_dict(model, state["model"], options=whole)
        set_optimizer_state_dict(model, optimizer, _named(model, optimizer, state["optimizer"]), options=whole)
    else:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
