"""Constants that live as long as the program, copied to a tensor's dtype and device once.

Plain formula: ``constant.to(x)``. Converting a dozen float64 constants on every call costs as much
as a full-resolution pass over a small image, so each :class:`Constant` keeps its copies, one per
dtype and device that it has been used with (a handful: the cache cannot grow with the data).
"""

from __future__ import annotations

import torch


class Constant:
    """A float64 constant with one cached copy per (dtype, device).

    Example:
        >>> offset = Constant([-16.0, 0.0, 0.0])
        >>> x = torch.zeros(2, dtype=torch.float32)
        >>> offset.like(x).dtype, offset.like(x) is offset.like(x)
        (torch.float32, True)
        >>> offset.value.dtype
        torch.float64
    """

    def __init__(self, value: torch.Tensor | list) -> None:
        self.value = torch.as_tensor(value, dtype=torch.float64)
        self._copies: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}

    def like(self, x: torch.Tensor) -> torch.Tensor:
        """The constant in ``x``'s dtype and on its device (the same tensor every time: do not modify it)."""
        key = (x.dtype, x.device)
        copy = self._copies.get(key)
        if copy is None:
            copy = self._copies[key] = self.value.to(device=x.device, dtype=x.dtype)
        return copy
