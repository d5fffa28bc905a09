"""Colour-space conversions on (B, 3, H, W) float tensors in [0, 1].

All functions are pure, batched and device-agnostic. Optical density (OD) uses white = 1.0
(255 in uint8), the Beer-Lambert convention of Macenko et al. (2009) and Vahadane et al. (2016).
"""

from __future__ import annotations

import torch

# Darkest intensity that still has a finite optical density: 1/255, one uint8 grey level.
MIN_INTENSITY = 1.0 / 255.0

# Ruifrok & Johnston (2001) stain vectors: haematoxylin, eosin, DAB (rows). Like scikit-image we use
# them as published (rows not re-normalised), so HED values and jitter presets agree with it.
RGB_FROM_HED = torch.tensor([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=torch.float64)
HED_FROM_RGB = torch.linalg.inv(RGB_FROM_HED)

# scikit-image expresses HED in units of OD / -log(1e-6); we keep its scale so presets transfer.
_HED_LOG_ADJUST = -torch.log(torch.tensor(1e-6, dtype=torch.float64)).item()

# sRGB (D65) -> CIE XYZ, and the D65 reference white.
_XYZ_FROM_RGB = torch.tensor(
    [[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]],
    dtype=torch.float64,
)
_RGB_FROM_XYZ = torch.linalg.inv(_XYZ_FROM_RGB)
_D65_WHITE = torch.tensor([0.95047, 1.0, 1.08883], dtype=torch.float64)


def _channel_matmul(x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Apply a 3x3 ``matrix`` to the channel axis of a (B, 3, H, W) tensor: out_c = sum_k m[c, k] x_k."""
    return torch.einsum("ck,bkhw->bchw", matrix.to(x), x)


def rgb_to_od(rgb: torch.Tensor) -> torch.Tensor:
    """RGB in [0, 1] to optical density ``-log(I)``, with I clamped to >= 1/255 so OD stays finite.

    Example:
        >>> rgb_to_od(torch.ones(1, 3, 1, 1)).abs().max().item()
        0.0
    """
    return -torch.log(rgb.clamp(min=MIN_INTENSITY))


def od_to_rgb(od: torch.Tensor) -> torch.Tensor:
    """Optical density back to RGB in [0, 1] (negative OD, brighter than white, is clipped).

    Example:
        >>> od_to_rgb(torch.zeros(1, 3, 1, 1)).min().item()
        1.0
    """
    return torch.exp(-od.clamp(min=0.0)).clamp(0.0, 1.0)


def rgb_to_hed(rgb: torch.Tensor) -> torch.Tensor:
    """RGB in [0, 1] to haematoxylin-eosin-DAB (Ruifrok colour deconvolution).

    Matches ``skimage.color.rgb2hed`` (same matrix and scale) except that we clamp intensities at
    1/255 instead of 1e-6. Negative stain amounts are kept, so that ``hed_to_rgb`` inverts exactly.

    Example:
        >>> rgb = torch.rand(2, 3, 8, 8) * 0.9 + 0.1
        >>> torch.allclose(hed_to_rgb(rgb_to_hed(rgb)), rgb, atol=1e-5)
        True
    """
    od = rgb_to_od(rgb) / _HED_LOG_ADJUST
    return torch.einsum("kc,bkhw->bchw", HED_FROM_RGB.to(od), od)


def hed_to_rgb(hed: torch.Tensor) -> torch.Tensor:
    """Haematoxylin-eosin-DAB back to RGB in [0, 1]; the inverse of :func:`rgb_to_hed`."""
    od = torch.einsum("kc,bkhw->bchw", RGB_FROM_HED.to(hed), hed) * _HED_LOG_ADJUST
    return od_to_rgb(od)


def _srgb_to_linear(rgb: torch.Tensor) -> torch.Tensor:
    return torch.where(rgb > 0.04045, ((rgb.clamp(min=0.04045) + 0.055) / 1.055) ** 2.4, rgb / 12.92)


def _linear_to_srgb(lin: torch.Tensor) -> torch.Tensor:
    lin = lin.clamp(min=0.0)
    return torch.where(lin > 0.0031308, 1.055 * lin.clamp(min=0.0031308) ** (1 / 2.4) - 0.055, lin * 12.92)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1] to CIE L*a*b* (D65), as ``skimage.color.rgb2lab``: L in [0, 100].

    Example:
        >>> lab = rgb_to_lab(torch.ones(1, 3, 1, 1))
        >>> round(lab[0, 0, 0, 0].item(), 3)
        100.0
    """
    xyz = _channel_matmul(_srgb_to_linear(rgb), _XYZ_FROM_RGB) / _D65_WHITE.to(rgb).view(1, 3, 1, 1)
    f = torch.where(xyz > 0.008856, xyz.clamp(min=0.008856) ** (1 / 3), 7.787 * xyz + 16 / 116)
    fx, fy, fz = f.unbind(1)
    lightness = 116 * fy - 16
    return torch.stack([lightness, 500 * (fx - fy), 200 * (fy - fz)], dim=1)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """CIE L*a*b* (D65) back to sRGB, clipped into [0, 1]; the inverse of :func:`rgb_to_lab`."""
    lightness, a, b = lab.unbind(1)
    fy = (lightness + 16) / 116
    f = torch.stack([fy + a / 500, fy, fy - b / 200], dim=1)
    xyz = torch.where(f > 0.2068966, f**3, (f - 16 / 116) / 7.787) * _D65_WHITE.to(lab).view(1, 3, 1, 1)
    return _linear_to_srgb(_channel_matmul(xyz, _RGB_FROM_XYZ)).clamp(0.0, 1.0)
