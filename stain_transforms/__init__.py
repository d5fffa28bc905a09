"""stain_transforms: stain normalization and augmentation for histopathology, as pipeline transforms.

``import stain_transforms`` is quick: the transforms (and torch with them) are imported when first used,
``from stain_transforms import MacenkoNormalize`` or ``stain_transforms.MacenkoNormalize`` alike. Type
checkers and IDEs see the names through the ``TYPE_CHECKING`` imports below.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:
    from .augment import HEDJitter
    from .folders import normalize_folder
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

# Public name -> the module it is imported from on first use.
_LAZY = {
    "StainTransform": "transform",
    "StainNormalizer": "normalizers",
    "ReinhardNormalize": "normalizers",
    "MacenkoNormalize": "normalizers",
    "VahadaneNormalize": "normalizers",
    "StainNetNormalize": "normalizers",
    "StainGANNormalize": "normalizers",
    "HEDJitter": "augment",
    "list_weights": "hub",
    "normalize_folder": "folders",
}

__all__ = [
    "StainTransform", "StainNormalizer", "ReinhardNormalize", "MacenkoNormalize", "VahadaneNormalize", "HEDJitter",
    "__version__",
]
__all__ += ["StainNetNormalize", "StainGANNormalize", "list_weights", "normalize_folder"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value  # the next lookup is a plain attribute
        return value
    if not name.startswith("__") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f".{name}", __name__)  # a submodule: stain_transforms.testing, ...
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
