import pytest
import torch

import domainmae
from domainmae.models.losses import (
    fourier_l1,
    masked_mse,
    normalize_patches,
    reconstruction_loss,
    token_weight,
)
from domainmae.models.patches import patchify_channels

from .conftest import TINY


def test_invalid_pixels_do_not_change_the_loss_and_empty_tokens_drop_out():
    pred, target = torch.randn(2, 6, 16), torch.randn(2, 6, 16)
    mask = torch.tensor([[1, 1, 0, 1, 0, 1], [1, 0, 1, 1, 0, 0]], dtype=torch.float32)
    valid = torch.rand(2, 6, 16) > 0.3
    valid[0, 3] = False  # a masked token with no valid pixel: not part of the mean
    loss = masked_mse(pred, target, mask, valid)

    noisy = target.clone()
    noisy[~valid] += 1000.0
    torch.testing.assert_close(masked_mse(pred, noisy, mask, valid), loss)

    per_token = []
    for b in range(2):
        for i in range(6):
            if mask[b, i] and valid[b, i].any():
                v = valid[b, i]
                per_token.append(((pred[b, i][v] - target[b, i][v]) ** 2).mean())
    torch.testing.assert_close(loss, torch.stack(per_token).mean())


@pytest.mark.parametrize("nodata", [False, True])
def test_chunks_divided_by_the_mean_count_average_to_the_whole_batch_loss(nodata):
    # Rows with uneven numbers of masked (valid) tokens: each chunk's own mean weighs its tokens by how few it
    # holds, so the mean of chunk means is not the batch's mean; sums over the mean count per chunk average to it.
    pred, target = torch.randn(6, 8, 16), torch.randn(6, 8, 16)
    mask = (torch.rand(6, 8) < torch.linspace(0.1, 0.9, 6)[:, None]).float()
    valid = None
    if nodata:
        valid = torch.rand(6, 8, 16) > 0.4
        valid[:2] = False  # a chunk with no valid pixel: it scores nothing, yet the others' shares stay right
    kw = dict(patch_size=4, valid=valid, norm_pix=True, fourier_weight=0.01)
    whole = reconstruction_loss(pred, target, mask, **kw)
    chunks = [slice(0, 2), slice(2, 4), slice(4, 6)]
    rows = lambda c: {**kw, "valid": None if valid is None else valid[c]}  # noqa: E731
    count = torch.stack([token_weight(mask[c], rows(c)["valid"]).sum() for c in chunks]).mean()
    shares = torch.stack([reconstruction_loss(pred[c], target[c], mask[c], count=count, **rows(c)) for c in chunks])
    torch.testing.assert_close(shares.mean(), whole, rtol=1e-6, atol=0)
    own = torch.stack([reconstruction_loss(pred[c], target[c], mask[c], **rows(c)) for c in chunks])
    assert not torch.isclose(own.mean(), whole, rtol=1e-3)
    # A batch's own count gives its own mean; a count of 0 (nothing to score anywhere) gives 0, not NaN.
    mine = token_weight(mask, valid).sum()
    assert reconstruction_loss(pred, target, mask, count=mine, **kw) == whole
    assert reconstruction_loss(pred, target, mask * 0, count=mine * 0, **kw) == 0


def test_norm_pix_uses_only_valid_pixels():
    target = torch.randn(1, 2, 16) * 3 + 5
    valid = torch.ones(1, 2, 16, dtype=torch.bool)
    valid[0, 0, :4] = False
    target_bad = target.clone()
    target_bad[0, 0, :4] = 1e6
    a = normalize_patches(target, valid)[valid]
    b = normalize_patches(target_bad, valid)[valid]
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(normalize_patches(target), normalize_patches(target, torch.ones_like(valid)))


def test_fourier_term_matches_manual_fft_on_masked_tokens():
    pred, target = torch.randn(1, 3, 2 * 16), torch.randn(1, 3, 2 * 16)  # 4x4 patches, 2 colours (p, q, c)
    mask = torch.tensor([[1.0, 0.0, 1.0]])
    manual = []
    for i in (0, 2):
        fp = torch.fft.fft2(pred[0, i].reshape(4, 4, 2), dim=(0, 1)).abs()
        ft = torch.fft.fft2(target[0, i].reshape(4, 4, 2), dim=(0, 1)).abs()
        manual.append((fp - ft).abs().mean())
    torch.testing.assert_close(fourier_l1(pred, target, mask, 4), torch.stack(manual).mean())
    total = reconstruction_loss(pred, target, mask, patch_size=4, fourier_weight=0.01)
    torch.testing.assert_close(total, masked_mse(pred, target, mask) + 0.01 * torch.stack(manual).mean())


def test_model_valid_mask_excludes_nodata():
    model = domainmae.create_model("vit_tiny", channels=["B02", "B03"], **TINY)
    imgs = torch.randn(2, 2, 32, 32)
    valid = torch.ones(2, 32, 32, dtype=torch.bool)
    valid[:, :, :16] = False  # left half is nodata: grid columns 0-1 hold no valid pixel
    noise = torch.rand(2, 32)
    out = model(imgs, valid=valid, noise=noise)

    target = patchify_channels(imgs, 8)
    column = torch.arange(32) % 4
    scored = (out.mask["image"] == 1) & (column >= 2)
    expected = ((out.pred["image"] - target) ** 2).mean(-1)[scored].mean()
    torch.testing.assert_close(out.loss, expected)

    out0 = model(imgs, valid=torch.zeros(2, 32, 32, dtype=torch.bool), noise=noise)
    assert out0.loss.item() == 0.0  # nothing valid to score: zero, not NaN
