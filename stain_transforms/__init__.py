"""stain_transforms: stain normalization and augmentation for histopathology, as pipeline transforms."""

from ._version import __version__
from .augment import HEDJitter
from .hub import list_weights
from .normalizers import (
    MacenkoNormalize,
    ReinhardNormalize,
    StainGANNormalize,
    StainNetNormalize,
    StainNormalizer,
    VahadaneNormalize,
)
from .transform import StainTransform

__all__ = [
    "StainTransform", "StainNormalizer", "ReinhardNormalize", "MacenkoNormalize", "VahadaneNormalize", "HEDJitter",
    "__version__",
]
__all__ += ["StainNetNormalize", "StainGANNormalize", "list_weights"]
