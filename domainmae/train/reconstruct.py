"""``reconstruct()``: reconstruction grids from a trained checkpoint, also of hidden channels."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..data.build import build_training_data
from ..data.loader import collate_samples, sample_seed
from ..models import Masking, masking_from_scores
from ..models.masking import num_keep
from ..recipes import resolve_recipe
from ..runtime import load_trained
from ..viz import reconstruction_images, save_reconstruction_grid


def _first_rows(batch: dict[str, Any], n: int) -> dict[str, Any]:
    def cut(x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            return x[:n]
        return {k: cut(v) for k, v in x.items()} if isinstance(x, dict) else x

    return {k: cut(v) for k, v in batch.items() if k != "meta"}


def hide_channels_masking(
    channels_per_token: Sequence[str], visible: Sequence[str], batch: int, cells: int, ratio: float, generator: torch.Generator
) -> Masking:
    """Every token of a channel not in ``visible`` removed, and ``ratio`` of the visible ones.

    ``channels_per_token`` lists the channel of each token row (channel-major, ``cells`` tokens each).
    """
    unknown = sorted(set(visible) - set(channels_per_token))
    if unknown:
        raise KeyError(f"--channels {unknown} are not in the data's channels {list(channels_per_token)}")
    hidden = torch.tensor([0.0 if c in visible else 2.0 for c in channels_per_token]).repeat_interleave(cells)
    keep = num_keep(len(visible) * cells, ratio)
    return masking_from_scores(torch.rand(batch, hidden.numel(), generator=generator) + hidden, keep)


def reconstruct(
    checkpoint: str | Path,
    *,
    data: str | None = None,
    mask_ratio: float | None = None,
    output: str | Path = "reconstruction.png",
    visible_channels: Sequence[str] | None = None,
    samples: int = 2,
    seed: int = 0,
) -> Path:
    """Draw original / masked / reconstruction for ``samples`` crops of the run's data (or ``data``).

    ``checkpoint`` is a run directory, ``.ckpt`` file, exported model folder or its Hub id.

    With ``visible_channels`` the model sees only those channels (at ``mask_ratio``) and rebuilds
    the others from them: the cross-channel prediction a channel-agnostic model is trained for.
    """
    trained = load_trained(checkpoint)
    model = trained.model
    recipe = resolve_recipe(trained.recipe, [f"data.path={data}"] if data else [])
    training = build_training_data(recipe.data)
    k = training.crops_per_item
    items = [training.dataset[(i % len(training.dataset), sample_seed(seed, 0, i))] for i in range(-(-samples // k))]
    batch = _first_rows(collate_samples(items), samples)
    ratio = model.mask_ratio if mask_ratio is None else mask_ratio
    generator = torch.Generator().manual_seed(seed)
    inputs, grid = model.split_inputs(batch["images"], batch["channels"])
    if visible_channels:
        if any(inp.channels is None for inp in inputs):
            raise ValueError("--channels needs a channel-agnostic model; this one stacks its channels")
        per_token = [str(getattr(c, "name", c)) for inp in inputs for c in inp.channels]
        masking = hide_channels_masking(per_token, visible_channels, samples, grid[0] * grid[1], ratio, generator)
    else:
        masking = model.sample_masking(inputs, grid, mask_ratio=ratio, generator=generator)
    with torch.no_grad():
        out = model(batch["images"], batch["channels"], valid=batch["valid"], masking=masking)
    images = reconstruction_images(model, batch["images"], batch["channels"], out)
    names = batch["channels"] if isinstance(batch["channels"], dict) else {"image": batch["channels"]}
    seen = f"  visible: {','.join(visible_channels)}" if visible_channels else ""
    title = f"{recipe.name} step {trained.step}  mask {ratio:.2f}{seen}  loss {out.loss.item():.4f}"
    return save_reconstruction_grid(images, names, output, title=title, max_samples=samples)
