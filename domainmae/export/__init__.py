"""Embedding export and downstream analysis: ``embed``, ``profile``, ``evaluate``."""
from .embed import embed
from .evaluate import evaluate
from .profile import aggregate, normalize, profile
from .writers.tables import feature_columns, read_embeddings

__all__ = ["aggregate", "embed", "evaluate", "feature_columns", "normalize", "profile", "read_embeddings"]
