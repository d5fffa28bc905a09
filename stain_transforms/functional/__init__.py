"""Pure, batched, device-agnostic functions on (B, 3, H, W) float tensors in [0, 1]."""

from .color import hed_to_rgb, lab_to_rgb, od_to_rgb, rgb_to_hed, rgb_to_lab, rgb_to_od
from .reinhard import lab_statistics, reinhard_transfer
from .tissue import has_enough_tissue, luminosity, tissue_mask

__all__ = [
    "rgb_to_od", "od_to_rgb", "rgb_to_lab", "lab_to_rgb", "rgb_to_hed", "hed_to_rgb",
    "tissue_mask", "luminosity", "has_enough_tissue",
    "lab_statistics", "reinhard_transfer",
]
