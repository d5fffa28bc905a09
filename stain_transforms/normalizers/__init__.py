"""Stateful normalizers: ``fit(references)`` then transform."""

from .base import StainNormalizer
from .reinhard import ReinhardNormalize

__all__ = ["StainNormalizer", "ReinhardNormalize"]
