"""The ``domainmae`` command: argument parsing only, every command calls the Python API."""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from . import __version__

# Commands whose engine has not landed yet: they say so and fail instead of pretending.
PLANNED = {
    "embed": "export embeddings of a dataset with a trained checkpoint",
}


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
    path = reconstruct(args.checkpoint, data=args.data, mask_ratio=args.mask_ratio, output=args.output,
                       visible_channels=channels, samples=args.samples, seed=args.seed)  # fmt: skip
    print(f"wrote {path}")
    return 0


def _planned(command: str):
    def run(args: argparse.Namespace) -> int:
        print(f"domainmae {command}: not available yet in {__version__} ({PLANNED[command]}).", file=sys.stderr)
        return 2

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="domainmae", description="Masked Autoencoders for microscopy and Earth-observation images."
    )
    parser.add_argument("--version", action="version", version=f"domainmae {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("pretrain", help="pretrain an MAE with a recipe (cellpainting, sentinel)")
    p.add_argument("--recipe", required=True, help="built-in recipe name or YAML path")
    p.add_argument("--data", help="dataset path; without it the recipe's demo runs on the bundled samples")
    p.add_argument("--output", help="run directory (default runs/<recipe>-<timestamp>)")
    p.add_argument("--max-steps", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="global batch per optimiser step")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe field")
    p.add_argument("--resume", action="store_true", help="continue the run in --output")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_pretrain)

    p = sub.add_parser("reconstruct", help="draw original / masked / reconstructed images from a checkpoint")
    p.add_argument("--checkpoint", required=True, help="run directory or .ckpt file")
    p.add_argument("--data", help="dataset path (default: the run's own data)")
    p.add_argument("--mask-ratio", type=float)
    p.add_argument("--channels", help="comma-separated channels the model sees; the others are hidden and rebuilt")
    p.add_argument("--samples", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default="reconstruction.png")
    p.set_defaults(func=_reconstruct)

    p = sub.add_parser("recipes", help="list the built-in recipes")
    p.set_defaults(func=_recipes)
    p = sub.add_parser("models", help="list the named model sizes")
    p.set_defaults(func=_models)
    for command, text in PLANNED.items():
        p = sub.add_parser(command, help=f"{text} [not available yet]")
        p.set_defaults(func=_planned(command))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command not in PLANNED:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command is None:
        parser.print_help()
        return 0
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, KeyError, ArithmeticError) as err:  # user-actionable: no traceback
        print(f"domainmae {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
