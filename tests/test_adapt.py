import pytest
import torch
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer

import domainmae

from .conftest import TINY


@pytest.fixture
def vit():
    return VisionTransformer(img_size=32, patch_size=8, in_chans=3, embed_dim=32, depth=2, num_heads=2)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_timm_vit_file_loads_into_channel_agnostic_model(tmp_path, vit, suffix):
    path = tmp_path / f"vit{suffix}"
    if suffix == ".pth":
        torch.save({"model": vit.state_dict()}, path)  # MAE checkpoints nest under "model"
    else:
        save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(path))
    model = domainmae.create_model("vit_tiny", channels=["DNA", "ER", "RNA", "AGP", "Mito"], **TINY)
    report = domainmae.load_pretrained(model, path)

    kernel = model.patch_embed.proj.weight
    torch.testing.assert_close(kernel, vit.patch_embed.proj.weight.sum(dim=1, keepdim=True))
    torch.testing.assert_close(model.blocks[1].attn.qkv.weight, vit.blocks[1].attn.qkv.weight)
    torch.testing.assert_close(model.norm.weight, vit.norm.weight)
    assert "patch_embed.proj.weight" in report.converted
    assert report.skipped["pos_embed"].startswith("fixed")
    assert "head.weight" in report.skipped
    assert "decoder_blocks.0.attn.qkv.weight" in report.missing  # a ViT has no decoder
    # A grey image through the summed kernel gives what the RGB ViT gives for grey RGB.
    grey = torch.randn(1, 1, 32, 32)
    rgb_tokens = vit.patch_embed(grey.expand(1, 3, 32, 32))
    ours = model.patch_embed.proj(grey).flatten(2).transpose(1, 2)
    torch.testing.assert_close(ours, rgb_tokens, atol=1e-5, rtol=1e-5)


def test_reference_mae_checkpoint_loads_decoder_too():
    source = domainmae.create_model("vit_tiny", in_chans=3, **TINY)
    state = source.state_dict()  # a standard MAE's keys are the reference models_mae.py names
    assert {"patch_embed.proj.weight", "decoder_pred.weight"} <= set(state)
    state["pos_embed"] = torch.zeros(1, 17, 32)
    model = domainmae.create_model("vit_tiny", channels=["DNA", "RNA"], **TINY)
    report = domainmae.load_pretrained(model, state)
    torch.testing.assert_close(model.decoder_blocks[0].mlp.fc1.weight, source.decoder_blocks[0].mlp.fc1.weight)
    torch.testing.assert_close(model.mask_token, source.mask_token)
    head = source.decoder_pred.weight.reshape(64, 3, 32).mean(1)  # pixels are (p, q, c)
    torch.testing.assert_close(model.decoder_pred.weight, head)
    assert report.missing == ["patch_embed.channel_embed.learned", "decoder_channel_embed.learned"]


def test_mismatched_width_is_reported_and_strict_fails(vit):
    model = domainmae.create_model("vit_tiny", channels=["DNA"], **{**TINY, "embed_dim": 64})
    report = domainmae.load_pretrained(model, vit.state_dict())
    assert "shape" in report.skipped["blocks.0.attn.qkv.weight"]
    with pytest.raises(ValueError, match="strict loading failed"):
        domainmae.load_pretrained(model, vit.state_dict(), strict=True)


def test_missing_and_corrupt_files_are_named(tmp_path):
    model = domainmae.create_model("vit_tiny", channels=["DNA"], **TINY)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        domainmae.load_pretrained(model, tmp_path / "nope.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pth"):
        domainmae.load_pretrained(model, bad)
