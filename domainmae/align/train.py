"""``align``: train a projection head and a text tower on a frozen MAE's embeddings; ``search`` ranks by text.

The encoder stays frozen, so every row is embedded once (``domainmae.embed``, or any embeddings file it
wrote) and training runs on the cached vectors: fast, and the MAE is reused as it is. ``unfreeze`` fine-tunes
the encoder with them instead (:mod:`~domainmae.align.finetune`), on the images. Captions come from a
template filled from each row's metadata (``"cells treated with {Metadata_pert_iname}"``; a list cell, such as
BigEarthNet's CORINE ``labels``, joins with commas). Held-out rows come from the same splits as ``evaluate``
(:mod:`~domainmae.export.splits`: random, by a group column, ``COLUMN=VALUE``), and are scored by recall@k
both ways beside a bag-of-words baseline and chance (:mod:`~domainmae.align.retrieval`).

An aligned folder holds ``align.json`` (the encoder's checkpoint and hash, template, settings, held-out
scores, the embeddings file's path relative to the folder), ``head.safetensors`` (image projection and
temperature), the text tower (``text.*``) and, fine-tuned, the encoder (``encoder/``). It is built under a
temporary name and renamed into place whole, so a failed ``--overwrite`` run leaves the earlier folder as it
was, never a mix of old and new files.
"""
from __future__ import annotations

import json
import os
import shutil
import string
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from ..atomic import atomic_dir, atomic_write_text, check_output_file
from ..export.embed import embed, file_sha256
from ..export.splits import split_rows
from ..export.writers.tables import check_table_name, feature_names, read_embeddings, with_embeddings, write_embeddings
from ..models.pretrained import WEIGHTS
from ..runtime import weights_file
from .finetune import ENCODER, TunedEncoder, tuned_encoder
from .model import AlignModel
from .retrieval import bag_of_words_similarity, chance_recall, recall_at_k
from .text import TextTower, TextTowerConfig, import_open_clip

INFO, HEAD, EMBEDDINGS = "align.json", "head.safetensors", "embeddings.parquet"
#: The text tower trained from scratch by default: small, as captions from metadata templates are few and short.
DEFAULT_TEXT = TextTowerConfig(embed_dim=128, width=256, heads=4, layers=3, context_length=32)


def fill_template(df: pd.DataFrame, template: str, source: str = "the table") -> list[str]:
    """One caption per row of ``df``: ``template``'s ``{column}`` fields filled from that row."""
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as err:  # an unbalanced brace: str.format's own words say what, not where
        raise ValueError(f"text template {template!r} is malformed: {err}") from None
    if any(not name or name.isdigit() for name in fields):
        raise ValueError(f"text template {template!r} has a positional field ({{}} or {{0}}); name a column, "
                         f"e.g. {{Metadata_Well}}")  # fmt: skip
    if not fields:
        raise ValueError(f"text template {template!r} names no column; write e.g. 'cells treated with {{Metadata_pert}}'")
    missing = [name for name in dict.fromkeys(fields) if name not in df.columns]
    if missing:
        meta = [c for c in df.columns if not c.startswith("emb_")]
        raise KeyError(f"text template column(s) {missing} not in {source}; it has {meta}")
    for name in fields:
        empty = df[name].isna()  # a list cell (CORINE labels) is not NA
        if empty.any():
            raise ValueError(f"column {name!r} of {source} is empty in {int(empty.sum())} row(s), the first at row "
                             f"{int(np.flatnonzero(empty)[0])}; a caption needs a value")  # fmt: skip

    def value(cell: Any) -> Any:  # a list cell joined; a scalar as itself, so a format spec ({Site:03d}) applies
        return ", ".join(map(str, cell)) if isinstance(cell, (list, tuple, np.ndarray)) else cell

    # Column by column: a row of an all-numeric table is one float Series (site 1 became "site 1.0").
    columns = {name: df[name].tolist() for name in dict.fromkeys(fields)}
    try:
        return [template.format(**{name: value(cells[i]) for name, cells in columns.items()}) for i in range(len(df))]
    except (ValueError, TypeError) as err:
        raise ValueError(f"text template {template!r} does not fit the values of {source}: {err}") from None


def fit(model: AlignModel, x: torch.Tensor, texts: list[str], steps: int, batch_size: int, lr: float, seed: int,
        tuned: TunedEncoder | None = None, rows: Sequence[int] = ()) -> list[float]:  # fmt: skip
    """Standardise ``model``'s image input by ``x`` ``[N, D]`` and train it on the pairs (``x``, ``texts``) for
    ``steps`` AdamW steps; the loss of each step.

    ``tuned``: instead of ``x``, embed the tiles of the table rows ``rows`` (those of ``x``) with this encoder,
    fine-tuned alongside at ``lr * tuned.lr_scale``; the model trains on the encoder's device, then returns
    to the CPU.
    """
    model.standardize(x)
    generator = torch.Generator().manual_seed(seed)
    groups = [{"params": list(model.parameters())}]
    if tuned is not None:
        groups.append({"params": list(tuned.parameters()), "lr": lr * tuned.lr_scale})
        model.to(tuned.device)
        tuned.train()
    optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=0.05)  # CLIP/MAE decay
    losses = []
    model.train()
    for _ in range(steps):
        batch = torch.randperm(len(x), generator=generator)[:batch_size]
        images = x[batch] if tuned is None else tuned([rows[i] for i in batch.tolist()])
        loss = model(images, [texts[i] for i in batch.tolist()])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    model.cpu()
    return losses


@torch.no_grad()
def similarity(model: AlignModel, x: np.ndarray, captions: list[str]) -> np.ndarray:
    """Cosine similarity ``[N, T]`` of image embeddings ``x`` ``[N, D]`` and ``captions`` in the joint space."""
    model.eval()
    return (model.encode_images(torch.from_numpy(x)) @ model.encode_texts(captions).T).numpy()


def held_out_scores(model: AlignModel, x: np.ndarray, texts: np.ndarray, train: np.ndarray,
                    test: np.ndarray) -> dict[str, Any]:  # fmt: skip
    """Recall@k of the model, the bag-of-words baseline and chance on the ``test`` rows' distinct captions."""
    captions, ids = np.unique(texts[test], return_inverse=True)
    captions = captions.tolist()
    bow = bag_of_words_similarity(x[train], texts[train].tolist(), x[test], captions)
    return {"n_train": len(train), "n_test": len(test), "n_captions": len(captions),
            "model": recall_at_k(similarity(model, x[test], captions), ids),
            "bag_of_words": recall_at_k(bow, ids), "chance": chance_recall(ids, len(captions))}  # fmt: skip


def check_output(output: Path, overwrite: bool) -> None:
    """Refuse ``output`` when it is an aligned folder and not ``overwrite``, or anything else but an empty folder:
    the new folder replaces it whole."""
    if (output / INFO).is_file():
        if not overwrite:
            raise FileExistsError(f"{output} already holds an aligned model; pass overwrite=True (--overwrite)")
    elif output.is_file() or (output.is_dir() and any(output.iterdir())):
        raise FileExistsError(f"refusing to replace {output}: it is not an aligned model folder (no {INFO}); "
                              "choose a new or empty folder")  # fmt: skip


def align_embeddings(
    file: str | Path, template: str, output: str | Path, *, overwrite: bool = False, **options: Any
) -> dict[str, Any]:
    """Align the embeddings ``file`` (written by ``embed``) with captions from ``template``; write the aligned
    folder ``output`` and return its ``align.json`` (settings, ``losses``, held-out ``scores``).

    The folder is built under a temporary name and renamed at the end, so a failure leaves an earlier
    ``output`` as it was (``overwrite``); ``options`` are :func:`train_aligned`'s keywords.
    """
    file, output = Path(file), Path(output)
    check_output(output, overwrite)
    import_open_clip()  # the text tower's package, before any work
    with atomic_dir(output) as folder:
        source, old = file.resolve(), output.resolve()
        if source.is_relative_to(old):  # the old folder's own embeddings, which goes with it: keep a copy
            file = folder / source.relative_to(old)
            file.parent.mkdir(parents=True, exist_ok=True)
            (shutil.copytree if source.is_dir() else shutil.copy2)(source, file)  # a folder of parts, or a file
        info = train_aligned(file, template, folder, **options)
    return info


def train_aligned(
    file: Path, template: str, folder: Path, *, split: str = "random", test_size: float = 0.25,
    text: TextTowerConfig | None = None, pretrained: tuple[str, str] | None = None, steps: int = 300,
    batch_size: int = 256, lr: float = 1e-3, seed: int = 0, tuned: TunedEncoder | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Train the head and text tower on the embeddings ``file`` and write them and ``align.json`` into
    ``folder`` (a new one, renamed by the caller once complete); return ``align.json``'s contents.

    ``tuned`` (``align --unfreeze``): fine-tune this encoder of ``file``'s tiles too, save it in ``folder``
    and write ``file`` again with its embeddings, which the held-out scores and ``search`` then use.

    Args:
        split: held-out rows, as for ``evaluate``: ``random`` (stratified by caption), a group column kept on one
            side (plate, field, scene), or ``COLUMN=VALUE,...``.
        text: the text tower's shape, trained from scratch (default: ``TextTowerConfig(embed_dim=128, width=256,
            heads=4, layers=3, context_length=32)``); or ``pretrained=(open_clip model name, weights file or tag)``.
    """
    for name, value in (("steps", steps), ("batch_size", batch_size)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    df, features, provenance = read_embeddings(file)
    texts = np.array(fill_template(df, template, str(file)), dtype=object)
    train, test = split_rows(df, texts, split, test_size, seed, multilabel=False)[:2]
    x = df[features].to_numpy(np.float32)
    torch.manual_seed(seed)
    tower = TextTower.pretrained(*pretrained) if pretrained else TextTower(text or DEFAULT_TEXT)
    model = AlignModel(len(features), tower)
    losses = fit(model, torch.from_numpy(x[train]), texts[train].tolist(), steps, batch_size, lr, seed, tuned, train)
    extra = {}
    if tuned is not None:
        x, provenance = rewrite_tuned(tuned, file, folder, df, features, provenance)
        extra = {"encoder": ENCODER, "encoder_lr_scale": tuned.lr_scale,
                 "fine_tuned_from": provenance["fine_tuned_from"]}  # fmt: skip
    # Relative to the folder, which is renamed into place (and may be moved later): an absolute path would
    # name the temporary folder.
    embeddings = os.path.relpath(file.resolve(), folder.resolve())
    info = {"embeddings": embeddings, "checkpoint": provenance.get("checkpoint"),
            "checkpoint_sha256": provenance.get("checkpoint_sha256"), "source": provenance.get("source"),
            "pool": provenance.get("pool"), "level": provenance.get("level"), "image_dim": len(features),
            "template": template, "split": split, "seed": seed, "steps": steps, "lr": lr,
            "text": asdict(tower.config), "pretrained": list(pretrained) if pretrained else None,
            "losses": losses, "scores": held_out_scores(model, x, texts, train, test), **extra}  # fmt: skip
    tower.save(folder)
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items() if not k.startswith("text.")},
              str(folder / HEAD))  # fmt: skip
    atomic_write_text(folder / INFO, json.dumps(info, indent=2) + "\n")
    return info


def align(checkpoint: str | Path, template: str, output: str | Path, *, data: str | Path | None = None,
          level: str = "tile", pool: str = "mean", device: str = "auto", overwrite: bool = False,
          unfreeze: bool = False, encoder_lr_scale: float = 0.1, crs: str | None = None,
          **options: Any) -> dict[str, Any]:  # fmt: skip
    """Embed the run's data (or ``data``) with ``checkpoint`` into ``output/embeddings.parquet``, then train on it
    as :func:`align_embeddings` does (``options``: :func:`train_aligned`'s keywords).

    ``unfreeze``: fine-tune the encoder too, at ``encoder_lr_scale`` times the head's learning rate, on the
    tiles (``level="tile"``) (:mod:`~domainmae.align.finetune`); the folder then holds it as ``encoder/``.
    ``crs``: the footprints' CRS, needed (as by ``embed``) when the scenes lie in several.
    """
    output = Path(output)
    check_output(output, overwrite)
    import_open_clip()  # the text tower's package, before every image is embedded
    if unfreeze and level != "tile":
        raise ValueError(f"--unfreeze fine-tunes on tiles; level {level!r} averages them, use level 'tile'")
    with atomic_dir(output) as folder:
        try:
            file = embed(checkpoint, output=folder / EMBEDDINGS, data=data, level=level, pool=pool, device=device,
                         crs=crs, progress=False)  # fmt: skip
            tuned = None
            if unfreeze:
                n_rows = len(read_embeddings(file)[0])
                tuned = tuned_encoder(checkpoint, n_rows, output.resolve() / ENCODER, data=data, pool=pool,
                                      device=device, batch_size=options.get("batch_size", 256),
                                      lr_scale=encoder_lr_scale)  # fmt: skip
            info = train_aligned(file, template, folder, tuned=tuned, **options)
        except (ValueError, KeyError) as err:  # named by the place the user gave, not the temporary folder
            message = err.args[0] if len(err.args) == 1 and isinstance(err.args[0], str) else str(err)
            raise type(err)(message.replace(str(folder), str(output))) from err
    return info


def rewrite_tuned(tuned: TunedEncoder, file: Path, folder: Path, df: pd.DataFrame, features: list[str],
                  provenance: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:  # fmt: skip
    """Save the fine-tuned encoder in ``folder`` and write ``file`` again with its embeddings of the same rows
    (``df``); return them ``[N, D]`` and the file's new provenance, which names the encoder by its hash."""
    weights = tuned.save(folder / ENCODER) / WEIGHTS
    x = tuned.embed()
    # Named where the encoder will be once the folder is renamed into place (the hash is what is checked).
    provenance = {**provenance, "checkpoint": str(tuned.home / WEIGHTS), "checkpoint_sha256": file_sha256(weights),
                  "source": str(tuned.home), "fine_tuned_from": provenance.get("checkpoint")}  # fmt: skip
    write_embeddings(file, df.assign(**dict(zip(features, x.T))), features, provenance)
    return x, provenance


def read_info(folder: str | Path) -> tuple[Path, dict[str, Any]]:
    """``folder`` as a path and its ``align.json``; an error naming what is missing if it is no aligned folder."""
    folder = Path(folder)
    if not (folder / INFO).is_file() or not (folder / HEAD).is_file():
        raise FileNotFoundError(f"{folder} is not an aligned model folder: {INFO} or {HEAD} missing (domainmae align)")
    return folder, json.loads((folder / INFO).read_text())


def load_aligned(folder: str | Path) -> tuple[AlignModel, dict[str, Any]]:
    """The aligned model (eval mode) and ``align.json`` of a folder :func:`align_embeddings` wrote."""
    folder, info = read_info(folder)
    model = AlignModel(info["image_dim"], TextTower.load(folder))
    result = model.load_state_dict(load_file(str(folder / HEAD)), strict=False)  # the text tower loaded above
    missing = [k for k in result.missing_keys if not k.startswith("text.")]
    if missing or result.unexpected_keys:
        raise ValueError(f"{folder / HEAD} does not fit the head: missing {missing}, unexpected {result.unexpected_keys}")
    return model.eval(), info


def aligned_encoder(folder: str | Path) -> Path | None:
    """The fine-tuned encoder (an exported model folder) of aligned ``folder``; None when it was aligned frozen."""
    _, info = read_info(folder)
    return Path(folder) / info["encoder"] if info.get("encoder") else None


def _aligned_encoder_hint(info: dict[str, Any]) -> str:
    return "the fine-tuned encoder: embed --aligned" if info.get("encoder") else "that checkpoint"


def check_projection(folder: str | Path, checkpoint: str | Path, output: str | Path, overwrite: bool) -> None:
    """What ``embed --aligned`` checks before it embeds every image, where :func:`project_embeddings` would find
    it only after: ``checkpoint`` is the encoder aligned ``folder`` was aligned on, ``output`` a table it may
    write, and the text tower's package is installed."""
    folder, info = read_info(folder)
    wanted = info.get("checkpoint_sha256")
    if wanted and file_sha256(weights_file(checkpoint)) != wanted:
        raise ValueError(f"{folder} was aligned on another checkpoint ({info.get('checkpoint')}) than {checkpoint}; "
                         f"embed with {_aligned_encoder_hint(info)}")  # fmt: skip
    _check_projection_output(output, overwrite)
    import_open_clip()


def _check_projection_output(output: str | Path, overwrite: bool) -> Path:
    return check_table_name(check_output_file(output, overwrite=overwrite))


def aligned_features(model: AlignModel, info: dict[str, Any],
                     file: str | Path) -> tuple[pd.DataFrame, np.ndarray, dict[str, Any]]:  # fmt: skip
    """``file``'s rows (metadata), their unit vectors ``[N, embed_dim]`` in the joint space and the file's
    provenance; the file must come from the encoder the model was aligned on."""
    df, features, provenance = read_embeddings(file)
    if provenance.get("aligned"):
        raise ValueError(f"{file} holds text-aligned embeddings already (embed --aligned {provenance['aligned']}); "
                         f"give the encoder's embeddings, written by embed without --aligned")  # fmt: skip
    made, wanted = provenance.get("checkpoint_sha256"), info.get("checkpoint_sha256")
    if made and wanted and made != wanted:
        raise ValueError(f"{file} was embedded by another checkpoint ({provenance.get('checkpoint')}) than the "
                         f"one aligned ({info.get('checkpoint')}); embed it with {_aligned_encoder_hint(info)}")
    if len(features) != info["image_dim"]:
        raise ValueError(f"{file} has {len(features)} features; the aligned head takes {info['image_dim']}")
    with torch.no_grad():
        z = model.encode_images(torch.from_numpy(df[features].to_numpy(np.float32, copy=True))).numpy()
    return df.drop(columns=features), z, provenance


def project_embeddings(aligned: str | Path, file: str | Path, output: str | Path, overwrite: bool = False) -> Path:
    """Write ``file``'s rows with text-aligned embeddings (unit vectors ``[N, embed_dim]`` as ``emb_XXXX``,
    comparable by dot product with :meth:`AlignModel.encode_texts`) to ``output`` (.parquet or .h5ad)."""
    output = _check_projection_output(output, overwrite)
    model, info = load_aligned(aligned)
    meta, z, provenance = aligned_features(model, info, file)
    provenance = {**provenance, "aligned": str(Path(aligned).resolve()), "aligned_template": info["template"]}
    # Chips from GeoParquet stay GeoParquet: the same footprints in the same CRS.
    if output.suffix.lower() != ".h5ad" and (written := with_embeddings(file, z, output, provenance)):
        return written
    features = feature_names(z.shape[1])
    return write_embeddings(output, pd.concat([meta, pd.DataFrame(z, columns=features)], axis=1), features, provenance)


def search(aligned: str | Path, text: str, file: str | Path, top: int = 10) -> pd.DataFrame:
    """The ``top`` rows of the embeddings ``file`` most similar to ``text``: their metadata and ``score``
    (cosine similarity in the joint space), best first."""
    if top < 0:
        raise ValueError(f"top must be 0 or more, got {top}")
    model, info = load_aligned(aligned)
    meta, z, _ = aligned_features(model, info, file)
    with torch.no_grad():
        query = model.encode_texts([text]).numpy()[0]
    scores = z @ query
    order = np.argsort(-scores, kind="stable")[:top]
    return meta.iloc[order].assign(score=scores[order]).reset_index(drop=True)

