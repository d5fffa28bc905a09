"""stain_transforms: stain normalization and augmentation for histopathology, as pipeline transforms."""

__version__ = "0.1.0"

from .augment import HEDJitter
from .base import StainTransform
from .hub import list_weights
from .normalizers import (
    MacenkoNormalize,
    ReinhardNormalize,
    StainGANNormalize,
    StainNetNormalize,
    StainNormalizer,
    VahadaneNormalize,
)

__all__ = [
    "StainTransform", "StainNormalizer", "ReinhardNormalize", "MacenkoNormalize", "VahadaneNormalize", "HEDJitter",
    "__version__",
]
__all__ += ["StainNetNormalize", "StainGANNormalize", "list_weights"]
