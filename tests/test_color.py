"""Colour conversions against scikit-image, an independent reference."""

import numpy as np
import pytest
import torch
from skimage import color as skcolor

from stain_transforms.functional import (
    hed_to_rgb,
    lab_statistics,
    lab_to_rgb,
    luminosity,
    od_to_rgb,
    reinhard_transfer,
    rgb_to_hed,
    rgb_to_lab,
    rgb_to_od,
)


@pytest.fixture
def rgb():
    return torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def to_hwc(x):
    return x.permute(0, 2, 3, 1).numpy()


def test_lab_matches_skimage(rgb):
    expected = np.stack([skcolor.rgb2lab(img) for img in to_hwc(rgb)])
    np.testing.assert_allclose(to_hwc(rgb_to_lab(rgb)), expected, atol=1e-3)


@pytest.mark.parametrize("low", [0.0, 0.25], ids=["with dark pixels", "no dark pixels"])
def test_lab_both_ways_match_skimage_with_and_without_the_dark_toe(rgb, low):
    # The curves patch in their linear toe only when some value reaches it: check both paths.
    rgb = low + (1 - low) * rgb
    lab = rgb_to_lab(rgb)
    np.testing.assert_allclose(to_hwc(lab), np.stack([skcolor.rgb2lab(img) for img in to_hwc(rgb)]), atol=1e-3)
    back = np.stack([skcolor.lab2rgb(img) for img in to_hwc(lab)])
    np.testing.assert_allclose(to_hwc(lab_to_rgb(lab)), back, atol=1e-6)


DIFFERENTIABLE = {
    "rgb_to_lab": rgb_to_lab,
    "lab_to_rgb": lambda rgb: lab_to_rgb(rgb_to_lab(rgb) * 0.9),
    "lab_statistics": lambda rgb: torch.cat(lab_statistics(rgb)),
    "luminosity": luminosity,
    "reinhard_transfer": lambda rgb: reinhard_transfer(rgb, torch.tensor([60.0, 12.0, -6.0]), torch.tensor([12.0, 6.0, 5.0])),
}


@pytest.mark.parametrize("name", DIFFERENTIABLE)
def test_colour_functions_are_differentiable(name):
    # The fast paths work in place; under autograd they must fall back, and the gradients be right.
    rgb = (0.2 + 0.6 * torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64))
    assert torch.autograd.gradcheck(DIFFERENTIABLE[name], (rgb.requires_grad_(),))


def test_lab_roundtrip(rgb):
    torch.testing.assert_close(lab_to_rgb(rgb_to_lab(rgb)), rgb, atol=1e-6, rtol=0)


def test_hed_matches_skimage_on_stained_pixels(rgb):
    rgb = rgb * 0.9 + 0.05  # away from the clamps, where both libraries agree exactly
    expected = np.stack([skcolor.rgb2hed(img) for img in to_hwc(rgb)])
    ours = to_hwc(rgb_to_hed(rgb))
    positive = expected > 0  # scikit-image clips negative stain amounts, we keep them to stay invertible
    np.testing.assert_allclose(ours[positive], expected[positive], atol=1e-6)
    back = np.stack([skcolor.hed2rgb(img) for img in np.clip(ours, 0, None)])
    np.testing.assert_allclose(to_hwc(hed_to_rgb(torch.from_numpy(np.clip(ours, 0, None)).permute(0, 3, 1, 2))), back, atol=1e-6)


def test_od_is_beer_lambert(rgb):
    od = rgb_to_od(rgb)
    expected = -np.log(np.maximum(rgb.numpy(), 1 / 255))
    np.testing.assert_allclose(od.numpy(), expected)
    torch.testing.assert_close(od_to_rgb(od), rgb.clamp(min=1 / 255))
    assert torch.isfinite(rgb_to_od(torch.zeros(1, 3, 2, 2))).all()


def test_float32_agrees_with_float64(rgb):
    torch.testing.assert_close(rgb_to_lab(rgb.float()).double(), rgb_to_lab(rgb), atol=2e-4, rtol=0)
