"""Token embedders: a stacked patch embed (standard MAE) and the channel-agnostic one.

Both return tokens as ``[B, C', N, D]`` (``C' = 1`` stacked, ``C' = C`` channel-agnostic) so
the MAE adds position and sensor embeddings the same way for either.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

import torch
from torch import nn

from .posembed import sincos_1d


@dataclass(frozen=True)
class ChannelSpec:
    """One input channel: its name and, for spectral bands, the central wavelength in nm."""

    name: str
    wavelength: float | None = None


ChannelLike = Union[str, ChannelSpec, Mapping, tuple]


def channel_spec(item: ChannelLike) -> ChannelSpec:
    """Read ``"DNA"``, ``{"name": "B04", "wavelength": 665}``, ``("B04", 665)`` or a ChannelSpec."""
    if isinstance(item, ChannelSpec):
        return item
    if isinstance(item, str):
        return ChannelSpec(item)
    if isinstance(item, Mapping):
        unknown = set(item) - {"name", "wavelength"}
        if "name" not in item or unknown:
            raise ValueError(f"channel spec {dict(item)} needs 'name' and optionally 'wavelength' (nm)")
        return ChannelSpec(str(item["name"]), _wavelength(item["name"], item.get("wavelength")))
    if isinstance(item, tuple) and len(item) == 2:
        return ChannelSpec(str(item[0]), _wavelength(item[0], item[1]))
    raise TypeError(f"cannot read a channel spec from {item!r}")


def _wavelength(name: Any, value: Any) -> float | None:
    """A band's central wavelength in nm (positive and finite), or None."""
    if value is None:
        return None
    wl = float(value)
    if not (math.isfinite(wl) and wl > 0):
        raise ValueError(f"channel {name!r}: wavelength {value!r} is not a positive number of nm")
    return wl


def channel_specs(items: Sequence[ChannelLike]) -> tuple[ChannelSpec, ...]:
    """Parse a channel list; names must be unique."""
    specs = tuple(channel_spec(i) for i in items)
    names = [s.name for s in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"duplicate channel names: {dupes}")
    if not specs:
        raise ValueError("a channel list needs at least one channel")
    return specs


class ChannelEmbedding(nn.Module):
    """Channel identity vectors looked up by NAME.

    Channels of the vocabulary without a wavelength get a learned vector; channels with a central
    wavelength get a fixed sin-cos code of it, so a band the model never saw (passed as a
    :class:`ChannelSpec` with a wavelength) still embeds next to its spectral neighbours.
    """

    def __init__(self, vocabulary: Sequence[ChannelLike], dim: int) -> None:
        super().__init__()
        self.vocabulary = channel_specs(vocabulary)
        self.dim = dim
        self._by_name = {s.name: s for s in self.vocabulary}
        learned = [s.name for s in self.vocabulary if s.wavelength is None]
        coded = [s for s in self.vocabulary if s.wavelength is not None]
        self._learned_index = {name: i for i, name in enumerate(learned)}
        self._coded_index = {s.name: i for i, s in enumerate(coded)}
        # No zero-size parameter when every channel is wavelength-coded (DDP and optimisers dislike them).
        self.learned = nn.Parameter(torch.zeros(len(learned), dim)) if learned else None
        codes = sincos_1d(dim, torch.tensor([s.wavelength for s in coded])) if coded else torch.zeros(0, dim)
        self.register_buffer("wavelength_codes", codes, persistent=False)

    def resolve(self, channels: Sequence[ChannelLike]) -> tuple[ChannelSpec, ...]:
        """Vocabulary specs for ``channels``; unknown bands are accepted only with a wavelength."""
        out = []
        for item in channels:
            spec = channel_spec(item)
            if spec.name in self._by_name:
                out.append(self._by_name[spec.name])
            elif spec.wavelength is not None:
                out.append(spec)
            else:
                known = ", ".join(s.name for s in self.vocabulary)
                raise KeyError(f"unknown channel {spec.name!r}; this model knows: {known} (or pass a wavelength)")
        return channel_specs(out)

    def forward(self, channels: Sequence[ChannelLike]) -> torch.Tensor:
        """``[C, D]`` identity vectors of ``channels`` in the given order."""
        rows = []
        for spec in self.resolve(channels):
            if spec.name in self._learned_index:
                rows.append(self.learned[self._learned_index[spec.name]])
            elif spec.name in self._coded_index:
                rows.append(self.wavelength_codes[self._coded_index[spec.name]])
            else:  # a band outside the vocabulary, embedded by its wavelength
                rows.append(sincos_1d(self.dim, torch.tensor([spec.wavelength]))[0].to(self.wavelength_codes.device))
        return torch.stack(rows)


class StackedPatchEmbed(nn.Module):
    """Standard MAE embedder: one ``Conv2d(C, D, p, p)`` over all channels -> ``[B, 1, N, D]``."""

    def __init__(self, in_chans: int, patch_size: int, embed_dim: int) -> None:
        super().__init__()
        self.in_chans = in_chans
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W] -> [B, 1, h*w, D]``."""
        if imgs.shape[1] != self.in_chans:
            raise ValueError(f"expected {self.in_chans} channels, found {imgs.shape[1]}")
        return self.proj(imgs).flatten(2).transpose(1, 2).unsqueeze(1)


class ChannelPatchEmbed(nn.Module):
    """Channel-agnostic embedder: ONE ``Conv2d(1, D, p, p)`` shared by every channel, plus the
    channel's identity embedding, so C channels give ``C x N`` tokens and the parameter count
    does not depend on C."""

    def __init__(self, channels: Sequence[ChannelLike], patch_size: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(1, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.channel_embed = ChannelEmbedding(channels, embed_dim)

    def forward(self, imgs: torch.Tensor, channels: Sequence[ChannelLike]) -> torch.Tensor:
        """``[B, C, H, W]`` with C channel names -> ``[B, C, h*w, D]``."""
        b, c, height, width = imgs.shape
        if len(channels) != c:
            raise ValueError(f"images have {c} channels but {len(channels)} channel names were given: {list(channels)}")
        tokens = self.proj(imgs.reshape(b * c, 1, height, width)).flatten(2).transpose(1, 2)
        tokens = tokens.reshape(b, c, -1, tokens.shape[-1])
        return tokens + self.channel_embed(channels)[None, :, None, :].to(tokens.dtype)


def patch_embedder(spec: int | Sequence[ChannelLike], patch_size: int, embed_dim: int) -> nn.Module:
    """A sensor's embedder: stacked for ``in_chans`` (an int), channel-agnostic for a channel list."""
    if isinstance(spec, int):
        return StackedPatchEmbed(spec, patch_size, embed_dim)
    return ChannelPatchEmbed(spec, patch_size, embed_dim)
