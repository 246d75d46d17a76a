"""The image projection head over MAE embeddings, the text tower beside it, and CLIP's symmetric InfoNCE loss."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .text import TextTower

#: CLIP's initial temperature 0.07, learned as a log scale and clamped at 100 (Radford et al. 2021).
INIT_LOGIT_SCALE, MAX_LOGIT_SCALE = math.log(1 / 0.07), math.log(100)


def clip_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor,
              captions: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """Symmetric InfoNCE of L2-normalised ``image`` ``[N, E]`` and ``text`` ``[N, E]``: row i of each is a pair.

    ``captions`` ``[N]`` (int ids, equal for equal texts): rows that share a caption are not negatives of each
    other, the targets spread over all of them; otherwise two images described alike (class-like captions,
    the usual case for metadata templates) would be pushed apart. None: every row its own caption (CLIP).
    """
    logits = logit_scale.clamp(max=MAX_LOGIT_SCALE).exp() * image @ text.T  # [N, N]
    if captions is None:
        captions = torch.arange(len(image), device=image.device)
    same = (captions[:, None] == captions[None, :]).float()  # [N, N]
    targets = same / same.sum(dim=1, keepdim=True)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


class AlignModel(nn.Module):
    """A projection of image embeddings ``[N, image_dim]`` and a text tower into one ``[N, embed_dim]`` space."""

    def __init__(self, image_dim: int, text: TextTower) -> None:
        super().__init__()
        self.image_dim = image_dim
        self.text = text
        # MAE features share a large common direction and differ in scale per dimension (std ~0.06 against a
        # mean far from 0): standardised per feature with the training rows' statistics, the head sees how
        # images differ rather than what they share; a LayerNorm per row left every image on one point.
        self.register_buffer("image_mean", torch.zeros(image_dim))
        self.register_buffer("image_std", torch.ones(image_dim))
        self.image = nn.Linear(image_dim, text.config.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(INIT_LOGIT_SCALE))

    def standardize(self, embeddings: torch.Tensor) -> None:
        """Take the per-feature mean and std of the training embeddings ``[N, image_dim]``."""
        self.image_mean.copy_(embeddings.mean(dim=0))
        self.image_std.copy_(embeddings.std(dim=0).clamp_min(1e-6))  # a constant feature stays 0, not NaN

    def encode_images(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Unit vectors ``[N, embed_dim]`` of image embeddings ``[N, image_dim]``."""
        return F.normalize(self.image((embeddings - self.image_mean) / self.image_std), dim=-1)

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """Unit vectors ``[N, embed_dim]`` of ``texts``."""
        return F.normalize(self.text(texts), dim=-1)

    def forward(self, embeddings: torch.Tensor, texts: list[str]) -> torch.Tensor:
        """The loss of a batch of pairs (``embeddings[i]`` described by ``texts[i]``)."""
        unique = list(dict.fromkeys(texts))  # each caption through the tower once
        index = {text: i for i, text in enumerate(unique)}
        captions = torch.tensor([index[t] for t in texts], device=embeddings.device)
        text = self.encode_texts(unique)[captions]
        return clip_loss(self.encode_images(embeddings), text, self.logit_scale, captions)
