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

import math

import torch

from .color import _HED_LOG_ADJUST, MIN_INTENSITY, RGB_FROM_HED, cast_like

# Columns: the Ruifrok & Johnston OD vectors of haematoxylin, eosin and DAB (as in scikit-image).
RUIFROK_STAINS = RGB_FROM_HED.T.contiguous()
_RUIFROK_UNMIX = torch.linalg.inv(RUIFROK_STAINS)

# Optical densities (in the most absorbed channel) between which the shift fades in: 0.05 is a
# transmission of 95% (a uint8 grey level of 242, bright glass), 0.25 of 78% (pale stained tissue).
SHIFT_RAMP = (0.05, 0.25)

# On a CPU, images are processed in blocks of this many pixels per thread, which keeps the
# intermediate results in cache; on a GPU the whole batch is one block.
CPU_BLOCK_PER_THREAD = 2**15


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


def _unmixing(stains: torch.Tensor) -> torch.Tensor:
    """The least-squares unmixing matrix (..., k, 3) of a (..., 3, k) basis; Ruifrok's, the usual one, is precomputed."""
    if stains.shape == (3, 3) and torch.equal(stains, cast_like(RUIFROK_STAINS, stains)):
        return cast_like(_RUIFROK_UNMIX, stains)
    return torch.linalg.pinv(stains)


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
        rgb: (B, 3, H, W) float in [0, 1].
        stains: (3, k) or (B, 3, k) stain OD vectors as columns (any non-degenerate basis; ``k <= 3``).
        factors: (B, k) or (k,) multipliers of each stain's concentration (1 = unchanged).
        shifts: (B, k) or (k,) offsets added to each stain's concentration, in scikit-image HED units,
            weighted per pixel by :func:`shift_weight` so that background stays background.
        ramp: the optical densities between which the shift fades in.

    Colour that the basis does not explain (the least-squares residual when ``k < 3``) is kept as it is.
    Output is clipped into [0, 1]; it has the input's dtype and device.

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
    stains = stains.to(rgb)
    k = stains.shape[-1]
    factors = _per_sample(factors.to(rgb), batch, "factors", (k,))
    shifts = _per_sample(shifts.to(rgb), batch, "shifts", (k,))

    low, high = _check_ramp(ramp)
    # Concentrations by least squares (the exact inverse for a 3x3 basis), in skimage's HED units.
    unmix = _unmixing(stains) / _HED_LOG_ADJUST  # (B, k, 3) or, for one shared basis, (k, 3)
    mix = (stains * _HED_LOG_ADJUST).expand(batch, 3, k)
    # Scaling is one 3x3 matrix per image on the OD: mix @ diag(f - 1) @ unmix.
    scale = mix @ ((factors - 1.0).unsqueeze(-1) * unmix)
    scaled_unmix = factors.unsqueeze(-1) * unmix
    negative = bool((shifts < 0).any())
    # With m the smallest log-intensity of a pixel (minus its largest OD), clamped into [-high, -low],
    # the shift's weight is (m + low) / -(high - low); ``slope`` folds that into the shift's -dOD.
    slope = (mix @ shifts.unsqueeze(-1)) / (high - low)  # (B, 3, 1)
    # exp() must stay finite, so -dOD is clamped at 30 (anything that large saturates to white anyway).
    # As log_rgb >= log(MIN_INTENSITY) and the weight <= 1, it can only get there when ``bound`` does.
    bound = -math.log(MIN_INTENSITY) * scale.abs().sum(dim=-1) + (mix.abs() @ shifts.abs().unsqueeze(-1)).squeeze(-1)
    clamp_needed = bool((bound > 30.0).any())

    def jitter_pixels(pixels: torch.Tensor, images: slice, out: torch.Tensor | None = None) -> torch.Tensor:
        """Pixels (b, 3, n) of ``images`` -> jittered (b, 3, n), into ``out`` if given. Works on log(I) = -OD."""
        log_rgb = pixels.clamp(min=MIN_INTENSITY).log_()
        weight_ramp = log_rgb.amin(dim=1, keepdim=True).clamp(-high, -low).add_(low)  # = -(high - low) * weight
        # Only the change of optical density dOD is rendered, I_out = I * exp(-dOD): the identity is
        # exact for unit factors and zero shifts, and colour outside the basis (the residual when
        # k < 3) is kept. ``minus_delta`` is -dOD.
        if negative:
            # A negative shift removes at most the stain that is present: shift >= -max(scaled, 0),
            # where -scaled = (f * unmix) @ log_rgb. (For positive shifts this bound never binds.)
            floor = torch.bmm(scaled_unmix[images], log_rgb).clamp_(max=0.0)
            weight = weight_ramp.mul_(-1.0 / (high - low))
            shift = (weight * shifts[images].unsqueeze(-1)).clamp_(min=floor)
            minus_delta = torch.bmm(-mix[images], shift).baddbmm_(scale[images], log_rgb)
        else:
            minus_delta = torch.bmm(scale[images], log_rgb).addcmul_(weight_ramp, slope[images])
        if clamp_needed:
            minus_delta.clamp_(max=30.0)
        transmittance = minus_delta.exp_()
        return torch.mul(transmittance, pixels, out=out).clamp_(0.0, 1.0)

    flat = rgb.flatten(2)
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (rgb, stains, factors, shifts))
    if rgb.device.type != "cpu" or needs_grad:
        return jitter_pixels(flat, slice(None)).view(rgb.shape)
    # On a CPU, keeping the intermediate results in cache matters more than the number of passes:
    # work image by image, in blocks of CPU_BLOCK_PER_THREAD pixels per thread.
    out = torch.empty_like(flat)
    block_size = CPU_BLOCK_PER_THREAD * torch.get_num_threads()
    for b in range(batch):
        for start in range(0, flat.shape[2], block_size):
            block = (slice(b, b + 1), slice(None), slice(start, start + block_size))
            jitter_pixels(flat[block], block[0], out=out[block])
    return out.view(rgb.shape)


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
