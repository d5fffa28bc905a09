"""Macenko normalization as a fitted transform."""

from __future__ import annotations

from typing import Any

import torch

from ..functional.macenko import macenko_from_od
from .stain_matrix import SOLVERS, StainMatrixNormalizer

# StainMatrixNormalizer and SOLVERS were defined here before stain_matrix.py: importing them from here still works.
__all__ = ["MacenkoNormalize", "SOLVERS", "StainMatrixNormalizer"]


class MacenkoNormalize(StainMatrixNormalizer):
    """Macenko et al. (2009) stain normalization, batched, with per-image source stain matrices.

    Each image's stain vectors are the extreme angles (``alpha`` / ``100 - alpha`` percentiles) of
    its tissue optical densities in their principal plane; pixels fainter than ``beta`` OD in any
    channel, or that the luminosity tissue mask calls background, are ignored. Estimation uses a
    regular grid of at most ``max_pixels`` pixels, so it is as fast on a large tile as on a small
    one.

    Concentrations are non-negative least squares by default (``solver="nnls"``, exact and in
    closed form for two stains, as StainTools does with its non-negative lasso): least squares
    gives pixels off the stain plane negative amounts of a stain, which remixing turns into
    colour casts. On the MITOS-ATYPIA-14 scanner pairs, NNLS scores 19.6 dB PSNR against 19.2 dB
    for least squares (no normalization: 19.14 dB). ``solver="lstsq"`` is the paper's and
    torchstain's choice; its whole map is a single 3x3 matrix per image in OD space.

    Fitting on many references: the element-wise median of their stain matrices (columns then
    re-normalised to unit length) and of their 99th-percentile concentrations. Images with too
    little tissue, or a single colour, pass through unchanged.

    Args:
        beta: OD threshold for the pixels used to estimate the stain vectors.
        alpha: angle percentile, in percent.
        solver: ``"nnls"`` or ``"lstsq"``.
        max_pixels: size of the estimation subsample per image.
        luminosity_threshold: tissue is darker than this lightness (L*/100).
        min_tissue_fraction: the minimum tissue fraction for an image to be normalized.

    Example:
        >>> from stain_transforms.testing import synthetic_tissue
        >>> reference, source = synthetic_tissue(seed=0), synthetic_tissue(seed=1, stain_scale=1.3)
        >>> normalizer = MacenkoNormalize().fit(reference)
        >>> tuple(normalizer.target_stain_matrix.shape), tuple(normalizer.target_max_concentrations.shape)
        ((3, 2), (2,))
        >>> out = normalizer(source)
        >>> out.shape, out.dtype
        ((128, 128, 3), dtype('uint8'))
    """

    def __init__(
        self,
        *,
        beta: float = 0.15,
        alpha: float = 1.0,
        solver: str = "nnls",
        max_pixels: int = 2**14,
        luminosity_threshold: float = 0.8,
        min_tissue_fraction: float = 0.01,
    ) -> None:
        super().__init__(
            solver=solver,
            max_pixels=max_pixels,
            luminosity_threshold=luminosity_threshold,
            min_tissue_fraction=min_tissue_fraction,
        )
        if beta < 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        if not 0.0 <= alpha < 50.0:
            raise ValueError(f"alpha must be a percentile in [0, 50), got {alpha}")
        self.beta = float(beta)
        self.alpha = float(alpha)

    @property
    def config(self) -> dict[str, Any]:
        return {**super().config, "beta": self.beta, "alpha": self.alpha}

    def estimate(self, od: torch.Tensor, tissue: torch.Tensor) -> torch.Tensor:
        return macenko_from_od(od, tissue & (od >= self.beta).all(dim=1), self.alpha)
