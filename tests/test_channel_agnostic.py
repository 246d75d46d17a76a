import pytest
import torch

import domainmae
from domainmae.models import ChannelSpec

from .conftest import TINY

NAMES = ["DNA", "ER", "RNA", "AGP", "Mito"]


@pytest.fixture
def model():
    return domainmae.create_model("vit_tiny", channels=NAMES, **TINY).eval()


@pytest.mark.parametrize("names", [NAMES, ["RNA", "DNA", "Mito"], ["ER"]])
def test_runs_on_any_subset_and_order(model, names):
    imgs = torch.randn(2, len(names), 32, 32)
    out = model(imgs, channels=names)
    assert out.pred["image"].shape == (2, len(names) * 16, 64)
    assert out.mask["image"].shape == (2, len(names) * 16)
    assert torch.isfinite(out.loss)
    assert model.embed(imgs, channels=names).shape == (2, 32)
    assert model.embed_patches(imgs, channels=names).shape == (2, 4, 4, 32)


@pytest.mark.parametrize("pool", ["mean"])
def test_pooled_and_patch_embeddings_do_not_depend_on_channel_order(model, pool):
    imgs = torch.randn(3, 5, 32, 32)
    perm = [3, 0, 4, 1, 2]
    with torch.no_grad():
        a = model.embed(imgs, channels=NAMES, pool=pool)
        b = model.embed(imgs[:, perm], channels=[NAMES[i] for i in perm], pool=pool)
        pa = model.embed_patches(imgs, channels=NAMES)
        pb = model.embed_patches(imgs[:, perm], channels=[NAMES[i] for i in perm])
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pa, pb, atol=1e-5, rtol=1e-5)
    # but the channel identity matters: the same pixels under other names embed differently
    c = model.embed(imgs, channels=[NAMES[i] for i in perm], pool=pool)
    assert (a - c).abs().max() > 1e-3


def test_cls_pool_and_patch_mean_relation(model):
    imgs = torch.randn(2, 5, 32, 32)
    with torch.no_grad():
        mean = model.embed(imgs, pool="mean")
        patches = model.embed_patches(imgs)
        cls = model.embed(imgs, pool="cls")
    torch.testing.assert_close(patches.mean(dim=(1, 2)), mean, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(cls, mean)


def _non_embedding_params(model) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if "channel_embed" not in n)


def test_channels_pool_is_each_channels_token_mean_side_by_side(model):
    """``[B, C * D]``: block c is channel c's mean token; the blocks' mean is the mean pool; reordering the
    channels reorders the blocks (and nothing else)."""
    imgs = torch.randn(3, 5, 32, 32)
    perm = [3, 0, 4, 1, 2]
    with torch.no_grad():
        tokens = model.forward_encoder(model.tokenize(*model.split_inputs(imgs, NAMES)), None)[:, 1:]
        pooled = model.embed(imgs, channels=NAMES, pool="channels")
        shuffled = model.embed(imgs[:, perm], channels=[NAMES[i] for i in perm], pool="channels")
    assert pooled.shape == (3, 5 * 32)
    blocks = pooled.reshape(3, 5, 32)
    for c in range(5):  # channel c's tokens are the c-th run of 4 x 4 positions
        torch.testing.assert_close(blocks[:, c], tokens[:, c * 16 : (c + 1) * 16].mean(dim=1))
    torch.testing.assert_close(blocks.mean(dim=1), model.embed(imgs, channels=NAMES, pool="mean"))
    torch.testing.assert_close(shuffled.reshape(3, 5, 32), blocks[:, perm], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="pool must be one of"):
        model.embed(imgs, channels=NAMES, pool="max")


def test_parameter_count_does_not_grow_with_channels():
    small = domainmae.create_model("vit_tiny", channels=["a"], **TINY)
    big = domainmae.create_model("vit_tiny", channels=[f"c{i}" for i in range(8)], **TINY)
    assert _non_embedding_params(small) == _non_embedding_params(big)
    # with wavelength-coded bands there is nothing per channel at all
    bands3 = [ChannelSpec(f"B{i}", 400.0 + 50 * i) for i in range(3)]
    bands12 = [ChannelSpec(f"B{i}", 400.0 + 50 * i) for i in range(12)]
    n3 = sum(p.numel() for p in domainmae.create_model("vit_tiny", channels=bands3, **TINY).parameters())
    n12 = sum(p.numel() for p in domainmae.create_model("vit_tiny", channels=bands12, **TINY).parameters())
    assert n3 == n12


def test_unknown_channel_names_the_vocabulary(model):
    with pytest.raises(KeyError, match="unknown channel 'Actin'; this model knows: DNA, ER, RNA, AGP, Mito"):
        model(torch.randn(1, 1, 32, 32), channels=["Actin"])
    with pytest.raises(ValueError, match="images have 2 channels but 1 channel names"):
        model(torch.randn(1, 2, 32, 32), channels=["DNA"])
    with pytest.raises(ValueError, match="duplicate channel names"):
        model(torch.randn(1, 2, 32, 32), channels=["DNA", "DNA"])


def test_unseen_band_embeds_by_wavelength():
    bands = [{"name": "B02", "wavelength": 490}, {"name": "B04", "wavelength": 665}, {"name": "B08", "wavelength": 842}]
    model = domainmae.create_model("vit_tiny", channels=bands, **TINY).eval()
    codes = model.patch_embed.channel_embed
    # B05 (705 nm) was never in the vocabulary; its code sits closer to B04 than to B02.
    b05 = codes([ChannelSpec("B05", 705.0)])[0]
    b02, b04 = codes(["B02", "B04"])
    assert torch.dist(b05, b04) < torch.dist(b05, b02)
    out = model(torch.randn(2, 2, 32, 32), channels=["B04", ChannelSpec("B05", 705.0)])
    assert torch.isfinite(out.loss)


def test_rectangular_images_other_than_img_size(model):
    imgs = torch.randn(1, 2, 48, 24)
    out = model(imgs, channels=["DNA", "RNA"])
    assert out.pred["image"].shape == (1, 2 * 18, 64)
    assert model.embed_patches(imgs, channels=["DNA", "RNA"]).shape == (1, 6, 3, 32)
