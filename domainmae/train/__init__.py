"""The training engine: pretrain(), checkpoints, optimiser/schedule, logging, distributed."""
from .checkpoint import load_checkpoint
from .loop import NonFiniteLossError
from .reconstruct import reconstruct
from .run import pretrain

__all__ = ["NonFiniteLossError", "load_checkpoint", "pretrain", "reconstruct"]
