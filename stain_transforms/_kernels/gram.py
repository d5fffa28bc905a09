"""Per-image ``x @ x^T`` of a (B, 3, N) batch over many pixels.

Plain formula: ``torch.bmm(x, x.mT)``. torch's CPU ``bmm`` is several times slower on one very long
product than on many short ones, so on the CPU the product is summed over blocks of ``GRAM_BLOCK``
pixels (the same sum, in another order of additions).
"""

from __future__ import annotations

import torch

GRAM_BLOCK = 2**15


def gram(x: torch.Tensor) -> torch.Tensor:
    """``x @ x^T`` of a (B, 3, N) batch, (B, 3, 3).

    Example:
        >>> x = torch.rand(2, 3, 3 * GRAM_BLOCK + 5, dtype=torch.float64)
        >>> torch.allclose(gram(x), x @ x.mT)
        True
    """
    blocks = x.shape[-1] // GRAM_BLOCK
    if x.device.type != "cpu" or blocks < 2:
        return torch.bmm(x, x.mT)
    grams = []
    for image in x[..., : blocks * GRAM_BLOCK]:
        parts = image.view(3, blocks, GRAM_BLOCK).transpose(0, 1)  # (blocks, 3, GRAM_BLOCK), no copy
        grams.append(torch.bmm(parts, parts.mT).sum(dim=0))
    tail = x[..., blocks * GRAM_BLOCK :]
    return torch.stack(grams) + torch.bmm(tail, tail.mT)
