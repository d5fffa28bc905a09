"""Deprecated alias: :class:`StainNormalizer` lives in :mod:`stain_transforms.normalizers.normalizer`.

Example:
    >>> from stain_transforms.normalizers import normalizer
    >>> StainNormalizer is normalizer.StainNormalizer
    True
"""

from .normalizer import PROGRESS_MIN_ITEMS, StainNormalizer

__all__ = ["PROGRESS_MIN_ITEMS", "StainNormalizer"]
