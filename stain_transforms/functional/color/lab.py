"""sRGB <-> CIE L*a*b* (D65), as ``skimage.color.rgb2lab`` / ``lab2rgb``.

The conversion runs sRGB -> linear light -> XYZ relative to white -> f = CIE's f of each -> Lab,
and Lab is affine in f: ``lab = LAB_FROM_F @ f + LAB_OFFSET``. Methods that only do affine work in
Lab (Reinhard) stay in f and save a pass. The curves are computed in place by
:mod:`stain_transforms._kernels.lab`, which carries linear light times ``SRGB_GAIN``; the gain is
folded into the two matrices next to the curve (``WHITE_XYZ_FROM_GAINED``, ``GAINED_FROM_WHITE_XYZ``).
"""

from __future__ import annotations

import torch

from ..._kernels.constants import Constant
from ..._kernels.lab import SRGB_GAIN, lab_f_to_rgb_, rgb_to_lab_f_and_spare
from .channels import channel_matmul

# sRGB (D65) -> CIE XYZ, and the D65 white.
XYZ_FROM_RGB = torch.tensor(
    [[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]],
    dtype=torch.float64,
)
D65_WHITE = torch.tensor([0.95047, 1.0, 1.08883], dtype=torch.float64)
# L*a*b* is affine in f = (f(X), f(Y), f(Z)): lab = LAB_FROM_F @ f + LAB_OFFSET.
LAB_FROM_F = torch.tensor([[0.0, 116.0, 0.0], [500.0, -500.0, 0.0], [0.0, 200.0, -200.0]], dtype=torch.float64)
LAB_OFFSET = torch.tensor([-16.0, 0.0, 0.0], dtype=torch.float64)
F_FROM_LAB = torch.linalg.inv(LAB_FROM_F)

_WHITE_XYZ_FROM_RGB = XYZ_FROM_RGB / D65_WHITE[:, None]
WHITE_XYZ_FROM_GAINED = Constant(_WHITE_XYZ_FROM_RGB / SRGB_GAIN)
GAINED_FROM_WHITE_XYZ = Constant(torch.linalg.inv(_WHITE_XYZ_FROM_RGB) * SRGB_GAIN)


def rgb_to_lab_f(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB to f = (f(X/Xn), f(Y/Yn), f(Z/Zn)), the non-linear stage of CIE Lab; Lab is affine in it.

    Example:
        >>> rgb = torch.rand(1, 3, 4, 4, dtype=torch.float64)
        >>> lab = channel_matmul(rgb_to_lab_f(rgb), LAB_FROM_F, LAB_OFFSET)
        >>> torch.allclose(lab, rgb_to_lab(rgb))
        True
    """
    return rgb_to_lab_f_and_spare(rgb, WHITE_XYZ_FROM_GAINED)[0]


def lab_f_to_rgb(f: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`rgb_to_lab_f`, clipped into [0, 1].

    Example:
        >>> rgb = torch.rand(1, 3, 4, 4, dtype=torch.float64)
        >>> torch.allclose(lab_f_to_rgb(rgb_to_lab_f(rgb)), rgb)
        True
    """
    return lab_f_to_rgb_(f.clone(), torch.empty_like(f), GAINED_FROM_WHITE_XYZ)


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
    return lab_f_to_rgb(channel_matmul(lab - LAB_OFFSET.to(lab).view(1, 3, 1, 1), F_FROM_LAB))
