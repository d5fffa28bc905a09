"""Stain jitter (Tellez et al., 2018): scale and shift each stain's concentration, then re-render.

An RGB image is unmixed into stain concentrations (Beer-Lambert: ``OD = stains @ concentrations``),
each stain's concentration is multiplied by a factor and shifted by an offset, and the image is
rendered back. With the Ruifrok & Johnston matrix this is the HED augmentation of Tellez et al.;
any other (3, k) stain basis, e.g. one estimated per image by Macenko or Vahadane, works the same.

Concentrations are in scikit-image's HED units (optical density / ln(10^6), as ``skimage.color.rgb2hed``)
in every basis, so that the same shift ``beta`` means the same amount of stain whatever the basis.

What happens to the background, and why:

- The factor is multiplicative, so a pixel without stain (white glass) has nothing to scale.
- Tellez's shift is additive: applied literally, it paints stain onto the glass and tints the
  background. Physically the shift models a tissue taking up more or less dye, and glass takes up none.
  So the shift is weighted by how much the pixel absorbs: 0 at and below ``SHIFT_RAMP[0]`` optical
  density in its most absorbed channel (white and near-white glass), rising linearly to 1 at
  ``SHIFT_RAMP[1]`` (clearly stained tissue). The linear ramp avoids seams at tissue borders; it plays
  the role of the intensity cut-off of Tellez et al.'s implementation, without its hard edge.
- A negative shift can at most remove the stain that is there: a concentration never crosses zero
  because of the shift (dye cannot be taken away from where there is none).

So a white pixel stays exactly white, and a pure background image is returned unchanged.
"""

from __future__ import annotations

import torch

from .._kernels.constants import Constant
from .._kernels.jitter import apply_jitter
from .color.hed import HED_UNIT, RGB_FROM_HED

# Columns: the Ruifrok & Johnston OD vectors of haematoxylin, eosin and DAB (as in scikit-image).
RUIFROK_STAINS = RGB_FROM_HED.T.contiguous()
# The same basis in scikit-image's HED units: OD = mix @ concentrations, and back.
_RUIFROK_MIX = Constant(RUIFROK_STAINS * HED_UNIT)
_RUIFROK_UNMIX = Constant(torch.linalg.inv(RUIFROK_STAINS) / HED_UNIT)

# Optical densities (in the most absorbed channel) between which the shift fades in: 0.05 is a
# transmission of 95% (a uint8 grey level of 242, bright glass), 0.25 of 78% (pale stained tissue).
SHIFT_RAMP = (0.05, 0.25)


def _per_sample(value: torch.Tensor, batch: int, name: str, shape: tuple[int, ...]) -> torch.Tensor:
    if value.ndim == len(shape):
        value = value.unsqueeze(0).expand(batch, *shape)
    if tuple(value.shape) != (batch, *shape):
        raise ValueError(f"{name} must have shape {(batch, *shape)} or {shape}, got {tuple(value.shape)}")
    return value


def _check_ramp(ramp: tuple[float, float]) -> tuple[float, float]:
    low, high = ramp
    if not 0.0 <= low < high:
        raise ValueError(f"ramp must be (low, high) optical densities with 0 <= low < high, got {ramp}")
    return low, high


def _hed_unit_basis(stains: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mix, unmix)`` of a (..., 3, k) basis in scikit-image's HED units, in ``like``'s dtype and device.

    ``OD = mix @ concentrations`` and ``concentrations = unmix @ OD`` (by least squares when k < 3).
    Ruifrok's basis, the usual one, is precomputed, with its exact inverse.
    """
    if stains is RUIFROK_STAINS:
        return _RUIFROK_MIX.like(like), _RUIFROK_UNMIX.like(like)
    stains = stains.to(like)
    return stains * HED_UNIT, torch.linalg.pinv(stains) / HED_UNIT


def shift_weight(od: torch.Tensor, ramp: tuple[float, float] = SHIFT_RAMP) -> torch.Tensor:
    """How much of a stain shift each pixel takes, (B, 1, H, W) in [0, 1], from its optical density.

    Example:
        >>> od = torch.tensor([0.0, 0.15, 1.0], dtype=torch.float64).view(1, 1, 1, 3).expand(1, 3, 1, 3)
        >>> [round(w, 6) for w in shift_weight(od).flatten().tolist()]
        [0.0, 0.5, 1.0]
    """
    low, high = _check_ramp(ramp)
    return ((od.amax(dim=1, keepdim=True) - low) / (high - low)).clamp(0.0, 1.0)


def stain_jitter(
    rgb: torch.Tensor,
    stains: torch.Tensor,
    factors: torch.Tensor,
    shifts: torch.Tensor,
    ramp: tuple[float, float] = SHIFT_RAMP,
) -> torch.Tensor:
    """Scale and shift stain concentrations in a stain basis; returns a new (B, 3, H, W) RGB batch.

    Args:
        rgb: (B, 3, H, W) float in [0, 1], or uint8 levels.
        stains: (3, k) or (B, 3, k) stain OD vectors as columns (any non-degenerate basis; ``k <= 3``).
        factors: (B, k) or (k,) multipliers of each stain's concentration (1 = unchanged).
        shifts: (B, k) or (k,) offsets added to each stain's concentration, in scikit-image HED units,
            weighted per pixel by :func:`shift_weight` so that background stays background.
        ramp: the optical densities between which the shift fades in.

    Colour that the basis does not explain (the least-squares residual when ``k < 3``) is kept as it is.
    Output is clipped into [0, 1]; it has the input's dtype, device and memory layout. uint8 input is
    worked in float32 on ``levels / 255`` and rounded back half to even, as :func:`stain_transforms.conversion.to_batch`
    and its ``restore`` convert: the same result as converting first, without image-sized float copies.

    Example:
        >>> rgb = torch.full((2, 3, 4, 4), 0.6)
        >>> out = stain_jitter(rgb, RUIFROK_STAINS, torch.ones(2, 3), torch.zeros(2, 3))
        >>> torch.allclose(out, rgb, atol=1e-6)
        True
    """
    batch = rgb.shape[0]
    shape_ok = stains.ndim in (2, 3) and stains.shape[-2] == 3 and 1 <= stains.shape[-1] <= 3
    if not shape_ok or (stains.ndim == 3 and stains.shape[0] != batch):
        raise ValueError(f"stains must have shape (3, k) or ({batch}, 3, k) with k <= 3, got {tuple(stains.shape)}")
    levels = rgb.dtype == torch.uint8
    k = stains.shape[-1]
    # Few, small operations before the pixels: on a small image they cost more than the pixels do.
    factors = _per_sample(factors.to(rgb.device, torch.float32 if levels else rgb.dtype), batch, "factors", (k,))
    shifts = _per_sample(shifts.to(factors), batch, "shifts", (k,))
    mix, unmix = _hed_unit_basis(stains, factors)  # (3, k) and (k, 3), or per image (B, 3, k) and (B, k, 3)
    if levels:  # a uint8 result has no gradient
        mix, unmix, factors, shifts = mix.detach(), unmix.detach(), factors.detach(), shifts.detach()

    # OD -> concentrations (unmix) -> scaled by the factors and shifted -> OD (mix) -> RGB. Only the
    # change of OD is rendered: scaling is one 3x3 matrix per image on the OD, and the shift is
    # mix @ shifts times each pixel's shift weight; a negative shift is bounded by the scaled stain.
    scale = (mix * (factors - 1.0).unsqueeze(-2)) @ unmix  # mix @ diag(f - 1) @ unmix, (B, 3, 3)
    floor_unmix = factors.unsqueeze(-1) * unmix  # the scaled concentrations are floor_unmix @ OD
    return apply_jitter(rgb, scale, mix, shifts, floor_unmix, _check_ramp(ramp))


def hed_jitter(
    rgb: torch.Tensor, factors: torch.Tensor, shifts: torch.Tensor, ramp: tuple[float, float] = SHIFT_RAMP
) -> torch.Tensor:
    """HED jitter of Tellez et al.: :func:`stain_jitter` in the Ruifrok & Johnston H, E, DAB basis.

    Per image ``b`` and channel ``c`` of ``skimage.color.rgb2hed``: ``hed[c] * factors[b, c] +
    shifts[b, c]`` (the shift weighted so that glass stays glass), converted back to RGB.

    Example:
        >>> rgb = torch.ones(1, 3, 8, 8)  # white glass stays white
        >>> out = hed_jitter(rgb, torch.tensor([[1.2, 0.8, 1.0]]), torch.tensor([[0.05, -0.05, 0.0]]))
        >>> out.min().item()
        1.0
    """
    return stain_jitter(rgb, RUIFROK_STAINS, factors, shifts, ramp)
