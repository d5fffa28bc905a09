"""The guided filter (He, Sun and Tang, 2010): an image redrawn with the edges of a guide image.

In every window of side ``2 * radius + 1`` the output is fitted as an affine function of the
guide's three channels, ``q = A g + b``, by ridge regression of the input on the guide (``eps`` is
the ridge); each pixel then takes the mean of the fits of the windows that hold it. Where the input
follows the guide up to a local change of colour, the output is the input; where the input has
edges the guide lacks, or lacks the guide's, the output takes the guide's. Applied to a generator's
output with the source image as guide, it keeps the colours and puts back the source's structure.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def box_mean(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean of each (2r+1)x(2r+1) window of a (B, C, H, W) tensor, edges replicated (two 1D passes).

    Example:
        >>> [round(v, 3) for v in box_mean(torch.arange(5.0).view(1, 1, 1, 5), 1).flatten().tolist()]
        [0.333, 1.0, 2.0, 3.0, 3.667]
    """
    size = 2 * radius + 1
    x = F.avg_pool2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), (size, 1), stride=1)
    return F.avg_pool2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), (1, size), stride=1)


def guided_filter(guide: torch.Tensor, image: torch.Tensor, radius: int, eps: float) -> torch.Tensor:
    """``image`` filtered with the edges of ``guide``: both (B, 3, H, W) floats in [0, 1]; returns (B, 3, H, W), unclamped.

    Args:
        guide: the image whose structure the output takes (e.g. the source of a translation).
        image: the image whose colours the output takes (e.g. a generator's output).
        radius: the window half-side in pixels; larger windows fit the colours over larger regions.
        eps: the ridge on the guide's covariance, in squared [0, 1] units: colour variation in a
            window smaller than about ``sqrt(eps)`` counts as flat, so smaller values keep finer structure.

    Example:
        >>> guide = torch.rand(1, 3, 32, 32, dtype=torch.float64)
        >>> recoloured = 0.5 * guide.flip(1) + 0.2  # a colour change of the guide: an affine map of its channels
        >>> torch.allclose(guided_filter(guide, recoloured, 4, 1e-9), recoloured, atol=1e-5)
        True
    """
    if guide.ndim != 4 or guide.shape[1] != 3 or image.shape != guide.shape:
        raise ValueError(f"guide and image must both be (B, 3, H, W) with the same shape, got {tuple(guide.shape)} and {tuple(image.shape)}")
    if not guide.is_floating_point() or not image.is_floating_point():
        raise ValueError(f"guide and image must be float tensors in [0, 1], got {guide.dtype} and {image.dtype}")
    if isinstance(radius, bool) or not isinstance(radius, int) or radius < 1:
        raise ValueError(f"radius must be a positive integer, got {radius!r}")
    if not eps > 0:
        raise ValueError(f"eps must be positive, got {eps!r}")
    batch, _, height, width = guide.shape
    upper = [(i, j) for i in range(3) for j in range(i, 3)]  # the covariance's six distinct entries
    # One box pass over every first and second moment the fits need.
    moments = box_mean(torch.cat([
        guide, image,
        torch.stack([guide[:, i] * guide[:, j] for i, j in upper], 1),
        (guide[:, :, None] * image[:, None]).flatten(1, 2),
    ], 1), radius)
    mean_guide, mean_image = moments[:, :3], moments[:, 3:6]
    covariance = guide.new_empty(batch, height, width, 3, 3)
    for k, (i, j) in enumerate(upper):
        entry = moments[:, 6 + k] - mean_guide[:, i] * mean_guide[:, j]
        covariance[..., i, j] = entry
        covariance[..., j, i] = entry
    covariance += eps * torch.eye(3, dtype=guide.dtype, device=guide.device)
    cross = moments[:, 12:].unflatten(1, (3, 3)) - mean_guide[:, :, None] * mean_image[:, None]  # (B, guide, image, H, W)
    slopes = torch.linalg.solve(covariance, cross.permute(0, 3, 4, 1, 2))  # (B, H, W, guide, image)
    slopes = slopes.permute(0, 3, 4, 1, 2)  # (B, guide, image, H, W)
    offsets = mean_image - (slopes * mean_guide[:, :, None]).sum(1)
    mean_fits = box_mean(torch.cat([slopes.flatten(1, 2), offsets], 1), radius)
    return (mean_fits[:, :9].unflatten(1, (3, 3)) * guide[:, :, None]).sum(1) + mean_fits[:, 9:]
