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

import threading

import torch

from ..io import gather_channel_last, levels_to_unit, unit_to_levels_
from .color import _HED_LOG_ADJUST, MIN_INTENSITY, RGB_FROM_HED, cast_like

# Columns: the Ruifrok & Johnston OD vectors of haematoxylin, eosin and DAB (as in scikit-image).
RUIFROK_STAINS = RGB_FROM_HED.T.contiguous()
# The same basis in scikit-image's HED units, precomputed: OD = mix @ concentrations, and back.
_RUIFROK_MIX = RUIFROK_STAINS * _HED_LOG_ADJUST
_RUIFROK_UNMIX = torch.linalg.inv(RUIFROK_STAINS) / _HED_LOG_ADJUST

# Optical densities (in the most absorbed channel) between which the shift fades in: 0.05 is a
# transmission of 95% (a uint8 grey level of 242, bright glass), 0.25 of 78% (pale stained tissue).
SHIFT_RAMP = (0.05, 0.25)

# On a CPU, images are processed in blocks of this many pixels per thread, which keeps the
# intermediate results in cache; on a GPU the whole batch is one block.
CPU_BLOCK_PER_THREAD = 2**15
# A block's scratch tensors up to this size are kept for the thread's next call (see _scratch).
KEEP_SCRATCH_BYTES = 16 * 2**20


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
        return cast_like(_RUIFROK_MIX, like), cast_like(_RUIFROK_UNMIX, like)
    stains = stains.to(like)
    return stains * _HED_LOG_ADJUST, torch.linalg.pinv(stains) / _HED_LOG_ADJUST


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
    worked in float32 on ``levels / 255`` and rounded back half to even, as :func:`stain_transforms.io.to_batch`
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

    low, high = _check_ramp(ramp)
    # Scaling is one 3x3 matrix per image on the OD: mix @ diag(f - 1) @ unmix.
    scale = (mix * (factors - 1.0).unsqueeze(-2)) @ unmix  # (B, 3, 3)
    negative = shifts.amin().item() < 0
    if negative:
        scaled_unmix = factors.unsqueeze(-1) * unmix
        # -dOD = scale @ log(I) - mix @ shift: one product of [scale, -mix] with [log(I); shift].
        matrix = torch.cat((scale, (-mix).expand(batch, 3, k)), dim=-1)  # (B, 3, 3 + k)
    else:
        # With m the smallest log-intensity of a pixel (minus its largest OD), clamped into [-high, -low],
        # the shift's weight is (m + low) / -(high - low); its -dOD is then slope * (m + low), and
        # -dOD = scale @ log(I) + slope * (m + low): one product of [scale, slope] with [log(I); m + low].
        slope = (mix @ shifts.unsqueeze(-1)) / (high - low)  # (B, 3, 1)
        matrix = torch.cat((scale, slope), dim=-1)  # (B, 3, 4)

    def jitter_pixels(pixels: torch.Tensor, images: slice, out: torch.Tensor | None, scratch: Scratch) -> torch.Tensor:
        """Pixels (b, 3, n) of ``images`` -> jittered (b, 3, n), not yet clipped, into ``out`` if given.

        Works on log(I) = -OD. The intermediate results go into ``scratch`` where it has tensors.
        """
        operand = scratch[0]  # log(I), and below it what ``matrix`` multiplies: the shifts, or m + low
        rows = matrix.shape[-1]
        log_rgb = torch.clamp(pixels, min=MIN_INTENSITY, out=_rows(operand, 0, 3)).log_()
        ramp_into = scratch[1] if negative else _rows(operand, 3, 4)
        smallest = torch.amin(log_rgb, dim=1, keepdim=True, out=ramp_into)
        ramp = torch.clamp(smallest, -high, -low, out=ramp_into).add_(low)  # m + low = -(high - low) * weight
        below = ramp
        if negative:
            # A negative shift removes at most the stain that is present: shift >= -max(scaled, 0),
            # where -scaled = (f * unmix) @ log_rgb. (For positive shifts this bound never binds.)
            floor = torch.bmm(scaled_unmix[images], log_rgb, out=scratch[2]).clamp_(max=0.0)
            weight = ramp.mul_(-1.0 / (high - low))
            shift = torch.mul(weight, shifts[images].unsqueeze(-1), out=_rows(operand, 3, rows)).clamp_(min=floor)
            below = shift
        stacked = torch.cat((log_rgb, below), dim=1) if operand is None else operand[:, :rows]
        # Only the change of optical density dOD is rendered, I_out = I * exp(-dOD): the identity is
        # exact for unit factors and zero shifts, and colour outside the basis (the residual when
        # k < 3) is kept.
        minus_delta = torch.bmm(matrix[images], stacked, out=scratch[3])
        # exp() must stay finite: -dOD is clamped at 30, where the result is white anyway. (Checking the
        # draws for whether it can get there takes more operations per call than the clamp.)
        transmittance = minus_delta.clamp_(max=30.0).exp_()
        return torch.mul(transmittance, pixels, out=out)

    flat = rgb.flatten(2)
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (rgb, mix, unmix, factors, shifts))
    whole_batch = _whole_batch_at_once(rgb, needs_grad)
    if whole_batch and not levels:  # no out= tensors, which autograd refuses
        return jitter_pixels(flat, slice(None), None, _NO_SCRATCH).clamp_(0.0, 1.0).view(rgb.shape)
    if whole_batch:
        size, images, scratch = flat.shape[2], [slice(None)], _NO_SCRATCH
    else:
        # On a CPU, keeping the intermediate results in cache matters more than the number of passes:
        # work image by image, in blocks of CPU_BLOCK_PER_THREAD pixels per thread, reusing one set of
        # scratch buffers (fresh ones per block would be new memory, a page fault per 4 KiB, whenever
        # malloc has handed the last ones back to the system).
        size = min(CPU_BLOCK_PER_THREAD * torch.get_num_threads(), flat.shape[2])
        images = [slice(b, b + 1) for b in range(batch)]
        scratch = _scratch(size, k, factors.dtype)
    starts = range(0, flat.shape[2], size)
    blocks = [(image, slice(None), slice(start, start + size)) for image in images for start in starts]
    out = torch.empty_like(flat)  # keeps a channel-last input's layout, so that restoring it is free
    for block in blocks:
        pixels_in = flat[block]
        block_scratch = scratch if pixels_in.shape[-1] == size else _NO_SCRATCH  # a ragged last block allocates
        if levels:  # converted here, in cache; unit_to_levels_ clips
            pixels = levels_to_unit(pixels_in, out=block_scratch[4])
            _copy_levels(unit_to_levels_(jitter_pixels(pixels, block[0], pixels, block_scratch)), out[block])
        else:
            jitter_pixels(pixels_in, block[0], out[block], block_scratch).clamp_(0.0, 1.0)
    return out.view(rgb.shape)


def _rows(t: torch.Tensor | None, start: int, stop: int) -> torch.Tensor | None:
    """Rows ``start:stop`` of a (b, rows, n) scratch tensor, or None (allocate) where there is none."""
    return None if t is None else t[:, start:stop]


def _whole_batch_at_once(rgb: torch.Tensor, needs_grad: bool) -> bool:
    """Whether to work the whole batch as one block: off the CPU, and where autograd must follow."""
    return rgb.device.type != "cpu" or needs_grad


# Scratch tensors of one block, in the order jitter_pixels uses them: log(I) with the shifts (or the
# shift weight) below it, the shift weight, the shift floor, -dOD, and the block's pixels converted
# from uint8; None means "allocate".
Scratch = tuple[torch.Tensor | None, ...]
_NO_SCRATCH: Scratch = (None,) * 5


def _scratch(size: int, k: int, dtype: torch.dtype) -> Scratch:
    """One block's scratch tensors, (1, rows, size) with rows 3 + k, 1, k, 3 and 3, in one allocation.

    The last one made in this thread is reused for the same size, k and dtype (up to ``KEEP_SCRATCH_BYTES``):
    memory that is new to the process costs a page fault per 4 KiB, and malloc hands freed memory back
    to the system whenever other code between two calls (the rest of a pipeline) has freed enough of it.
    On a 512x512 image and one thread that was 512 faults, about 0.7 ms, against 3 ms for the work itself.
    """
    key = (size, k, dtype)
    kept = getattr(_KEPT, "scratch", None)
    if kept is not None and kept[0] == key:
        return kept[1]
    rows = (3 + k, 1, k, 3, 3)
    whole = torch.empty(sum(rows) * size, dtype=dtype)
    scratch = tuple(part.view(1, -1, size) for part in whole.split([r * size for r in rows]))
    if whole.numel() * whole.element_size() <= KEEP_SCRATCH_BYTES:
        _KEPT.scratch = (key, scratch)
    return scratch


_KEPT = threading.local()


def _copy_levels(levels: torch.Tensor, into: torch.Tensor) -> None:
    """Copy (b, 3, n) uint8 ``levels`` into ``into``; into a channel-last one (an array's memory) by
    gathering the channels, much faster than torch's copy between the two strided layouts."""
    channel_last = into.transpose(1, 2)
    if into.device.type == "cpu" and channel_last.is_contiguous():
        gather_channel_last(levels, channel_last)
    else:
        into.copy_(levels)


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
