"""The MAE family: embedders, masking, encoder/decoder, losses, the model config, factory, weight adaptation."""
from .adapt import AdaptReport, load_pretrained, read_state_dict
from .config import MODEL_SIZES, OBJECTIVES, MAEConfig
from .embed import ChannelEmbedding, ChannelPatchEmbed, ChannelSpec, StackedPatchEmbed, channel_specs
from .factory import create_model, model_config
from .imae import IMAEOutput, MixtureAutoencoder
from .mae import MAEOutput, MaskedAutoencoder
from .masking import STRATEGIES, Masking, masking_from_scores, sample_masking

__all__ = [
    "MODEL_SIZES", "OBJECTIVES", "STRATEGIES", "AdaptReport", "ChannelEmbedding", "ChannelPatchEmbed", "ChannelSpec",
    "IMAEOutput", "MAEConfig", "MAEOutput", "MaskedAutoencoder", "MixtureAutoencoder", "Masking", "StackedPatchEmbed",
    "channel_specs", "create_model", "load_pretrained", "masking_from_scores", "model_config", "read_state_dict", "sample_masking",
]  # fmt: skip
