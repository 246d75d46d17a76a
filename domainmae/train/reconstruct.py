"""``reconstruct()``: reconstruction grids from a trained checkpoint, also of hidden channels, and
``score_reconstruction()``: masked-patch MSE of the model and of three baselines on held-out crops.

Held-out crops are drawn from their own seed stream (``SCORE_STREAM``), which no training epoch and no
preview (stream 0) uses, without augmentation. They are other crops of the same fields/scenes unless
``data`` points at data the run did not train on: the bundled demos train on all their samples, so
there they are fresh crops, not unseen images. The linear baseline is fitted on crops of the run's own
training data (all channels known, ``REFERENCE_STREAM``), as the model learned from it.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..atomic import check_output_file
from ..data.loader import collate_samples, sample_seed, spread_picks
from ..models import MaskedAutoencoder, Masking, MixtureAutoencoder, masking_from_scores
from ..models.baselines import channel_gram
from ..models.masking import num_keep
from ..pipeline import TrainingData, build_training_data
from ..recipes import resolve_recipe
from ..runtime import Trained, load_trained
from ..viz import reconstruction_images, save_reconstruction_grid
from .score import baseline_images, hidden_pixels, score_batch, take_rows

SCORE_STREAM = 2**32 - 2  # the "epoch" of held-out crops' seeds (band statistics use 2**32 - 1)
REFERENCE_STREAM = 2**32 - 3  # crops the linear baseline is fitted on
NO_AUGMENT = ["data.augment.hflip=false", "data.augment.vflip=false", "data.augment.rot90=false",
              "data.augment.resized_crop_scale=null"]  # fmt: skip


def _first_rows(batch: dict[str, Any], n: int) -> dict[str, Any]:
    return {k: take_rows(v, slice(0, n)) for k, v in batch.items() if k != "meta"}


def hide_channels_masking(
    channels_per_token: Sequence[str], visible: Sequence[str], batch: int, cells: int, ratio: float, generator: torch.Generator
) -> Masking:
    """Every token of a channel not in ``visible`` removed, and ``ratio`` of the visible ones (ratio 0:
    the visible channels whole, e.g. all of S1 to rebuild S2).

    ``channels_per_token`` lists the channel of each token row (channel-major, ``cells`` tokens each).
    """
    unknown = sorted(set(visible) - set(channels_per_token))
    if unknown:
        raise KeyError(f"--channels {unknown} are not in the data's channels {list(channels_per_token)}")
    shown = [c for c in channels_per_token if c in visible]
    if ratio == 0 and len(shown) == len(channels_per_token):
        raise ValueError("--mask-ratio 0 with every channel visible hides nothing; leave a channel out of --channels")
    hidden = torch.tensor([0.0 if c in visible else 2.0 for c in channels_per_token]).repeat_interleave(cells)
    keep = len(shown) * cells if ratio == 0 else num_keep(len(shown) * cells, ratio)
    return masking_from_scores(torch.rand(batch, hidden.numel(), generator=generator) + hidden, keep)


def sample_crops(training: TrainingData, samples: int, seed: int, stream: int) -> dict[str, Any]:
    """``samples`` crops, fixed by ``seed`` and ``stream``, collated (``images``, ``channels``, ``valid``).

    The reads go to fields/scenes spread over the data (:func:`~domainmae.data.loader.spread_picks`).
    """
    if samples < 1:  # else an empty batch, reported as if every read had failed
        raise ValueError(f"samples must be at least 1, got {samples}")
    picks = spread_picks(len(training.dataset), -(-samples // training.crops_per_item), seed, stream)
    items = [training.dataset[(index, sample_seed(seed, stream, i))] for i, index in enumerate(picks)]
    return _first_rows(collate_samples(items), samples)


def _masking(
    model: MaskedAutoencoder, batch: dict[str, Any], ratio: float, visible_channels: Sequence[str] | None, seed: int
) -> Masking:
    """The model's own mask sampler, or with ``visible_channels`` every other channel hidden."""
    generator = torch.Generator().manual_seed(seed)
    inputs, grid = model.split_inputs(batch["images"], batch["channels"])
    samples = inputs[0].images.shape[0]
    if not visible_channels:
        return model.sample_masking(inputs, grid, mask_ratio=ratio, generator=generator)
    if any(inp.channels is None for inp in inputs):
        raise ValueError("--channels needs a channel-agnostic model; this one stacks its channels")
    per_token = [str(getattr(c, "name", c)) for inp in inputs for c in inp.channels]
    return hide_channels_masking(per_token, visible_channels, samples, grid[0] * grid[1], ratio, generator)


def reference_gram(trained: Trained, samples: int, seed: int) -> torch.Tensor:
    """:func:`~domainmae.models.baselines.channel_gram` of ``samples`` crops of the run's training data,
    channels of all sensors in the model's order: what the linear baseline is fitted on."""
    training = build_training_data(resolve_recipe(trained.recipe, NO_AUGMENT).data)
    batch = sample_crops(training, samples, seed, REFERENCE_STREAM)
    inputs, _ = trained.model.split_inputs(batch["images"], batch["channels"], batch["valid"])
    images = torch.cat([inp.images.float() for inp in inputs], dim=1)
    valid = [torch.ones_like(inp.images, dtype=torch.bool) if inp.valid is None else inp.valid for inp in inputs]
    return channel_gram(images, torch.cat(valid, dim=1))


def score_reconstruction(
    checkpoint: str | Path,
    *,
    data: str | None = None,
    mask_ratio: float | None = None,
    visible_channels: Sequence[str] | None = None,
    samples: int = 32,
    seed: int = 0,
) -> dict[str, Any]:
    """Masked-patch MSE of the model and the baselines (mean of visible patches, interpolation,
    per-pixel linear regression from the other channels) on ``samples`` held-out crops, same masks.

    Returns :func:`~domainmae.train.score.score_batch`'s dict (``units``, ``scores``, ``best_baseline``)
    with what was scored: ``checkpoint``, ``recipe``, ``step``, ``data``, ``samples``, ``seed``,
    ``mask_ratio``, ``visible_channels``, ``held_out``.
    """
    trained = load_trained(checkpoint)
    model = trained.model
    if isinstance(model, MixtureAutoencoder):
        raise ValueError(
            f"{checkpoint} is an i-MAE (objective imae): it rebuilds two sources from a mixture, which the "
            "baselines cannot; draw the separation with `domainmae reconstruct` without --score/--output-json"
        )
    recipe = resolve_recipe(trained.recipe, [*NO_AUGMENT, *([f"data.path={data}"] if data else [])])
    batch = sample_crops(build_training_data(recipe.data), samples, seed, SCORE_STREAM)
    ratio = model.mask_ratio if mask_ratio is None else mask_ratio
    masking = _masking(model, batch, ratio, visible_channels, seed)
    result = score_batch(model, batch["images"], batch["channels"], batch["valid"], masking,
                         gram=reference_gram(trained, samples, seed))  # fmt: skip
    held_out = "the given data" if data else "fresh crops of the run's own training data (no separate split)"
    return {"checkpoint": str(checkpoint), "recipe": recipe.name, "step": trained.step, "data": str(recipe.data.path),
            "samples": samples, "seed": seed, "mask_ratio": ratio,
            "visible_channels": list(visible_channels) if visible_channels else None, "held_out": held_out,
            **result}  # fmt: skip


def check_reconstruct_output(output: str | Path, *, overwrite: bool, inputs: Sequence[str | Path | None]) -> Path:
    """Refuse ``output`` before any work (:func:`~domainmae.atomic.check_output_file`), and a name that is no
    ``.png``: the drawing is always a PNG, which ``rec.jpg`` would hold under the wrong name."""
    output = check_output_file(output, overwrite=overwrite, inputs=inputs)
    if output.suffix.lower() != ".png":
        raise ValueError(f"reconstruct draws a PNG image; {output} ends in {output.suffix or '(no suffix)'!r}: "
                         "name it .png")
    return output


def reconstruct(
    checkpoint: str | Path,
    *,
    data: str | None = None,
    mask_ratio: float | None = None,
    output: str | Path = "reconstruction.png",
    visible_channels: Sequence[str] | None = None,
    samples: int = 2,
    seed: int = 0,
    baseline: str | None = None,
    mix_ratio: float | None = None,
    overwrite: bool = False,
) -> Path:
    """Draw original / masked / reconstruction for ``samples`` crops of the run's data (or ``data``).

    ``checkpoint`` is a run directory, ``.ckpt`` file, exported model folder or its Hub id.

    With ``visible_channels`` the model sees only those channels (at ``mask_ratio``) and rebuilds
    the others from them: the cross-channel prediction a channel-agnostic model is trained for.
    With ``baseline`` (``mean``, ``interpolation`` or ``linear``) a further row shows that baseline's
    reconstruction from the same visible patches.

    An i-MAE checkpoint (objective imae) draws the mixture of each crop (weight ``mix_ratio``; default the
    model's fixed ratio, else 0.3) with the next crop, and both separated sources; it takes no ``baseline``.

    An existing ``output`` is replaced only with ``overwrite``, and never when it is an input (``checkpoint``,
    ``data``, or lies in their folder).
    """
    check_reconstruct_output(output, overwrite=overwrite, inputs=(checkpoint, data))
    trained = load_trained(checkpoint)
    model = trained.model
    imae = isinstance(model, MixtureAutoencoder)
    if imae and baseline:
        raise ValueError(f"{checkpoint} is an i-MAE (objective imae): baselines rebuild one image, not two sources")
    if not imae and mix_ratio is not None:
        raise ValueError(f"--mix-ratio applies to i-MAE checkpoints (objective imae); {checkpoint} is an MAE")
    recipe = resolve_recipe(trained.recipe, [f"data.path={data}"] if data else [])
    batch = sample_crops(build_training_data(recipe.data), samples + imae, seed, 0)
    extra: dict[str, Any] = {}
    if imae:  # each crop's partner is the next crop of the same stream (mostly of the same read, as in training)
        partner = {k: take_rows(v, slice(1, None)) for k, v in batch.items()}
        batch = {k: take_rows(v, slice(0, samples)) for k, v in batch.items()}
        lam = next(r for r in (mix_ratio, model.config.mix_ratio, 0.3) if r is not None)
        extra = {"partner": partner["images"], "partner_valid": partner["valid"], "lam": lam}
    ratio = model.mask_ratio if mask_ratio is None else mask_ratio
    masking = _masking(model, batch, ratio, visible_channels, seed)
    with torch.no_grad():
        out = model(batch["images"], batch["channels"], valid=batch["valid"], masking=masking, **extra)
    images = reconstruction_images(model, batch["images"], batch["channels"], out)
    if baseline:
        inputs, grid = model.split_inputs(batch["images"], batch["channels"], batch["valid"])
        gram = reference_gram(trained, samples, seed) if baseline == "linear" else None
        predicted = baseline_images(model, inputs, out.mask, grid, gram, names=[baseline])[baseline]
        for inp in inputs:  # visible patches as given, masked ones from the baseline
            hidden = hidden_pixels(out.mask[inp.name], inp, model.patch_size, grid)
            images[inp.name][f"baseline: {baseline}"] = torch.where(hidden, predicted[inp.name], inp.images.float())
    seen = f"  visible: {','.join(visible_channels)}" if visible_channels else ""
    seen += f"  mix {extra['lam']:.2f}" if imae else ""
    title = f"{recipe.name} step {trained.step}  mask {ratio:.2f}{seen}  loss {out.loss.item():.4f}"
    return save_reconstruction_grid(images, batch["channels"], output, title=title, max_samples=samples)
