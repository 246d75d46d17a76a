"""Masked-patch MSE of a model and of the reconstruction baselines, on the same masked tokens.

Units are those of the model's own loss: images normalised as in training and, for a norm-pix model,
every target patch standardised as the loss does (a baseline's predicted patch is standardised by
its own statistics, so the mean baseline predicts 0 there). The model's score is its loss with the
Fourier term left out; only masked tokens and valid pixels count (:func:`~domainmae.models.losses.reconstruction_loss`).
A baseline with no prediction for some masked token of a channel (e.g. the mean of a channel that is
hidden entirely) scores None there, and None for its sensor and overall.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch

from ..models import MaskedAutoencoder, Masking
from ..models.baselines import BASELINES, interpolate_visible, linear_from_channels, mean_of_visible
from ..models.inputs import SensorInput, split_tokens
from ..models.losses import normalize_patches, reconstruction_loss
from ..models.patches import unpatchify, unpatchify_channels
from ..validity import valid_pixels

Images = torch.Tensor | Mapping[str, torch.Tensor]


def take_rows(x: Any, rows: slice) -> Any:
    """``rows`` of a tensor, or of every tensor in a (nested) dict; anything else as it is."""
    if isinstance(x, torch.Tensor):
        return x[rows]
    return {k: take_rows(v, rows) for k, v in x.items()} if isinstance(x, Mapping) else x


def hidden_pixels(mask: torch.Tensor, inp: SensorInput, patch_size: int, grid: tuple[int, int]) -> torch.Tensor:
    """Token mask ``[B, L_s]`` (1 = removed) -> bool ``[B, C, H, W]``, True on removed pixels."""
    c = inp.images.shape[1]
    if inp.channels is None:  # a stacked token hides all its channels
        return unpatchify(mask.unsqueeze(-1).expand(-1, -1, patch_size**2 * c), patch_size, grid) > 0.5
    return unpatchify_channels(mask.unsqueeze(-1).expand(-1, -1, patch_size**2), patch_size, grid) > 0.5


def baseline_images(
    model: MaskedAutoencoder, inputs: list[SensorInput], masks: Mapping[str, torch.Tensor], grid: tuple[int, int],
    gram: torch.Tensor | None, names: Sequence[str] = BASELINES,
) -> dict[str, dict[str, torch.Tensor]]:
    """``{baseline: {sensor: [B, C, H, W]}}`` predictions from the visible, valid pixels of all sensors.

    ``gram`` (needed for ``linear`` only) is :func:`~domainmae.models.baselines.channel_gram` of
    reference images over the channels of ``inputs`` concatenated in order.
    """
    images = torch.cat([inp.images.float() for inp in inputs], dim=1)
    visible = torch.cat([
        ~hidden_pixels(masks[inp.name], inp, model.patch_size, grid)
        & valid_pixels(inp.images, inp.valid)
        for inp in inputs
    ], dim=1)  # fmt: skip
    made = {"mean": lambda: mean_of_visible(images, visible), "interpolation": lambda: interpolate_visible(images, visible),
            "linear": lambda: linear_from_channels(images, visible, gram)}  # fmt: skip
    sizes = [inp.images.shape[1] for inp in inputs]
    return {n: dict(zip((inp.name for inp in inputs), made[n]().split(sizes, dim=1))) for n in names}


def _mse(model: MaskedAutoencoder, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
         valid: torch.Tensor | None) -> float | None:  # fmt: skip
    """The loss's MSE of ``[B, L, P]`` tokens, or None when a scored pixel has no prediction or
    nothing is masked (a visible channel at mask ratio 0)."""
    scored = mask.bool().unsqueeze(-1) & (True if valid is None else valid)
    if not scored.any() or pred[scored.expand_as(pred)].isnan().any():
        return None
    # Unscored NaNs (visible tokens of a hidden channel) must not reach the sum: 0 * NaN is NaN.
    pred = pred.nan_to_num(0.0)
    return reconstruction_loss(pred, target, mask, patch_size=model.patch_size, valid=valid,
                               norm_pix=model.norm_pix_loss).item()  # fmt: skip


def _sensor_scores(model: MaskedAutoencoder, inp: SensorInput, pred: torch.Tensor, mask: torch.Tensor) -> dict:
    """``{"mse", "channels": {name: mse}, "tokens": scored tokens}`` of one sensor (per channel for
    channel tokens only: stacked tokens mix all channels in one patch, and so does their norm-pix statistic)."""
    target, valid = model.targets(inp)
    channels = {}
    if inp.channels is not None:
        n = target.shape[1] // len(inp.channels)
        for c, name in enumerate(inp.channels):
            part = slice(c * n, (c + 1) * n)
            channels[str(getattr(name, "name", name))] = _mse(
                model, pred[:, part], target[:, part], mask[:, part], None if valid is None else valid[:, part]
            )
    scored = mask.bool() & (True if valid is None else valid.any(dim=-1))
    return {"mse": _mse(model, pred, target, mask, valid), "channels": channels, "tokens": int(scored.sum())}


def _total(sensors: dict[str, dict]) -> float | None:
    """Sum over the sensors with masked tokens, as the model's loss is (a sensor with none adds 0);
    None when one of them has no score."""
    values = [s["mse"] for s in sensors.values() if s["tokens"]]
    return None if any(v is None for v in values) else sum(values)


@torch.no_grad()
def score_batch(
    model: MaskedAutoencoder, images: Images, channels: Any, valid: Images | None, masking: Masking,
    gram: torch.Tensor, chunk: int = 16,
) -> dict[str, Any]:
    """Score the model and every baseline on ``masking``'s masked tokens of one batch.

    Args:
        images: ``[B, C, H, W]`` or ``{sensor: [B, C_s, H, W]}``, normalised as in training.
        masking: ``[B, L]`` masks, e.g. from ``model.sample_masking``.
        gram: reference :func:`~domainmae.models.baselines.channel_gram` for the linear baseline.
        chunk: samples per model forward pass.

    Returns:
        ``{"units", "scores": {predictor: {"overall", "sensors": {sensor: {"mse", "channels"}}}},
        "best_baseline"}``; ``predictor`` is ``model`` or a baseline name.
    """
    model.eval()
    inputs, grid = model.split_inputs(images, channels, valid)
    masks = split_tokens(masking.mask, inputs, grid)
    batch = inputs[0].images.shape[0]
    parts = []
    for start in range(0, batch, chunk):
        rows = slice(start, start + chunk)
        parts.append(model(take_rows(images, rows), channels, valid=take_rows(valid, rows), masking=masking.rows(rows)).pred)
    preds = {"model": {inp.name: torch.cat([p[inp.name] for p in parts]).float() for inp in inputs}}
    for name, per_sensor in baseline_images(model, inputs, masks, grid, gram).items():
        # Baselines predict pixels: into tokens (and standardised patches) the way the loss sees the target.
        preds[name] = {}
        for inp in inputs:
            tokens, valid_px = model.targets(replace(inp, images=per_sensor[inp.name]))
            preds[name][inp.name] = normalize_patches(tokens, valid_px) if model.norm_pix_loss else tokens
    scores = {}
    for name, per_sensor in preds.items():
        sensors = {inp.name: _sensor_scores(model, inp, per_sensor[inp.name], masks[inp.name]) for inp in inputs}
        scores[name] = {"overall": _total(sensors), "sensors": sensors}
    ranked = sorted((scores[n]["overall"], n) for n in BASELINES if scores[n]["overall"] is not None)
    return {"units": "norm-pix" if model.norm_pix_loss else "normalised", "scores": scores,
            "best_baseline": ranked[0][1] if ranked else None}  # fmt: skip


def _cells(values: list[float | None]) -> str:
    """One table row's values, the model's first: the model always predicts, so its None means that
    nothing was masked there."""
    if values[0] is None:
        return "".join(f"{'-':>15}" for _ in values)
    return "".join(f"{'n/a':>15}" if v is None else f"{v:>15.4f}" for v in values)


def format_scores(result: Mapping[str, Any]) -> str:
    """A table: one row per sensor channel, per sensor and overall; one column per predictor."""
    scores = result["scores"]
    names = list(scores)
    lines = [f"masked-patch MSE ({result['units']} units; n/a: the baseline has no prediction there; "
             "-: nothing masked)",
             f"{'':<16}" + "".join(f"{n:>15}" for n in names)]  # fmt: skip
    first = scores[names[0]]["sensors"]
    multi = len(first) > 1
    for sensor, part in first.items():
        for channel in part["channels"]:
            label = f"{sensor}/{channel}" if multi else channel
            values = [scores[n]["sensors"][sensor]["channels"][channel] for n in names]
            lines.append(f"{label:<16}" + _cells(values))
        if multi:
            lines.append(f"{sensor:<16}" + _cells([scores[n]["sensors"][sensor]["mse"] for n in names]))
    lines.append(f"{'overall':<16}" + _cells([scores[n]["overall"] for n in names]))
    lines.append(f"best baseline: {result['best_baseline'] or 'none applies to every masked token'}")
    return "\n".join(lines)
