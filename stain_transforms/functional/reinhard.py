"""Reinhard et al. (2001) colour transfer: match per-channel Lab mean and standard deviation.

Lab is affine in the intermediate f-space of CIE Lab (:func:`~stain_transforms.functional.color.lab.rgb_to_lab_f`),
and Reinhard's transfer is affine in Lab, so the whole transfer is one per-image 3x3 affine map in
f-space, and the Lab statistics follow from f's mean and covariance. This keeps the full-resolution
work to the two colour conversions.
"""

from __future__ import annotations

import torch

from .._kernels.constants import Constant
from .._kernels.gram import gram
from .._kernels.lab import lab_f_to_rgb_, rgb_to_lab_f_and_spare, tracked
from .color.lab import F_FROM_LAB, GAINED_FROM_WHITE_XYZ, LAB_FROM_F, LAB_OFFSET, WHITE_XYZ_FROM_GAINED, rgb_to_lab_f

# A channel with a smaller standard deviation than this (in Lab units) is treated as flat.
MIN_STD = 1e-3

_LAB_FROM_F, _F_FROM_LAB, _LAB_OFFSET = Constant(LAB_FROM_F), Constant(F_FROM_LAB), Constant(LAB_OFFSET)


def _mean_and_covariance(f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image's mean (B, 3, 1) and covariance (B, 3, 3) of f; f is centred in place on the way."""
    flat = f.flatten(2)
    f_mean = flat.mean(dim=2, keepdim=True)
    centred = flat.sub_(f_mean)
    return f_mean, gram(centred).div_(max(flat.shape[-1] - 1, 1))


def _lab_std(f_cov: torch.Tensor) -> torch.Tensor:
    """Lab standard deviations (B, 3) from f's covariance: the diagonal of K C K^T, with lab = K f + o."""
    to_lab = _LAB_FROM_F.like(f_cov)
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
    f_mean, f_cov = _mean_and_covariance(rgb_to_lab_f(rgb))
    lab_mean = (_LAB_FROM_F.like(f_mean) @ f_mean).squeeze(-1) + _LAB_OFFSET.like(f_mean)
    return lab_mean, _lab_std(f_cov)


def _affine_transfer(f: torch.Tensor, spare: torch.Tensor, scale: torch.Tensor, lab_shift: torch.Tensor) -> torch.Tensor:
    """RGB of ``lab' = scale * lab_f + lab_shift`` per image, where ``lab_f = K f`` (no offset); f and spare are consumed.

    On f-space, ``f' = K^-1 diag(scale) K f + K^-1 lab_shift``: one 3x3 affine map per image.
    """
    to_lab, from_lab = _LAB_FROM_F.like(f), _F_FROM_LAB.like(f)
    matrix = from_lab @ (scale[..., None] * to_lab)
    bias = (from_lab @ lab_shift.to(f)[..., None]).expand(f.shape[0], 3, 1)
    if tracked(f) or tracked(matrix) or tracked(bias):  # autograd (of the image or the targets): no out= buffers
        return lab_f_to_rgb_(torch.baddbmm(bias, matrix, f.flatten(2)).view_as(f), spare, GAINED_FROM_WHITE_XYZ)
    torch.baddbmm(bias, matrix, f.flatten(2), out=spare.flatten(2))
    return lab_f_to_rgb_(spare, f, GAINED_FROM_WHITE_XYZ)


def reinhard_transfer(rgb: torch.Tensor, target_mean: torch.Tensor, target_std: torch.Tensor) -> torch.Tensor:
    """Give each image of an RGB batch the target's Lab mean and standard deviation, (3,) or (B, 3) each.

    Each image's own statistics are measured over the whole image, as in the original method.

    Example:
        >>> rgb = torch.rand(1, 3, 16, 16, dtype=torch.float64)
        >>> mean, std = lab_statistics(rgb)
        >>> torch.allclose(reinhard_transfer(rgb, mean[0], std[0]), rgb)
        True
    """
    f, spare = rgb_to_lab_f_and_spare(rgb, WHITE_XYZ_FROM_GAINED)  # spare: a free buffer of f's shape
    _, f_cov = _mean_and_covariance(f)
    scale = target_std.to(f) / _lab_std(f_cov).clamp(min=MIN_STD)  # (B, 3)
    # lab' = scale * (lab - lab_mean) + target_mean with lab = K f + o, so on centred f:
    # f' = K^-1 diag(scale) K (f - f_mean) + K^-1 (target_mean - o).
    return _affine_transfer(f, spare, scale, target_mean.to(f) - _LAB_OFFSET.like(f))


def reinhard_transfer_from(
    rgb: torch.Tensor,
    source_mean: torch.Tensor,
    source_std: torch.Tensor,
    target_mean: torch.Tensor,
    target_std: torch.Tensor,
) -> torch.Tensor:
    """Reinhard's Lab map with given source statistics: ``lab' = (lab - source_mean) * target_std / source_std + target_mean``.

    Unlike :func:`reinhard_transfer`, the images' own statistics are not measured: every image of
    the batch gets the same map (when the statistics are (3,)), e.g. the statistics of the whole
    slide the tiles come from, so that neighbouring tiles match. Each statistic is (3,) or (B, 3).

    Example:
        >>> rgb = torch.rand(2, 3, 16, 16, dtype=torch.float64)
        >>> mean, std = lab_statistics(rgb)
        >>> target_mean, target_std = torch.tensor([70.0, 20.0, -5.0]), torch.tensor([10.0, 6.0, 4.0])
        >>> torch.allclose(reinhard_transfer_from(rgb, mean, std, target_mean, target_std),
        ...                reinhard_transfer(rgb, target_mean, target_std))  # own statistics: the same
        True
    """
    f, spare = rgb_to_lab_f_and_spare(rgb, WHITE_XYZ_FROM_GAINED)
    scale = (target_std.to(f) / source_std.to(f).clamp(min=MIN_STD)).expand(f.shape[0], 3)
    # lab' = scale * (K f + o - source_mean) + target_mean = scale * K f + (scale * (o - source_mean) + target_mean - o).
    offset = _LAB_OFFSET.like(f)
    return _affine_transfer(f, spare, scale, scale * (offset - source_mean.to(f)) + target_mean.to(f) - offset)
