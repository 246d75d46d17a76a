"""Normalisation (self-standardisation, percentile clipping) and the shared geometric augmentation."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from domainmae.data.transforms import (
    Augment,
    BandStandardize,
    PercentileClip,
    SelfStandardize,
    percentile_clip,
    self_standardize,
)  # fmt: skip


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_self_standardize_zero_mean_unit_std_and_constant_channel(dtype) -> None:
    rng = np.random.default_rng(0)
    high = 255 if dtype == np.uint8 else 60000
    image = rng.uniform(0, high, size=(3, 32, 40)).astype(dtype)
    image[1] = 7  # a constant channel must not produce NaN/inf
    out = self_standardize(image)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    for c in (0, 2):
        assert abs(out[c].mean().item()) < 1e-5 and abs(out[c].std(correction=0).item() - 1) < 1e-4
    assert torch.equal(out[1], torch.zeros(32, 40))


def test_self_standardize_uses_valid_pixels_only() -> None:
    image = torch.randn(2, 16, 16) * 3 + 10
    valid = torch.ones(16, 16, dtype=torch.bool)
    valid[:, :4] = False
    image[:, ~valid] = 1e6  # nodata that would dominate the statistics
    out = self_standardize(image, valid)
    kept = out[:, valid]
    assert kept.mean(dim=1).abs().max() < 1e-5 and (kept.std(dim=1, correction=0) - 1).abs().max() < 1e-4
    assert (out[:, ~valid] == 0).all()


def test_percentile_clip_maps_percentiles_to_unit_range() -> None:
    image = np.stack([np.arange(10000, dtype=np.uint16).reshape(100, 100), np.full((100, 100), 3, np.uint16)])
    out = percentile_clip(image, low=1.0, high=99.0)
    assert out.min() == 0 and out.max() == 1
    lo, hi = np.percentile(image[0], [1, 99])
    middle = image[0].astype(np.float32)[50, 50]
    assert out[0, 50, 50].item() == pytest.approx((middle - lo) / (hi - lo))
    assert (out[0][image[0] <= lo] == 0).all() and (out[0][image[0] >= hi] == 1).all()
    assert torch.equal(out[1], torch.zeros(100, 100))
    with pytest.raises(ValueError, match="low < high"):
        percentile_clip(image, low=90, high=10)


def test_sample_normalisers_keep_channels_and_meta() -> None:
    sample = {"image": torch.rand(2, 8, 8) * 100, "channels": ("DNA", "ER"), "meta": {"field": "f"}}
    for transform in (SelfStandardize(), PercentileClip()):
        out = transform(sample)
        assert out["channels"] == ("DNA", "ER") and out["meta"] == {"field": "f"}
        assert out["image"].shape == (2, 8, 8) and not torch.equal(out["image"], sample["image"])


def _dihedral(plane: torch.Tensor) -> list[torch.Tensor]:
    """All 8 flips/rotations of ``plane`` [H, W]."""
    return [torch.rot90(p, k, dims=(0, 1)) for p in (plane, plane.flip(1)) for k in range(4)]


def test_augment_moves_every_channel_sensor_and_valid_mask_together() -> None:
    base = torch.rand(24, 24)
    threshold = base.median()
    sample = {
        "s2": {"image": base.expand(6, -1, -1).clone(), "channels": tuple("abcdef"), "valid": base > threshold},
        "s1": {"image": base.expand(2, -1, -1).clone(), "channels": ("VV", "VH"),
               "valid": (base > threshold).expand(2, -1, -1).clone()},
        "meta": {"scene": "x"},
    }  # fmt: skip
    augment = Augment()
    seen = set()
    for seed in range(12):
        torch.manual_seed(seed)
        out = augment(sample)
        s2, s1 = out["s2"], out["s1"]
        reference = s2["image"][0]
        # identical transform: every channel of both sensors stays a copy of the same plane...
        assert torch.equal(s2["image"], reference.expand(6, -1, -1)) and torch.equal(s1["image"], reference.expand(2, -1, -1))
        # ...which is one of the 8 flips/rotations of the input, and the masks moved with it.
        matches = [k for k, option in enumerate(_dihedral(base)) if torch.equal(option, reference)]
        assert len(matches) == 1
        seen.add(matches[0])
        assert s2["valid"].shape == (24, 24) and torch.equal(s2["valid"], reference > threshold)
        assert s1["valid"].shape == (2, 24, 24) and torch.equal(s1["valid"][1], reference > threshold)
        assert s2["channels"] == tuple("abcdef") and out["meta"] == {"scene": "x"}
    assert len(seen) > 2  # the transforms are random, not a fixed one


def test_augment_draws_its_flips_and_rotation_independently() -> None:
    """albumentations' Compose.set_random_seed gives every transform the same seed, and transforms seeded alike
    fire alike: the flips and the rotation came together or not at all, so no crop was ever mirrored."""
    base = torch.rand(8, 8)
    augment = Augment()
    torch.manual_seed(0)
    outcomes = []
    for _ in range(400):
        out = augment({"image": base[None].clone(), "channels": ("a",), "meta": {}})["image"][0]
        outcomes += [k for k, option in enumerate(_dihedral(base)) if torch.equal(option, out)]
    assert set(outcomes) == set(range(8))
    mirrored = sum(k >= 4 for k in outcomes) / len(outcomes)  # one flip of the two: p = 0.5
    assert 0.4 < mirrored < 0.6


def test_augment_resized_crop_is_shared_and_reproducible() -> None:
    base = torch.rand(40, 40)
    sample = {"image": base.expand(7, -1, -1).clone(), "channels": tuple("abcdefg"),
              "valid": torch.ones(40, 40, dtype=torch.bool), "meta": {}}  # fmt: skip
    augment = Augment(crop_size=16)
    torch.manual_seed(5)
    out = augment(sample)
    assert out["image"].shape == (7, 16, 16) and out["valid"].shape == (16, 16) and out["valid"].all()
    assert torch.equal(out["image"], out["image"][0].expand(7, -1, -1))
    torch.manual_seed(5)
    assert torch.equal(augment(sample)["image"], out["image"])


def test_augment_refuses_sensors_on_different_grids() -> None:
    sample = {"a": {"image": torch.zeros(1, 8, 8)}, "b": {"image": torch.zeros(1, 4, 4)}, "meta": {}}
    with pytest.raises(ValueError, match="one pixel grid"):
        Augment()(sample)


def test_band_standardize_uses_stored_statistics_by_channel_name() -> None:
    stats = {"s2": {"B02": {"mean": 10.0, "std": 2.0}, "B03": {"mean": -1.0, "std": 0.5}},
             "s1": {"VV": {"mean": -12.0, "std": 4.0}}}  # fmt: skip
    valid = torch.ones(4, 4, dtype=torch.bool)
    valid[0, 0] = False
    sample = {
        "s2": {"image": torch.stack([torch.full((4, 4), 3.0), torch.full((4, 4), 14.0)]), "channels": ("B03", "B02"),
               "valid": valid},
        "s1": {"image": torch.full((1, 4, 4), -4.0), "channels": ("VV",)},
        "meta": {},
    }  # fmt: skip
    out = BandStandardize(stats)(sample)
    assert torch.equal(out["s2"]["image"][0][valid], torch.full((15,), 8.0))
    assert torch.equal(out["s2"]["image"][1][valid], torch.full((15,), 2.0))
    assert (out["s2"]["image"][:, 0, 0] == 0).all() and torch.equal(out["s1"]["image"], torch.full((1, 4, 4), 2.0))
    plain = BandStandardize({"s1": stats["s1"]})(sample["s1"])
    assert torch.equal(plain["image"], out["s1"]["image"])
    with pytest.raises(ValueError, match=r"no band statistics for channels \['VH'\] of sensor 's1'"):
        BandStandardize(stats)({"s1": {"image": torch.zeros(1, 2, 2), "channels": ("VH",)}, "meta": {}})


NAN_STATS = {"s": {"a": {"mean": 10.0, "std": 3.0}, "b": {"mean": 9.0, "std": 2.0}}}


@pytest.mark.parametrize("normalise", [SelfStandardize(), PercentileClip(), BandStandardize(NAN_STATS)],
                         ids=["standardize", "percentile", "stats"])  # fmt: skip
def test_normalisers_leave_out_nan_and_inf_fill_them_and_mark_them_invalid(normalise) -> None:
    clean = torch.randn(2, 16, 16) * 3 + 10
    image = clean.clone()
    image[0, 2:6, 2:6] = float("nan")
    image[1, 9, 9] = float("inf")
    nodata = torch.ones(16, 16, dtype=torch.bool)
    nodata[:, 0] = False
    out = normalise({"image": image, "channels": ("a", "b"), "valid": nodata, "meta": {}})
    expected = nodata & torch.isfinite(image)  # [2, 16, 16]: the NaN block is in one channel only
    assert torch.equal(out["valid"], expected)
    assert torch.isfinite(out["image"]).all() and (out["image"][~expected] == 0).all()
    # The statistics see the valid pixels only: as if the non-finite ones had been marked invalid.
    reference = normalise({"image": clean, "channels": ("a", "b"), "valid": expected, "meta": {}})
    assert torch.equal(out["image"], reference["image"])


def test_normalisers_keep_the_valid_mask_shape_when_every_pixel_is_finite() -> None:
    image = torch.randn(2, 8, 8)
    assert "valid" not in SelfStandardize()({"image": image, "channels": ("a", "b")})
    nodata = torch.rand(8, 8) > 0.2
    assert torch.equal(SelfStandardize()({"image": image, "channels": ("a", "b"), "valid": nodata})["valid"], nodata)
    image[:, 3, 3] = float("nan")  # all channels at one pixel, as rasters mark nodata: still one [H, W] mask
    assert torch.equal(SelfStandardize()({"image": image, "channels": ("a", "b")})["valid"], torch.isfinite(image[0]))


def test_self_standardize_and_percentile_clip_ignore_nan_in_their_statistics() -> None:
    image = torch.randn(1, 16, 16)
    poisoned = image.clone()
    poisoned[0, :4] = float("nan")
    for normalise in (self_standardize, percentile_clip):
        out = normalise(poisoned)
        assert torch.isfinite(out).all()
        assert torch.equal(out, normalise(image, valid=torch.isfinite(poisoned[0])))
