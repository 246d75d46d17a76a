"""domainmae: Masked Autoencoders for microscopy and Earth-observation images.

Public API (Python first; the ``domainmae`` command is a thin face over it)::

    import domainmae
    model = domainmae.create_model("vit_small", channels=["DNA", "ER", "RNA", "AGP", "Mito"])
    out = model(images, channels=names)      # out.loss; out.pred, out.mask: {sensor: tensor}
    emb = model.embed(images, channels=names)  # [B, D]
    domainmae.embed("runs/x", data="load_data.csv", output="emb.parquet")  # a dataset -> embeddings file
"""
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

from .models import MAEConfig, MaskedAutoencoder, create_model, load_pretrained

try:  # pyproject.toml is the one place the version is written
    __version__ = _version("domainmae")
except PackageNotFoundError:  # a source tree put on sys.path without installing it
    __version__ = "0+unknown"
__all__ = ["MAEConfig", "MaskedAutoencoder", "create_model", "embed", "evaluate", "load_pretrained", "profile",
           "__version__"]
_EXPORT = ("embed", "evaluate", "profile")


def __getattr__(name: str):
    # Export pulls in pandas, scikit-learn and geopandas: import it on first use, not with the package.
    if name in _EXPORT:
        from . import export

        return getattr(export, name)
    raise AttributeError(f"module 'domainmae' has no attribute {name!r}")
