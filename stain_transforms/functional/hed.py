"""Deprecated alias of :mod:`stain_transforms.functional.jitter` (the stain jitter kernels' old module name).

Example:
    >>> from stain_transforms.functional import jitter
    >>> hed_jitter is jitter.hed_jitter
    True
"""

from .jitter import RUIFROK_STAINS, SHIFT_RAMP, hed_jitter, shift_weight, stain_jitter

__all__ = ["RUIFROK_STAINS", "SHIFT_RAMP", "hed_jitter", "shift_weight", "stain_jitter"]
