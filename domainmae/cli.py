"""The ``domainmae`` command: argument parsing only, every command calls the Python API."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import __version__
from .models import MODEL_SIZES, model_config

# Commands whose engine has not landed yet: they say so and fail instead of pretending.
PLANNED = {
    "pretrain": "pretrain an MAE with a recipe (cellpainting, sentinel)",
    "embed": "export embeddings of a dataset with a trained checkpoint",
    "reconstruct": "draw original / masked / reconstructed images from a checkpoint",
    "recipes": "list the built-in recipes",
}


def _models(args: argparse.Namespace) -> int:
    """Print the named model sizes with their parameter-relevant numbers."""
    print(f"{'name':<10} {'embed_dim':>9} {'depth':>5} {'heads':>5} {'dec_dim':>7} {'dec_depth':>9}")
    for name in MODEL_SIZES:
        c = model_config(name)
        print(f"{name:<10} {c.embed_dim:>9} {c.depth:>5} {c.num_heads:>5} {c.decoder_embed_dim:>7} {c.decoder_depth:>9}")
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
    models = sub.add_parser("models", help="list the named model sizes")
    models.set_defaults(func=_models)
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
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
