"""One valid-pixel rule (:mod:`domainmae.validity`): masks broadcast the same way for readers, normalisers and the
model, and NaN/inf or a nodata value make a pixel invalid whatever the array kind."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from domainmae.models.inputs import sensor_inputs
from domainmae.validity import expand_valid, fill_invalid, valid_pixels


def _image() -> np.ndarray:
    """``[2, 3, 4]`` float32: NaN, +inf, -inf and a nodata value (7) in channel 0, all else fine."""
    image = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    image[0, 0, 0], image[0, 0, 1], image[0, 1, 0] = np.nan, np.inf, -np.inf
    return image


@pytest.mark.parametrize("kind", [np.asarray, torch.from_numpy])
def test_nan_inf_and_nodata_are_invalid_in_numpy_and_torch(kind) -> None:
    image = kind(_image())
    expected = np.ones((2, 3, 4), dtype=bool)
    expected[0, 0, 0] = expected[0, 0, 1] = expected[0, 1, 0] = False
    ok = valid_pixels(image)
    assert type(ok) is type(image) and ok.dtype in (bool, torch.bool)
    np.testing.assert_array_equal(np.asarray(ok), expected)
    expected[0, 1, 3] = False  # 7 is the value at [0, 1, 3]
    np.testing.assert_array_equal(np.asarray(valid_pixels(image, nodata=7)), expected)


@pytest.mark.parametrize("kind", [np.asarray, torch.from_numpy])
def test_a_mask_without_channel_axis_applies_to_every_channel(kind) -> None:
    image = kind(_image())
    pixel = np.ones((3, 4), dtype=bool)
    pixel[2, 2] = False
    ok = np.asarray(valid_pixels(image, kind(pixel)))
    assert not ok[:, 2, 2].any() and ok[1].sum() == 11 and ok[0].sum() == 8
    np.testing.assert_array_equal(np.asarray(valid_pixels(image, kind(pixel[None]))), ok)  # [1, H, W]: the same
    per_channel = np.stack([pixel, np.ones_like(pixel)])
    assert np.asarray(valid_pixels(image, kind(per_channel)))[1].all()  # [C, H, W]: channel by channel


def test_a_numpy_mask_on_a_torch_image_gives_torch() -> None:
    pixel = np.zeros((3, 4), dtype=bool)
    ok = valid_pixels(torch.ones(2, 3, 4), pixel)
    assert isinstance(ok, torch.Tensor) and ok.shape == (2, 3, 4) and not ok.any()


def test_batched_masks_broadcast_over_channels_and_bad_shapes_are_named() -> None:
    images = torch.zeros(2, 3, 4, 5)
    per_pixel = torch.rand(2, 4, 5) > 0.5
    for mask in (per_pixel, per_pixel[:, None]):
        expanded = expand_valid(mask, images.shape)
        assert expanded.shape == (2, 3, 4, 5) and (expanded == per_pixel[:, None]).all()
    for bad in (torch.ones(3, 4, 5), torch.ones(2, 2, 4, 5), torch.ones(2, 4, 6), torch.ones(4, 5)):
        with pytest.raises(ValueError, match=r"valid mask of shape .* does not fit images \(2, 3, 4, 5\); "
                                             r"use \[B, H, W\] or \[B, C, H, W\]"):  # fmt: skip
            expand_valid(bad, images.shape)
    with pytest.raises(ValueError, match=r"^valid mask of shape \(4,\) .* use \[H, W\] or \[C, H, W\]"):
        expand_valid(np.ones(4, dtype=bool), (3, 4, 5))


def test_the_model_names_the_sensor_of_a_mask_that_does_not_fit() -> None:
    with pytest.raises(ValueError, match=r"^sensor 's2': valid mask of shape \(2, 4, 6\) does not fit"):
        sensor_inputs({"s2": 3}, torch.zeros(2, 3, 4, 5), None, torch.ones(2, 4, 6, dtype=torch.bool))
    (inp,) = sensor_inputs({"s2": 3}, torch.zeros(2, 3, 4, 5), None, torch.ones(2, 4, 5))
    assert inp.valid.dtype == torch.bool and inp.valid.shape == (2, 3, 4, 5)


def test_readers_fill_invalid_pixels_with_zero_and_keep_one_mask_for_all_channels() -> None:
    image = _image()
    given = np.ones((3, 4), dtype=bool)
    given[2, 3] = False  # e.g. a cloud
    keep = fill_invalid(image, given)
    expected = np.ones((3, 4), dtype=bool)
    expected[0, 0] = expected[0, 1] = expected[1, 0] = expected[2, 3] = False
    np.testing.assert_array_equal(keep, expected)
    assert (image[:, ~keep] == 0).all() and np.isfinite(image).all()
    np.testing.assert_array_equal(image[:, keep], _image()[:, keep])  # valid pixels untouched
