"""A structure term for stain translation: the output may change colour and contrast, not the tissue's shapes.

SSIM splits into luminance, contrast and structure; the structure part is the local correlation of
two images. :func:`structure_loss` is ``1 -`` that correlation between the luma of the input and of
the translation, averaged over ``window`` x ``window`` neighbourhoods. A stain change (darker, paler,
another hue) keeps the correlation near 1 wherever there is texture; a generator that moves, adds
or blurs nuclei lowers it. It is the training counterpart of the "SSIM against the source" metric,
which the stretched grayscale SSIM measures after the fact.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# BT.601 luma, as the SSIM-source metric uses.
LUMA = (0.299, 0.587, 0.114)
# SSIM's C3 = C2 / 2 with K2 = 0.03 and a data range of 2 (images in [-1, 1]): keeps flat areas finite.
STABILITY = (0.03 * 2.0) ** 2 / 2.0


def luma(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB -> (B, 1, H, W) BT.601 luma (any scale).

    Example:
        >>> luma(torch.ones(1, 3, 2, 2)).shape, round(float(luma(torch.ones(1, 3, 1, 1))), 6)
        (torch.Size([1, 1, 2, 2]), 1.0)
    """
    weights = images.new_tensor(LUMA).view(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True)


def structure_loss(a: torch.Tensor, b: torch.Tensor, window: int = 7) -> torch.Tensor:
    """Mean of ``1 - local correlation`` of the lumas of ``a`` and ``b`` ((B, 3, H, W), same scale).

    Example:
        >>> x = torch.rand(1, 3, 32, 32) * 2 - 1
        >>> float(structure_loss(x, 0.5 * x - 0.2)) < 1e-3       # darker and shifted: same structure
        True
        >>> float(structure_loss(x, torch.rand(1, 3, 32, 32))) > 0.5   # unrelated image
        True
    """
    if a.shape != b.shape or a.dim() != 4 or a.shape[1] != 3:
        raise ValueError(f"structure_loss needs two (B, 3, H, W) tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    x, y = luma(a.float()), luma(b.float())

    def local_mean(t: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(t, window, stride=1, padding=window // 2, count_include_pad=False)

    mean_x, mean_y = local_mean(x), local_mean(y)
    var_x = (local_mean(x * x) - mean_x**2).clamp_min(0)
    var_y = (local_mean(y * y) - mean_y**2).clamp_min(0)
    covariance = local_mean(x * y) - mean_x * mean_y
    # clamp_min keeps the square root's gradient finite where a neighbourhood is flat.
    correlation = (covariance + STABILITY) / ((var_x * var_y).clamp_min(1e-12).sqrt() + STABILITY)
    return (1.0 - correlation).mean()


__all__ = ["luma", "structure_loss"]
