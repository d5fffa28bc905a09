"""Vahadane normalization as a fitted transform."""

from __future__ import annotations

from typing import Any

import torch

from ..functional.vahadane import (
    DEFAULT_ITERATIONS,
    DEFAULT_MAX_PIXELS,
    DEFAULT_REGULARIZER,
    random_pixels,
    vahadane_from_od,
)
from .stain_matrix import StainMatrixNormalizer


class VahadaneNormalize(StainMatrixNormalizer):
    """Vahadane et al. (2016) structure-preserving stain normalization, batched, in torch (no SPAMS).

    Each image's stain matrix is learnt by sparse non-negative dictionary learning on the optical
    densities of its tissue pixels (see :mod:`stain_transforms.functional.vahadane`), started from
    the Macenko estimate. Learning uses ``max_pixels`` pixels drawn at random with a generator
    seeded by ``seed``, so the transform is deterministic, and an image is normalized the same
    way alone or in a batch.

    Concentrations are non-negative least squares (``solver="nnls"``, exact and in closed form for
    two stains), as the method requires: a stain cannot be present in a negative amount, and
    least squares would let the noise of one stain leak into the other with a negative sign.

    Fitting on many references: the element-wise median of their stain matrices (columns then
    re-normalised to unit length) and of their 99th-percentile concentrations. Images with too
    little tissue, or a single colour, pass through unchanged.

    The dictionary learning is an iterative solver that works in place, so it is not differentiable:
    a float tensor that autograd tracks is detached, with a warning (once).

    Args:
        regularizer: the sparsity weight ``lambda`` of the dictionary learning.
        iterations: alternating updates of concentrations and stain vectors.
        seed: seeds the random pixel subsample.
        solver: ``"nnls"`` or ``"lstsq"``.
        max_pixels: pixels per image that the dictionary is learnt from.
        luminosity_threshold: tissue is darker than this lightness (L*/100).
        min_tissue_fraction: the minimum tissue fraction for an image to be normalized.

    Example:
        >>> from stain_transforms.testing import synthetic_tissue
        >>> reference, source = synthetic_tissue(seed=0), synthetic_tissue(seed=1, stain_scale=1.3)
        >>> normalizer = VahadaneNormalize().fit(reference)
        >>> out = normalizer(source)
        >>> out.shape, out.dtype
        ((128, 128, 3), dtype('uint8'))
    """

    differentiable = False  # the dictionary learning works in place

    def __init__(
        self,
        *,
        regularizer: float = DEFAULT_REGULARIZER,
        iterations: int = DEFAULT_ITERATIONS,
        seed: int = 0,
        solver: str = "nnls",
        max_pixels: int = DEFAULT_MAX_PIXELS,
        luminosity_threshold: float = 0.8,
        min_tissue_fraction: float = 0.01,
    ) -> None:
        super().__init__(
            solver=solver,
            max_pixels=max_pixels,
            luminosity_threshold=luminosity_threshold,
            min_tissue_fraction=min_tissue_fraction,
        )
        if regularizer < 0:
            raise ValueError(f"regularizer must be >= 0, got {regularizer}")
        if iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {iterations}")
        self.regularizer = float(regularizer)
        self.iterations = int(iterations)
        self.seed = int(seed)

    @property
    def config(self) -> dict[str, Any]:
        return {**super().config, "regularizer": self.regularizer, "iterations": self.iterations, "seed": self.seed}

    def sample(self, batch: torch.Tensor) -> torch.Tensor:
        # A fresh generator per call: the same image always gets the same pixels.
        return random_pixels(batch, self.max_pixels, torch.Generator().manual_seed(self.seed))

    def estimate(self, od: torch.Tensor, tissue: torch.Tensor) -> torch.Tensor:
        return vahadane_from_od(od, tissue, self.regularizer, self.iterations)
