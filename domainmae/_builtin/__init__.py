"""Built-in data installed with the package: ``recipes``, ``configs`` and ``samples`` (the demo data).

These subpackages are the top-level folders ``recipes/``, ``configs/`` and ``datasets/samples/`` mapped in by
setup.py; read them with ``importlib.resources.files("domainmae._builtin.recipes")`` and friends, which works
in a wheel install and in an editable one alike.
"""
from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def builtin_dir(name: str) -> Path:
    """The folder of built-in ``name`` (``recipes``, ``configs``, ``samples``), whatever the working directory."""
    folder = files(f"{__name__}.{name}")
    if not isinstance(folder, Path):  # e.g. imported from a zip: the readers need real files
        raise ImportError(f"domainmae's built-in {name} are not on the file system ({folder}); install it unzipped")
    return folder


RECIPES_DIR = builtin_dir("recipes")
CONFIGS_DIR = builtin_dir("configs")
SAMPLES_DIR = builtin_dir("samples")
# Demo sections name bundled samples as in the checkout; they resolve against the installed copy.
SAMPLES_PREFIX = ("datasets", "samples")
