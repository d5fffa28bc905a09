"""The StainNet paper's fidelity metrics (Kang et al., 2021, section 3.1), computed with scikit-image.

- SSIM and PSNR of the normalized image against the target, on RGB;
- SSIM of the normalized image against the source, on grayscale (BT.601 luma), each image min-max stretched to
  0..255 first, so that only structure (not colour) is compared.

All functions take HWC uint8 arrays of the same shape.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity


def _check_pair(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    if a.ndim != 3 or a.shape[-1] != 3:
        raise ValueError(f"expected HWC RGB images, got shape {a.shape}")


def psnr_target(output: np.ndarray, target: np.ndarray) -> float:
    """PSNR in dB of ``output`` against ``target`` on RGB, data range 255.

    Example:
        >>> a = np.zeros((8, 8, 3), np.uint8); b = a.copy(); b[0, 0, 0] = 255
        >>> round(psnr_target(b, a), 2)
        22.84
    """
    _check_pair(output, target)
    return float(peak_signal_noise_ratio(target, output, data_range=255))


def ssim_target(output: np.ndarray, target: np.ndarray) -> float:
    """SSIM of ``output`` against ``target`` on RGB (channel-wise, averaged), data range 255."""
    _check_pair(output, target)
    return float(structural_similarity(target, output, channel_axis=-1, data_range=255))


# ITU-R BT.601 luma, OpenCV's RGB2GRAY, which the StainNet evaluation used (it reproduces the
# reference SSIM-source figures in ../shared/README.md; scikit-image's rgb2gray weights give ~0.003 less).
BT601_LUMA = np.array([0.299, 0.587, 0.114])


def _stretched_gray(image: np.ndarray) -> np.ndarray:
    gray = image.astype(np.float64) @ BT601_LUMA
    low, high = gray.min(), gray.max()
    return (gray - low) / max(high - low, 1e-12) * 255.0


def ssim_source(output: np.ndarray, source: np.ndarray) -> float:
    """SSIM of ``output`` against ``source`` on grayscale, each min-max stretched to 0..255."""
    _check_pair(output, source)
    return float(structural_similarity(_stretched_gray(source), _stretched_gray(output), data_range=255))


@dataclass
class Fidelity:
    """The three paper metrics of one image, or their means over a set."""

    ssim_target: float
    psnr_target: float
    ssim_source: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def fidelity(output: np.ndarray, target: np.ndarray, source: np.ndarray) -> Fidelity:
    """All three paper metrics of one normalized image.

    Example:
        >>> img = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
        >>> fidelity(img, img, img).ssim_source
        1.0
    """
    return Fidelity(ssim_target(output, target), psnr_target(output, target), ssim_source(output, source))


def mean_fidelity(scores: list[Fidelity]) -> Fidelity:
    """Average metrics over images (PSNR averaged in dB, as in the paper's tables)."""
    if not scores:
        raise ValueError("no images to average")
    return Fidelity(*(float(np.mean([getattr(s, f) for s in scores])) for f in ("ssim_target", "psnr_target", "ssim_source")))


def crop_border(image: np.ndarray, crop: int) -> np.ndarray:
    """Drop ``crop`` pixels on every side (registration shifts leave invalid borders)."""
    if crop <= 0:
        return image
    if 2 * crop >= min(image.shape[:2]):
        raise ValueError(f"crop {crop} leaves nothing of an image of shape {image.shape}")
    return image[crop:-crop, crop:-crop]
