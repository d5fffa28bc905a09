"""stain_transforms: stain normalization and augmentation for histopathology, as pipeline transforms."""

__version__ = "0.1.0"

from .augment import HEDJitter
from .base import StainTransform
from .normalizers import MacenkoNormalize, ReinhardNormalize, StainNormalizer, VahadaneNormalize
from .normalizers import StainGANNormalize, StainNetNormalize
from .hub import list_weights

__all__ = [
    "StainTransform", "StainNormalizer", "ReinhardNormalize", "MacenkoNormalize", "VahadaneNormalize", "HEDJitter",
    "__version__",
]
__all__ += ["StainNetNormalize", "StainGANNormalize", "list_weights"]
