"""Macenko et al. (2009) stain matrix estimation, batched over images.

The optical densities of stained pixels lie close to the plane spanned by the two stain vectors.
The method finds that plane (the top two eigenvectors of the OD covariance), measures the angle of
every pixel in it, and takes the two robust extreme angles (the ``alpha`` and ``100 - alpha``
percentiles) as the directions of the two stains.

Estimation runs on a deterministic subsample of at most ``max_pixels`` pixels per image (a regular
grid), so it costs the same at 512x512 and at 8192x8192.
"""

from __future__ import annotations

import math

import torch

from .color import RGB_FROM_HED, rgb_to_od
from .concentrations import masked_quantile
from .tissue import tissue_mask

# Estimation needs at least this many selected pixels in an image; below it the image falls back.
MIN_PIXELS = 16

# Ruifrok & Johnston's haematoxylin and eosin OD vectors, the answer for images with no usable pixels.
REFERENCE_STAIN_MATRIX = RGB_FROM_HED[:2].T.contiguous()


def subsample(rgb: torch.Tensor, max_pixels: int | None = 2**14) -> torch.Tensor:
    """A regular grid of at most ``max_pixels`` pixels per image: (B, 3, H, W) -> (B, 3, N).

    The same grid (every ``s``-th row and column) is used for every image of the batch, so an
    image gives the same subsample alone or in a batch. ``None`` keeps every pixel.

    Example:
        >>> subsample(torch.rand(2, 3, 512, 512), 2**14).shape
        torch.Size([2, 3, 16384])
    """
    height, width = rgb.shape[-2:]
    step = 1 if max_pixels is None else max(1, math.ceil(math.sqrt(height * width / max_pixels)))
    return rgb[:, :, ::step, ::step].flatten(2)


def pixel_masks(rgb_pixels: torch.Tensor, luminosity_threshold: float | None) -> torch.Tensor:
    """Tissue mask (B, N) of (B, 3, N) pixels; all True when ``luminosity_threshold`` is None.

    Example:
        >>> pixels = torch.tensor([[[1.0, 0.5], [1.0, 0.2], [1.0, 0.6]]])  # white, purple
        >>> pixel_masks(pixels, 0.8).tolist()
        [[False, True]]
    """
    if luminosity_threshold is None:
        return torch.ones(rgb_pixels.shape[0], rgb_pixels.shape[2], dtype=torch.bool, device=rgb_pixels.device)
    return tissue_mask(rgb_pixels.unsqueeze(-1), luminosity_threshold).squeeze(-1)


def order_stains(vectors: torch.Tensor) -> torch.Tensor:
    """Unit-norm, non-negative (B, 3, 2) stain vectors ordered (haematoxylin, eosin).

    Each vector's sign is chosen to make it mostly positive, tiny negative components are clipped,
    and the columns are swapped where needed so that haematoxylin, the stain with the larger red
    OD, comes first.

    Example:
        >>> eosin_first = torch.tensor([[[-0.1, -0.65], [-0.99, -0.70], [-0.11, -0.29]]])
        >>> [round(v, 2) for v in order_stains(eosin_first)[0, 0].tolist()]  # red OD of (H, E)
        [0.65, 0.1]
    """
    vectors = vectors * torch.where(vectors.sum(dim=1, keepdim=True) < 0, -1.0, 1.0)
    vectors = vectors.clamp(min=0.0)
    vectors = vectors / vectors.norm(dim=1, keepdim=True).clamp(min=torch.finfo(vectors.dtype).tiny)
    swap = vectors[:, 0, 0] < vectors[:, 0, 1]
    return torch.where(swap[:, None, None], vectors.flip(2), vectors)


def macenko_from_od(od: torch.Tensor, mask: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """Macenko stain matrix (B, 3, 2) from the OD of (B, 3, N) pixels, using those where ``mask`` (B, N).

    Images with fewer than 16 selected pixels, or whose selected pixels are all the same colour,
    get :data:`REFERENCE_STAIN_MATRIX` (Ruifrok's H&E) instead of a meaningless estimate.

    Example:
        >>> stains = torch.tensor([[0.56, 0.22], [0.72, 0.80], [0.41, 0.56]])
        >>> od = stains @ torch.rand(1, 2, 1000)  # mixtures of the two stains
        >>> estimate = macenko_from_od(od, torch.ones(1, 1000, dtype=torch.bool), alpha=0.0)
        >>> bool(((estimate[0] * stains / stains.norm(dim=0)).sum(0) > 0.999).all())
        True
    """
    weights = mask.to(od.dtype)
    count = weights.sum(dim=1)
    # Weighted covariance of the selected pixels, batched: (B, 3, 3).
    mean = (od * weights[:, None]).sum(dim=2) / count.clamp(min=1)[:, None]
    centred = (od - mean[:, :, None]) * weights[:, None]
    covariance = centred @ centred.mT / (count - 1).clamp(min=1)[:, None, None]
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
    plane = eigenvectors[:, :, 1:].flip(2)  # (B, 3, 2): the principal direction first
    # Orient the principal direction along the mean OD, so that angles of stained pixels stay near
    # zero and never wrap around +-pi.
    plane = plane * torch.where((plane * mean[:, :, None]).sum(dim=1, keepdim=True) < 0, -1.0, 1.0)
    projected = plane.mT @ od  # (B, 2, N)
    angles = torch.atan2(projected[:, 1], projected[:, 0])
    extremes = masked_quantile(angles, mask, [alpha / 100.0, 1.0 - alpha / 100.0])  # NaN without pixels
    directions = torch.stack([torch.cos(extremes), torch.sin(extremes)], dim=1)  # (B, 2, 2)
    stains = order_stains(plane @ directions)
    usable = (count >= MIN_PIXELS) & (eigenvalues[:, 1] > 0) & torch.isfinite(stains).all(dim=(1, 2))
    reference = REFERENCE_STAIN_MATRIX.to(stains).expand_as(stains)
    return torch.where(usable[:, None, None], torch.nan_to_num(stains), reference)


def macenko_stain_matrix(
    rgb: torch.Tensor,
    beta: float = 0.15,
    alpha: float = 1.0,
    luminosity_threshold: float | None = 0.8,
    max_pixels: int | None = 2**14,
) -> torch.Tensor:
    """Estimate each image's stain matrix with Macenko's method: (B, 3, H, W) -> (B, 3, 2).

    Args:
        rgb: (B, 3, H, W) images in [0, 1].
        beta: pixels with an OD below ``beta`` in any channel are too faint to use (0.15 as in the paper).
        alpha: the angle percentiles are ``alpha`` and ``100 - alpha`` (1 as in the paper).
        luminosity_threshold: also drop pixels that :func:`tissue_mask` calls background;
            ``None`` uses the OD threshold alone, as the original method does.
        max_pixels: estimate on a regular grid of at most this many pixels per image
            (``None``: all pixels).

    Returns:
        (B, 3, 2) unit, non-negative stain OD vectors, columns (haematoxylin, eosin). An image
        with fewer than 16 usable pixels gets Ruifrok's H&E matrix.

    Example:
        >>> from stain_transforms.testing import synthetic_tissue
        >>> image, truth, _ = synthetic_tissue(128, seed=0, return_truth=True)
        >>> rgb = torch.from_numpy(image).permute(2, 0, 1)[None] / 255.0
        >>> estimate = macenko_stain_matrix(rgb)[0]
        >>> bool(((estimate * torch.from_numpy(truth).float()).sum(0) > 0.99).all())
        True
    """
    if rgb.ndim != 4 or rgb.shape[1] != 3:
        raise ValueError(f"rgb must have shape (B, 3, H, W), got {tuple(rgb.shape)}")
    if not 0.0 <= alpha < 50.0:
        raise ValueError(f"alpha must be a percentile in [0, 50), got {alpha}")
    pixels = subsample(rgb, max_pixels)
    od = rgb_to_od(pixels)
    mask = pixel_masks(pixels, luminosity_threshold) & (od >= beta).all(dim=1)
    return macenko_from_od(od, mask, alpha)
