"""uint8 levels <-> floats in [0, 1], and results back to channel-last uint8.

Plain formulas: ``levels.float() / 255`` one way, ``(values * 255).round().clamp(0, 255).to(torch.uint8)``
(round half to even) the other. On the CPU the plain ones cost more than the stain maths of a small
image, so:

- float -> uint8 goes through int16, which torch converts several times faster than to uint8;
- where the floats may be overwritten, adding ``2**p`` (p = the mantissa bits) to a value in
  [0, 255] rounds it to an integer, half to even as ``round()`` does, and leaves that integer as the
  lowest byte of the float's bit pattern: the bytes are then read in place (:func:`unit_to_levels_`);
- channel-last uint8 output (numpy images) is gathered channel by channel with numpy, faster than
  torch's copy between the two strided layouts (:func:`gather_channel_last`).

Every path gives the same bits as the plain formula; ``tests/test_kernels.py`` checks it.
"""

from __future__ import annotations

import sys

import torch

# Adding 2**p to a float in [0, 255] rounds it to an integer and leaves that integer in its lowest byte.
_ROUNDING_MAGIC = {torch.float32: 2.0**23, torch.float64: 2.0**52}


def levels_to_unit(levels: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 levels to a contiguous float32 tensor in [0, 1]: the one conversion of uint8 input.

    A fresh tensor, or ``out`` (contiguous float32, of ``levels``' shape) if given. Contiguous even for
    a strided input (a permuted view), so that the rounding of later reductions never depends on the
    input's memory layout.

    Example:
        >>> levels_to_unit(torch.tensor([0, 51, 255], dtype=torch.uint8))
        tensor([0.0000, 0.2000, 1.0000])
    """
    if out is None:
        return levels.to(torch.float32, memory_format=torch.contiguous_format).div_(255.0)
    return out.copy_(levels).div_(255.0)


def unit_to_dtype_(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Floats in [0, 1] (clipped into it) as ``dtype``: uint8 levels rounded half to even, or floats.

    May overwrite ``values``, which must be a result the caller owns: working in place saves an
    image-sized allocation, which on the CPU costs as much as the arithmetic.

    Example:
        >>> unit_to_dtype_(torch.tensor([0.0, 0.5, 1.2]), torch.uint8)  # 127.5 is a tie: to the even 128
        tensor([  0, 128, 255], dtype=torch.uint8)
    """
    if dtype == torch.uint8:
        return values.mul_(255.0).round_().clamp_(0, 255).to(torch.int16).to(torch.uint8)
    return values.clamp_(0.0, 1.0).to(dtype)


def unit_to_levels_(values: torch.Tensor) -> torch.Tensor | None:
    """Floats in [0, 1] as uint8 levels, rounded as :func:`unit_to_dtype_`, read from ``values``' own bytes.

    Returns a strided uint8 view into ``values``' memory (copy it out before ``values`` is reused), or
    ``None`` where the trick does not apply (float16, or a last dimension that is not contiguous).

    Example:
        >>> unit_to_levels_(torch.tensor([0.0, 0.5, 1.2]))
        tensor([  0, 128, 255], dtype=torch.uint8)
    """
    magic = _ROUNDING_MAGIC.get(values.dtype)
    if magic is None or values.stride(-1) != 1:
        return None
    rounded = values.mul_(255.0).clamp_(0, 255).add_(magic)
    low_byte = 0 if sys.byteorder == "little" else rounded.element_size() - 1
    return rounded.view(torch.uint8).unflatten(-1, (-1, rounded.element_size()))[..., low_byte]


def unit_to_channel_last_uint8_(batch: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) floats in [0, 1] to (B, H, W, 3) uint8 on the CPU, rounded as :func:`unit_to_dtype_`.

    Overwrites ``batch``. The levels are gathered channel-last in the pass that moves the channels.

    Example:
        >>> batch = torch.tensor([0.0, 0.5, 1.0]).view(1, 3, 1, 1)
        >>> unit_to_channel_last_uint8_(batch).flatten().tolist()
        [0, 128, 255]
    """
    batch = batch.cpu()
    planes = unit_to_levels_(batch) if batch.is_contiguous() else None
    if planes is None:
        return unit_to_dtype_(batch.permute(0, 2, 3, 1).contiguous(), torch.uint8)
    return gather_channel_last(planes)


def gather_channel_last(planes: torch.Tensor, into: torch.Tensor | None = None) -> torch.Tensor:
    """(b, 3, ...) uint8 CPU planes, in any strides, to channel-last (b, ..., 3): into ``into`` if given.

    Channel by channel with numpy, which on one thread beats both ``torch.stack`` and torch's strided copy.

    Example:
        >>> planes = torch.arange(6, dtype=torch.uint8).view(1, 3, 2)
        >>> gather_channel_last(planes).tolist()
        [[[0, 2, 4], [1, 3, 5]]]
    """
    if into is None:
        into = torch.empty((planes.shape[0], *planes.shape[2:], 3), dtype=torch.uint8)
    source, target = planes.numpy(), into.numpy()
    for channel in range(3):
        target[..., channel] = source[:, channel]
    return into


def copy_levels(levels: torch.Tensor, into: torch.Tensor) -> None:
    """Copy (b, 3, n) uint8 ``levels`` into ``into``; into channel-last memory (an array's) by a gather.

    Example:
        >>> into = torch.empty(1, 2, 3, dtype=torch.uint8).transpose(1, 2)  # (1, 3, 2), channel-last memory
        >>> copy_levels(torch.arange(6, dtype=torch.uint8).view(1, 3, 2), into)
        >>> into.tolist()
        [[[0, 1], [2, 3], [4, 5]]]
    """
    channel_last = into.transpose(1, 2)
    if into.device.type == "cpu" and channel_last.is_contiguous():
        gather_channel_last(levels, channel_last)
    else:
        into.copy_(levels)
