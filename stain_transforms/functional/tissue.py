"""Tissue masks: which pixels carry stain, and whether an image has enough of them to normalize."""

from __future__ import annotations

import torch

from .color import _lab_f_, _srgb_to_linear, cast_like

# Pixels darker than this in every channel are clipped black (out-of-slide, pen, saturation), not stain.
BLACK_LEVEL = 10.0 / 255.0
# CIE Y of linear sRGB: the middle row of the sRGB -> XYZ matrix.
_Y_FROM_LINEAR = torch.tensor([[0.212671, 0.715160, 0.072169]], dtype=torch.float64)


def luminosity(rgb: torch.Tensor) -> torch.Tensor:
    """CIE lightness L*/100 in [0, 1] of a (B, 3, H, W) sRGB batch, shape (B, H, W).

    Example:
        >>> luminosity(torch.ones(1, 3, 2, 2)).flatten().tolist()  # white
        [1.0, 1.0, 1.0, 1.0]
    """
    return _lab_f_(_relative_luminance(rgb)).mul_(1.16).sub_(0.16)


def _relative_luminance(rgb: torch.Tensor) -> torch.Tensor:
    """CIE Y (white = 1) of a (B, 3, H, W) sRGB batch, shape (B, H, W)."""
    linear = _srgb_to_linear(rgb)
    return torch.matmul(cast_like(_Y_FROM_LINEAR, linear), linear.flatten(2)).view(linear[:, 0].shape)


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
