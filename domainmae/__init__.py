"""domainmae: Masked Autoencoders for microscopy and Earth-observation images.

Public API (Python first; the ``domainmae`` command is a thin face over it)::

    import domainmae
    model = domainmae.create_model("vit_small", channels=["DNA", "ER", "RNA", "AGP", "Mito"])
    out = model(images, channels=names)      # out.loss, out.pred, out.mask
    emb = model.embed(images, channels=names)  # [B, D]
"""
from .models import MAEConfig, MaskedAutoencoder, create_model, load_pretrained

__version__ = "0.1.0"
__all__ = ["MAEConfig", "MaskedAutoencoder", "create_model", "load_pretrained", "__version__"]
