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
        >>> round(psnr_target(b, a), 2)  # 10 log10(8 * 8 * 3): one wrong value of 192
        22.83
    """
    _check_pair(output, target)
    return float(peak_signal_noise_ratio(target, output, data_range=255))


def ssim_target(output: np.ndarray, target: np.ndarray) -> float:
    """SSIM of ``output`` against ``target`` on RGB (channel-wise, averaged), data range 255.

    Example:
        >>> img = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
        >>> ssim_target(img, img), ssim_target(255 - img, img) < 0
        (1.0, True)
    """
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
    """SSIM of ``output`` against ``source`` on grayscale, each min-max stretched to 0..255.

    Only structure counts: a darker, lower-contrast copy of the source scores 1.

    Example:
        >>> source = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
        >>> round(ssim_source(source // 2, source), 3)
        1.0
    """
    _check_pair(output, source)
    return float(structural_similarity(_stretched_gray(source), _stretched_gray(output), data_range=255))


@dataclass
class Fidelity:
    """The three paper metrics of one image, or their means over a set.

    Example:
        >>> Fidelity(ssim_target=0.7, psnr_target=22.5, ssim_source=0.95).as_dict()
        {'ssim_target': 0.7, 'psnr_target': 22.5, 'ssim_source': 0.95}
    """

    ssim_target: float
    psnr_target: float
    ssim_source: float

    def as_dict(self) -> dict[str, float]:
        """The metrics by name."""
        return asdict(self)


def fidelity(output: np.ndarray, target: np.ndarray, source: np.ndarray) -> Fidelity:
    """All three paper metrics of one normalized image.

    Example:
        >>> source = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
        >>> target = source // 2 + 64  # the same tissue, scanned paler
        >>> scores = fidelity(source, target, source)  # no normalization: structure kept, colour off
        >>> round(scores.ssim_source, 3), round(scores.psnr_target, 1)
        (1.0, 16.6)
    """
    return Fidelity(ssim_target(output, target), psnr_target(output, target), ssim_source(output, source))


def mean_fidelity(scores: list[Fidelity]) -> Fidelity:
    """Average metrics over images (PSNR averaged in dB, as in the paper's tables).

    Example:
        >>> mean_fidelity([Fidelity(0.6, 20.0, 1.0), Fidelity(0.8, 24.0, 0.9)])
        Fidelity(ssim_target=0.7, psnr_target=22.0, ssim_source=0.95)
    """
    if not scores:
        raise ValueError("no images to average")
    return Fidelity(*(float(np.mean([getattr(s, f) for s in scores])) for f in ("ssim_target", "psnr_target", "ssim_source")))


def crop_border(image: np.ndarray, crop: int) -> np.ndarray:
    """Drop ``crop`` pixels on every side (registration shifts leave invalid borders).

    Example:
        >>> crop_border(np.zeros((256, 256, 3), np.uint8), 16).shape
        (224, 224, 3)
    """
    if crop <= 0:
        return image
    if 2 * crop >= min(image.shape[:2]):
        raise ValueError(f"crop {crop} leaves nothing of an image of shape {image.shape}")
    return image[crop:-crop, crop:-crop]
