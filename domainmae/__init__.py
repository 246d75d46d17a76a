"""domainmae: Masked Autoencoders for microscopy and Earth-observation images.

Public API (Python first; the ``domainmae`` command is a thin face over it)::

    import domainmae
    model = domainmae.create_model("vit_small", channels=["DNA", "ER", "RNA", "AGP", "Mito"])
    out = model(images, channels=names)      # out.loss; out.pred, out.mask: {sensor: tensor}
    emb = model.embed(images, channels=names)  # [B, D]
    domainmae.embed("runs/x", data="load_data.csv", output="emb.parquet")  # a dataset -> embeddings file
"""
from importlib import import_module
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version
from typing import Any

try:  # pyproject.toml is the one place the version is written
    __version__ = _version("domainmae")
except PackageNotFoundError:  # a source tree put on sys.path without installing it
    __version__ = "0+unknown"
#: Public name -> the module that defines it, imported on first use, not with the package: the models pull in
#: torch, export pandas, scikit-learn and geopandas, and analysis (``evaluate``, ``profile``) needs no torch.
_LAZY = {
    "MAEConfig": ".models", "MaskedAutoencoder": ".models", "create_model": ".models", "load_pretrained": ".models",
    "embed": ".export.embed", "evaluate": ".export", "profile": ".export",
}  # fmt: skip
__all__ = [*_LAZY, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'domainmae' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})  # the lazy names too, as tab completion and help() expect
