"""The MAE family: embedders, masking, encoder/decoder, losses, factory, weight adaptation."""
from .adapt import AdaptReport, load_pretrained, read_state_dict
from .embed import ChannelEmbedding, ChannelPatchEmbed, ChannelSpec, StackedPatchEmbed, channel_specs
from .factory import MODEL_SIZES, MAEConfig, create_model, model_config
from .mae import MAEOutput, MaskedAutoencoder
from .masking import STRATEGIES, Masking, masking_from_scores, sample_masking

__all__ = [
    "MODEL_SIZES", "STRATEGIES", "AdaptReport", "ChannelEmbedding", "ChannelPatchEmbed", "ChannelSpec", "MAEConfig",
    "MAEOutput", "MaskedAutoencoder", "Masking", "StackedPatchEmbed", "channel_specs", "create_model",
    "load_pretrained", "masking_from_scores", "model_config", "read_state_dict", "sample_masking",
]  # fmt: skip
