"""Stateful normalizers: ``fit(references)`` then transform.

Each class is imported on first use (``from stain_transforms.normalizers import MacenkoNormalize``),
so that the fitted methods do not import the learned ones' model and Hub code.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .macenko import MacenkoNormalize
    from .normalizer import StainNormalizer
    from .reinhard import ReinhardNormalize
    from .stain_matrix import StainMatrixNormalizer
    from .staingan import StainGANNormalize
    from .stainnet import StainNetNormalize
    from .vahadane import VahadaneNormalize

# Public name -> its submodule.
_LAZY = {
    "StainNormalizer": "normalizer",
    "ReinhardNormalize": "reinhard",
    "StainMatrixNormalizer": "stain_matrix",
    "MacenkoNormalize": "macenko",
    "VahadaneNormalize": "vahadane",
    "StainNetNormalize": "stainnet",
    "StainGANNormalize": "staingan",
}

__all__ = ["StainNormalizer", "ReinhardNormalize", "StainMatrixNormalizer", "MacenkoNormalize", "VahadaneNormalize"]
__all__ += ["StainNetNormalize", "StainGANNormalize"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
