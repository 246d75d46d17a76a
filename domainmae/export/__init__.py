"""Embedding analysis: ``profile``, ``evaluate`` and the table readers; they read embedding files only.

Making the files needs the model and the data: ``embed`` and ``embed_baselines`` live in
:mod:`domainmae.export.embed` (``from domainmae.export.embed import embed``, or ``domainmae.embed``), which
this package does not import, so that analysis loads no model, torch or data readers.
"""
from .evaluate import evaluate
from .profile import aggregate, normalize, profile
from .writers.tables import feature_columns, read_embeddings

__all__ = ["aggregate", "evaluate", "feature_columns", "normalize", "profile", "read_embeddings"]
