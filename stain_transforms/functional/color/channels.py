"""A colour matrix applied to the channels of a batch."""

from __future__ import annotations

import torch


def channel_matmul(x: torch.Tensor, matrix: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Apply a (3, 3) or per-image (B, 3, 3) ``matrix`` (and a (3,) or (B, 3) bias) to the channels of (B, 3, H, W).

    Example:
        >>> x = torch.rand(2, 3, 4, 4)
        >>> swap = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # swap red and green
        >>> torch.equal(channel_matmul(x, swap)[:, 0], x[:, 1])
        True
    """
    flat = torch.matmul(matrix.to(x), x.flatten(2))
    if bias is not None:
        flat = flat + bias.to(x).reshape(-1, 3, 1)
    return flat.view_as(x)
