"""Stateful normalizers: ``fit(references)`` then transform."""

from .base import StainNormalizer
from .macenko import MacenkoNormalize, StainMatrixNormalizer
from .reinhard import ReinhardNormalize
from .staingan import StainGANNormalize
from .stainnet import StainNetNormalize
from .vahadane import VahadaneNormalize

__all__ = ["StainNormalizer", "ReinhardNormalize", "StainMatrixNormalizer", "MacenkoNormalize", "VahadaneNormalize"]
__all__ += ["StainNetNormalize", "StainGANNormalize"]
