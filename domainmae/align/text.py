"""The text tower: open_clip's text transformer, built from a config, with its bundled BPE tokenizer.

Built from config (trained with the projection head) it needs no download: the tokenizer's vocabulary
(``bpe_simple_vocab_16e6.txt.gz``) ships inside open_clip. ``pretrained`` loads the text half of an
open_clip model (a name from its ``model_configs``, e.g. ``ViT-B-32``, with a local weights file or a Hub
tag, which needs network access) into the same module.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..deps import require

WEIGHTS, CONFIG = "text.safetensors", "text.json"
#: The module prefixes of a whole open_clip ``CLIP`` that make up its text tower.
TEXT_KEYS = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection")


def import_open_clip() -> ModuleType:
    """open_clip, or a :class:`~domainmae.deps.MissingDependencyError` that names the extra to install."""
    return require("open_clip", "text alignment", "pip install 'domainmae[align]': open_clip_torch")


@dataclass(frozen=True)
class TextTowerConfig:
    """A text transformer's shape; ``embed_dim`` is the joint image-text space it projects into."""

    embed_dim: int = 512
    width: int = 512
    heads: int = 8
    layers: int = 12
    context_length: int = 77
    vocab_size: int = 49408  # open_clip's BPE vocabulary

    def __post_init__(self) -> None:
        # Checked here, by name: open_clip's own checks fail deep inside the transformer with bare assertions.
        for name, value in vars(self).items():
            if value < 1:
                raise ValueError(f"text tower {name} must be at least 1, got {value}")
        if self.width % self.heads:
            raise ValueError(f"text tower width {self.width} is not a multiple of its {self.heads} heads")


class TextTower(nn.Module):
    """Strings -> text embeddings ``[N, embed_dim]`` (not normalised), and a tokenizer of the same context."""

    def __init__(self, config: TextTowerConfig) -> None:
        super().__init__()
        open_clip = import_open_clip()
        from open_clip.model import CLIPTextCfg, _build_text_tower

        self.config = config
        cfg = CLIPTextCfg(context_length=config.context_length, vocab_size=config.vocab_size, width=config.width,
                          heads=config.heads, layers=config.layers)  # fmt: skip
        self.transformer = _build_text_tower(config.embed_dim, cfg)
        self.tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=config.context_length)

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Token ids ``[N, context_length]`` (longer texts are cut, keeping the end-of-text token)."""
        return self.tokenizer(list(texts))

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        """Embeddings ``[N, embed_dim]`` of ``texts``."""
        device = next(self.parameters()).device
        return self.transformer(self.tokenize(texts).to(device))

    def save(self, folder: str | Path) -> Path:
        """Write ``text.safetensors`` and ``text.json`` (the config) into ``folder``; return it."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous() for k, v in self.transformer.state_dict().items()}
        save_file(state, str(folder / WEIGHTS))
        (folder / CONFIG).write_text(json.dumps(asdict(self.config), indent=2) + "\n")
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> TextTower:
        """The tower :meth:`save` wrote into ``folder``."""
        folder = Path(folder)
        for name in (CONFIG, WEIGHTS):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{folder / name} is missing; is {folder} a folder written by TextTower.save?")
        tower = cls(TextTowerConfig(**json.loads((folder / CONFIG).read_text())))
        tower.transformer.load_state_dict(load_file(str(folder / WEIGHTS)))
        return tower

    @classmethod
    def pretrained(cls, name: str, weights: str) -> TextTower:
        """The text half of open_clip model ``name`` (e.g. ``ViT-B-32``) with ``weights``: a local file or a
        pretrained tag open_clip knows (``laion2b_s34b_b79k``; downloads from the Hub)."""
        open_clip = import_open_clip()
        config = open_clip.get_model_config(name)
        if config is None:
            raise ValueError(f"open_clip has no model config {name!r}; it has {open_clip.list_models()}")
        text = config["text_cfg"]
        if "hf_model_name" in text:
            raise ValueError(f"open_clip model {name!r} has a Hugging Face text tower; only its own transformer fits")
        tower = cls(TextTowerConfig(embed_dim=config["embed_dim"], width=text["width"], heads=text["heads"],
                                    layers=text["layers"], context_length=text.get("context_length", 77),
                                    vocab_size=text.get("vocab_size", 49408)))  # fmt: skip
        clip = open_clip.create_model(name, pretrained=weights)
        state: dict[str, Any] = {k: v for k, v in clip.state_dict().items() if k.startswith(TEXT_KEYS)}
        tower.transformer.load_state_dict(state)
        return tower
