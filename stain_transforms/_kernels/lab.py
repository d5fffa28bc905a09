"""The non-linear curves of sRGB and CIE Lab, worked in place.

Plain formulas (IEC 61966-2-1 and CIE 1976), on each value:

- sRGB decoding: ``((c + 0.055) / 1.055) ** 2.4`` above ``SRGB_TOE``, ``c / 12.92`` below; encoding its inverse;
- CIE's f: ``t ** (1/3)`` above ``CIE_TOE`` ((6/29)^3), ``CIE_TOE_SLOPE * t + 16/116`` below; and its inverse.

What is done differently, and why (each saves a full-image pass or allocation, which on the CPU cost
as much as the arithmetic):

- ``x ** p`` is ``exp(p * log(x))`` in place: torch's CPU ``pow`` is several times slower;
- the toe is only computed where some value is below the threshold: stained tissue rarely reaches
  it, and a full-image select costs more than the curve itself;
- "gained" linear light: decoding skips the division by 1.055 and carries ``SRGB_GAIN = 1.055 ** 2.4``
  times the true value, which the caller folds into the neighbouring 3x3 matrix;
- results overwrite their own buffers; when autograd tracks the input every step is out of place.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .constants import Constant

SRGB_TOE = 0.04045  # sRGB values at or below this are linear (slope 1/12.92)
SRGB_GAIN = 1.055**2.4
# CIE's f is linear at or below (6/29)^3 of white, with slope 1 / (3 (6/29)^2), and its inverse at or
# below f = 6/29; rounded as scikit-image (and most references) write them, so that results agree.
CIE_TOE = 0.008856
CIE_TOE_SLOPE = 7.787
CIE_F_TOE = 0.2068966


def tracked(x: torch.Tensor) -> bool:
    """Whether autograd records operations on ``x``: then the helpers here work out of place.

    Example:
        >>> tracked(torch.zeros(1, requires_grad=True)), tracked(torch.zeros(1))
        (True, False)
    """
    return torch.is_grad_enabled() and x.requires_grad


def power_(x: torch.Tensor, exponent: float) -> torch.Tensor:
    """``x ** exponent`` for x >= 0, in place, as exp(log); out of place (a fresh tensor) under autograd.

    Example:
        >>> power_(torch.tensor([4.0, 9.0]), 0.5)
        tensor([2., 3.])
    """
    if tracked(x):
        return torch.exp(torch.log(x) * exponent).clone()  # exp's backward needs its own output intact
    return x.log_().mul_(exponent).exp_()


def apply_curve_(
    x: torch.Tensor,
    threshold: float,
    curve_: Callable[[torch.Tensor], torch.Tensor],
    toe: Callable[[torch.Tensor], torch.Tensor],
    source: torch.Tensor | None = None,
) -> torch.Tensor:
    """Overwrite ``x`` with ``curve_(x)`` where source > threshold, and with ``toe(source)`` elsewhere.

    ``source`` defaults to ``x``; a caller passes the original values when ``x`` already holds a first
    step of the curve. The select is skipped when no value is at or below the threshold.

    Example:
        >>> x = torch.tensor([0.0, 4.0])
        >>> apply_curve_(x, 1.0, lambda v: v.sqrt_(), lambda v: v - 1.0)
        tensor([-1.,  2.])
    """
    source = x if source is None else source
    if tracked(x) or tracked(source):
        return torch.where(source > threshold, curve_(x.clone()), toe(source))
    if source.numel() == 0 or source.amin().item() > threshold:
        return curve_(x)
    dark = source <= threshold
    toe_values = toe(source[dark])
    curve_(x)[dark] = toe_values
    return x


def srgb_to_linear(rgb: torch.Tensor, *, gained: bool = False) -> torch.Tensor:
    """Linear light of sRGB values, in a new tensor; ``gained``: ``SRGB_GAIN`` times it, one pass cheaper.

    Without the gain white stays exactly 1 (the tissue threshold compares against it).

    Example:
        >>> srgb_to_linear(torch.tensor([0.0, 1.0]))
        tensor([0., 1.])
    """
    first_step = torch.add(rgb, 0.055)
    if not gained:
        first_step.div_(1.055)
    toe_slope = (SRGB_GAIN if gained else 1.0) / 12.92
    return apply_curve_(first_step, SRGB_TOE, lambda v: power_(v, 2.4), lambda v: v * toe_slope, source=rgb)


def gained_linear_to_srgb_(gained: torch.Tensor) -> torch.Tensor:
    """sRGB values from ``SRGB_GAIN`` times linear light, in place (negative values take the toe).

    Example:
        >>> torch.allclose(gained_linear_to_srgb_(srgb_to_linear(torch.tensor([0.01, 0.5]), gained=True)),
        ...                torch.tensor([0.01, 0.5]))
        True
    """
    curve_ = lambda v: power_(v, 1 / 2.4).sub_(0.055)
    return apply_curve_(gained, 0.0031308 * SRGB_GAIN, curve_, lambda v: v * (12.92 / SRGB_GAIN))


def cie_f_(t: torch.Tensor) -> torch.Tensor:
    """CIE's f(t) in place: the cube root, with a linear toe at or below ``CIE_TOE``.

    Example:
        >>> cie_f_(torch.tensor([1.0, 0.0]))
        tensor([1.0000, 0.1379])
    """
    return apply_curve_(t, CIE_TOE, lambda v: power_(v, 1 / 3), lambda v: CIE_TOE_SLOPE * v + 16 / 116)


def cie_f_inverse(f: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """The inverse of :func:`cie_f_`: ``f ** 3``, linear at or below ``CIE_F_TOE``; into ``out`` if given.

    Example:
        >>> cie_f_inverse(cie_f_(torch.tensor([0.5, 0.001])))
        tensor([0.5000, 0.0010])
    """
    if tracked(f):
        return torch.where(f > CIE_F_TOE, f * f * f, (f - 16 / 116) / CIE_TOE_SLOPE)
    cubed = torch.pow(f, 3, out=out)
    if f.numel() and f.amin().item() <= CIE_F_TOE:
        dark = f <= CIE_F_TOE
        cubed[dark] = (f[dark] - 16 / 116) / CIE_TOE_SLOPE
    return cubed


def rgb_to_lab_f_and_spare(rgb: torch.Tensor, xyz_from_gained: Constant) -> tuple[torch.Tensor, torch.Tensor]:
    """f = CIE f of white-relative XYZ of an sRGB batch, and the (free) buffer that held linear light.

    ``xyz_from_gained`` maps gained linear light to XYZ / white (the sRGB matrix divided by ``SRGB_GAIN``).

    Example:
        >>> to_xyz = Constant(torch.eye(3) / SRGB_GAIN)
        >>> f, spare = rgb_to_lab_f_and_spare(torch.ones(1, 3, 1, 1), to_xyz)
        >>> f.flatten().tolist(), spare.shape
        ([1.0, 1.0, 1.0], torch.Size([1, 3, 1, 1]))
    """
    gained = srgb_to_linear(rgb, gained=True)
    xyz = torch.matmul(xyz_from_gained.like(gained), gained.flatten(2)).view_as(gained)
    return cie_f_(xyz), gained


def lab_f_to_rgb_(f: torch.Tensor, scratch: torch.Tensor, gained_from_xyz: Constant) -> torch.Tensor:
    """sRGB in [0, 1] from f, overwriting ``f`` and using ``scratch`` (same shape) for XYZ; out of place under autograd.

    ``gained_from_xyz`` maps XYZ / white to gained linear light (the inverse sRGB matrix times ``SRGB_GAIN``).

    Example:
        >>> to_xyz, from_xyz = Constant(torch.eye(3) / SRGB_GAIN), Constant(torch.eye(3) * SRGB_GAIN)
        >>> rgb = torch.rand(1, 3, 4, 4)
        >>> f, spare = rgb_to_lab_f_and_spare(rgb, to_xyz)
        >>> torch.allclose(lab_f_to_rgb_(f, spare, from_xyz), rgb, atol=1e-5)
        True
    """
    to_rgb = gained_from_xyz.like(f)
    if tracked(f):
        xyz = cie_f_inverse(f)
        gained = torch.matmul(to_rgb, xyz.flatten(2)).view_as(xyz)
        return gained_linear_to_srgb_(gained).clamp(0.0, 1.0)
    xyz = cie_f_inverse(f, out=scratch)
    torch.matmul(to_rgb, xyz.flatten(2), out=f.flatten(2))
    return gained_linear_to_srgb_(f).clamp_(0.0, 1.0)
