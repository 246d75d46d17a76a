"""The MAE against an independent, loop-based reference of the paper's algorithm."""
import pytest
import torch

import domainmae
from domainmae.models.patches import patchify_channels

from .conftest import TINY
from .reference import loop_patchify, numpy_reference_pos_embed


def reference_forward(model, tokens, targets, noise, ratio):
    """Per-sample MAE forward: sort noise, keep the lowest, run the model's own blocks.

    tokens: [B, L, D] embedded tokens with positions (and channel embeddings) added.
    targets: [B, L, P] target pixels. Returns (loss, pred [B, L, P]).
    """
    b, length, _ = tokens.shape
    keep = round(length * (1 - ratio))
    preds, num, den = [], 0.0, 0.0
    for n in range(b):
        order = sorted(range(length), key=lambda i: float(noise[n, i]))
        visible = order[:keep]
        x = torch.cat([model.cls_token[0], tokens[n, visible]], dim=0)[None]
        for blk in model.blocks:
            x = blk(x)
        latent = model.decoder_embed(model.norm(x))[0]
        full = []
        for i in range(length):
            full.append(latent[1 + visible.index(i)] if i in visible else model.mask_token[0, 0])
        x = torch.stack(full) + reference_decoder_embed(model, length)
        x = torch.cat([latent[:1], x])[None]
        for blk in model.decoder_blocks:
            x = blk(x)
        pred = model.decoder_pred(model.decoder_norm(x))[0, 1:]
        preds.append(pred)
        for i in range(length):
            if i not in visible:
                num = num + ((pred[i] - targets[n, i]) ** 2).mean()
                den += 1
    return num / den, torch.stack(preds)


def reference_decoder_embed(model, length):
    h, w = model.grid
    pos = torch.tensor(numpy_reference_pos_embed(model.decoder_embed_dim, h, w), dtype=torch.float32)
    reps = length // (h * w)
    emb = pos.repeat(reps, 1)
    if model.decoder_channel_embed is not None:
        emb = emb + model.decoder_channel_embed.learned.repeat_interleave(h * w, dim=0)
    return emb


def test_standard_mae_equals_reference():
    model = domainmae.create_model("vit_tiny", in_chans=3, **TINY).eval()
    imgs = torch.randn(2, 3, 32, 32)
    noise = torch.rand(2, 16)
    out = model(imgs, noise=noise)

    # Reference tokens: each patch's pixels through the kernel as a linear map.
    p = model.patch_size
    kernel = model.patch_embed.proj
    flat = loop_patchify(imgs, p)  # pixels (r, s, c)
    weight = kernel.weight.permute(0, 2, 3, 1).reshape(kernel.weight.shape[0], -1)
    pos = torch.tensor(numpy_reference_pos_embed(32, 4, 4), dtype=torch.float32)
    tokens = flat @ weight.T + kernel.bias + pos
    loss, pred = reference_forward(model, tokens, flat, noise, 0.75)

    torch.testing.assert_close(out.pred["image"], pred, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.loss, loss, atol=1e-5, rtol=1e-5)
    assert out.mask["image"].sum(1).tolist() == [12, 12]


def test_channel_agnostic_mae_equals_reference():
    names = ["DNA", "ER", "RNA"]
    model = domainmae.create_model("vit_tiny", channels=names, **TINY).eval()
    imgs = torch.randn(2, 3, 32, 32)
    noise = torch.rand(2, 3 * 16)
    out = model(imgs, channels=names, noise=noise)

    embed = model.patch_embed
    targets = patchify_channels(imgs, 8)
    weight = embed.proj.weight.reshape(embed.proj.weight.shape[0], -1)
    pos = torch.tensor(numpy_reference_pos_embed(32, 4, 4), dtype=torch.float32)
    tokens = torch.empty(2, 48, 32)
    for c in range(3):  # one shared kernel per channel, the channel's own identity vector
        tokens[:, c * 16 : (c + 1) * 16] = targets[:, c * 16 : (c + 1) * 16] @ weight.T + embed.proj.bias + pos
        tokens[:, c * 16 : (c + 1) * 16] += embed.channel_embed.learned[c]
    loss, pred = reference_forward(model, tokens, targets, noise, 0.75)

    torch.testing.assert_close(out.pred["image"], pred, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.loss, loss, atol=1e-5, rtol=1e-5)


def test_norm_pix_loss_matches_reference_formula():
    model = domainmae.create_model("vit_tiny", in_chans=3, norm_pix_loss=True, **TINY)
    imgs = torch.randn(2, 3, 32, 32) * 5 + 3
    noise = torch.rand(2, 16)
    out = model(imgs, noise=noise)
    target = loop_patchify(imgs, 8)
    target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
    expected = (((out.pred["image"] - target) ** 2).mean(-1) * out.mask["image"]).sum() / out.mask["image"].sum()
    torch.testing.assert_close(out.loss, expected)


@pytest.mark.parametrize("kind", ["standard", "channel"])
def test_gradient_reaches_only_masked_predictions(kind):
    extra = {"in_chans": 3} if kind == "standard" else {"channels": ["a", "b", "c"]}
    model = domainmae.create_model("vit_tiny", **extra, **TINY)
    out = model(torch.randn(2, 3, 32, 32))
    out.pred["image"].retain_grad()
    out.loss.backward()
    grad_norm = out.pred["image"].grad.abs().sum(-1)
    assert torch.all(grad_norm[out.mask["image"] == 0] == 0)
    assert torch.all(grad_norm[out.mask["image"] == 1] > 0)


def test_same_noise_same_result_and_encoder_sees_only_visible_tokens():
    model = domainmae.create_model("vit_tiny", in_chans=3, **TINY).eval()
    imgs = torch.randn(2, 3, 32, 32)
    noise = torch.rand(2, 16)
    a, b = model(imgs, noise=noise), model(imgs, noise=noise)
    torch.testing.assert_close(a.pred["image"], b.pred["image"])
    # Changing the pixels of a masked patch must not change any prediction.
    masked = int(torch.nonzero(a.mask["image"][0])[0])
    row, col = divmod(masked, 4)
    changed = imgs.clone()
    changed[0, :, row * 8 : row * 8 + 8, col * 8 : col * 8 + 8] += 10
    torch.testing.assert_close(model(changed, noise=noise).pred["image"], a.pred["image"])
