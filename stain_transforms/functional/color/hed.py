"""Haematoxylin-eosin-DAB colour deconvolution (Ruifrok & Johnston, 2001), as scikit-image computes it."""

from __future__ import annotations

import math

import torch

from .channels import channel_matmul
from .optical_density import od_to_rgb, rgb_to_od

# Ruifrok & Johnston (2001) stain vectors: haematoxylin, eosin, DAB (rows). Like scikit-image we use
# them as published (rows not re-normalised), so HED values and jitter presets agree with it.
RGB_FROM_HED = torch.tensor([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=torch.float64)
HED_FROM_RGB = torch.linalg.inv(RGB_FROM_HED)
# scikit-image expresses HED in units of OD / -log(1e-6); we keep its scale so that presets transfer.
HED_UNIT = -math.log(1e-6)


def rgb_to_hed(rgb: torch.Tensor) -> torch.Tensor:
    """RGB in [0, 1] to haematoxylin-eosin-DAB (Ruifrok colour deconvolution).

    Matches ``skimage.color.rgb2hed`` (same matrix and scale) except that we clamp intensities at
    1/255 instead of 1e-6. Negative stain amounts are kept, so that ``hed_to_rgb`` inverts exactly.

    Example:
        >>> rgb = torch.rand(2, 3, 8, 8) * 0.9 + 0.1
        >>> torch.allclose(hed_to_rgb(rgb_to_hed(rgb)), rgb, atol=1e-5)
        True
    """
    return channel_matmul(rgb_to_od(rgb), HED_FROM_RGB.T / HED_UNIT)


def hed_to_rgb(hed: torch.Tensor) -> torch.Tensor:
    """Haematoxylin-eosin-DAB back to RGB in [0, 1]; the inverse of :func:`rgb_to_hed`.

    Example:
        >>> hed_to_rgb(torch.zeros(1, 3, 2, 2)).min().item()  # no stain: white
        1.0
    """
    return od_to_rgb(channel_matmul(hed, RGB_FROM_HED.T * HED_UNIT))
