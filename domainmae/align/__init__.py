"""CLIP-style alignment of MAE image embeddings with text (issue 11; CLIP, Radford et al. 2021).

``text`` holds the text tower (open_clip's text transformer and BPE tokenizer), ``model`` the image
projection head and the symmetric InfoNCE loss, ``retrieval`` recall@k and the bag-of-words baseline,
``train`` the ``align``/``search`` API over embeddings files, ``finetune`` the encoder fine-tuned
with them (``--unfreeze``). open_clip is the optional extra ``align``.
"""
from .model import AlignModel, clip_loss
from .retrieval import recall_at_k
from .text import TextTower, TextTowerConfig
from .train import (
    align,
    align_embeddings,
    aligned_encoder,
    check_projection,
    fill_template,
    load_aligned,
    project_embeddings,
    search,
)

__all__ = ["AlignModel", "TextTower", "TextTowerConfig", "align", "align_embeddings", "aligned_encoder",
           "check_projection", "clip_loss", "fill_template", "load_aligned", "project_embeddings", "recall_at_k",
           "search"]
