"""Reconstruction previews: original / masked input / reconstruction, as a PNG grid."""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

# A Figure of its own, not pyplot: it draws with Agg for the file and leaves the process's backend alone
# (matplotlib.use("Agg") at import switched a notebook user's plotting backend).
from matplotlib.figure import Figure

from .atomic import atomic_path
from .models import IMAEOutput, MAEOutput, MaskedAutoencoder
from .models.inputs import SensorInput
from .models.patches import unpatchify, unpatchify_channels

RGB_BANDS = ("B04", "B03", "B02")  # Sentinel-2 true colour


def _to_image(model: MaskedAutoencoder, inp: SensorInput, grid: tuple[int, int]) -> Callable[[torch.Tensor], torch.Tensor]:
    """Per-token pixels ``[B, L_s, P]`` of one sensor -> ``[B, C, H, W]``."""
    if inp.channels is None:
        return lambda x: unpatchify(x, model.patch_size, grid)
    return lambda x: unpatchify_channels(x, model.patch_size, grid)


def _pixels(model: MaskedAutoencoder, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Predicted tokens in pixel units: a norm-pix prediction is brought back with each target patch's own
    mean and variance, as the MAE paper's visualisations do."""
    pred = pred.float()
    if model.norm_pix_loss:  # invert normalize_patches with the target patch's statistics
        pred = pred * (target.var(-1, keepdim=True) + 1e-6) ** 0.5 + target.mean(-1, keepdim=True)
    return pred


@torch.no_grad()
def reconstruction_images(
    model: MaskedAutoencoder,
    images: torch.Tensor | Mapping[str, torch.Tensor],
    channels: Sequence | Mapping | None,
    out: MAEOutput,
    valid: torch.Tensor | Mapping[str, torch.Tensor] | None = None,
) -> dict[str, dict[str, torch.Tensor]]:
    """Per sensor: ``original``, ``masked`` (removed patches zeroed) and ``reconstruction``
    (visible patches as given, masked ones predicted), each ``[B, C, H, W]``.

    For an i-MAE's :class:`~domainmae.models.IMAEOutput` the rows are the mixture, the masked mixture, and
    per source (lower weight first) the source and its separated reconstruction: masked patches as
    predicted, visible ones black (the model saw only the mixture there, never the source).
    """
    if isinstance(out, IMAEOutput):
        return _separation_images(model, channels, out)
    inputs, grid = model.split_inputs(images, channels, valid)
    result = {}
    for inp in inputs:
        target, _ = model.targets(inp)
        m = out.mask[inp.name].unsqueeze(-1)
        to_image = _to_image(model, inp, grid)
        result[inp.name] = {
            "original": inp.images.float(),
            "masked": to_image(target * (1 - m)),
            "reconstruction": to_image(target * (1 - m) + _pixels(model, out.pred[inp.name], target) * m),
        }
    return result


def _separation_images(model: MaskedAutoencoder, channels: Sequence | Mapping | None,
                       out: IMAEOutput) -> dict[str, dict[str, torch.Tensor]]:  # fmt: skip
    """:func:`reconstruction_images` of an i-MAE: mixture, masked mixture, each source and its separation."""
    inputs, grid = model.split_inputs(out.mixture, channels)
    result = {}
    for inp in inputs:
        m = out.mask[inp.name].unsqueeze(-1)
        to_image = _to_image(model, inp, grid)
        rows = {"mixture": inp.images.float(), "masked": to_image(model.targets(inp)[0] * (1 - m))}
        for which, source, pred, weight in zip(("low", "high"), out.sources, out.preds, out.weights):
            target, _ = model.targets(replace(inp, images=source[inp.name]))
            rows[f"{which} x{weight:.2f}"] = source[inp.name].float()
            rows[f"separated {which}"] = to_image(_pixels(model, pred[inp.name], target) * m)
        result[inp.name] = rows
    return result


def _columns(names: Sequence[str]) -> list[tuple[str, list[int]]]:
    """Panels of one sensor: a true-colour composite when R/G/B bands are there, else one per channel."""
    if all(b in names for b in RGB_BANDS):
        return [("RGB", [names.index(b) for b in RGB_BANDS])]
    return [(n, [i]) for i, n in enumerate(names)]


def _display(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """``[k, H, W]`` -> an image in [0, 1] (grey or RGB), stretched with the original's percentiles."""
    x = np.clip((x - lo[:, None, None]) / (hi - lo)[:, None, None], 0, 1)
    return x[0] if x.shape[0] == 1 else np.moveaxis(x, 0, -1)


def save_reconstruction_grid(
    images: dict[str, dict[str, torch.Tensor]],
    channels: Sequence[str] | Mapping[str, Sequence[str]],
    path: str | Path,
    title: str = "",
    max_samples: int = 2,
) -> Path:
    """Draw rows (original, masked, reconstruction, and any further entries of ``images[sensor]``,
    e.g. a baseline's reconstruction; the first row's percentiles stretch every row) per sample and one column
    per channel (per sensor: an RGB composite for Sentinel-2), and write the PNG atomically. ``channels`` are
    the batch's: per sensor, or one sequence for a single-sensor model."""
    # A single-sensor batch carries one channel sequence; the model names its one sensor ("image", "optical", ...).
    names = channels if isinstance(channels, Mapping) else {next(iter(images)): channels}
    panels = [(sensor, label, idx) for sensor in images for label, idx in _columns(list(names[sensor]))]
    kinds = list(next(iter(images.values())))  # the first row (the original, or an i-MAE's mixture) sets the stretch
    rows = len(kinds)
    n = min(max_samples, next(iter(images.values()))[kinds[0]].shape[0])
    fig = Figure(figsize=(2.2 * len(panels), 2.2 * rows * n))
    axes = fig.subplots(rows * n, len(panels), squeeze=False)
    for s in range(n):
        for col, (sensor, label, idx) in enumerate(panels):
            original = images[sensor][kinds[0]][s, idx].cpu().numpy()
            lo, hi = np.percentile(original, 1, axis=(1, 2)), np.percentile(original, 99, axis=(1, 2))
            hi = np.where(hi > lo, hi, lo + 1e-6)
            for r, kind in enumerate(kinds):
                ax = axes[rows * s + r, col]
                ax.imshow(_display(images[sensor][kind][s, idx].cpu().numpy(), lo, hi), cmap="gray")
                ax.set_xticks([])
                ax.set_yticks([])
                if s == 0 and r == 0:
                    ax.set_title(f"{sensor}: {label}" if len(images) > 1 else label, fontsize=9)
                if col == 0:
                    ax.set_ylabel(f"#{s} {kind}", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    return Path(path)
