"""The base of the stain-matrix normalizers (Macenko, Vahadane): unmix with the source, remix with the target."""

from __future__ import annotations

from typing import Any

import torch

from ..functional.color import rgb_to_od
from ..functional.concentrations import (
    least_squares_concentrations,
    max_concentrations,
    nnls_concentrations,
    stain_transfer,
)
from ..functional.macenko import REFERENCE_STAIN_MATRIX, pixel_masks, subsample
from ..functional.tissue import is_informative
from .normalizer import StainNormalizer

SOLVERS = ("lstsq", "nnls")


class StainMatrixNormalizer(StainNormalizer):
    """Base of the stain-matrix methods (Macenko, Vahadane): unmix with the source, remix with the target.

    Per image, the source stain matrix ``S`` (3, 2) and the 99th percentile of each stain's
    concentration over the tissue pixels are estimated on a subsample of pixels. Normalizing
    computes the concentrations ``c`` with ``S`` (least squares or non-negative least squares),
    scales each stain by ``target_max / source_max`` and recomposes ``od = T @ c`` with the target
    matrix ``T``. White (zero OD) stays white.

    Fitting on many references takes the element-wise median of their stain matrices, whose
    columns are then re-normalised to unit length, and the median of their maximum concentrations.

    Subclasses implement :meth:`sample` (which pixels to estimate from) and :meth:`estimate`.

    Args:
        solver: ``"nnls"`` (non-negative least squares) or ``"lstsq"`` (least squares) concentrations.
        max_pixels: statistics are estimated on at most this many pixels per image.
        luminosity_threshold: tissue is darker than this lightness (L*/100).
        min_tissue_fraction: the minimum tissue fraction for an image to be normalized.

    Example:
        >>> from stain_transforms import MacenkoNormalize, VahadaneNormalize
        >>> issubclass(MacenkoNormalize, StainMatrixNormalizer), issubclass(VahadaneNormalize, StainMatrixNormalizer)
        (True, True)
    """

    statistics = ("stain_matrix", "max_concentrations")

    def __init__(
        self,
        *,
        solver: str = "nnls",
        max_pixels: int = 2**14,
        luminosity_threshold: float = 0.8,
        min_tissue_fraction: float = 0.01,
    ) -> None:
        super().__init__(luminosity_threshold=luminosity_threshold, min_tissue_fraction=min_tissue_fraction)
        if solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
        if max_pixels < 256:
            raise ValueError(f"max_pixels must be at least 256, got {max_pixels}")
        self.solver = solver
        self.max_pixels = int(max_pixels)
        self.register_buffer("target_stain_matrix", REFERENCE_STAIN_MATRIX.clone())
        self.register_buffer("target_max_concentrations", torch.ones(2, dtype=torch.float64))

    @property
    def config(self) -> dict[str, Any]:
        return {**super().config, "solver": self.solver, "max_pixels": self.max_pixels}

    # -- what subclasses provide -------------------------------------------------------------

    def sample(self, batch: torch.Tensor) -> torch.Tensor:
        """The (B, 3, N) pixels that statistics are estimated from: a regular grid by default."""
        return subsample(batch, self.max_pixels)

    def estimate(self, od: torch.Tensor, tissue: torch.Tensor) -> torch.Tensor:
        """The (B, 3, 2) stain matrices from (B, 3, N) optical densities and their (B, N) tissue mask."""
        raise NotImplementedError

    # -- statistics --------------------------------------------------------------------------

    def concentrations(self, od: torch.Tensor, stain_matrix: torch.Tensor) -> torch.Tensor:
        """Concentrations (B, 2, ...) of (B, 3, ...) optical densities with this normalizer's solver."""
        if self.solver == "nnls":
            return nnls_concentrations(od, stain_matrix)
        return least_squares_concentrations(od, stain_matrix)

    def image_statistics(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        pixels = self.sample(batch)
        return self._statistics(pixels, pixel_masks(pixels, self.luminosity_threshold))

    def _statistics(self, pixels: torch.Tensor, tissue: torch.Tensor) -> dict[str, torch.Tensor]:
        od = rgb_to_od(pixels)
        stains = self.estimate(od, tissue)
        maxima = max_concentrations(self.concentrations(od, stains), tissue)
        return {"stain_matrix": stains, "max_concentrations": maxima}

    def pool(self, name: str, values: torch.Tensor) -> torch.Tensor:
        pooled = super().pool(name, values)
        if name == "stain_matrix":
            pooled = pooled / pooled.norm(dim=0, keepdim=True)
        return pooled

    def informative(self, batch: torch.Tensor) -> torch.Tensor:
        """Boolean (B,): enough tissue and more than one colour, judged on the estimation subsample.

        Same rule as :meth:`StainNormalizer.informative`, applied to the ``max_pixels`` pixels that
        statistics are estimated from (exact for images no larger than that): an image is
        normalized when its statistics can be estimated, and the check costs the same on a large
        tile as on a small one.
        """
        pixels = self.sample(batch)
        return self._informative(pixels, pixel_masks(pixels, self.luminosity_threshold))

    def _informative(self, pixels: torch.Tensor, tissue: torch.Tensor) -> torch.Tensor:
        return is_informative(pixels, tissue, self.min_tissue_fraction)

    # -- transforming ------------------------------------------------------------------------

    def apply_batch(self, batch: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
        # As StainNormalizer.apply_batch, but the subsample and its tissue mask serve both to pick
        # the informative images and to estimate their statistics, instead of being computed twice.
        self._require_fitted()
        if self.source is not None:
            return self.normalize_with(batch, self._source_on(batch))
        pixels = self.sample(batch)
        tissue = pixel_masks(pixels, self.luminosity_threshold)
        usable = self._informative(pixels, tissue)
        if bool(usable.all()):
            return self.normalize_with(batch, self._statistics(pixels, tissue))
        out = batch.clone()
        if bool(usable.any()):
            out[usable] = self.normalize_with(batch[usable], self._statistics(pixels[usable], tissue[usable]))
        return out

    def normalize(self, batch: torch.Tensor) -> torch.Tensor:
        return self.normalize_with(batch, self.image_statistics(batch))

    def normalize_with(self, batch: torch.Tensor, source: dict[str, torch.Tensor]) -> torch.Tensor:
        """Unmix with the given source stain matrix and maximum concentrations, remix with the target.

        ``source["stain_matrix"]`` is (3, 2) or (B, 3, 2), ``source["max_concentrations"]`` (2,) or (B, 2);
        see :meth:`StainNormalizer.normalize_with <stain_transforms.StainNormalizer.normalize_with>` for an example.
        """
        return stain_transfer(
            batch,
            source["stain_matrix"],
            source["max_concentrations"],
            self.target_stain_matrix,
            self.target_max_concentrations,
            solver=self.solver,
        )
