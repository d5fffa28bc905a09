"""Training: the StainGAN (CycleGAN) trainer, the StainNet distiller, and datasets of image folders.

Example:
    >>> from stain_transforms.training import DistillConfig
    >>> DistillConfig(recipe="paper").epochs
    300
"""

from .datasets import PairedImageDataset, UnpairedImageDataset, read_shifts, split_names
from .distill import (
    DistillConfig,
    DistillResult,
    PairSet,
    colour_pairs,
    distill,
    pairs_from_folders,
    pairs_from_teacher,
    validation_fidelity,
    validation_psnr,
)

__all__ = [
    "DistillConfig",
    "DistillResult",
    "PairSet",
    "PairedImageDataset",
    "UnpairedImageDataset",
    "colour_pairs",
    "distill",
    "pairs_from_folders",
    "pairs_from_teacher",
    "read_shifts",
    "split_names",
    "validation_fidelity",
    "validation_psnr",
]
