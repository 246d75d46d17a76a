"""The Masked Autoencoder (He et al. 2022), top to bottom, for stacked, channel and sensor tokens.

One class covers the three model kinds, which differ only in how images become tokens:

* standard MAE: one sensor of ``in_chans`` stacked channels, one token per grid cell;
* channel-agnostic MAE: one sensor with a channel vocabulary, one token per (channel, cell);
* multi-sensor MAE: several such sensors (e.g. ``s2`` bands + ``s1`` VV/VH) on one pixel grid,
  tokens concatenated with a sensor embedding, one reconstruction head per sensor.

Every sensor yields ``[B, C', N, D]`` tokens (``C' = 1`` stacked), so the whole sequence is
``L = sum(C') * N`` tokens, channel-major on one ``h x w`` grid, and masking, the encoder and the
decoder are the reference algorithm unchanged.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from timm.models.vision_transformer import Block
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import MAEConfig
from .embed import ChannelEmbedding, ChannelLike, channel_specs, patch_embedder
from .inputs import SensorInput, sensor_inputs, split_tokens
from .losses import reconstruction_loss, token_weight
from .masking import Masking, masking_from_scores, num_keep, sample_masking
from .patches import grid_size, patchify, patchify_channels
from .posembed import sincos_2d

#: Pooled embeddings: mean of all tokens, the cls token, or per-channel token means side by side.
POOLS = ("mean", "cls", "channels")


@dataclass
class MAEOutput:
    """Result of a masked forward pass, keyed by sensor for every model (a single-sensor model's one
    sensor is ``next(iter(model.sensors))``, ``"image"`` for models from ``create_model``).

    ``pred`` ``{sensor: [B, L_s, P]}`` per-token pixels, ``mask`` ``{sensor: [B, L_s]}`` (1 = removed).
    ``loss`` is the (weighted) sum over sensors of ``losses[sensor]``, each a mean over its masked, valid
    tokens; given ``counts`` (the batch is one of ``parts`` parts of a larger one), their sum divided by
    ``counts[sensor] / parts``, so that the mean over the parts is the larger batch's loss.
    """

    loss: torch.Tensor
    pred: dict[str, torch.Tensor]
    mask: dict[str, torch.Tensor]
    losses: dict[str, torch.Tensor]
    masking: Masking


#: Parts with one module per sensor; a single-sensor model holds its one module directly.
SENSOR_PARTS = ("patch_embed", "decoder_channel_embed", "decoder_pred")


def _drop_sensor_from_keys(model: MaskedAutoencoder, state_dict: dict[str, Any], prefix: str, *_: Any) -> None:
    """Load-state-dict pre-hook: single-sensor weights saved before they took timm's names
    (``patch_embed.image.proj.weight``, now ``patch_embed.proj.weight``) load as they are."""
    if model.multi_sensor:
        return
    (sensor,) = model.sensors
    for part in SENSOR_PARTS:
        old = f"{prefix}{part}.{sensor}."
        for key in [k for k in state_dict if k.startswith(old)]:
            state_dict[f"{prefix}{part}.{key[len(old):]}"] = state_dict.pop(key)


def transformer_blocks(dim: int, depth: int, num_heads: int, mlp_ratio: float) -> nn.ModuleList:
    """timm ViT blocks (fused SDPA attention) configured as in the MAE reference."""
    norm = partial(nn.LayerNorm, eps=1e-6)
    return nn.ModuleList(
        Block(dim=dim, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=True, norm_layer=norm) for _ in range(depth)
    )


class MaskedAutoencoder(nn.Module):
    """MAE with a ViT encoder on visible tokens and a light decoder with mask tokens.

    Built from an :class:`MAEConfig` (kept as ``.config``: what checkpoints store); its token kind gives
    the sensors: ``{"image": in_chans}`` stacked, ``{"image": channels}`` channel tokens, or ``sensors``
    (``{name: channel list}``, names or ``{"name", "wavelength"}`` specs). ``config.img_size`` is the
    default ``(H, W)``; any size with sides multiple of ``patch_size`` works.
    """

    #: Recompute each transformer block's activations in backward instead of keeping them (set by
    #: ``train.activation_checkpointing``): memory for ViT-L/H, at about a third more compute. Not part of the
    #: config: it changes how the model computes, not what, so checkpoints and exports do not carry it.
    activation_checkpointing: bool = False

    def __init__(self, config: MAEConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.sensors = {k: v if isinstance(v, int) else channel_specs(v) for k, v in config.sensor_specs().items()}
        self.sensor_index = {name: i for i, name in enumerate(self.sensors)}
        self.multi_sensor = len(self.sensors) > 1
        self.patch_size = patch_size = config.patch_size
        img_size = (config.img_size,) * 2 if isinstance(config.img_size, int) else tuple(config.img_size)
        self.grid = grid_size(*img_size, patch_size)
        self.norm_pix_loss, self.fourier_weight = config.norm_pix_loss, config.fourier_weight
        self.mask_ratio, self.mask_strategy = config.mask_ratio, config.mask_strategy
        self.embed_dim = embed_dim = config.embed_dim
        self.decoder_embed_dim = decoder_embed_dim = config.decoder_embed_dim

        # Encoder: per-sensor patch embedders, fixed 2-D sin-cos positions, cls token, ViT blocks.
        self.patch_embed = self._per_sensor({n: patch_embedder(s, patch_size, embed_dim) for n, s in self.sensors.items()})
        self.register_buffer("pos_embed", sincos_2d(embed_dim, self.grid), persistent=False)
        self.sensor_embed = nn.Parameter(torch.zeros(len(self.sensors), embed_dim)) if self.multi_sensor else None
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.blocks = transformer_blocks(embed_dim, config.depth, config.num_heads, config.mlp_ratio)
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)

        # Decoder: mask tokens, its own position/channel/sensor embeddings, one pixel head per sensor
        # (a channel token's head predicts p*p pixels of its channel, so it does not grow with C).
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.register_buffer("decoder_pos_embed", sincos_2d(decoder_embed_dim, self.grid), persistent=False)
        self.decoder_channel_embed = self._per_sensor(
            {n: ChannelEmbedding(s, decoder_embed_dim) for n, s in self.sensors.items() if not isinstance(s, int)}
        )
        self.decoder_sensor_embed = (
            nn.Parameter(torch.zeros(len(self.sensors), decoder_embed_dim)) if self.multi_sensor else None
        )
        self.decoder_blocks = transformer_blocks(
            decoder_embed_dim, config.decoder_depth, config.decoder_num_heads, config.mlp_ratio
        )
        self.decoder_norm = nn.LayerNorm(decoder_embed_dim, eps=1e-6)
        # Pixels per token: p*p*C for stacked channels, p*p for a channel token.
        pixels = {n: patch_size**2 * (s if isinstance(s, int) else 1) for n, s in self.sensors.items()}
        self.decoder_pred = self._per_sensor({n: nn.Linear(decoder_embed_dim, k) for n, k in pixels.items()})
        self.register_load_state_dict_pre_hook(_drop_sensor_from_keys)
        self.initialize_weights()

    def _per_sensor(self, modules: dict[str, nn.Module]) -> nn.Module | None:
        """``{sensor: module}`` as a ModuleDict; a single-sensor model keeps its one module (or None) directly,
        so a standard MAE's weights carry timm's and the reference's names (``patch_embed.proj``)."""
        return nn.ModuleDict(modules) if self.multi_sensor else next(iter(modules.values()), None)

    def by_sensor(self, part: nn.Module | None) -> dict[str, nn.Module]:
        """``{sensor: module}`` of one of :data:`SENSOR_PARTS` (e.g. ``model.by_sensor(model.patch_embed)``),
        whether the model holds one module per sensor or, single-sensor, the module itself."""
        if isinstance(part, nn.ModuleDict):
            return dict(part.items())
        return {} if part is None else {next(iter(self.sensors)): part}

    def initialize_weights(self) -> None:
        """Reference init: patch kernels as xavier-uniform linears, tokens/embeddings N(0, .02)."""
        for embed in self.by_sensor(self.patch_embed).values():
            w = embed.proj.weight.data
            nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        for p in (self.cls_token, self.mask_token, self.sensor_embed, self.decoder_sensor_embed):
            if p is not None:
                nn.init.normal_(p, std=0.02)
        for m in self.modules():
            if isinstance(m, ChannelEmbedding) and m.learned is not None:
                nn.init.normal_(m.learned, std=0.02)
            elif isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    # ------------------------------------------------------------------ tokens
    def _positions(self, buffer: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """``[N, D]`` positions: the cached buffer at the default size, recomputed otherwise."""
        if grid == self.grid:
            return buffer
        return sincos_2d(buffer.shape[-1], grid).to(buffer.device)

    def tokenize(self, inputs: list[SensorInput], grid: tuple[int, int]) -> torch.Tensor:
        """Embed all sensors: ``[B, L, D]`` with position, channel and sensor embeddings added."""
        pos = self._positions(self.pos_embed, grid)
        parts = []
        for inp in inputs:
            embed = self.by_sensor(self.patch_embed)[inp.name]
            x = embed(inp.images) if inp.channels is None else embed(inp.images, inp.channels)
            x = x + pos
            if self.sensor_embed is not None:
                x = x + self.sensor_embed[self.sensor_index[inp.name]]
            parts.append(x.flatten(1, 2))
        return torch.cat(parts, dim=1)

    def decoder_embeddings(self, inputs: list[SensorInput], grid: tuple[int, int]) -> torch.Tensor:
        """``[1, L, D_dec]``: what tells each decoder token where, which channel and which sensor."""
        pos = self._positions(self.decoder_pos_embed, grid)
        parts = []
        for inp in inputs:
            e = pos.expand(inp.token_channels, -1, -1)
            if inp.channels is not None:
                e = e + self.by_sensor(self.decoder_channel_embed)[inp.name](inp.channels)[:, None, :]
            if self.decoder_sensor_embed is not None:
                e = e + self.decoder_sensor_embed[self.sensor_index[inp.name]]
            parts.append(e.flatten(0, 1))
        return torch.cat(parts, dim=0).unsqueeze(0)

    # ----------------------------------------------------------------- masking
    def sample_masking(
        self,
        inputs: list[SensorInput],
        grid: tuple[int, int],
        *,
        mask_ratio: float | None = None,
        strategy: str | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        batch: int | None = None,
    ) -> Masking:
        """Random masking from explicit ``noise`` ``[B, L]`` (reference behaviour), else a sampler.

        ``batch`` draws masks for more rows than ``inputs`` holds (a global batch that processes
        and micro-batches then slice with :meth:`Masking.rows`).
        """
        ratio = self.mask_ratio if mask_ratio is None else mask_ratio
        batch = inputs[0].images.shape[0] if batch is None else batch
        channels = sum(inp.token_channels for inp in inputs)
        if noise is not None:
            return masking_from_scores(noise, num_keep(noise.shape[1], ratio))
        strategy = strategy or self.mask_strategy
        # Sensor masking hides whole sensors: group the channels by the sensor they belong to.
        sensor_of = [self.sensor_index[inp.name] for inp in inputs for _ in range(inp.token_channels)]
        return sample_masking(
            strategy, batch, channels, grid, ratio, groups=sensor_of if strategy == "sensor" else None,
            generator=generator, device=inputs[0].images.device,
        )  # fmt: skip

    # ----------------------------------------------------------- the algorithm
    def forward_encoder(self, tokens: torch.Tensor, masking: Masking | None) -> torch.Tensor:
        """Visible tokens ``[B, L, D]`` -> latent ``[B, 1 + K, D]`` (cls first); all when no masking."""
        if masking is not None:
            index = masking.ids_keep.unsqueeze(-1).expand(-1, -1, tokens.shape[-1])
            tokens = torch.gather(tokens, 1, index)
        # The cls token carries no position, like the zero cls row of the reference pos_embed.
        x = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        return self.norm(self._run_blocks(self.blocks, x))

    def _run_blocks(self, blocks: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``[B, T, D]`` through ``blocks``, checkpointed one block at a time when asked and a backward
        will follow (under ``no_grad`` there are no activations to save)."""
        recompute = self.activation_checkpointing and torch.is_grad_enabled()
        for blk in blocks:
            x = checkpoint(blk, x, use_reentrant=False) if recompute else blk(x)
        return x

    def forward_decoder(
        self, latent: torch.Tensor, ids_restore: torch.Tensor, inputs: list[SensorInput], grid: tuple[int, int]
    ) -> dict[str, torch.Tensor]:
        """Latent ``[B, 1 + K, D]`` -> predicted pixels ``{sensor: [B, L_s, P_s]}`` in original token order."""
        x = self.decoder_embed(latent)
        b, length = ids_restore.shape
        mask_tokens = self.mask_token.expand(b, length - (x.shape[1] - 1), -1)
        x_ = torch.cat([x[:, 1:], mask_tokens], dim=1)
        x_ = torch.gather(x_, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[-1]))  # unshuffle
        x = torch.cat([x[:, :1], x_ + self.decoder_embeddings(inputs, grid)], dim=1)
        x = self._run_blocks(self.decoder_blocks, x)
        decoded = split_tokens(self.decoder_norm(x)[:, 1:], inputs, grid)
        heads = self.by_sensor(self.decoder_pred)
        return {name: heads[name](tokens) for name, tokens in decoded.items()}

    def targets(self, inp: SensorInput) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-token target pixels ``[B, L_s, P]`` and valid pixels (same shape) of one sensor."""
        to_tokens = patchify if inp.channels is None else patchify_channels
        valid = None if inp.valid is None else to_tokens(inp.valid.float(), self.patch_size) > 0.5
        return to_tokens(inp.images.float(), self.patch_size), valid

    def forward_loss(
        self, inputs: list[SensorInput], preds: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor],
        counts: Mapping[str, torch.Tensor] | None = None, parts: int = 1,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:  # fmt: skip
        """The total loss and ``{sensor: loss}``: per sensor, ``preds`` ``[B, L_s, P_s]`` against its
        patchified images on the masked (``masks`` ``[B, L_s]``, 1 = removed), valid tokens (a mean, or the
        sum over ``counts[sensor] / parts``, see :meth:`forward`); summed over sensors so each sensor weighs the
        same whatever its token count, times ``config.sensor_loss_weights`` where given (the per-sensor losses
        are returned unweighted)."""
        losses = {}
        for inp in inputs:
            target, valid = self.targets(inp)
            losses[inp.name] = reconstruction_loss(
                preds[inp.name].float(), target, masks[inp.name], patch_size=self.patch_size, valid=valid,
                norm_pix=self.norm_pix_loss, fourier_weight=self.fourier_weight,
                count=None if counts is None else counts[inp.name] / parts,
            )  # fmt: skip
        total = sum(self.config.sensor_loss_weight(name) * loss for name, loss in losses.items())
        return total, losses

    def loss_counts(
        self,
        images: torch.Tensor | Mapping[str, torch.Tensor],
        channels: Sequence[ChannelLike] | Mapping[str, Sequence[ChannelLike]] | None = None,
        *,
        valid: torch.Tensor | Mapping[str, torch.Tensor] | None = None,
        masking: Masking,
    ) -> dict[str, torch.Tensor]:
        """``{sensor: int64 scalar}``: how many tokens :meth:`forward` with these arguments averages its loss
        over (masked, with a valid pixel); summed over the parts of a batch, the ``counts`` of each part."""
        return self._count_scored(*self.split_inputs(images, channels, valid), masking)

    def _count_scored(self, inputs: list[SensorInput], grid: tuple[int, int], masking: Masking
                      ) -> dict[str, torch.Tensor]:  # fmt: skip
        masks = split_tokens(masking.mask, inputs, grid)
        return {inp.name: token_weight(masks[inp.name], self.targets(inp)[1]).sum(dtype=torch.int64) for inp in inputs}

    def forward(
        self,
        images: torch.Tensor | Mapping[str, torch.Tensor],
        channels: Sequence[ChannelLike] | Mapping[str, Sequence[ChannelLike]] | None = None,
        *,
        valid: torch.Tensor | Mapping[str, torch.Tensor] | None = None,
        mask_ratio: float | None = None,
        mask_strategy: str | None = None,
        noise: torch.Tensor | None = None,
        masking: Masking | None = None,
        generator: torch.Generator | None = None,
        counts: Mapping[str, torch.Tensor] | None = None,
        parts: int = 1,
    ) -> MAEOutput:
        """Mask, encode, decode, and score the reconstruction of the masked tokens.

        Args:
            images: ``[B, C, H, W]``, or ``{sensor: [B, C_s, H, W]}`` (any subset of sensors).
            channels: names of the C channels (channel-agnostic models; default: the vocabulary).
            valid: ``[B, H, W]`` or ``[B, C, H, W]`` bool (per sensor for dicts); False pixels
                are left out of the loss.
            noise: ``[B, L]`` scores for reproducible random masking (lowest kept), or pass a
                ready ``masking``.
            counts, parts: this batch is one of ``parts`` equal parts of a larger batch whose :meth:`loss_counts`
                are ``counts``: each sensor's summed loss is divided by ``counts[sensor] / parts`` instead of its
                own count, so that the mean of the parts' losses (and gradients) is exactly the larger batch's
                (rows hold uneven numbers of scored tokens: a part's own mean would weigh them unequally).
        """
        inputs, grid = self.split_inputs(images, channels, valid)
        if masking is None:
            masking = self.sample_masking(
                inputs, grid, mask_ratio=mask_ratio, strategy=mask_strategy, noise=noise, generator=generator
            )
        latent = self.forward_encoder(self.tokenize(inputs, grid), masking)
        preds = self.forward_decoder(latent, masking.ids_restore, inputs, grid)
        masks = split_tokens(masking.mask, inputs, grid)
        loss, losses = self.forward_loss(inputs, preds, masks, counts, parts)
        return MAEOutput(loss, preds, masks, losses, masking)

    # --------------------------------------------------------------- embedding
    def embed(
        self,
        images: torch.Tensor | Mapping[str, torch.Tensor],
        channels: Sequence[ChannelLike] | Mapping[str, Sequence[ChannelLike]] | None = None,
        pool: str = "mean",
    ) -> torch.Tensor:
        """Encoder on all tokens (no masking), pooled to ``[B, D]`` by ``"mean"`` of tokens or ``"cls"``, or to
        ``[B, C * D]`` by ``"channels"``: each channel's token mean, side by side in the given channel order
        (sensors in the model's order). Per-channel means keep what a stain or band alone carries, which the
        mean over channels blends; their mean over channels is the ``"mean"`` pool."""
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        inputs, (h, w) = self.split_inputs(images, channels, None)
        x = self.forward_encoder(self.tokenize(inputs, (h, w)), None)
        if pool == "cls":
            return x[:, 0]
        if pool == "mean":
            return x[:, 1:].mean(dim=1)
        b, _, d = x.shape  # tokens are channel-major per sensor: [B, 1 + sum(C_s) * h * w, D]
        return x[:, 1:].reshape(b, -1, h * w, d).mean(dim=2).flatten(1)

    def embed_patches(
        self,
        images: torch.Tensor | Mapping[str, torch.Tensor],
        channels: Sequence[ChannelLike] | Mapping[str, Sequence[ChannelLike]] | None = None,
    ) -> torch.Tensor:
        """Per-location embeddings ``[B, h, w, D]``, averaged over channels and sensors."""
        inputs, (h, w) = self.split_inputs(images, channels, None)
        x = self.forward_encoder(self.tokenize(inputs, (h, w)), None)[:, 1:]
        b, _, d = x.shape
        return x.reshape(b, -1, h * w, d).mean(dim=1).reshape(b, h, w, d)

    # ------------------------------------------------------------------ sharing
    def save_pretrained(self, directory: str | Path, **extra: Any) -> Path:
        """Write ``model.safetensors`` + ``config.json`` (with ``extra`` entries) to ``directory``."""
        from .pretrained import save_pretrained  # pretrained builds models through the factory, which imports us

        return save_pretrained(self, directory, **extra)

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path) -> MaskedAutoencoder:
        """A model saved by :meth:`save_pretrained`, from its folder or (not a folder) a Hugging Face Hub id."""
        from .pretrained import read_pretrained

        return read_pretrained(name_or_path)[0]

    # ------------------------------------------------------------------ inputs
    def split_inputs(self, images, channels=None, valid=None) -> tuple[list[SensorInput], tuple[int, int]]:
        """Check a batch against the model and split it per sensor (in the model's sensor order)."""
        inputs = sensor_inputs(self.sensors, images, channels, valid)
        sizes = {tuple(inp.images.shape[-2:]) for inp in inputs}
        if len(sizes) > 1:
            raise ValueError(f"all sensors must share one pixel grid, got sizes {sorted(sizes)}")
        return inputs, grid_size(*sizes.pop(), self.patch_size)
