import numpy as np
import pytest
import torch

from domainmae.models.patches import (
    patchify,
    patchify_channels,
    unpatchify,
    unpatchify_channels,
)
from domainmae.models.posembed import sincos_2d

from .reference import loop_patchify, numpy_reference_pos_embed


@pytest.mark.parametrize("shape", [(2, 3, 16, 24), (1, 1, 8, 8), (2, 7, 24, 8)])
def test_patchify_matches_loops_and_roundtrips(shape):
    imgs = torch.randn(shape)
    x = patchify(imgs, 8)
    torch.testing.assert_close(x, loop_patchify(imgs, 8))
    torch.testing.assert_close(unpatchify(x, 8, (shape[2] // 8, shape[3] // 8)), imgs)


def test_channel_patchify_is_channel_major_and_roundtrips():
    imgs = torch.randn(2, 4, 16, 24)
    x = patchify_channels(imgs, 8)
    assert x.shape == (2, 4 * 6, 64)
    # token c * N + l is channel c's patch l
    torch.testing.assert_close(x[:, 2 * 6 + 4], loop_patchify(imgs[:, 2:3], 8)[:, 4])
    torch.testing.assert_close(unpatchify_channels(x, 8, (2, 3)), imgs)


def test_patchify_rejects_sizes_not_multiple_of_patch():
    with pytest.raises(ValueError, match="multiple of the patch size 8"):
        patchify(torch.randn(1, 3, 20, 16), 8)


@pytest.mark.parametrize("grid", [(4, 4), (3, 5), (1, 7)])
def test_sincos_2d_matches_reference_on_rectangular_grids(grid):
    ours = sincos_2d(32, grid)
    assert ours.shape == (grid[0] * grid[1], 32)
    np.testing.assert_allclose(ours.numpy(), numpy_reference_pos_embed(32, *grid), atol=1e-6)
