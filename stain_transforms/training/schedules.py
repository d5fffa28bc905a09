"""Learning-rate schedules shared by the trainers."""

from __future__ import annotations

import math

import torch

WARMUP_FRACTION = 0.05


def warmup_cosine(optimizer: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over the first 5% of ``steps`` (at least one step), then cosine decay (towards zero).

    The shape of a one-cycle schedule, valid for any number of steps (torch's ``OneCycleLR`` divides
    by zero when the warm-up rounds to no step at all).

    Example:
        >>> optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        >>> schedule = warmup_cosine(optimizer, 3)
        >>> rates = []
        >>> for _ in range(3):
        ...     rates.append(round(optimizer.param_groups[0]["lr"], 3)); optimizer.step(); schedule.step()
        >>> rates
        [0.5, 1.0, 0.5]
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    warmup = max(1, round(WARMUP_FRACTION * steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, steps - warmup))))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


__all__ = ["warmup_cosine"]
