"""Optional packages: imported where a feature needs them, with an error that names the extra to install."""
from __future__ import annotations

import importlib
from types import ModuleType


class MissingDependencyError(ImportError):
    """A feature needs an optional package that is not installed; the message says what to install. The CLI
    prints it as one line (an ``ImportError`` of any other kind is a bug, shown with its traceback)."""


def missing(feature: str, package: str, install: str, err: ImportError) -> MissingDependencyError:
    """The error for ``feature`` without ``package``: what needs it, and the command that installs it."""
    return MissingDependencyError(f"{feature} needs the optional package {package} ({install}): {err}")


def require(module: str, feature: str, install: str) -> ModuleType:
    """``module`` imported, or :func:`missing`'s error naming its top-level package."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise missing(feature, module.split(".")[0], install, err) from err
