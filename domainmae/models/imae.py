"""i-MAE (Zhang & Shen 2022, arXiv 2210.11470): separate a mixture of two images.

Two crops are mixed, ``x = lam * x1 + (1 - lam) * x2``; the masked mixture goes through the MAE encoder
unchanged; two linear layers map its latent to one latent per source (the lower-weight source first);
the ONE shared decoder rebuilds each source from its latent, and the loss is the masked MSE of both
(:meth:`MaskedAutoencoder.forward_loss`, so norm-pix, valid pixels and the Fourier term apply alike).
Optionally each separated latent is also pulled towards a frozen teacher MAE's latent of its source, seen
through the same mask. Masking, tokens, encoder, decoder and losses are the MAE's own: only the mixing,
the two linear layers and the distillation term live here.

In training each crop's partner is the previous crop of the same read (:func:`partner_rows`): a batch
holds whole reads on every process and in every micro-batch, so the pairs, like ``lam`` (a pure function
of seed and step, :func:`training_mix`), do not depend on the number of processes or micro-batches.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from .config import MAEConfig
from .embed import ChannelLike
from .inputs import SensorInput, split_tokens
from .mae import MAEOutput, MaskedAutoencoder
from .masking import Masking

Images = torch.Tensor | Mapping[str, torch.Tensor]
Channels = Sequence[ChannelLike] | Mapping[str, Sequence[ChannelLike]] | None
_MIX_TAG = 0x494D4145  # "IMAE": the mixing weights' seed stream, apart from the masks' and the data's


@dataclass
class IMAEOutput(MAEOutput):
    """An :class:`MAEOutput` of the mixture whose ``pred`` is the dominant source's branch, plus both branches.

    ``mixture``, ``sources`` ``(low, high)``: ``{sensor: [B, C, H, W]}``, the lower-weight source first;
    ``preds`` ``(low, high)``: ``{sensor: [B, L_s, P_s]}``; ``weights``: their mixing weights;
    ``branch_losses``: ``{"low", "high"}`` masked MSE (``low`` is 0 when its weight is 0);
    ``distill``: the distillation term (0 without a teacher). ``loss`` = both branches + weighted distill.
    """

    mixture: dict[str, torch.Tensor]
    sources: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]
    preds: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]
    weights: tuple[float, float]
    branch_losses: dict[str, torch.Tensor]
    distill: torch.Tensor


def partner_rows(batch: int, group: int, device: torch.device | None = None) -> torch.Tensor:
    """``[B]`` index of each row's partner: the previous row within its group of ``group`` consecutive rows
    (the first takes the last), i.e. another crop of the same read."""
    if group < 2:
        raise ValueError(
            f"i-MAE mixes each crop with another crop of the same read, but reads give {group} crop(s); "
            "set data.crops_per_read to 2 or more"
        )
    if batch % group:
        raise ValueError(f"a batch of {batch} crops does not hold whole reads of {group} crops")
    rows = torch.arange(batch, device=device).view(-1, group)
    return rows.roll(1, dims=1).flatten()


def mix_weight(config: MAEConfig, seed: int, step: int) -> float:
    """The weight ``lam`` of each crop (its partner gets ``1 - lam``) at ``step``: ``config.mix_ratio``, or a
    draw from Beta(mix_beta, mix_beta) that depends on (seed, step) only, so resumed runs redraw it alike."""
    if config.mix_ratio is not None:
        return float(config.mix_ratio)
    return float(np.random.default_rng([seed, step, _MIX_TAG]).beta(config.mix_beta, config.mix_beta))


def training_mix(config: MAEConfig, seed: int, crops_per_read: int) -> Callable[[int], dict[str, Any]]:
    """``step -> extra forward keywords`` for pretraining: nothing for an MAE; for i-MAE the step's ``lam``
    and the read size that pairs crops. Refuses reads of one crop before the first step."""
    if config.objective != "imae":
        return lambda step: {}
    partner_rows(crops_per_read, crops_per_read)  # the error about data.crops_per_read, now rather than at step 1
    return lambda step: {"lam": mix_weight(config, seed, step), "group": crops_per_read}


def _take_rows(x: Images | None, rows: torch.Tensor) -> Images | None:
    if x is None or isinstance(x, torch.Tensor):
        return None if x is None else x[rows]
    return {k: v[rows] for k, v in x.items()}


def _both_valid(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    """Pixels valid in both sources ``[B, C, H, W]`` (None: all valid)."""
    if a is None or b is None:
        return b if a is None else a
    return a & b


class MixtureAutoencoder(MaskedAutoencoder):
    """An MAE trained to separate two mixed images (``config.objective == "imae"``).

    ``unmix[0]`` / ``unmix[1]`` map the mixture latent ``[B, 1 + K, D]`` to the lower- / higher-weight
    source's latent. Both start as the identity, so an i-MAE begins as the MAE it is built from: untrained,
    its loss at ``lam = 1`` is exactly that MAE's. Embedding (:meth:`embed`) encodes one image, unmixed.
    """

    def __init__(self, config: MAEConfig) -> None:
        super().__init__(config)
        self.unmix = nn.ModuleList(nn.Linear(self.embed_dim, self.embed_dim) for _ in range(2))
        for layer in self.unmix:
            nn.init.eye_(layer.weight)
            nn.init.zeros_(layer.bias)
        # A tuple, not an attribute module: the teacher stays out of state_dict, the optimiser and DDP.
        self._teacher: tuple[MaskedAutoencoder, ...] = ()

    def set_teacher(self, teacher: MaskedAutoencoder) -> None:
        """Freeze ``teacher`` and distill each separated latent towards its latent of that source."""
        if teacher.embed_dim != self.embed_dim or set(teacher.sensors) != set(self.sensors):
            raise ValueError(
                f"the distillation teacher ({teacher.embed_dim}-wide, sensors {list(teacher.sensors)}) must have "
                f"this model's width {self.embed_dim} and sensors {list(self.sensors)}"
            )
        self._teacher = (teacher.eval().requires_grad_(False),)

    def _distill(self, latents: Sequence[torch.Tensor], sources: Sequence[list[SensorInput]], masking: Masking,
                 grid: tuple[int, int]) -> torch.Tensor:  # fmt: skip
        """Mean squared distance of each separated latent ``[B, 1 + K, D]`` to the teacher's latent of its
        source under the same mask (token for token)."""
        (teacher,) = self._teacher
        device = latents[0].device
        if next(teacher.parameters()).device != device:  # follows the student to its device on first use
            teacher.to(device)
        with torch.no_grad():
            targets = [teacher.forward_encoder(teacher.tokenize(src, grid), masking) for src in sources]
        return torch.stack([(z.float() - t.float()).pow(2).mean() for z, t in zip(latents, targets)]).sum()

    def _sources(self, images: Images, channels: Channels, partner: Images | None, group: int | None,
                 valid: Images | None, partner_valid: Images | None,
                 ) -> tuple[list[SensorInput], list[SensorInput], tuple[int, int]]:  # fmt: skip
        """Both sources split per sensor (``partner`` default: :func:`partner_rows` in groups of ``group``), each
        sensor's ``valid`` the pixels valid in both (elsewhere the mixture holds a filled-in value), and the grid."""
        if partner is None:
            b = (images if isinstance(images, torch.Tensor) else next(iter(images.values()))).shape[0]
            rows = partner_rows(b, group or b)
            partner, partner_valid = _take_rows(images, rows), _take_rows(valid, rows)
        first, grid = self.split_inputs(images, channels, valid)
        second, _ = self.split_inputs(partner, channels, partner_valid)
        both = [_both_valid(a.valid, b.valid) for a, b in zip(first, second)]
        first, second = ([replace(x, valid=v) for x, v in zip(source, both)] for source in (first, second))
        return first, second, grid

    def loss_counts(
        self,
        images: Images,
        channels: Channels = None,
        *,
        valid: Images | None = None,
        masking: Masking,
        partner: Images | None = None,
        partner_valid: Images | None = None,
        group: int | None = None,
        lam: float | None = None,
    ) -> dict[str, torch.Tensor]:
        """As :meth:`MaskedAutoencoder.loss_counts` for :meth:`forward` with these arguments: masked tokens with a
        pixel valid in both sources, which each branch averages over. ``lam`` is taken so that a training step's
        forward keywords apply as they are; the weights change no count."""
        first, _, grid = self._sources(images, channels, partner, group, valid, partner_valid)
        return self._count_scored(first, grid, masking)

    def forward(
        self,
        images: Images,
        channels: Channels = None,
        *,
        partner: Images | None = None,
        lam: float | None = None,
        group: int | None = None,
        valid: Images | None = None,
        partner_valid: Images | None = None,
        mask_ratio: float | None = None,
        mask_strategy: str | None = None,
        noise: torch.Tensor | None = None,
        masking: Masking | None = None,
        generator: torch.Generator | None = None,
        counts: Mapping[str, torch.Tensor] | None = None,
        parts: int = 1,
    ) -> IMAEOutput:
        """Mix, mask, encode, separate, decode both sources with the shared decoder, and score each against
        its own source.

        Args:
            images: ``[B, C, H, W]`` or ``{sensor: [B, C_s, H, W]}``, weighted ``lam``.
            partner: the other sources, shaped like ``images`` (same channels), weighted ``1 - lam``;
                default: each row's :func:`partner_rows` within groups of ``group`` rows (default: all).
            lam: default ``config.mix_ratio``, else a draw from Beta(mix_beta, mix_beta) (torch's RNG).
            valid, partner_valid: as :meth:`MaskedAutoencoder.forward`; the loss counts pixels valid in both.
            noise, masking, ...: masking of the mixture's tokens, as :meth:`MaskedAutoencoder.forward`.
            counts, parts: as :meth:`MaskedAutoencoder.forward`, for each branch (both score the same tokens).
        """
        first, second, grid = self._sources(images, channels, partner, group, valid, partner_valid)
        if lam is None:
            beta = self.config.mix_beta
            lam = self.config.mix_ratio if self.config.mix_ratio is not None else float(
                torch.distributions.Beta(beta, beta).sample())  # fmt: skip
        # Branch 0 rebuilds the lower-weight source: which argument it came in does not matter.
        (low, w_low), (high, w_high) = sorted([(first, lam), (second, 1.0 - lam)], key=lambda s: s[1])
        mixed = [replace(a, images=w_low * a.images + w_high * b.images) for a, b in zip(low, high)]
        if masking is None:
            masking = self.sample_masking(mixed, grid, mask_ratio=mask_ratio, strategy=mask_strategy, noise=noise,
                                          generator=generator)  # fmt: skip
        latent = self.forward_encoder(self.tokenize(mixed, grid), masking)
        latents = [head(latent) for head in self.unmix]
        # One decoder pass over both branches stacked on the batch: the same shared weights, half the calls.
        both = self.forward_decoder(torch.cat(latents), masking.ids_restore.repeat(2, 1), mixed, grid)
        preds = tuple({k: v.chunk(2)[i] for k, v in both.items()} for i in range(2))
        masks = split_tokens(masking.mask, mixed, grid)
        loss_low, per_low = self.forward_loss(low, preds[0], masks, counts, parts)
        loss_high, per_high = self.forward_loss(high, preds[1], masks, counts, parts)
        # A source of weight 0 is not in the mixture (lam = 1 is the plain MAE): nothing to separate. Zeroed,
        # not dropped, so unmix[0] stays in the graph (DDP expects a gradient for every parameter).
        if w_low == 0:
            loss_low, per_low = loss_low * 0, {k: v * 0 for k, v in per_low.items()}
        distill = latent.new_zeros(())
        if self._teacher:
            pairs = [(z, s) for z, s, w in zip(latents, (low, high), (w_low, w_high)) if w > 0]
            distill = self._distill([z for z, _ in pairs], [s for _, s in pairs], masking, grid)
        loss = loss_low + loss_high + self.config.distill_weight * distill
        losses = {k: per_low[k] + per_high[k] for k in per_high}
        as_images = lambda inputs: {inp.name: inp.images for inp in inputs}  # noqa: E731
        return IMAEOutput(loss, preds[1], masks, losses, masking, as_images(mixed), (as_images(low), as_images(high)),
                          preds, (w_low, w_high), {"low": loss_low, "high": loss_high}, distill)  # fmt: skip


#: Ridge penalties tried (on standardised features); the one with the lowest leave-one-out error is used.
RIDGE_ALPHAS = tuple(10.0**k for k in range(-3, 5))


def ridge_r2(features: torch.Tensor, targets: torch.Tensor, train: int) -> float:
    """Held-out R² of ridge regression ``features [N, F] -> targets [N, T]``: fitted on rows ``:train``
    (features standardised there, the penalty of :data:`RIDGE_ALPHAS` chosen by leave-one-out error on them
    alone), scored on rows ``train:`` (1 - residual / total sum of squares, over all target columns)."""
    x, y = features.double(), targets.double()
    x = (x - x[:train].mean(0)) / x[:train].std(0).clamp(min=1e-8)
    y = y - y[:train].mean(0)
    u, s, vt = torch.linalg.svd(x[:train], full_matrices=False)
    uty = u.T @ y[:train]

    def loo_error(alpha: float) -> float:  # closed form: residual_i / (1 - leverage_i)
        shrink = s**2 / (s**2 + alpha)
        residual = y[:train] - u @ (shrink[:, None] * uty)
        return float((residual / (1 - (u**2) @ shrink).clamp(min=1e-8)[:, None]).pow(2).sum())

    alpha = min(RIDGE_ALPHAS, key=loo_error)
    w = vt.T @ ((s / (s**2 + alpha))[:, None] * uty)
    test = y[train:]
    return float(1 - (test - x[train:] @ w).pow(2).sum() / (test - test.mean(0)).pow(2).sum())


@torch.no_grad()
def linear_separability(model: MaskedAutoencoder, first: Images, second: Images, lam: float, channels: Any = None,
                        level: str = "image", train_fraction: float = 0.5) -> dict[str, float]:  # fmt: skip
    """How well a linear map recovers each source's latent from the mixture's: ``{"low", "high"}`` held-out R²
    (:func:`ridge_r2`) from the latent of ``lam * first + (1 - lam) * second`` (``[N, C, H, W]`` or per sensor)
    to the latent of the lower- and the higher-weight source, all unmasked, one model. ``level`` ``"image"``:
    pooled latents ``[N, D]`` (:meth:`~MaskedAutoencoder.embed`); ``"patch"``: each grid cell's latent
    (:meth:`~MaskedAutoencoder.embed_patches`), the mixture's against the source's at the same place. The first
    ``train_fraction`` of the pairs fit the map, the rest score it.

    Works for any MAE (an i-MAE's mixture latent is read before its unmix layers: the question is what the
    encoder's latent holds, and a linear map subsumes those layers).
    """
    if isinstance(first, torch.Tensor):
        mixture = lam * first + (1 - lam) * second
    else:
        mixture = {k: lam * first[k] + (1 - lam) * second[k] for k in first}
    low, high = (first, second) if lam <= 0.5 else (second, first)
    if level == "image":
        encode = lambda x: model.embed(x, channels)  # noqa: E731
    elif level == "patch":
        encode = lambda x: model.embed_patches(x, channels).flatten(1, 2)  # noqa: E731  [N, h * w, D]
    else:
        raise ValueError(f"level must be 'image' or 'patch', got {level!r}")
    z = {name: encode(x) for name, x in (("mixture", mixture), ("low", low), ("high", high))}
    rows_per_pair = z["mixture"][0].numel() // z["mixture"].shape[-1]  # 1 pooled, h * w per grid cell
    train = int(len(z["mixture"]) * train_fraction) * rows_per_pair  # a pair's rows are all fitted or all scored
    flat = {name: v.reshape(-1, v.shape[-1]) for name, v in z.items()}
    return {name: ridge_r2(flat["mixture"], flat[name], train) for name in ("low", "high")}
