"""Optical density (Beer-Lambert): ``OD = -log(I)`` with white = 1.0 (255 in uint8).

The convention of Macenko et al. (2009) and Vahadane et al. (2016): stains add in optical density.
"""

from __future__ import annotations

import torch

# Darkest intensity that still has a finite optical density: 1/255, one uint8 grey level.
MIN_INTENSITY = 1.0 / 255.0


def rgb_to_od(rgb: torch.Tensor) -> torch.Tensor:
    """RGB in [0, 1] to optical density ``-log(I)``, with I clamped to >= 1/255 so OD stays finite.

    Example:
        >>> rgb_to_od(torch.ones(1, 3, 1, 1)).abs().max().item()
        0.0
    """
    return -torch.log(rgb.clamp(min=MIN_INTENSITY))


def od_to_rgb(od: torch.Tensor) -> torch.Tensor:
    """Optical density back to RGB in [0, 1] (negative OD, brighter than white, is clipped).

    Example:
        >>> od_to_rgb(torch.zeros(1, 3, 1, 1)).min().item()
        1.0
    """
    return torch.exp(-od.clamp(min=0.0)).clamp(0.0, 1.0)
