"""domainmae: Masked Autoencoders for microscopy and Earth-observation images.

Public API (Python first; the ``domainmae`` command is a thin face over it)::

    import domainmae
    model = domainmae.create_model("vit_small", channels=["DNA", "ER", "RNA", "AGP", "Mito"])
    out = model(images, channels=names)      # out.loss, out.pred, out.mask
    emb = model.embed(images, channels=names)  # [B, D]
    domainmae.embed("runs/x", data="load_data.csv", output="emb.parquet")  # a dataset -> embeddings file
"""
from .models import MAEConfig, MaskedAutoencoder, create_model, load_pretrained

__version__ = "0.1.0"
__all__ = ["MAEConfig", "MaskedAutoencoder", "create_model", "embed", "evaluate", "load_pretrained", "profile",
           "__version__"]
_EXPORT = ("embed", "evaluate", "profile")


def __getattr__(name: str):
    # Export pulls in pandas, scikit-learn and geopandas: import it on first use, not with the package.
    if name in _EXPORT:
        from . import export

        return getattr(export, name)
    raise AttributeError(f"module 'domainmae' has no attribute {name!r}")
