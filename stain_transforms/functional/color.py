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

# sRGB (D65) -> CIE XYZ, with XYZ already divided by the D65 reference white.
_XYZ_FROM_RGB = torch.tensor(
    [[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]],
    dtype=torch.float64,
)
_D65_WHITE = torch.tensor([0.95047, 1.0, 1.08883], dtype=torch.float64)
_WHITE_XYZ_FROM_RGB = _XYZ_FROM_RGB / _D65_WHITE[:, None]
_RGB_FROM_WHITE_XYZ = torch.linalg.inv(_WHITE_XYZ_FROM_RGB)
# L*a*b* is affine in f = (f(X), f(Y), f(Z)): lab = LAB_FROM_F @ f + LAB_OFFSET.
LAB_FROM_F = torch.tensor([[0.0, 116.0, 0.0], [500.0, -500.0, 0.0], [0.0, 200.0, -200.0]], dtype=torch.float64)
LAB_OFFSET = torch.tensor([-16.0, 0.0, 0.0], dtype=torch.float64)
_F_FROM_LAB = torch.linalg.inv(LAB_FROM_F)


def channel_matmul(x: torch.Tensor, matrix: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Apply a (3, 3) or per-image (B, 3, 3) ``matrix`` (and a (3,) or (B, 3) bias) to the channels of (B, 3, H, W).

    Example:
        >>> x = torch.rand(2, 3, 4, 4)
        >>> swap = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # swap red and green
        >>> torch.equal(channel_matmul(x, swap)[:, 0], x[:, 1])
        True
    """
    flat = torch.matmul(matrix.to(x), x.flatten(2))
    if bias is not None:
        flat = flat + bias.to(x).reshape(-1, 3, 1)
    return flat.view_as(x)


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
    return channel_matmul(rgb_to_od(rgb), HED_FROM_RGB.T / _HED_LOG_ADJUST)


def hed_to_rgb(hed: torch.Tensor) -> torch.Tensor:
    """Haematoxylin-eosin-DAB back to RGB in [0, 1]; the inverse of :func:`rgb_to_hed`.

    Example:
        >>> hed_to_rgb(torch.zeros(1, 3, 2, 2)).min().item()  # no stain: white
        1.0
    """
    return od_to_rgb(channel_matmul(hed, RGB_FROM_HED.T * _HED_LOG_ADJUST))


def _power(x: torch.Tensor, exponent: float) -> torch.Tensor:
    """``x ** exponent`` for x >= 0, as exp(log) because torch's CPU pow is several times slower."""
    return torch.log(x).mul_(exponent).exp_()


def _srgb_to_linear(rgb: torch.Tensor) -> torch.Tensor:
    return torch.where(rgb > 0.04045, _power((rgb + 0.055) / 1.055, 2.4), rgb / 12.92)


def _linear_to_srgb(lin: torch.Tensor) -> torch.Tensor:
    lin = lin.clamp(min=0.0)
    return torch.where(lin > 0.0031308, 1.055 * _power(lin, 1 / 2.4) - 0.055, lin * 12.92)


def rgb_to_lab_f(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB to f = (f(X/Xn), f(Y/Yn), f(Z/Zn)), the non-linear stage of CIE Lab; Lab is affine in it.

    Working in f saves a pass over the image when only affine Lab operations follow (Reinhard).

    Example:
        >>> rgb = torch.rand(1, 3, 4, 4, dtype=torch.float64)
        >>> lab = channel_matmul(rgb_to_lab_f(rgb), LAB_FROM_F, LAB_OFFSET)
        >>> torch.allclose(lab, rgb_to_lab(rgb))
        True
    """
    xyz = channel_matmul(_srgb_to_linear(rgb), _WHITE_XYZ_FROM_RGB)
    return torch.where(xyz > 0.008856, _power(xyz.clamp(min=0.0), 1 / 3), 7.787 * xyz + 16 / 116)


def lab_f_to_rgb(f: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`rgb_to_lab_f`, clipped into [0, 1].

    Example:
        >>> rgb = torch.rand(1, 3, 4, 4, dtype=torch.float64)
        >>> torch.allclose(lab_f_to_rgb(rgb_to_lab_f(rgb)), rgb)
        True
    """
    xyz = torch.where(f > 0.2068966, f**3, (f - 16 / 116) / 7.787)
    return _linear_to_srgb(channel_matmul(xyz, _RGB_FROM_WHITE_XYZ)).clamp(0.0, 1.0)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1] to CIE L*a*b* (D65), as ``skimage.color.rgb2lab``: L in [0, 100].

    Example:
        >>> lab = rgb_to_lab(torch.ones(1, 3, 1, 1))
        >>> round(lab[0, 0, 0, 0].item(), 3)
        100.0
    """
    return channel_matmul(rgb_to_lab_f(rgb), LAB_FROM_F, LAB_OFFSET)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """CIE L*a*b* (D65) back to sRGB, clipped into [0, 1]; the inverse of :func:`rgb_to_lab`.

    Example:
        >>> rgb = torch.rand(2, 3, 4, 4, dtype=torch.float64)
        >>> torch.allclose(lab_to_rgb(rgb_to_lab(rgb)), rgb)
        True
    """
    return lab_f_to_rgb(channel_matmul(lab - LAB_OFFSET.to(lab).view(1, 3, 1, 1), _F_FROM_LAB))
