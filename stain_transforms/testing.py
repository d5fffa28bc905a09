"""Synthetic H&E tissue with a known stain matrix, rendered by Beer-Lambert's law.

The images give a ground truth for tests, benchmarks and demos that need no downloaded data:
``OD = stain_matrix @ concentrations`` and ``RGB = exp(-OD)``.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

# Unit OD vectors of haematoxylin and eosin (columns), typical of H&E slides (Macenko et al.).
DEFAULT_STAIN_MATRIX = np.array([[0.5626, 0.2159], [0.7201, 0.8012], [0.4062, 0.5581]])
DEFAULT_STAIN_MATRIX = DEFAULT_STAIN_MATRIX / np.linalg.norm(DEFAULT_STAIN_MATRIX, axis=0)


def _smooth_field(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    field = gaussian_filter(rng.standard_normal((size, size)), sigma)
    return (field - field.min()) / (np.ptp(field) + 1e-12)


def synthetic_concentrations(size: int = 128, seed: int = 0, background_fraction: float = 0.3) -> np.ndarray:
    """Haematoxylin and eosin concentrations, shape (2, size, size): nuclei on eosin-stained stroma.

    Example:
        >>> concentrations = synthetic_concentrations(64, seed=0)
        >>> concentrations.shape, bool((concentrations >= 0).all())
        ((2, 64, 64), True)
    """
    rng = np.random.default_rng(seed)
    tissue = _smooth_field(rng, size, size / 8) >= background_fraction
    eosin = (0.25 + 0.6 * _smooth_field(rng, size, size / 16)) * tissue
    haematoxylin = 0.08 * _smooth_field(rng, size, size / 20) * tissue
    yy, xx = np.mgrid[:size, :size]
    for _ in range(max(4, size * size // 400)):
        cy, cx = rng.uniform(0, size, 2)
        radius = rng.uniform(2.5, 7.0)
        blob = np.clip(1.5 - np.hypot(yy - cy, xx - cx) / radius, 0, 1)
        haematoxylin = np.maximum(haematoxylin, rng.uniform(0.5, 1.1) * blob * tissue)
    return np.stack([haematoxylin, eosin])


def render(concentrations: np.ndarray, stain_matrix: np.ndarray, noise: float = 0.01, seed: int = 0) -> np.ndarray:
    """Beer-Lambert rendering of (2, H, W) concentrations with a (3, 2) stain matrix to HWC uint8.

    Example:
        >>> render(np.zeros((2, 4, 4)), DEFAULT_STAIN_MATRIX)[0, 0]  # no stain: white
        array([255, 255, 255], dtype=uint8)
    """
    od = np.einsum("cs,shw->hwc", stain_matrix, concentrations)
    od = od + noise * np.random.default_rng(seed).standard_normal(od.shape) * (od > 0)
    return np.clip(np.round(255.0 * np.exp(-od)), 0, 255).astype(np.uint8)


def synthetic_tissue(
    size: int = 128,
    seed: int = 0,
    stain_matrix: np.ndarray | None = None,
    stain_scale: float = 1.0,
    background_fraction: float = 0.3,
    return_truth: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An HWC uint8 H&E-like tile rendered with a known stain matrix.

    Args:
        size: side length in pixels.
        seed: seeds the layout of tissue, nuclei and noise.
        stain_matrix: (3, 2) unit OD vectors of the two stains as columns; defaults to typical H&E.
        stain_scale: multiplies all concentrations (darker or lighter staining).
        background_fraction: roughly the fraction of white background.
        return_truth: also return the stain matrix and the (2, H, W) concentrations.

    Example:
        >>> image, stains, concentrations = synthetic_tissue(64, seed=3, return_truth=True)
        >>> image.shape, image.dtype, stains.shape, concentrations.shape
        ((64, 64, 3), dtype('uint8'), (3, 2), (2, 64, 64))
    """
    stains = DEFAULT_STAIN_MATRIX if stain_matrix is None else np.asarray(stain_matrix, dtype=float)
    stains = stains / np.linalg.norm(stains, axis=0)
    concentrations = stain_scale * synthetic_concentrations(size, seed, background_fraction)
    image = render(concentrations, stains, seed=seed)
    return (image, stains, concentrations) if return_truth else image
