"""Reinhard et al. (2001) colour transfer: match per-channel Lab mean and standard deviation."""

from __future__ import annotations

import torch

from .color import lab_to_rgb, rgb_to_lab

# A channel with a smaller standard deviation than this (in Lab units) is treated as flat.
MIN_STD = 1e-3


def lab_statistics(lab: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image, per-channel mean and standard deviation of a (B, 3, H, W) Lab batch: two (B, 3)."""
    std, mean = torch.std_mean(lab.flatten(2), dim=2)
    return mean, std


def reinhard_transfer(
    lab: torch.Tensor,
    source_mean: torch.Tensor,
    source_std: torch.Tensor,
    target_mean: torch.Tensor,
    target_std: torch.Tensor,
) -> torch.Tensor:
    """Map a (B, 3, H, W) Lab batch with (B, 3) source statistics onto (3,) or (B, 3) target ones; returns RGB.

    Example:
        >>> rgb = torch.rand(1, 3, 16, 16)
        >>> lab = rgb_to_lab(rgb)
        >>> mean, std = lab_statistics(lab)
        >>> torch.allclose(reinhard_transfer(lab, mean, std, mean[0], std[0]), rgb, atol=1e-4)
        True
    """
    scale = target_std / source_std.clamp(min=MIN_STD)
    shifted = (lab - source_mean[..., None, None]) * scale[..., None, None] + target_mean.reshape(-1, 3, 1, 1)
    return lab_to_rgb(shifted)
