"""Vahadane et al. (2016) stain matrix estimation: sparse non-negative dictionary learning, in torch.

The OD of the tissue pixels, ``X`` (3 x N), is factorised as ``X ~ W H`` with a non-negative
dictionary ``W`` (3 x 2, columns of norm at most 1: the stain vectors) and non-negative, sparse
concentrations ``H`` (2 x N), by minimising

    1/2 ||X - W H||^2 + lambda * sum(H)      subject to  W >= 0, ||W[:, j]|| <= 1, H >= 0,

the objective that Vahadane et al. solve with SPAMS (``trainDL`` with ``posD``/``posAlpha``,
``lambda1 = 0.1``). Here both blocks are solved exactly, in alternation, batched over images:

- ``H`` given ``W`` is a two-unknown non-negative lasso per pixel, solved in closed form by
  :func:`~stain_transforms.functional.concentrations.nnls_concentrations`;
- ``W`` given ``H`` is updated one column at a time: the column's unconstrained minimiser
  ``w_j + (X H_j^T - W (H H^T)_j) / (H H^T)_jj`` projected onto {w >= 0, ||w|| <= 1}, which is the
  exact minimiser because that objective is isotropic in ``w_j`` (block coordinate descent, as in
  Mairal et al.'s online dictionary learning that SPAMS implements).

Each step can only lower the objective. Starting from the Macenko estimate of the same pixels,
a few tens of iterations converge. The pixels are a random subsample of at most ``max_pixels``
per image, drawn from a seeded generator, so results are reproducible; the same pixel positions
are used for every image of a batch, so an image gives the same answer alone or in a batch.
"""

from __future__ import annotations

import torch

from .color import rgb_to_od
from .concentrations import nnls_concentrations
from .macenko import MIN_PIXELS, REFERENCE_STAIN_MATRIX, macenko_from_od, order_stains, pixel_masks

DEFAULT_REGULARIZER = 0.1
DEFAULT_ITERATIONS = 30
DEFAULT_MAX_PIXELS = 2**14


def random_pixels(rgb: torch.Tensor, max_pixels: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``max_pixels`` pixel positions drawn at random (with replacement), shared by the batch: (B, 3, N).

    Images with no more than ``max_pixels`` pixels are used whole. ``generator`` (a CPU
    ``torch.Generator``) defaults to one seeded with 0.

    Example:
        >>> random_pixels(torch.rand(2, 3, 512, 512), 1000).shape
        torch.Size([2, 3, 1000])
    """
    flat = rgb.flatten(2)
    if flat.shape[2] <= max_pixels:
        return flat
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    index = torch.randint(flat.shape[2], (max_pixels,), generator=generator).to(rgb.device)
    return flat.index_select(2, index)


def dictionary_learning(
    od: torch.Tensor,
    mask: torch.Tensor,
    init: torch.Tensor,
    regularizer: float = DEFAULT_REGULARIZER,
    iterations: int = DEFAULT_ITERATIONS,
) -> torch.Tensor:
    """Sparse non-negative dictionary learning of two atoms, batched: returns W (B, 3, 2).

    Args:
        od: (B, 3, N) optical densities.
        mask: (B, N) boolean, the pixels that take part (tissue).
        init: (B, 3, 2) starting dictionary, non-negative.
        regularizer: the L1 weight ``lambda`` on the concentrations.
        iterations: the number of alternating (H, W) updates.

    Returns:
        (B, 3, 2) non-negative dictionary with columns of norm at most 1 (not yet ordered).

    Example:
        >>> stains = torch.tensor([[0.56, 0.22], [0.72, 0.80], [0.41, 0.56]])
        >>> od = stains @ torch.rand(1, 2, 1000)
        >>> start = torch.tensor([[[0.6, 0.3], [0.6, 0.8], [0.5, 0.5]]])
        >>> learnt = dictionary_learning(od, torch.ones(1, 1000, dtype=torch.bool), start)
        >>> bool((learnt >= 0).all()), bool((learnt.norm(dim=1) <= 1 + 1e-6).all())
        (True, True)
    """
    weights = mask.to(od.dtype)[:, None, :]
    dictionary = init.clone()
    tiny = torch.finfo(od.dtype).tiny
    for _ in range(iterations):
        codes = nnls_concentrations(od, dictionary, l1=regularizer)  # (B, 2, N)
        weighted = codes * weights
        gram = weighted @ codes.mT  # H H^T: (B, 2, 2)
        correlation = od @ weighted.mT  # X H^T: (B, 3, 2)
        for j in range(2):
            scale = gram[:, j, j]
            step = (correlation[:, :, j] - (dictionary @ gram[:, :, j, None])[:, :, 0]) / scale.clamp(min=tiny)[:, None]
            column = (dictionary[:, :, j] + step).clamp(min=0.0)
            column = column / column.norm(dim=1, keepdim=True).clamp(min=1.0)
            # An atom that no pixel uses has no gradient: keep it where it is.
            dictionary[:, :, j] = torch.where((scale > tiny)[:, None], column, dictionary[:, :, j])
    return dictionary


def vahadane_from_od(
    od: torch.Tensor,
    mask: torch.Tensor,
    regularizer: float = DEFAULT_REGULARIZER,
    iterations: int = DEFAULT_ITERATIONS,
) -> torch.Tensor:
    """Vahadane stain matrix (B, 3, 2) from the OD of (B, 3, N) pixels, learning from those in ``mask`` (B, N).

    Starts from the Macenko estimate of the same pixels, runs :func:`dictionary_learning` and
    orders the atoms (haematoxylin, eosin) with unit norm. Images with fewer than 16 usable pixels
    get Ruifrok's H&E matrix; an image whose learning collapses an atom keeps the Macenko start.

    Example:
        >>> stains = torch.tensor([[0.56, 0.22], [0.72, 0.80], [0.41, 0.56]])
        >>> od = stains @ torch.rand(1, 2, 1000)
        >>> vahadane_from_od(od, torch.ones(1, 1000, dtype=torch.bool)).shape
        torch.Size([1, 3, 2])
    """
    mask = mask & (od > 0).any(dim=1)
    init = macenko_from_od(od, mask)
    dictionary = dictionary_learning(od, mask, init, regularizer, iterations)
    enough = mask.sum(dim=1) >= MIN_PIXELS
    usable = (dictionary.norm(dim=1) > 1e-3).all(dim=1) & enough
    fallback = torch.where(enough[:, None, None], init, REFERENCE_STAIN_MATRIX.to(init))
    return torch.where(usable[:, None, None], order_stains(dictionary), fallback)


def vahadane_stain_matrix(
    rgb: torch.Tensor,
    regularizer: float = DEFAULT_REGULARIZER,
    iterations: int = DEFAULT_ITERATIONS,
    luminosity_threshold: float | None = 0.8,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Estimate each image's stain matrix with Vahadane's method: (B, 3, H, W) -> (B, 3, 2).

    Args:
        rgb: (B, 3, H, W) images in [0, 1].
        regularizer: the sparsity weight ``lambda`` (0.1, as in Vahadane et al. and StainTools).
        iterations: alternating updates of concentrations and stain vectors.
        luminosity_threshold: learn from the pixels that :func:`tissue_mask` calls tissue
            (``None``: from every pixel with some optical density).
        max_pixels: learn from at most this many random pixels per image.
        generator: a CPU ``torch.Generator`` for the pixel subsample; the default is seeded with 0,
            so the result is reproducible.

    Returns:
        (B, 3, 2) unit, non-negative stain OD vectors, columns (haematoxylin, eosin). An image with
        fewer than 16 usable pixels gets Ruifrok's H&E matrix.

    Example:
        >>> from stain_transforms.testing import synthetic_tissue
        >>> image, truth, _ = synthetic_tissue(128, seed=0, return_truth=True)
        >>> rgb = torch.from_numpy(image).permute(2, 0, 1)[None] / 255.0
        >>> estimate = vahadane_stain_matrix(rgb)[0]
        >>> bool(((estimate * torch.from_numpy(truth).float()).sum(0) > 0.97).all())
        True
    """
    if rgb.ndim != 4 or rgb.shape[1] != 3:
        raise ValueError(f"rgb must have shape (B, 3, H, W), got {tuple(rgb.shape)}")
    if regularizer < 0 or iterations < 0 or max_pixels < 1:
        raise ValueError(
            "regularizer and iterations must be >= 0 and max_pixels >= 1, "
            f"got {regularizer}, {iterations}, {max_pixels}"
        )
    pixels = random_pixels(rgb, max_pixels, generator)
    return vahadane_from_od(rgb_to_od(pixels), pixel_masks(pixels, luminosity_threshold), regularizer, iterations)
