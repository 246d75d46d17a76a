"""The training engine: pretrain(), checkpoints, optimiser/schedule, logging, distributed."""
from .checkpoint import load_checkpoint
from .loop import NonFiniteLossError, pretrain
from .reconstruct import reconstruct

__all__ = ["NonFiniteLossError", "load_checkpoint", "pretrain", "reconstruct"]
