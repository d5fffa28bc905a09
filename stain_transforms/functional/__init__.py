"""Pure, batched, device-agnostic functions on (B, 3, H, W) float tensors in [0, 1]."""

from .color import hed_to_rgb, lab_to_rgb, od_to_rgb, rgb_to_hed, rgb_to_lab, rgb_to_od
from .concentrations import (
    least_squares_concentrations,
    masked_quantile,
    max_concentrations,
    nnls_concentrations,
    stain_transfer,
)
from .guided import box_mean, guided_filter
from .jitter import hed_jitter, stain_jitter
from .macenko import macenko_from_od, macenko_stain_matrix
from .reinhard import lab_statistics, reinhard_transfer, reinhard_transfer_from
from .tissue import colour_range, has_enough_tissue, informative_images, is_informative, luminosity, tissue_mask
from .vahadane import dictionary_learning, vahadane_from_od, vahadane_stain_matrix

__all__ = [
    "rgb_to_od", "od_to_rgb", "rgb_to_lab", "lab_to_rgb", "rgb_to_hed", "hed_to_rgb",
    "tissue_mask", "luminosity", "has_enough_tissue", "colour_range", "is_informative", "informative_images",
    "lab_statistics", "reinhard_transfer", "reinhard_transfer_from",
    "least_squares_concentrations", "nnls_concentrations", "masked_quantile", "max_concentrations", "stain_transfer",
    "macenko_stain_matrix", "macenko_from_od",
    "vahadane_stain_matrix", "vahadane_from_od", "dictionary_learning",
    "hed_jitter", "stain_jitter",
    "guided_filter", "box_mean",
]
