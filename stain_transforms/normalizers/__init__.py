"""Stateful normalizers: ``fit(references)`` then transform."""

from .macenko import MacenkoNormalize
from .normalizer import StainNormalizer
from .reinhard import ReinhardNormalize
from .stain_matrix import StainMatrixNormalizer
from .staingan import StainGANNormalize
from .stainnet import StainNetNormalize
from .vahadane import VahadaneNormalize

__all__ = ["StainNormalizer", "ReinhardNormalize", "StainMatrixNormalizer", "MacenkoNormalize", "VahadaneNormalize"]
__all__ += ["StainNetNormalize", "StainGANNormalize"]
