"""The ``domainmae`` command: argument parsing only, every command calls the Python API."""
from __future__ import annotations

import argparse
import itertools
import logging
import os
import re
import signal
import sys
import tempfile
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TextIO

from . import __version__
from .cli_align import add_align_commands
from .deps import MissingDependencyError


def _models(args: argparse.Namespace) -> int:
    from .models import MODEL_SIZES, model_config

    print(f"{'name':<10} {'embed_dim':>9} {'depth':>5} {'heads':>5} {'dec_dim':>7} {'dec_depth':>9}")
    for name in MODEL_SIZES:
        c = model_config(name)
        print(f"{name:<10} {c.embed_dim:>9} {c.depth:>5} {c.num_heads:>5} {c.decoder_embed_dim:>7} {c.decoder_depth:>9}")
    return 0


def _recipes(args: argparse.Namespace) -> int:
    from .recipes import list_recipes

    for name, text in list_recipes().items():
        print(f"{name:<14} {text}")
    return 0


def _pretrain(args: argparse.Namespace) -> int:
    from .train import pretrain

    run_dir = pretrain(
        args.recipe, data=args.data, output=args.output, max_steps=args.max_steps, epochs=args.epochs,
        batch_size=args.batch_size, device=args.device, overrides=args.set, resume=args.resume, quiet=args.quiet,
    )  # fmt: skip
    print(f"run directory: {run_dir}")
    return 0


def _reconstruct(args: argparse.Namespace) -> int:
    from .train import reconstruct

    channels = args.channels.split(",") if args.channels else None
    best = None
    if args.score or args.output_json:
        import json

        from .atomic import atomic_write_text, check_output_file
        from .train.reconstruct import check_reconstruct_output, score_reconstruction
        from .train.score import format_scores

        # Both outputs are checked before the scores are computed (reconstruct checks --output again, as an API).
        inputs = (args.checkpoint, args.data)
        if args.output_json:
            if Path(args.output_json).resolve() == Path(args.output).resolve():
                raise ValueError(f"--output-json and --output both name {args.output}; give the JSON another name")
            check_output_file(args.output_json, overwrite=args.overwrite, inputs=inputs)
        check_reconstruct_output(args.output, overwrite=args.overwrite, inputs=inputs)

        result = score_reconstruction(args.checkpoint, data=args.data, mask_ratio=args.mask_ratio,
                                      visible_channels=channels, samples=args.score_samples, seed=args.seed)  # fmt: skip
        print(format_scores(result))
        if args.output_json:
            atomic_write_text(args.output_json, json.dumps(result, indent=2) + "\n")
            print(f"wrote {args.output_json}")
        best = result["best_baseline"]
    path = reconstruct(args.checkpoint, data=args.data, mask_ratio=args.mask_ratio, output=args.output,
                       visible_channels=channels, samples=args.samples, seed=args.seed, baseline=best,
                       mix_ratio=args.mix_ratio, overwrite=args.overwrite)  # fmt: skip
    print(f"wrote {path}")
    return 0


def _export_model(args: argparse.Namespace) -> int:
    from .runtime import export_model

    print(f"wrote {export_model(args.run, args.directory, overwrite=args.overwrite)}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from .data.inspect import render_report
    from .pipeline import inspect_path

    data = None
    if args.recipe:
        from .recipes import load_recipe

        data = load_recipe(args.recipe, overrides=args.set).data
    elif args.set:
        raise ValueError("--set overrides a recipe's data section; pass --recipe too")
    print(render_report(inspect_path(args.path, data, samples=args.samples, max_side=args.max_side)))
    return 0


def _split(text: str | None) -> list[str] | None:
    return text.split(",") if text else None


def _embed_encoder(args: argparse.Namespace, output: str) -> Path:
    from .export.embed import embed

    return embed(
        args.checkpoint, output=output, data=args.data, pool=args.pool, level=args.level, format=args.format,
        batch_size=args.batch_size, device=args.device, channels=_split(args.channels), stride=args.stride,
        crs=args.crs, dtype=args.dtype, overrides=args.set, overwrite=args.overwrite, progress=not args.quiet,
        features=args.features, seed=args.seed,
    )  # fmt: skip


def _embed(args: argparse.Namespace) -> int:
    if args.aligned:
        from .export.formats import SUFFIXES

        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ValueError("embed --aligned runs in one process; embed under torchrun, then project the file alone")
        if (args.format or SUFFIXES.get(Path(args.output).suffix.lower())) not in ("parquet", "geoparquet", "h5ad"):
            raise ValueError(f"embed --aligned writes a table: give --output a .parquet or .h5ad file, not {args.output}")
        from .align import aligned_encoder, check_projection, project_embeddings

        args.checkpoint = aligned_encoder(args.aligned) or args.checkpoint  # a fine-tuned encoder (align --unfreeze)
        check_projection(args.aligned, args.checkpoint, args.output, args.overwrite)
        # The encoder's embeddings first (a temporary file), then their projection into the text space.
        with tempfile.TemporaryDirectory(prefix="domainmae-aligned-") as folder:
            encoded = _embed_encoder(args, str(Path(folder) / f"encoder{Path(args.output).suffix}"))
            print(f"wrote {project_embeddings(args.aligned, encoded, args.output, overwrite=args.overwrite)}")
        return 0
    path = _embed_encoder(args, args.output)
    if os.environ.get("RANK", "0") == "0":  # under torchrun every process returns the one output
        print(f"wrote {path}")
    return 0


def _profile(args: argparse.Namespace) -> int:
    from .export import profile

    path = profile(args.input, args.output, level=args.level, strata=_split(args.strata), method=args.method,
                   normalization=args.normalize, controls=args.controls, batch=args.batch,
                   overwrite=args.overwrite)  # fmt: skip
    print(f"wrote {path}")
    return 0


def _against(text: str) -> str | tuple[str, str]:
    """``--against [NAME=]FILE``: a ``(name, file)`` pair, or the file (named by its provenance); a file that
    exists is taken whole, '=' and all."""
    name, sep, path = text.partition("=")
    return (name, path) if sep and re.fullmatch(r"[\w-]+", name) and not Path(text).exists() else text


def _evaluate(args: argparse.Namespace) -> int:
    from .export.evaluate import evaluate, format_table

    with tempfile.TemporaryDirectory(prefix="domainmae-baselines-") as folder:

        def baselines() -> Iterator[tuple[str, Path]]:
            # Embedded here (evaluate only reads files; the model and the data are embed's), and lazily: evaluate
            # takes the against files after it has checked the label, so a wrong --label costs no embedding.
            if args.baselines:
                from .export.embed import embed_baselines

                yield from embed_baselines(args.file, _split(args.baselines), folder, seed=args.seed).items()

        against = itertools.chain(args.against, baselines())
        result = evaluate(args.file, args.label, split=args.split, methods=_split(args.method),
                          test_size=args.test_size, k=args.k, seed=args.seed, against=against,
                          balanced=args.balanced, tune=args.tune, gap=args.gap, labels=args.labels,
                          label_field=args.label_field, purity=args.purity, output=args.output,
                          overwrite=args.overwrite)  # fmt: skip
    print(format_table(result))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="domainmae", description="Masked Autoencoders for microscopy and Earth-observation images."
    )
    parser.add_argument("--version", action="version", version=f"domainmae {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    # Options several commands share, defined once (argparse parent parsers).
    overrides = argparse.ArgumentParser(add_help=False)
    overrides.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe field")
    runtime = argparse.ArgumentParser(add_help=False)
    runtime.add_argument("--device", default="auto", help="auto, cpu or cuda")
    runtime.add_argument("--quiet", action="store_true", help="no progress bar")
    trained = argparse.ArgumentParser(add_help=False)
    trained.add_argument("--checkpoint", required=True,
                         help="run directory, .ckpt file, or exported model folder (export-model) or its Hub id")  # fmt: skip
    trained.add_argument("--data", help="dataset path (default: the run's own data)")

    p = sub.add_parser("pretrain", parents=[overrides, runtime],
                       help="pretrain an MAE with a recipe (cellpainting, sentinel)")  # fmt: skip
    p.add_argument("--recipe", required=True, help="built-in recipe name or YAML path")
    p.add_argument("--data", help="dataset path; without it the recipe's demo runs on the bundled samples")
    p.add_argument("--output", help="run directory (default runs/<recipe>-<timestamp>)")
    p.add_argument("--max-steps", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="global batch per optimiser step")
    p.add_argument("--resume", action="store_true", help="continue the run in --output")
    p.set_defaults(func=_pretrain)

    p = sub.add_parser("reconstruct", parents=[trained],
                       help="draw original / masked / reconstructed images from a checkpoint")  # fmt: skip
    p.add_argument("--mask-ratio", type=float)
    p.add_argument("--channels", help="comma-separated channels the model sees; the others are hidden and rebuilt")
    p.add_argument("--samples", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mix-ratio", type=float,
                   help="i-MAE checkpoints: each crop's weight in the mixture (default: the model's, else 0.3)")
    p.add_argument("--output", default="reconstruction.png")
    p.add_argument("--score", action="store_true",
                   help="print masked-patch MSE of the model and three baselines on held-out crops (same masks); "
                        "the PNG then shows the best baseline too")  # fmt: skip
    p.add_argument("--score-samples", type=int, default=32, help="held-out crops scored")
    p.add_argument("--output-json", help="write the scores as JSON (implies --score)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.set_defaults(func=_reconstruct)

    p = sub.add_parser("export-model",
                       help="write a run's model as safetensors + config.json + recipe.yaml, safe to share")  # fmt: skip
    p.add_argument("run", help="run directory, .ckpt file, or exported model folder")
    p.add_argument("directory", help="folder to write (usable as --checkpoint, or uploaded to the Hub)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export in that folder")
    p.set_defaults(func=_export_model)

    p = sub.add_parser("inspect", parents=[overrides],
                       help="show what a reader sees at a path: layout, channels, shape, CRS, values")  # fmt: skip
    p.add_argument("path", help="a manifest, TIFF, GeoTIFF, Zarr store or folder")
    p.add_argument("--recipe", help="read the path with this recipe's data section, as training does")
    p.add_argument("--samples", type=int, default=8, help="fields/scenes opened to measure shapes and values")
    p.add_argument("--max-side", type=int, default=1024, help="largest window (px) read per sampled field/scene")
    p.set_defaults(func=_inspect)

    p = sub.add_parser("embed", parents=[trained, overrides, runtime],
                       help="export embeddings of a run's data (or --data) with its checkpoint")  # fmt: skip
    p.add_argument("--output", required=True, help=".parquet or .h5ad (microscopy), .parquet or .tif/.zarr/folder (EO)")
    p.add_argument("--format", choices=["parquet", "h5ad", "geoparquet", "geotiff", "zarr"],
                   help="default: from the suffix")  # fmt: skip
    p.add_argument("--pool", choices=["mean", "cls", "channels"], default="mean",
                   help="tables: mean of the tokens, the cls token, or channels (each channel's token mean side by "
                        "side: C x D columns)")  # fmt: skip
    p.add_argument("--level", choices=["tile", "image", "well"], default="tile", help="one row per tile/image/well")
    p.add_argument("--channels", help="comma-separated subset of the model's channels to embed")
    p.add_argument("--stride", type=int, help="tiling stride in px (default: crop size; rasters: half of it)")
    p.add_argument("--crs", help="GeoParquet: reproject footprints, e.g. EPSG:4326")
    p.add_argument("--dtype", choices=["float32", "int8"], default="float32",
                   help="GeoTIFF: int8 stores per-band scale/offset (GDAL/QGIS unscale it)")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--features", choices=["model", "raw", "random"], default="model",
                   help="baselines: raw = per-channel mean/std/percentiles of each tile, random = untrained model")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="--features random: the initialisation seed")
    p.add_argument("--aligned", help="an aligned model folder (domainmae align): write text-aligned embeddings "
                   "(with its fine-tuned encoder, if --unfreeze made one)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing output (a folder only when it holds nothing but embed's rasters)")
    p.set_defaults(func=_embed)

    p = sub.add_parser("profile", help="aggregate and/or normalise an embeddings file against controls")
    p.add_argument("input", help="embeddings .parquet or .h5ad")
    p.add_argument("--output", required=True, help=".parquet or .h5ad")
    p.add_argument("--level", choices=["image", "well"], help="aggregate per image (field) or per plate+well")
    p.add_argument("--strata", help="comma-separated columns to aggregate by (instead of --level)")
    p.add_argument("--method", choices=["mean", "median"], default="mean")
    p.add_argument("--normalize", choices=["center_scale", "tvn"])
    p.add_argument("--controls", help="rows to normalise against, e.g. \"Metadata_pert_type == 'negcon'\" "
                   "(default: all rows)")
    p.add_argument("--batch", help="column whose groups are normalised separately (plate, batch)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_profile)

    p = sub.add_parser("evaluate", help="linear probe and k-NN of an embeddings file against a label column")
    p.add_argument("file", help="embeddings .parquet (GeoParquet too) or .h5ad; with --labels a per-patch .tif/.zarr")
    p.add_argument("--label", help="label column (list-valued: multi-label)")
    p.add_argument("--labels", help="categorical label raster or polygon/point file, any CRS: majority class per patch")
    p.add_argument("--label-field", help="--labels vector file: its class column (needed if it has several columns)")
    p.add_argument("--purity", type=float, default=0.5,
                   help="--labels: least share of a patch's valid label pixels its class must hold")  # fmt: skip
    p.add_argument("--split", default="random",
                   help="'random', a group column kept apart (plate, scene_id), COLUMN=VALUE[,VALUE] (those groups "
                        "held out), or blocks:SIZE (GeoParquet: SIZE x SIZE px blocks on the ground, in each scene's "
                        "pixels, held out; train windows within --gap px of a test window dropped, any scene)")  # fmt: skip
    p.add_argument("--gap", type=int,
                   help="blocks split: px kept free around test windows (default one window; for a label raster's "
                        "patches, between the encoder windows that made them)")  # fmt: skip
    p.add_argument("--baselines", help="comma-separated: raw (pixel statistics), random (untrained model); "
                   "embedded again from the file's provenance (needs its checkpoint and data) and scored on the "
                   "same split")  # fmt: skip
    p.add_argument("--against", action="append", default=[], type=_against, metavar="[NAME=]FILE",
                   help="another embeddings file of the same rows (a baseline embedded once, another checkpoint), "
                        "scored on the same split and shown as NAME (default: its features, else its file name); "
                        "repeatable")  # fmt: skip
    p.add_argument("--balanced", action="store_true",
                   help="weight the linear probe's classes inversely to their frequency (rare labels)")
    p.add_argument("--tune", action="store_true",
                   help="choose the linear probe's C (1e-6..100) per feature set by 3-fold cross-validation in the "
                        "training rows, grouped like --split, on macro-F1 (multi-label: mAP; default: C=1)")  # fmt: skip
    p.add_argument("--method", default="linear,knn", help="comma-separated: linear, knn")
    p.add_argument("--test-size", type=float, default=0.25)
    p.add_argument("--k", type=int, default=5, help="neighbours for k-NN")
    p.add_argument("--seed", type=int, default=0, help="split and random-init seed")
    p.add_argument("--output", help="also write the result as JSON here")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.set_defaults(func=_evaluate)

    add_align_commands(sub)

    p = sub.add_parser("recipes", help="list the built-in recipes")
    p.set_defaults(func=_recipes)
    p = sub.add_parser("models", help="list the named model sizes")
    p.set_defaults(func=_models)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with warnings.catch_warnings():  # restores the default display when the command returns
        warnings.showwarning = ours_as_sentences(args.command, warnings.showwarning)
        try:
            return args.func(args)
        except KeyboardInterrupt as err:
            # 128 + the signal, as a shell reports it: 130 for Ctrl-C, 143 for SIGTERM, 138 for SIGUSR1.
            # A bare Ctrl-C has no text; Stopped (a signal at a step boundary) says what was saved.
            print(f"domainmae {args.command}: {str(err) or 'interrupted'}", file=sys.stderr)
            return 128 + getattr(err, "signum", signal.SIGINT)
        except (ValueError, OSError, KeyError, ArithmeticError, MissingDependencyError) as err:  # no traceback
            print(f"domainmae {args.command}: error: {describe_error(err)}", file=sys.stderr)
            return 1


def ours_as_sentences(command: str, default: Callable[..., None]) -> Callable[..., None]:
    """A ``warnings.showwarning`` that prints the package's own warnings as ``domainmae CMD: warning: ...``
    (written for users; the default form adds a source line and the category) and passes others to ``default``."""
    package = Path(__file__).resolve().parent

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: TextIO | None = None,
             line: str | None = None) -> None:  # fmt: skip
        if Path(filename).resolve().is_relative_to(package):
            print(f"domainmae {command}: warning: {message}", file=file or sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)

    return show


def describe_error(err: BaseException) -> str:
    """The text a user sees for ``err``: its message, never a bare ``'s2'``.

    ``str(KeyError(x))`` is ``repr(x)``: our own lookups raise KeyError with a sentence, which is shown as
    it is; a KeyError carrying only a key comes from a lookup that no check caught (a bug, or an input we
    did not foresee), so it says which key was missing where, and asks for a report.
    """
    if not isinstance(err, KeyError) or len(err.args) != 1:
        return str(err)
    key = err.args[0]
    if isinstance(key, str) and " " in key.strip():
        return key
    frame = traceback.extract_tb(err.__traceback__)[-1] if err.__traceback__ else None
    where = f" (looked up at {Path(frame.filename).name}:{frame.lineno}, in {frame.name})" if frame else ""
    return (f"no entry {key!r} where one was expected{where}; no check caught this mismatch between the recipe "
            "and the data or model, so please report it with the command you ran")


if __name__ == "__main__":
    raise SystemExit(main())
