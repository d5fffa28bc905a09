"""stain_transforms: stain normalization and augmentation for histopathology, as pipeline transforms."""

__version__ = "0.1.0"

from .base import StainTransform
from .normalizers import ReinhardNormalize, StainNormalizer

__all__ = ["StainTransform", "StainNormalizer", "ReinhardNormalize", "__version__"]
