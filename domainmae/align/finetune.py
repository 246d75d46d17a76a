"""``align --unfreeze``: the MAE encoder fine-tuned together with the projection head and the text tower.

The frozen path trains on cached embeddings; fine-tuning needs the images themselves, so the rows of the
embeddings table ``embed`` wrote are read again, tile for tile in the same order, and held in memory (the
data ``align`` fine-tunes on are the run's own, small enough for that). Each step embeds a batch of tiles
with the encoder in train mode, unmasked and pooled as ``embed`` pools them, and the encoder learns at a
fraction of the head's learning rate (``lr_scale``), as CLIP fine-tuning recipes keep a pretrained tower
close to where it started. The fine-tuned encoder is saved in the aligned folder as an exported model
(``encoder/``), which ``embed --aligned`` then embeds with.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.loader import collate_samples
from ..export.embed import export_items, export_sources, recipe_channels, select_channel_names
from ..export.stream import Export, sample_batches, tiles_without_data
from ..recipes import resolve_recipe
from ..runtime import load_trained, resolve_device, save_exported

ENCODER = "encoder"  # the fine-tuned encoder's exported-model folder inside an aligned folder


class TunedEncoder:
    """The tiles of an embeddings table as images, and the MAE encoder that embeds them, to fine-tune.

    Rows are the table's rows (``embed`` at tile level, one process): ``samples[i]`` is the tile of row ``i``.
    """

    def __init__(self, export: Export, samples: list[dict[str, Any]], pool: str, step: int | None,
                 lr_scale: float, home: Path) -> None:  # fmt: skip
        self.export, self.samples, self.pool, self.step, self.lr_scale = export, samples, pool, step, lr_scale
        self.home = home  # where the aligned folder will hold it, once renamed into place

    @property
    def device(self) -> torch.device:
        return self.export.device

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        """The MAE's parameters; the decoder's get no gradient from :meth:`__call__`, so AdamW leaves them be."""
        return self.export.model.parameters()

    def train(self) -> None:
        self.export.model.train()

    def __call__(self, rows: Sequence[int]) -> torch.Tensor:
        """Pooled embeddings ``[B, D]`` of the tiles of ``rows``, with gradients to the encoder."""
        samples = [self.samples[i] for i in rows]
        images, channels = self.export.inputs(collate_samples(samples), samples)
        return self.export.model.embed(images, channels, pool=self.pool)

    def embed(self) -> np.ndarray:
        """Every row's embedding ``[N, D]`` float32 by the encoder in eval mode, computed as ``embed`` does."""
        self.export.model.eval()
        size = self.export.batch_size
        return np.concatenate([self.export.forward(self.samples[i:i + size], self.pool)
                               for i in range(0, len(self.samples), size)])  # fmt: skip

    def save(self, folder: Path) -> Path:
        """Write the encoder as an exported model (``load_trained`` reads it) to ``folder``; return it."""
        return save_exported(self.export.model, self.export.recipe, self.step, folder)


def tuned_encoder(checkpoint: str | Path, n_rows: int, home: Path, *, data: str | Path | None, pool: str, device: str,
                  batch_size: int, lr_scale: float) -> TunedEncoder:  # fmt: skip
    """The ``checkpoint``'s model over the tiles of its data (or ``data``), in the order ``embed`` writes them;
    ``n_rows``: how many rows that table has, checked against the tiles read; ``home``: where it will be saved."""
    if lr_scale <= 0:
        raise ValueError(f"the encoder's learning-rate scale must be above 0, got {lr_scale}")
    dev = resolve_device(device)
    trained = load_trained(checkpoint, dev)
    recipe = resolve_recipe(trained.recipe, [f"data.path={data}"] if data else [])
    if recipe.data.allow_channel_subsets:  # a training batch mixes fields, so every tile needs one channel set
        raise ValueError(f"--unfreeze needs one channel set for every tile, and recipe {recipe.name!r} allows fields "
                         "with channel subsets (data.allow_channel_subsets)")  # fmt: skip
    chosen = select_channel_names(trained.model, recipe_channels(recipe, trained.model), None)
    export = Export(trained.model, recipe, chosen, dev, batch_size, progress=False)
    items = export_items(recipe, export_sources(recipe), None)
    p = trained.model.patch_size  # windows without data have no row in the table (embed), so none here
    samples = [sample for batch in sample_batches(export, items)
               for sample, empty in zip(batch, tiles_without_data(batch, p)) if not empty]  # fmt: skip
    if len(samples) != n_rows:
        raise ValueError(f"{checkpoint}'s data gave {len(samples)} tiles, but its embeddings table has {n_rows} rows")
    return TunedEncoder(export, samples, pool, trained.step, lr_scale, home)
