"""A synthetic second "site": the same slides as if stained in another lab and scanned on another scanner.

The cervical dataset comes from one lab, so the classifier's domain shift is simulated, in two
physically separate steps, on each image (a (B, 3, H, W) float batch in [0, 1]):

1. **Staining** (Beer-Lambert). The image's illumination (white point ``I0``: the bright background)
   is divided out and the rest turned into optical density, ``OD = -log(I / I0)``. The library's
   Macenko estimator (:func:`stain_transforms.functional.macenko.macenko_stain_matrix`) gives the
   image's own haematoxylin and eosin vectors ``S`` and concentrations ``C = pinv(S) @ OD``.
   Site B's slides are re-rendered with *site B's* stain vectors (another haematoxylin and
   counterstain formulation, so other hues, not just other amounts) and concentrations scaled by
   site B's staining times: ``OD' = S_B @ diag(k) @ C + (OD - S @ C)``. Colour the two stains do
   not explain (the residual: other counterstains, debris) is kept unchanged.
2. **Scanning**. Site B's scanner has another white balance (per-channel gain on the illumination)
   and another tone curve: a gamma and a gentle S-curve, then 8-bit quantisation.

None of this is drawn from the HED-jitter family used by the BRH augmentation (that scales H, E and
DAB amounts in Ruifrok's fixed basis within [0.75, 1.25]): the stain *directions* change, the
concentration factors lie outside [0.75, 1.25], and the tone curve and white balance act after
Beer-Lambert, in camera space. So an augmented classifier is not trained on the test shift itself.

The shift is deterministic (one site, one protocol, one scanner), so ``shift(x)`` is reproducible.

Example:
    >>> import torch
    >>> from stain_transforms.testing import synthetic_tissue
    >>> x = torch.from_numpy(synthetic_tissue(64, seed=0)).permute(2, 0, 1)[None] / 255.0
    >>> y = SiteShift()(x)
    >>> y.shape, bool(y.isfinite().all()), bool((y - x).abs().mean() > 0.02)
    (torch.Size([1, 3, 64, 64]), True, True)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from stain_transforms.functional.macenko import macenko_stain_matrix, subsample

# Site B's stain OD vectors (columns: haematoxylin, eosin/counterstain; normalised below). Compared
# with this dataset's own Macenko vectors (about (0.75, 0.58, 0.32) and (0.52, 0.79, 0.33)), site B's
# haematoxylin absorbs relatively more green (a more violet nuclear stain) and its counterstain
# more blue (a warmer, orange-pink cytoplasm).
SITE_B_STAINS = ((0.58, 0.26), (0.74, 0.76), (0.34, 0.60))


@dataclass(frozen=True)
class SiteShift:
    """Re-stain and re-scan images as site B would (see the module docstring).

    Args:
        stains: site B's (3, 2) stain OD vectors, as rows of (R, G, B) OD; columns are normalised.
        concentration_scale: multipliers of the haematoxylin and counterstain amounts.
        white_gain: per-channel gain of site B's scanner on the illumination (its white balance).
        gamma: tone-curve exponent, ``out = in ** gamma`` (below 1 brightens mid-tones).
        s_curve: strength in [0, 1] of a smooth S-curve blended in after the gamma (contrast).
        white_percentile: the percentile of each channel taken as the image's own white point.
        max_pixels: the white point and the stain vectors are estimated on a regular grid of at
            most this many pixels per image (plenty for 3 + 6 numbers, and fast).
    """

    stains: tuple[tuple[float, float], ...] = SITE_B_STAINS
    concentration_scale: tuple[float, float] = (1.4, 0.65)
    white_gain: tuple[float, float, float] = (1.12, 1.0, 0.86)
    gamma: float = 0.8
    s_curve: float = 0.35
    white_percentile: float = 99.0
    max_pixels: int = 2**14

    @property
    def config(self) -> dict:
        """The settings, JSON-serialisable, to record next to the results."""
        return asdict(self)

    def __call__(self, rgb: torch.Tensor) -> torch.Tensor:
        if rgb.ndim != 4 or rgb.shape[1] != 3:
            raise ValueError(f"rgb must have shape (B, 3, H, W), got {tuple(rgb.shape)}")
        rgb = rgb.float().clamp(1.0 / 255.0, 1.0)
        grid = subsample(rgb, self.max_pixels)
        # The illumination: a high percentile per channel (glass between cells is the brightest part).
        white = grid.quantile(self.white_percentile / 100.0, dim=2).clamp(min=0.2)[:, :, None, None]
        transmitted = (rgb / white).clamp(1.0 / 255.0, 1.0)
        od = -transmitted.log()

        # (B, 3, 2): this image's own stain vectors, from the library's Macenko estimator.
        source = macenko_stain_matrix(transmitted, max_pixels=self.max_pixels)
        target = torch.tensor(self.stains, dtype=rgb.dtype)
        target = (target / target.norm(dim=0, keepdim=True)).expand_as(source)
        scale = torch.tensor(self.concentration_scale, dtype=rgb.dtype)
        # OD' = OD + (S_B diag(k) - S) pinv(S) OD: one 3x3 matrix per image, the residual kept.
        change = (target * scale - source) @ torch.linalg.pinv(source)
        new_od = od + (change @ od.flatten(2)).view_as(od)
        restained = torch.exp(-new_od.clamp(min=0.0))

        gain = torch.tensor(self.white_gain, dtype=rgb.dtype)[None, :, None, None]
        scanned = (restained * white * gain).clamp(0.0, 1.0) ** self.gamma
        # Smoothstep S-curve (fixed points 0, 0.5, 1), blended with the identity by s_curve.
        s = scanned * scanned * (3.0 - 2.0 * scanned)
        out = (1.0 - self.s_curve) * scanned + self.s_curve * s
        return (out * 255.0).round().clamp(0, 255) / 255.0
