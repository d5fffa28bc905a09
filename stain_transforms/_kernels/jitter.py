"""The inner loop of stain jitter: one matrix product per block of pixels.

:func:`stain_transforms.functional.stain_jitter` computes, for each pixel with optical density OD
(``-log I``) and each image's basis ``mix`` (OD = mix @ concentrations) and ``unmix``:

    dOD = scale @ OD' + mix @ (shift * w(OD)),   I_out = I * exp(-dOD)

where ``scale = mix @ diag(factors - 1) @ unmix`` and ``w`` is the shift ramp: 0 on glass, rising
linearly to 1 between the optical densities ``low`` and ``high`` of the pixel's most absorbed channel.
Only the change of OD is rendered, so colour outside the basis is kept, and unit factors with zero
shifts give back the input exactly. A negative shift removes at most the stain that is there:
``shift * w >= -max(f * unmix @ OD, 0)``.

Plain formula: the lines above, one tensor operation each. Here, per block:

- with m = min over channels of log(I) (minus the largest OD), clamped into [-high, -low],
  ``w = (m + low) / -(high - low)``; for shifts that are all >= 0 the bound never binds, and
  ``-dOD = [scale, slope] @ [log I; m + low]`` with ``slope = mix @ shifts / (high - low)``: one product;
- otherwise ``-dOD = [scale, -mix] @ [log I; clamp(shift * w, min=floor)]``, also one product.

``-dOD`` is clamped at ``EXP_LIMIT`` before ``exp``: exp(30) is 1e13, so any pixel at or above the limit
is white after clipping, and the exponential never overflows.
uint8 input is converted block by block (the result equals converting the whole image first).
"""

from __future__ import annotations

import torch

from .blocks import cpu_blocks, thread_scratch, works_in_blocks
from .levels import copy_levels, levels_to_unit, unit_to_levels_

# Darkest intensity that still has a finite optical density: one uint8 grey level.
MIN_INTENSITY = 1.0 / 255.0
# -dOD above this renders white anyway; clamping keeps exp() finite.
EXP_LIMIT = 30.0


def apply_jitter(
    rgb: torch.Tensor,
    scale: torch.Tensor,
    mix: torch.Tensor,
    shifts: torch.Tensor,
    floor_unmix: torch.Tensor,
    ramp: tuple[float, float],
) -> torch.Tensor:
    """Jitter (B, 3, H, W) ``rgb`` (floats in [0, 1], or uint8 levels); returns a new, clipped batch.

    Args:
        rgb: the images; the result has their dtype, device and memory layout.
        scale: (B, 3, 3) ``mix @ diag(factors - 1) @ unmix``.
        mix: (3, k) or (B, 3, k) stain basis in the units of ``shifts``.
        shifts: (B, k) concentration shifts.
        floor_unmix: (B, k, 3) ``factors * unmix``, which bounds a negative shift.
        ramp: ``(low, high)`` optical densities of the shift ramp.

    Example:
        >>> rgb = torch.full((1, 3, 2, 2), 0.5)
        >>> mix = torch.eye(3)
        >>> out = apply_jitter(rgb, torch.zeros(1, 3, 3), mix, torch.zeros(1, 3), torch.eye(3)[None], (0.05, 0.25))
        >>> torch.equal(out, rgb)
        True
    """
    batch, k = rgb.shape[0], shifts.shape[-1]
    low, high = ramp
    # On the CPU the sign is free to read; on a GPU reading it would wait for the device.
    signed = rgb.device.type != "cpu" or shifts.amin().item() < 0
    if signed:
        matrix = torch.cat((scale, (-mix).expand(batch, 3, k)), dim=-1)  # [scale, -mix]
    else:
        matrix = torch.cat((scale, (mix @ shifts.unsqueeze(-1)) / (high - low)), dim=-1)  # [scale, slope]

    def jitter_block(pixels: torch.Tensor, images: slice, out: torch.Tensor | None, scratch: dict) -> torch.Tensor:
        """Pixels (b, 3, n) of ``images`` -> jittered (b, 3, n), not yet clipped (``out`` if given)."""
        operand = scratch.get("operand")  # log(I), and below it the shifts, or m + low
        rows = matrix.shape[-1]
        log_rgb = torch.clamp(pixels, min=MIN_INTENSITY, out=_rows(operand, 0, 3)).log_()
        into = scratch.get("weight") if signed else _rows(operand, 3, 4)
        smallest = torch.amin(log_rgb, dim=1, keepdim=True, out=into)
        below = torch.clamp(smallest, -high, -low, out=into).add_(low)  # m + low = -(high - low) * w
        if signed:
            floor = torch.bmm(floor_unmix[images], log_rgb, out=scratch.get("floor")).clamp_(max=0.0)
            weight = below.mul_(-1.0 / (high - low))
            below = torch.mul(weight, shifts[images].unsqueeze(-1), out=_rows(operand, 3, rows)).clamp_(min=floor)
        stacked = torch.cat((log_rgb, below), dim=1) if operand is None else operand[:, :rows]
        minus_delta = torch.bmm(matrix[images], stacked, out=scratch.get("minus_delta"))
        return torch.mul(minus_delta.clamp_(max=EXP_LIMIT).exp_(), pixels, out=out)

    flat = rgb.flatten(2)
    levels = rgb.dtype == torch.uint8
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (rgb, scale, mix, shifts, floor_unmix))
    if not levels and not works_in_blocks(rgb, needs_grad):
        return jitter_block(flat, slice(None), None, {}).clamp_(0.0, 1.0).view(rgb.shape)
    if works_in_blocks(rgb, needs_grad):
        size, blocks = cpu_blocks(batch, flat.shape[2])
        rows = {"operand": 3 + k, "weight": 1, "floor": k, "minus_delta": 3, "pixels": 3}
        scratch = thread_scratch(rows, size, scale.dtype)
    else:  # uint8 on a GPU: the whole batch is one block
        size, blocks, scratch = flat.shape[2], [(slice(None), slice(None), slice(None))], {}
    out = torch.empty_like(flat)  # keeps a channel-last input's layout, so that restoring it is free
    for block in blocks:
        pixels_in = flat[block]
        block_scratch = scratch if pixels_in.shape[-1] == size else {}  # a ragged last block allocates
        if levels:
            pixels = levels_to_unit(pixels_in, out=block_scratch.get("pixels"))
            copy_levels(unit_to_levels_(jitter_block(pixels, block[0], pixels, block_scratch)), out[block])
        else:
            jitter_block(pixels_in, block[0], out[block], block_scratch).clamp_(0.0, 1.0)
    return out.view(rgb.shape)


def _rows(t: torch.Tensor | None, start: int, stop: int) -> torch.Tensor | None:
    """Rows ``start:stop`` of a (b, rows, n) scratch tensor, or None (allocate) where there is none."""
    return None if t is None else t[:, start:stop]
