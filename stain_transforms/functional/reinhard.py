"""Reinhard et al. (2001) colour transfer: match per-channel Lab mean and standard deviation.

Lab is affine in the intermediate f-space of CIE Lab (:func:`~stain_transforms.functional.color.rgb_to_lab_f`),
and Reinhard's transfer is affine in Lab, so the whole transfer is one per-image 3x3 affine map in
f-space, and the Lab statistics follow from f's mean and covariance. This keeps the full-resolution
work to the two colour conversions.
"""

from __future__ import annotations

import torch

from .color import (
    _F_FROM_LAB,
    LAB_FROM_F,
    LAB_OFFSET,
    _lab_f_to_rgb_,
    _rgb_to_lab_f_and_spare,
    _tracked,
    cast_like,
    rgb_to_lab_f,
)

# A channel with a smaller standard deviation than this (in Lab units) is treated as flat.
MIN_STD = 1e-3


# On the CPU, products over many pixels are summed over blocks of this many (see _gram).
GRAM_BLOCK = 2**15


def _gram(x: torch.Tensor) -> torch.Tensor:
    """``x @ x^T`` of a (B, 3, N) batch, (B, 3, 3).

    On the CPU it is summed over blocks of ``GRAM_BLOCK`` pixels: torch's CPU ``bmm`` is several times
    slower on one very long product (0.21 ms against 0.05 ms for a 512x512 image).
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


def _centre_(f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image's mean (B, 3, 1) and covariance (B, 3, 3) of f; f is centred in place on the way."""
    flat = f.flatten(2)
    f_mean = flat.mean(dim=2, keepdim=True)
    centred = flat.sub_(f_mean)
    return f_mean, _gram(centred).div_(max(flat.shape[-1] - 1, 1))


def _lab_std(f_cov: torch.Tensor) -> torch.Tensor:
    """Lab standard deviations (B, 3) from f's covariance: the diagonal of K C K^T, with lab = K f + o."""
    to_lab = cast_like(LAB_FROM_F, f_cov)
    return ((to_lab @ f_cov) * to_lab).sum(dim=-1).clamp(min=0).sqrt()


def lab_statistics(rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image mean and (unbiased) standard deviation of each CIE Lab channel of an RGB batch: two (B, 3).

    Example:
        >>> from stain_transforms.functional import rgb_to_lab
        >>> rgb = torch.rand(2, 3, 8, 8, dtype=torch.float64)
        >>> std, mean = torch.std_mean(rgb_to_lab(rgb).flatten(2), dim=2)
        >>> torch.allclose(lab_statistics(rgb)[0], mean) and torch.allclose(lab_statistics(rgb)[1], std)
        True
    """
    f_mean, f_cov = _centre_(rgb_to_lab_f(rgb))
    lab_mean = (cast_like(LAB_FROM_F, f_mean) @ f_mean).squeeze(-1) + cast_like(LAB_OFFSET, f_mean)
    return lab_mean, _lab_std(f_cov)


def reinhard_transfer(rgb: torch.Tensor, target_mean: torch.Tensor, target_std: torch.Tensor) -> torch.Tensor:
    """Give each image of an RGB batch the target's Lab mean and standard deviation, (3,) or (B, 3) each.

    Each image's own statistics are measured over the whole image, as in the original method.

    Example:
        >>> rgb = torch.rand(1, 3, 16, 16, dtype=torch.float64)
        >>> mean, std = lab_statistics(rgb)
        >>> torch.allclose(reinhard_transfer(rgb, mean[0], std[0]), rgb)
        True
    """
    f, spare = _rgb_to_lab_f_and_spare(rgb)
    _, f_cov = _centre_(f)
    scale = target_std.to(f) / _lab_std(f_cov).clamp(min=MIN_STD)  # (B, 3)
    # lab' = scale * (lab - lab_mean) + target_mean with lab = K f + o, so on centred f:
    # f' = K^-1 diag(scale) K (f - f_mean) + K^-1 (target_mean - o).
    to_lab, from_lab, offset = cast_like(LAB_FROM_F, f), cast_like(_F_FROM_LAB, f), cast_like(LAB_OFFSET, f)
    matrix = from_lab @ (scale[..., None] * to_lab)
    bias = (from_lab @ (target_mean.to(f) - offset)[..., None]).expand(f.shape[0], 3, 1)
    if _tracked(f):  # autograd: no out= buffers
        return _lab_f_to_rgb_(torch.baddbmm(bias, matrix, f.flatten(2)).view_as(f), scratch=spare)
    torch.baddbmm(bias, matrix, f.flatten(2), out=spare.flatten(2))
    return _lab_f_to_rgb_(spare, scratch=f)
