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
from .staingan import ImagePool, StainGANConfig, StainGANResult, train_staingan, translate_pairs

__all__ = [
    "DistillConfig",
    "DistillResult",
    "ImagePool",
    "PairSet",
    "PairedImageDataset",
    "StainGANConfig",
    "StainGANResult",
    "UnpairedImageDataset",
    "colour_pairs",
    "distill",
    "pairs_from_folders",
    "pairs_from_teacher",
    "read_shifts",
    "split_names",
    "train_staingan",
    "translate_pairs",
    "validation_fidelity",
    "validation_psnr",
]
