"""A tiny channel-agnostic MAE memorises one real microscopy field: the training signal works."""
import numpy as np
import pytest
import tifffile
import torch

import domainmae

from .conftest import SAMPLES


@pytest.mark.slow
def test_tiny_model_overfits_one_real_image():
    folder = SAMPLES / "examplehuman"
    names = ["DNA", "pH3", "Actin"]
    field = np.stack([tifffile.imread(folder / f"AS_09125_050116030001_D03f00d{k}.tif") for k in range(3)])
    x = torch.from_numpy(field[:, 200:264, 200:264].astype(np.float32))
    x = ((x - x.mean((1, 2), keepdim=True)) / x.std((1, 2), keepdim=True))[None]  # per-channel standardised

    model = domainmae.create_model(
        "vit_tiny", channels=names, patch_size=8, img_size=64, embed_dim=64, depth=2, num_heads=4,
        decoder_embed_dim=64, decoder_depth=1, decoder_num_heads=4,
    )  # fmt: skip
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    eval_noise = torch.rand(1, 3 * 64, generator=torch.Generator().manual_seed(1))

    def masked_loss() -> float:
        model.eval()
        with torch.no_grad():
            loss = model(x, channels=names, noise=eval_noise).loss.item()
        model.train()
        return loss

    first = masked_loss()
    for _ in range(400):
        out = model(x.expand(8, -1, -1, -1), channels=names)  # fresh random masks every step
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    last = masked_loss()
    assert last < first / 5, (first, last)
    assert last < 0.5  # well below predicting the per-channel mean (loss 1.0 on standardised pixels)
