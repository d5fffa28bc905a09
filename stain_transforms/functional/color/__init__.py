"""Colour spaces on (B, 3, H, W) float tensors in [0, 1], one module per space.

- :mod:`.optical_density`: RGB <-> optical density (Beer-Lambert, white = 1).
- :mod:`.hed`: RGB <-> haematoxylin-eosin-DAB (Ruifrok & Johnston colour deconvolution).
- :mod:`.lab`: sRGB <-> CIE L*a*b* (D65), and the intermediate f-space in which Lab is affine.
- :mod:`.channels`: a 3x3 (or per-image) matrix applied to the channels.
"""

from .channels import channel_matmul
from .hed import HED_FROM_RGB, HED_UNIT, RGB_FROM_HED, hed_to_rgb, rgb_to_hed
from .lab import F_FROM_LAB, LAB_FROM_F, LAB_OFFSET, XYZ_FROM_RGB, lab_f_to_rgb, lab_to_rgb, rgb_to_lab, rgb_to_lab_f
from .optical_density import MIN_INTENSITY, od_to_rgb, rgb_to_od

__all__ = [
    "channel_matmul",
    "MIN_INTENSITY", "rgb_to_od", "od_to_rgb",
    "RGB_FROM_HED", "HED_FROM_RGB", "HED_UNIT", "rgb_to_hed", "hed_to_rgb",
    "XYZ_FROM_RGB", "LAB_FROM_F", "LAB_OFFSET", "F_FROM_LAB", "rgb_to_lab_f", "lab_f_to_rgb", "rgb_to_lab", "lab_to_rgb",
]
