import pytest
import torch

import domainmae
from domainmae.models import masking_from_scores

from .conftest import TINY

S2 = [{"name": n, "wavelength": w} for n, w in [("B02", 490), ("B03", 560), ("B04", 665), ("B08", 842)]]
S1 = ["VV", "VH"]


@pytest.fixture
def model():
    return domainmae.create_model("vit_tiny", sensors={"s2": S2, "s1": S1}, **TINY).eval()


def _batch(b=2):
    return {"s2": torch.randn(b, 4, 32, 32), "s1": torch.randn(b, 2, 32, 32)}


def test_per_sensor_heads_and_losses(model):
    out = model(_batch())
    assert set(out.losses) == {"s2", "s1"}
    assert out.pred["s2"].shape == (2, 4 * 16, 64) and out.pred["s1"].shape == (2, 2 * 16, 64)
    torch.testing.assert_close(out.loss, out.losses["s2"] + out.losses["s1"])
    assert set(model.decoder_pred) == {"s2", "s1"}


def test_sensor_loss_weights_scale_each_sensor_in_the_total():
    weighted = domainmae.create_model("vit_tiny", sensors={"s2": S2, "s1": S1}, sensor_loss_weights={"s1": 3.0},
                                      **TINY).eval()  # fmt: skip
    out = weighted(_batch(), generator=torch.Generator().manual_seed(0))
    # Per-sensor losses are logged unweighted; only the optimised total weighs them (s2 keeps 1).
    torch.testing.assert_close(out.loss, out.losses["s2"] + 3.0 * out.losses["s1"])
    # Saved and rebuilt with the weights; a model at the default saves no such key (old files unchanged).
    config = weighted.config.to_dict()
    assert config["sensor_loss_weights"] == {"s1": 3.0}
    assert domainmae.create_model(config).config.sensor_loss_weights == {"s1": 3.0}
    assert "sensor_loss_weights" not in domainmae.create_model("vit_tiny", sensors={"s2": S2, "s1": S1},
                                                               **TINY).config.to_dict()  # fmt: skip


@pytest.mark.parametrize(("weights", "message"), [
    ({"s3": 1.0}, r"sensor_loss_weights names unknown sensor 's3'; the model's sensors: s2, s1"),
    ({"s1": -1.0}, r"sensor_loss_weights\['s1'\] must be >= 0"),
    ({"s1": 0.0, "s2": 0.0}, "at least one sensor"),
])  # fmt: skip
def test_sensor_loss_weights_are_checked(weights, message):
    with pytest.raises(ValueError, match=message):
        domainmae.create_model("vit_tiny", sensors={"s2": S2, "s1": S1}, sensor_loss_weights=weights, **TINY)
    with pytest.raises(ValueError, match="multi-sensor models only"):
        domainmae.create_model("vit_tiny", in_chans=3, sensor_loss_weights={"image": 2.0}, **TINY)


def test_hidden_sensor_is_reconstructed_from_the_other_only(model):
    batch = _batch()
    # Hide all of S1 (tokens 64..95) and a quarter of S2 at random.
    scores = torch.rand(2, 96)
    scores[:, 64:] += 10
    masking = masking_from_scores(scores, 48)
    out = model(batch, masking=masking)
    assert torch.all(out.mask["s1"] == 1)
    assert torch.isfinite(out.losses["s1"]) and out.losses["s1"] > 0
    # S1 pixels do not influence any prediction: only S2 tokens were seen.
    other = dict(batch, s1=torch.randn(2, 2, 32, 32) * 100)
    torch.testing.assert_close(model(other, masking=masking).pred["s1"], out.pred["s1"])


def test_sensor_masking_strategy_hides_one_sensor(model):
    g = torch.Generator().manual_seed(0)
    out = model(_batch(8), mask_strategy="sensor", mask_ratio=0.9, generator=g)
    s1_hidden = out.mask["s1"].sum(1) == 32
    s2_hidden = out.mask["s2"].sum(1) == 64
    assert torch.all(s1_hidden | s2_hidden)


def test_chunks_given_the_mean_count_give_the_whole_batch_loss_and_gradients(model):
    # Random masking over the joint S2 + S1 tokens and nodata in S2 leave every row its own number of scored
    # tokens per sensor: a micro-batch or process must divide by the whole batch's count, not its own.
    batch = _batch(6)
    valid = {"s2": torch.rand(6, 32, 32) > 0.2}
    valid["s2"][:2] = False  # the first chunk holds no valid S2 pixel
    masking = model.sample_masking(model.split_inputs(batch)[0], (4, 4), generator=torch.Generator().manual_seed(3))
    chunks = [slice(0, 2), slice(2, 4), slice(4, 6)]
    rows = lambda c: ({k: v[c] for k, v in batch.items()}, {k: v[c] for k, v in valid.items()})  # noqa: E731
    counts = [model.loss_counts(rows(c)[0], valid=rows(c)[1], masking=masking.rows(c)) for c in chunks]
    assert counts[0]["s2"] == 0 and len({float(n["s1"]) for n in counts}) > 1  # uneven: the case at stake
    whole = model.loss_counts(batch, valid=valid, masking=masking)
    assert {k: int(sum(n[k] for n in counts)) for k in whole} == {k: int(v) for k, v in whole.items()}

    def loss_and_grads(chunks, counts=None):
        model.zero_grad()
        outs = [model(rows(c)[0], valid=rows(c)[1], masking=masking.rows(c), counts=counts, parts=len(chunks))
                for c in chunks]  # fmt: skip
        for out in outs:
            (out.loss / len(outs)).backward()
        mean = lambda f: torch.stack([f(out) for out in outs]).mean().detach()  # noqa: E731
        losses = {"loss": mean(lambda o: o.loss), **{k: mean(lambda o, k=k: o.losses[k]) for k in whole}}
        return losses, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    expected, expected_grads = loss_and_grads([slice(0, 6)])
    got, grads = loss_and_grads(chunks, whole)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=0)
    torch.testing.assert_close(grads, expected_grads, rtol=1e-4, atol=1e-7)
    own, _ = loss_and_grads(chunks)
    assert not torch.isclose(own["loss"], expected["loss"], rtol=1e-3)  # what each part's own mean gave


def test_single_sensor_embedding_and_errors(model):
    with torch.no_grad():
        emb = model.embed({"s2": torch.randn(2, 4, 32, 32)})
        both = model.embed(_batch())
    assert emb.shape == both.shape == (2, 32)
    with pytest.raises(TypeError, match=r"takes images as \{sensor: ...\}"):
        model(torch.randn(2, 4, 32, 32))
    with pytest.raises(KeyError, match="unknown sensor"):
        model({"s3": torch.randn(2, 4, 32, 32)})
    with pytest.raises(ValueError, match="share one pixel grid"):
        model({"s2": torch.randn(2, 4, 32, 32), "s1": torch.randn(2, 2, 16, 16)})
