"""Choosing the guided filter's setting for a StainGAN on registered pairs.

``StainGANNormalize(guided_radius=..., guided_eps=...)`` redraws each translation with the source's
structure (:func:`~stain_transforms.functional.guided.guided_filter`). Which window and ridge suit a
generator depends on how far it moves edges and on the scanners, so the setting is chosen on
registered pairs: among :data:`GUIDED_SETTINGS`, the best PSNR against the target among those that
keep the mean SSIM against the source at :data:`STRUCTURE_FLOOR` or more (the rule that chose the
bundled recipes), else the one that keeps the most structure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from ..functional.guided import guided_filter
from ..metrics import Fidelity
from .datasets import to_tensor, to_uint8

Setting = tuple[int, float]
# (radius, eps) pairs tried: windows of 9 to 33 pixels, ridges of 0.01 and 0.03 in [0, 1] units squared.
GUIDED_SETTINGS: tuple[Setting, ...] = tuple((radius, eps) for radius in (4, 8, 16) for eps in (1e-4, 1e-3))
STRUCTURE_FLOOR = 0.93


def guided_outputs(sources: Sequence[np.ndarray], outputs: Sequence[np.ndarray], radius: int, eps: float) -> list[np.ndarray]:
    """Each uint8 HWC ``output`` redrawn with its ``source``'s structure, as ``StainGANNormalize`` does to one tile.

    Example:
        >>> from stain_transforms.testing import synthetic_tissue
        >>> source = synthetic_tissue(32)
        >>> inverted = 255 - source  # a change of colour only: the filter keeps it
        >>> int(np.abs(guided_outputs([source], [inverted], 4, 1e-6)[0].astype(int) - inverted).max())
        0
    """
    redrawn = []
    with torch.no_grad():
        for source, output in zip(sources, outputs, strict=True):
            filtered = guided_filter(to_tensor(source)[None], to_tensor(output)[None], radius, eps)
            redrawn.append(to_uint8(filtered[0]))
    return redrawn


def choose_guided(scores: Mapping[Setting, Fidelity], floor: float = STRUCTURE_FLOOR) -> Setting:
    """The setting with the best PSNR among those whose SSIM against the source is at least ``floor``.

    When none reaches the floor, the one with the highest SSIM against the source.

    Example:
        >>> choose_guided({(4, 1e-3): Fidelity(0.6, 23.0, 0.91), (8, 1e-4): Fidelity(0.6, 22.8, 0.94)})
        (8, 0.0001)
        >>> choose_guided({(4, 1e-3): Fidelity(0.6, 23.0, 0.91), (8, 1e-4): Fidelity(0.6, 22.8, 0.92)})
        (8, 0.0001)
    """
    if not scores:
        raise ValueError("no guided filter settings to choose from")
    kept = [setting for setting, score in scores.items() if score.ssim_source >= floor]
    if kept:
        return max(kept, key=lambda setting: scores[setting].psnr_target)
    return max(scores, key=lambda setting: scores[setting].ssim_source)


__all__ = ["GUIDED_SETTINGS", "STRUCTURE_FLOOR", "choose_guided", "guided_outputs"]
