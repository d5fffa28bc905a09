"""Colour-space conversions on (B, 3, H, W) float tensors in [0, 1].

All functions are pure, batched and device-agnostic. Internally the curves work in place on their
own buffers; when autograd tracks the input they work out of place instead, so gradients flow.

Optical density (OD) uses white = 1.0 (255 in uint8), the Beer-Lambert convention of Macenko et al.
(2009) and Vahadane et al. (2016).
"""

from __future__ import annotations

from collections.abc import Callable

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
# The sRGB curve is ((c + 0.055) / 1.055) ** 2.4. The in-place paths skip the division and carry
# "gained" linear light, _SRGB_GAIN = 1.055 ** 2.4 times the true value, which the matrices next to
# the curve absorb: one full-image pass fewer each way.
_SRGB_GAIN = 1.055**2.4
_WHITE_XYZ_FROM_GAINED = _WHITE_XYZ_FROM_RGB / _SRGB_GAIN
_GAINED_FROM_WHITE_XYZ = _RGB_FROM_WHITE_XYZ * _SRGB_GAIN
# L*a*b* is affine in f = (f(X), f(Y), f(Z)): lab = LAB_FROM_F @ f + LAB_OFFSET.
LAB_FROM_F = torch.tensor([[0.0, 116.0, 0.0], [500.0, -500.0, 0.0], [0.0, 200.0, -200.0]], dtype=torch.float64)
LAB_OFFSET = torch.tensor([-16.0, 0.0, 0.0], dtype=torch.float64)
_F_FROM_LAB = torch.linalg.inv(LAB_FROM_F)


_CAST_CACHE: dict[tuple[int, torch.dtype, torch.device], torch.Tensor] = {}


def cast_like(constant: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A module-level constant in ``like``'s dtype and device, converted once and then cached.

    On a small image, re-converting a dozen float64 constants per call costs as much as a
    full-resolution pass. Only for constants that live as long as the program (the key is their id).

    Example:
        >>> x = torch.zeros(2, dtype=torch.float32)
        >>> cast_like(LAB_OFFSET, x).dtype, cast_like(LAB_OFFSET, x) is cast_like(LAB_OFFSET, x)
        (torch.float32, True)
    """
    key = (id(constant), like.dtype, like.device)
    cached = _CAST_CACHE.get(key)
    if cached is None:
        cached = _CAST_CACHE[key] = constant.to(like)
    return cached


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


def _tracked(x: torch.Tensor) -> bool:
    """Whether autograd records operations on ``x``: then the in-place helpers below work out of place."""
    return torch.is_grad_enabled() and x.requires_grad


def _power_(x: torch.Tensor, exponent: float) -> torch.Tensor:
    """``x ** exponent`` in place, for x >= 0, as exp(log): torch's CPU pow is several times slower.

    Under autograd, a new tensor that callers may still modify in place.
    """
    if _tracked(x):
        return torch.exp(torch.log(x) * exponent).clone()  # exp's backward needs its own output intact
    return x.log_().mul_(exponent).exp_()


def _apply_curve_(
    x: torch.Tensor,
    threshold: float,
    curve_: Callable[[torch.Tensor], torch.Tensor],
    toe: Callable[[torch.Tensor], torch.Tensor],
    source: torch.Tensor | None = None,
) -> torch.Tensor:
    """Overwrite ``x`` with ``curve_(x)`` (which works in place) where source > threshold, and ``toe(source)`` elsewhere.

    ``source`` defaults to ``x``; a caller passes the original values when ``x`` already holds a
    first step of the curve. The sRGB and CIE curves have a short linear toe for very dark values,
    which stained tissue rarely reaches, so the masking is skipped when no value is that dark: on a
    512x512 image a full-image select costs more than the curve itself.
    """
    source = x if source is None else source
    if _tracked(x) or _tracked(source):
        return torch.where(source > threshold, curve_(x.clone()), toe(source))
    if source.numel() == 0 or source.amin().item() > threshold:
        return curve_(x)
    dark = source <= threshold
    toe_values = toe(source[dark])
    curve_(x)[dark] = toe_values
    return x


def _srgb_to_linear(rgb: torch.Tensor, *, gained: bool = False) -> torch.Tensor:
    """Linear light of sRGB values, in a new tensor; ``gained``: ``_SRGB_GAIN`` times it, one pass cheaper.

    Without the gain, white stays exactly 1 (the tissue threshold compares against it).
    """
    first_step = torch.add(rgb, 0.055)
    if not gained:
        first_step.div_(1.055)
    toe_slope = (_SRGB_GAIN if gained else 1.0) / 12.92
    return _apply_curve_(first_step, 0.04045, lambda v: _power_(v, 2.4), lambda v: v * toe_slope, source=rgb)


def _gained_linear_to_srgb_(gained: torch.Tensor) -> torch.Tensor:
    """sRGB values from ``_SRGB_GAIN`` times linear light, in place (negatives take the toe)."""
    curve_ = lambda v: _power_(v, 1 / 2.4).sub_(0.055)
    return _apply_curve_(gained, 0.0031308 * _SRGB_GAIN, curve_, lambda v: v * (12.92 / _SRGB_GAIN))


def _lab_f_(t: torch.Tensor) -> torch.Tensor:
    """CIE's f(t), in place: the cube root, with a linear toe below (6/29)^3."""
    return _apply_curve_(t, 0.008856, lambda v: _power_(v, 1 / 3), lambda v: 7.787 * v + 16 / 116)


def _lab_f_to_rgb_(f: torch.Tensor, scratch: torch.Tensor) -> torch.Tensor:
    """:func:`lab_f_to_rgb` that overwrites ``f`` with the result and uses ``scratch`` (same shape) for XYZ.

    Reusing the two buffers saves two image-sized allocations, which on the CPU cost as much as the
    arithmetic (each fresh page faults in). Under autograd it works out of place.
    """
    to_rgb = cast_like(_GAINED_FROM_WHITE_XYZ, f)
    if _tracked(f):
        xyz = torch.where(f > 0.2068966, f * f * f, (f - 16 / 116) / 7.787)
        return _gained_linear_to_srgb_(channel_matmul(xyz, to_rgb)).clamp(0.0, 1.0)
    xyz = torch.pow(f, 3, out=scratch)
    if f.numel() and f.amin().item() <= 0.2068966:  # the linear toe of f's inverse (L* < 8)
        dark = f <= 0.2068966
        xyz[dark] = (f[dark] - 16 / 116) / 7.787
    torch.matmul(to_rgb, xyz.flatten(2), out=f.flatten(2))
    return _gained_linear_to_srgb_(f).clamp_(0.0, 1.0)


def rgb_to_lab_f(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB to f = (f(X/Xn), f(Y/Yn), f(Z/Zn)), the non-linear stage of CIE Lab; Lab is affine in it.

    Working in f saves a pass over the image when only affine Lab operations follow (Reinhard).

    Example:
        >>> rgb = torch.rand(1, 3, 4, 4, dtype=torch.float64)
        >>> lab = channel_matmul(rgb_to_lab_f(rgb), LAB_FROM_F, LAB_OFFSET)
        >>> torch.allclose(lab, rgb_to_lab(rgb))
        True
    """
    return _rgb_to_lab_f_and_spare(rgb)[0]


def _rgb_to_lab_f_and_spare(rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`rgb_to_lab_f`, plus the (free) buffer that held linear RGB, for the caller to reuse."""
    gained = _srgb_to_linear(rgb, gained=True)
    return _lab_f_(channel_matmul(gained, cast_like(_WHITE_XYZ_FROM_GAINED, gained))), gained


def lab_f_to_rgb(f: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`rgb_to_lab_f`, clipped into [0, 1].

    Example:
        >>> rgb = torch.rand(1, 3, 4, 4, dtype=torch.float64)
        >>> torch.allclose(lab_f_to_rgb(rgb_to_lab_f(rgb)), rgb)
        True
    """
    return _lab_f_to_rgb_(f.clone(), scratch=torch.empty_like(f))


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
