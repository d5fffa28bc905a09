"""Reinhard normalization as a fitted transform."""

from __future__ import annotations

import torch

from ..functional.reinhard import lab_statistics, reinhard_transfer, reinhard_transfer_from
from .normalizer import StainNormalizer


class ReinhardNormalize(StainNormalizer):
    """Reinhard colour transfer (Reinhard et al., 2001) in CIE Lab, as in the StainNet paper.

    Each image's per-channel Lab mean and standard deviation, computed over the whole image as in
    the original method, are mapped onto the target's. Fitting on many references takes the median
    of their per-image means and standard deviations.

    Args:
        luminosity_threshold: pixels with lightness L*/100 at or above this are background (used
            only to decide whether an image has enough tissue to be normalized).
        min_tissue_fraction: images with less tissue than this, and single-colour images, are
            returned unchanged.

    Example:
        >>> import numpy as np
        >>> from stain_transforms.testing import synthetic_tissue
        >>> reference, source = synthetic_tissue(seed=0), synthetic_tissue(seed=1, stain_scale=1.3)
        >>> normalizer = ReinhardNormalize().fit(reference)
        >>> out = normalizer(source)
        >>> out.shape, out.dtype
        ((128, 128, 3), dtype('uint8'))
    """

    statistics = ("mean", "std")

    def __init__(self, *, luminosity_threshold: float = 0.8, min_tissue_fraction: float = 0.01) -> None:
        super().__init__(luminosity_threshold=luminosity_threshold, min_tissue_fraction=min_tissue_fraction)
        self.register_buffer("target_mean", torch.zeros(3, dtype=torch.float64))
        self.register_buffer("target_std", torch.ones(3, dtype=torch.float64))

    def image_statistics(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each image's Lab mean and standard deviation: ``{"mean": (B, 3), "std": (B, 3)}``.

        Example:
            >>> white = torch.ones(1, 3, 4, 4, dtype=torch.float64)
            >>> [round(v) for v in ReinhardNormalize().image_statistics(white)["mean"][0].tolist()]  # L*, a*, b*
            [100, 0, 0]
        """
        mean, std = lab_statistics(batch)
        return {"mean": mean, "std": std}

    def normalize(self, batch: torch.Tensor) -> torch.Tensor:
        """Give every image of the (B, 3, H, W) batch the fitted Lab mean and standard deviation.

        Example:
            >>> from stain_transforms.testing import synthetic_tissue
            >>> normalizer = ReinhardNormalize().fit(synthetic_tissue(64, seed=0))
            >>> dark = synthetic_tissue(64, seed=1, stain_scale=1.3)
            >>> batch = torch.from_numpy(dark).permute(2, 0, 1)[None].double() / 255
            >>> lab_mean = lambda x: [round(v) for v in normalizer.image_statistics(x)["mean"][0].tolist()]
            >>> lab_mean(batch), lab_mean(normalizer.normalize(batch))  # up to clipping into [0, 1]
            ([66, 28, -4], [75, 21, -4])
            >>> [round(v) for v in normalizer.target_mean.tolist()]
            [76, 20, -4]
        """
        return reinhard_transfer(batch, self.target_mean, self.target_std)

    def normalize_with(self, batch: torch.Tensor, source: dict[str, torch.Tensor]) -> torch.Tensor:
        """Map Lab ``(lab - source mean) * target std / source std + target mean``, with the given source statistics.

        ``source["mean"]`` and ``source["std"]`` are (3,) (one map for the batch) or (B, 3).

        Example:
            >>> from stain_transforms.testing import synthetic_tissue
            >>> normalizer = ReinhardNormalize().fit(synthetic_tissue(64, seed=0))
            >>> batch = torch.rand(2, 3, 16, 16, dtype=torch.float64)
            >>> torch.allclose(normalizer.normalize_with(batch, normalizer.image_statistics(batch)), normalizer.normalize(batch))
            True
        """
        return reinhard_transfer_from(batch, source["mean"], source["std"], self.target_mean, self.target_std)
