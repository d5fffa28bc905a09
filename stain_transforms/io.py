"""Deprecated alias of :mod:`stain_transforms.conversion` (this module does no file I/O; see ``files``).

Example:
    >>> from stain_transforms import conversion
    >>> to_batch is conversion.to_batch
    True
"""

from ._kernels.levels import gather_channel_last, levels_to_unit
from .conversion import FLOAT_TOLERANCE, MIN_SIDE, ImageLike, Restore, is_well_formed, iter_batches, to_batch

__all__ = [
    "FLOAT_TOLERANCE", "MIN_SIDE", "ImageLike", "Restore", "gather_channel_last", "is_well_formed", "iter_batches",
    "levels_to_unit", "to_batch",
]
