"""Start from a natural-image MAE or timm ViT: map its weights into our models.

The RGB patch kernel becomes the shared 1-channel kernel by summing over RGB (timm's
``adapt_input_conv``), so a channel token of a grey image responds as the RGB model did to the
same grey image. Blocks, norms, cls/mask tokens and (for MAE checkpoints) the decoder load as
they are; the decoder's RGB pixel head is averaged over colour for per-channel heads. Position
embeddings are not loaded: ours are fixed 2-D sin-cos at any grid size.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from timm.layers import resample_patch_embed
from timm.models._manipulate import adapt_input_conv

from .embed import StackedPatchEmbed
from .mae import MaskedAutoencoder

_FIXED = {"pos_embed": "fixed 2-D sin-cos in domainmae", "decoder_pos_embed": "fixed 2-D sin-cos in domainmae"}


@dataclass
class AdaptReport:
    """What :func:`load_pretrained` did, key by key."""

    loaded: list[str] = field(default_factory=list)  # target keys copied as they were
    converted: dict[str, str] = field(default_factory=dict)  # target key -> how it was converted
    skipped: dict[str, str] = field(default_factory=dict)  # source key -> why it was not used
    missing: list[str] = field(default_factory=list)  # target keys left at their initialisation

    def __str__(self) -> str:
        lines = [f"loaded {len(self.loaded)} tensors, converted {len(self.converted)}, "
                 f"skipped {len(self.skipped)} source tensors, left {len(self.missing)} at init"]  # fmt: skip
        lines += [f"  converted {k}: {v}" for k, v in self.converted.items()]
        lines += [f"  skipped {k}: {v}" for k, v in self.skipped.items()]
        lines += [f"  at init {k}" for k in self.missing]
        return "\n".join(lines)


def read_state_dict(source: str | Path) -> dict[str, torch.Tensor]:
    """Weights from a local ``.safetensors``/``.pth``/``.pt``/``.bin`` file, or ``timm:<name>``
    (downloads from the timm hub: needs network access)."""
    text = str(source)
    if text.startswith("timm:"):
        import timm

        return timm.create_model(text[5:], pretrained=True).state_dict()
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any decoding failure: name the file
        raise ValueError(f"cannot read weights from {path}: {err}") from err
    # MAE / Lightning checkpoints nest the weights.
    for key in ("model", "state_dict"):
        if isinstance(state, Mapping) and key in state and isinstance(state[key], Mapping):
            state = state[key]
    return dict(state)


def _convert(model: MaskedAutoencoder, key: str, value: torch.Tensor) -> dict[str, tuple[torch.Tensor, str | None]]:
    """Target tensors (with a note when converted) for one source tensor; empty if unused."""
    embeds, heads = model.by_sensor(model.patch_embed), model.by_sensor(model.decoder_pred)
    # Where each sensor's module sits: "patch_embed" in a single-sensor model, "patch_embed.s2" in a multi-sensor one.
    where = {module: name for name, module in model.named_modules()}
    out: dict[str, tuple[torch.Tensor, str | None]] = {}
    if key == "patch_embed.proj.weight":
        for embed in embeds.values():
            chans = embed.in_chans if isinstance(embed, StackedPatchEmbed) else 1
            w, notes = value, []
            if w.shape[1] != chans:
                w = adapt_input_conv(chans, w)
                notes.append(f"{value.shape[1]}->{chans} channels ({'sum' if chans == 1 else 'repeat+scale'})")
            if w.shape[-1] != model.patch_size:
                w = resample_patch_embed(w, [model.patch_size] * 2)
                notes.append(f"patch {value.shape[-1]}->{model.patch_size} (resampled)")
            out[f"{where[embed]}.proj.weight"] = (w, ", ".join(notes) or None)
    elif key == "patch_embed.proj.bias":
        out = {f"{where[embed]}.proj.bias": (value, None) for embed in embeds.values()}
    elif key.startswith("decoder_pred."):
        for head in heads.values():
            target = f"{where[head]}.{key.split('.')[-1]}"
            if value.shape[0] == head.out_features:
                out[target] = (value, None)
            elif head.out_features == model.patch_size**2 and value.shape[0] % model.patch_size**2 == 0:
                c = value.shape[0] // model.patch_size**2
                # Pixels are ordered (p, q, c): average the colour planes into one channel's head.
                w = value.reshape(model.patch_size**2, c, *value.shape[1:]).mean(dim=1)
                out[target] = (w, f"pixel head averaged over {c} colours")
    else:
        out[key] = (value, None)
    return out


def load_pretrained(model: MaskedAutoencoder, source: str | Path | Mapping[str, torch.Tensor], strict: bool = False) -> AdaptReport:
    """Load a natural-image MAE / timm ViT state dict into ``model`` (in place).

    Args:
        source: a state dict, a local weights file, or ``timm:<model name>`` (online only).
        strict: raise if any source tensor could not be used (other than position embeddings).
    """
    state = dict(source) if isinstance(source, Mapping) else read_state_dict(source)
    own = model.state_dict()
    report = AdaptReport()
    new: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key in _FIXED:
            report.skipped[key] = _FIXED[key]
            continue
        targets = _convert(model, key, value)
        if not targets:
            report.skipped[key] = "no counterpart in this model"
        for target, (tensor, note) in targets.items():
            if target not in own:
                report.skipped[key] = "no counterpart in this model"
            elif own[target].shape != tensor.shape:
                report.skipped[key] = f"shape {tuple(tensor.shape)} != model's {tuple(own[target].shape)}"
            else:
                new[target] = tensor.to(own[target].dtype)
                if note:
                    report.converted[target] = note
                else:
                    report.loaded.append(target)
    if strict and any(k not in _FIXED for k in report.skipped):
        raise ValueError(f"strict loading failed:\n{report}")
    model.load_state_dict(new, strict=False)
    report.missing = [k for k in own if k not in new]
    return report
