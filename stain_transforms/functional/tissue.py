"""Tissue masks: which pixels carry stain, and whether an image has enough of them to normalize."""

from __future__ import annotations

import torch

from .._kernels.constants import Constant
from .._kernels.lab import cie_f_, srgb_to_linear
from .color.lab import XYZ_FROM_RGB

# Pixels darker than this in every channel are clipped black (out-of-slide, pen, saturation), not stain.
BLACK_LEVEL = 10.0 / 255.0
# An image whose channels all span less than this is a single colour: there is no stain to normalize.
MIN_COLOUR_RANGE = 2.0 / 255.0
# Whether an image is worth normalizing is judged on a regular grid of about this many pixels:
# plenty to measure a tissue fraction of a percent, and the same small cost at any tile size.
CHECK_PIXELS = 4096
# CIE Y of linear sRGB: the middle row of the sRGB -> XYZ matrix.
_Y_FROM_LINEAR = Constant(XYZ_FROM_RGB[1:2])


def luminosity(rgb: torch.Tensor) -> torch.Tensor:
    """CIE lightness L*/100 in [0, 1] of a (B, 3, H, W) sRGB batch, shape (B, H, W).

    Example:
        >>> luminosity(torch.ones(1, 3, 2, 2)).flatten().tolist()  # white
        [1.0, 1.0, 1.0, 1.0]
    """
    return cie_f_(_relative_luminance(rgb)).mul_(1.16).sub_(0.16)


def _relative_luminance(rgb: torch.Tensor) -> torch.Tensor:
    """CIE Y (white = 1) of a (B, 3, H, W) sRGB batch, shape (B, H, W)."""
    linear = srgb_to_linear(rgb)
    return torch.matmul(_Y_FROM_LINEAR.like(linear), linear.flatten(2)).view(linear[:, 0].shape)


def _luminance_below(lightness: float) -> float:
    """The CIE Y under which L*/100 is below ``lightness``: L* = 116 f(Y) - 16, inverted."""
    f = (100.0 * lightness + 16.0) / 116.0
    return f**3 if f > 6 / 29 else (f - 16 / 116) / 7.787


def tissue_mask(rgb: torch.Tensor, luminosity_threshold: float = 0.8) -> torch.Tensor:
    """Boolean (B, H, W) mask of stained pixels.

    A pixel is tissue when its lightness L*/100 is below ``luminosity_threshold`` (bright glass
    background is excluded, as in StainTools) and it is not clipped black (max channel < 10/255).

    Example:
        >>> rgb = torch.ones(1, 3, 2, 2); rgb[0, :, 0, 0] = torch.tensor([0.6, 0.3, 0.6])
        >>> tissue_mask(rgb).sum().item()
        1
    """
    not_black = rgb.amax(dim=1) >= BLACK_LEVEL
    # L* is increasing in Y, so compare Y with the threshold's Y and skip the cube root.
    return (_relative_luminance(rgb) < _luminance_below(luminosity_threshold)) & not_black


def has_enough_tissue(mask: torch.Tensor, min_fraction: float, min_pixels: int = 16) -> torch.Tensor:
    """Boolean (B,) flag: at least ``min_fraction`` of the pixels and ``min_pixels`` pixels are tissue.

    Example:
        >>> mask = torch.zeros(2, 10, 10, dtype=torch.bool)
        >>> mask[0, :5] = True  # half of the first image is tissue, none of the second
        >>> has_enough_tissue(mask, min_fraction=0.1).tolist()
        [True, False]
    """
    return mask.flatten(1).sum(dim=1) >= max(min_pixels, min_fraction * mask[0].numel())


def colour_range(pixels: torch.Tensor) -> torch.Tensor:
    """The largest per-channel range (max - min) of each image of a (B, 3, ...) batch, shape (B,).

    Example:
        >>> round(colour_range(torch.tensor([[[0.2, 0.6], [0.5, 0.5], [0.1, 0.3]]])).item(), 6)
        0.4
    """
    flat = pixels.flatten(2)
    return (flat.amax(dim=2) - flat.amin(dim=2)).amax(dim=1)


def is_informative(pixels: torch.Tensor, tissue: torch.Tensor, min_tissue_fraction: float) -> torch.Tensor:
    """Boolean (B,): images whose ``pixels`` (B, 3, ...) have enough ``tissue`` (B, ...) and more than one colour.

    Example:
        >>> pixels = torch.rand(2, 3, 8, 8); pixels[1] = 0.5  # the second image is a single colour
        >>> is_informative(pixels, torch.ones(2, 8, 8, dtype=torch.bool), 0.1).tolist()
        [True, False]
    """
    return has_enough_tissue(tissue, min_tissue_fraction) & (colour_range(pixels) > MIN_COLOUR_RANGE)


def informative_images(batch: torch.Tensor, luminosity_threshold: float, min_tissue_fraction: float) -> torch.Tensor:
    """Boolean (B,): which images of a (B, 3, H, W) batch have enough tissue and more than one colour.

    Judged on a regular grid of about ``CHECK_PIXELS`` pixels per image.

    Example:
        >>> from stain_transforms.testing import synthetic_tissue
        >>> tissue = torch.from_numpy(synthetic_tissue(64, seed=0)).permute(2, 0, 1) / 255.0
        >>> batch = torch.stack([tissue, torch.ones(3, 64, 64), torch.zeros(3, 64, 64)])  # tissue, white, black
        >>> informative_images(batch, 0.8, 0.01).tolist()
        [True, False, False]
    """
    height, width = batch.shape[-2:]
    stride = max(1, int((height * width / CHECK_PIXELS) ** 0.5))
    grid = batch[..., ::stride, ::stride].contiguous()  # reductions over a strided view are slow
    return is_informative(grid, tissue_mask(grid, luminosity_threshold), min_tissue_fraction)
