"""Shared test fixtures: tiny model settings so the suite stays fast on a 2-core CPU."""
from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest
import torch

SAMPLES = Path(__file__).resolve().parents[1] / "datasets" / "samples"

TINY = dict(
    patch_size=8, img_size=32, embed_dim=32, depth=2, num_heads=2,
    decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2,
)  # fmt: skip


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*script: str) -> list[str]:
    """The command line of a two-process torchrun launch of ``script`` (``-m module ...`` or a file) on a free port."""
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(free_port()),
            *script]  # fmt: skip
