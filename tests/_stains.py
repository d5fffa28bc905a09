"""Synthetic tissue rendered with known stain vectors, and angles between stain vectors (Macenko and Vahadane tests)."""

from __future__ import annotations

import numpy as np
import torch

from stain_transforms.testing import render, synthetic_concentrations

STAIN_MATRICES = {  # haematoxylin and eosin vectors (columns), in RGB optical density
    "typical": [[0.5626, 0.2159], [0.7201, 0.8012], [0.4062, 0.5581]],
    "ruifrok": [[0.65, 0.07], [0.70, 0.99], [0.29, 0.11]],
    "warm": [[0.70, 0.28], [0.65, 0.85], [0.30, 0.45]],
    "blue": [[0.49, 0.22], [0.70, 0.90], [0.52, 0.38]],
}


def unit(matrix) -> np.ndarray:
    matrix = np.asarray(matrix, dtype=np.float64)
    return matrix / np.linalg.norm(matrix, axis=0)


def angles_deg(estimate, truth) -> np.ndarray:
    """Angle between corresponding columns (stain vectors), in degrees."""
    estimate, truth = unit(np.asarray(estimate)), unit(truth)
    return np.degrees(np.arccos(np.clip((estimate * truth).sum(0), -1.0, 1.0)))


def pure_stain_concentrations(size: int = 128, seed: int = 0, scale: float = 1.0) -> np.ndarray:
    """``synthetic_concentrations`` with nucleus cores stained by haematoxylin alone.

    Stain vectors are identifiable only when some pixels carry one stain alone: in
    ``synthetic_tissue`` every nucleus also holds eosin, so no tissue pixel lies within 5 degrees
    of the haematoxylin vector and no method that reads stain vectors off the data can get closer.
    """
    haematoxylin, eosin = scale * synthetic_concentrations(size, seed)
    return np.stack([haematoxylin, np.where(haematoxylin > 0.6 * scale, 0.02 * eosin, eosin)])


def tissue_with_pure_stains(stain_matrix, size=128, seed=0, scale=1.0) -> np.ndarray:
    """``synthetic_tissue``'s layout, rendered with ``stain_matrix``, nucleus cores haematoxylin alone."""
    return render(pure_stain_concentrations(size, seed, scale), unit(stain_matrix), seed=seed)


def to_tensor(image: np.ndarray, dtype=torch.float32) -> torch.Tensor:
    """An HWC uint8 image as a (1, 3, H, W) tensor in [0, 1]."""
    return torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].to(dtype) / 255.0
