"""Deprecated alias: :class:`StainTransform` lives in :mod:`stain_transforms.transform`, and
:func:`transform_class` in :mod:`stain_transforms.registry`. Import them from there.

Example:
    >>> from stain_transforms import transform
    >>> StainTransform is transform.StainTransform
    True
"""

from .registry import transform_class
from .transform import StainTransform

__all__ = ["StainTransform", "transform_class"]
