"""The ``align`` and ``search`` commands (CLIP-style text alignment, :mod:`domainmae.align`): a thin face over
its API, registered by :func:`domainmae.cli.build_parser`. Nothing heavy is imported until a command runs."""
from __future__ import annotations

import argparse


def _align(args: argparse.Namespace) -> int:
    from .align import align, align_embeddings
    from .align.retrieval import format_scores
    from .align.text import TextTowerConfig

    if (args.checkpoint is None) == (args.embeddings is None):
        raise ValueError("align takes --checkpoint (embed its data first) or --embeddings (a file embed wrote), one")
    if args.unfreeze and args.embeddings:
        raise ValueError(f"--unfreeze fine-tunes the encoder on the images: use --checkpoint, not precomputed "
                         f"--embeddings {args.embeddings}")
    if (args.text_model is None) != (args.text_weights is None):
        raise ValueError("--text-model and --text-weights go together: an open_clip model name and its weights")
    text = TextTowerConfig(embed_dim=args.embed_dim, width=args.text_width, heads=args.text_heads,
                           layers=args.text_layers, context_length=args.context_length)  # fmt: skip
    pretrained = (args.text_model, args.text_weights) if args.text_model else None
    options = dict(split=args.split, test_size=args.test_size, text=text, pretrained=pretrained, steps=args.steps,
                   batch_size=args.batch_size, lr=args.lr, seed=args.seed, overwrite=args.overwrite)  # fmt: skip
    if args.embeddings:
        info = align_embeddings(args.embeddings, args.text, args.output, **options)
    else:
        info = align(args.checkpoint, args.text, args.output, data=args.data, level=args.level, pool=args.pool,
                     device=args.device, unfreeze=args.unfreeze, encoder_lr_scale=args.encoder_lr_scale,
                     crs=args.crs, **options)  # fmt: skip
    print(format_scores(info["scores"]))
    print(f"wrote {args.output}")
    return 0


def _search(args: argparse.Namespace) -> int:
    from .align import search
    from .atomic import atomic_path, check_output_file

    if args.output:  # before the search, not after it
        check_output_file(args.output, overwrite=args.overwrite, inputs=(args.file, args.checkpoint))
    hits = search(args.checkpoint, args.text, args.file, top=args.top)
    if args.output:
        with atomic_path(args.output) as tmp:  # a failed write (full disk) leaves an earlier file whole
            hits.to_csv(tmp, index=False)
    print(hits.to_string(index=False))
    return 0


def add_align_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``align`` and ``search`` on the ``domainmae`` sub-command parsers ``sub``."""
    p = sub.add_parser("align", help="align an encoder's embeddings with text (CLIP): projection + text tower; "
                       "frozen, or fine-tuned with --unfreeze")  # fmt: skip
    p.add_argument("--checkpoint", help="run, .ckpt or exported model: its data (or --data) is embedded first")
    p.add_argument("--embeddings", help="instead of --checkpoint: an embeddings file written by domainmae embed")
    p.add_argument("--data", help="dataset path (default: the run's own data)")
    p.add_argument("--text", required=True, help="caption template, e.g. 'cells treated with {Metadata_pert_iname}'")
    p.add_argument("--output", required=True, help="folder for the aligned model (and embeddings.parquet)")
    p.add_argument("--level", choices=["tile", "image", "well"], default="tile", help="rows to embed and align")
    p.add_argument("--pool", choices=["mean", "cls"], default="mean")
    p.add_argument("--split", default="random", help="held-out rows: 'random', a group column, COLUMN=VALUE[,VALUE]")
    p.add_argument("--test-size", type=float, default=0.25)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--embed-dim", type=int, default=128, help="joint image-text space")
    p.add_argument("--text-width", type=int, default=256)
    p.add_argument("--text-heads", type=int, default=4)
    p.add_argument("--text-layers", type=int, default=3)
    p.add_argument("--context-length", type=int, default=32, help="tokens per caption")
    p.add_argument("--text-model", help="open_clip model name (e.g. ViT-B-32): load its pretrained text tower")
    p.add_argument("--text-weights", help="--text-model: a local weights file or an open_clip pretrained tag")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--unfreeze", action="store_true", help="fine-tune the encoder too (--checkpoint, tile level)")
    p.add_argument("--encoder-lr-scale", type=float, default=0.1, help="--unfreeze: encoder lr = this x --lr")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (embedding, --unfreeze training)")
    p.add_argument("--crs", help="--checkpoint on scenes in several CRSs: the footprints' CRS, e.g. EPSG:4326")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_align)

    p = sub.add_parser("search", help="rank the rows of an embeddings file by a text query (an aligned model)")
    p.add_argument("file", help="embeddings .parquet written by domainmae embed with the aligned checkpoint")
    p.add_argument("--checkpoint", required=True, help="aligned model folder (domainmae align)")
    p.add_argument("--text", required=True, help="the query")
    p.add_argument("--top", type=int, default=10)
    p.add_argument("--output", help="also write the hits as CSV here")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.set_defaults(func=_search)
