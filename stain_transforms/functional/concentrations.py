"""Stain concentrations from optical density, and stain transfer between two stain matrices.

With a (3, 2) stain matrix ``S`` (unit OD vectors of haematoxylin and eosin as columns), a pixel's
optical density is ``od = S @ c`` for its two stain concentrations ``c``. Two solvers recover ``c``:

- :func:`least_squares_concentrations`: ``c = pinv(S) @ od``, as in Macenko et al. (2009); a
  concentration may come out negative where the pixel is not a mix of the two stains.
- :func:`nnls_concentrations`: exact non-negative least squares, in closed form. With two unknowns
  the constrained minimum is either the unconstrained one, or lies on an axis, where it is a 1-D
  problem. Vahadane et al. (2016) need concentrations to be non-negative.

Both are batched over images and pixels: ``od`` is (B, 3, ...) and the result (B, 2, ...).
:func:`stain_transfer` maps whole images from a source to a target stain matrix with as few
full-resolution passes as possible.
"""

from __future__ import annotations

import torch

from .color import MIN_INTENSITY

# A source stain's 99th-percentile concentration is at least this, so the rescaling stays finite.
MIN_MAX_CONCENTRATION = 1e-4


def _batched(stain_matrix: torch.Tensor, batch_size: int) -> torch.Tensor:
    """A (3, 2) or (B, 3, 2) stain matrix as (B, 3, 2)."""
    if stain_matrix.shape[-2:] != (3, 2) or stain_matrix.ndim not in (2, 3):
        raise ValueError(f"stain_matrix must have shape (3, 2) or (B, 3, 2), got {tuple(stain_matrix.shape)}")
    return stain_matrix.expand(batch_size, 3, 2) if stain_matrix.ndim == 2 else stain_matrix


def _apply(matrix: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B, m, k) matrices applied to the channel axis of (B, k, ...) data: (B, m, ...)."""
    return (matrix @ x.flatten(2)).reshape(x.shape[0], matrix.shape[1], *x.shape[2:])


def _check_od(od: torch.Tensor) -> None:
    if od.ndim < 3 or od.shape[1] != 3:
        raise ValueError(f"od must have shape (B, 3, ...), got {tuple(od.shape)}")


def least_squares_concentrations(od: torch.Tensor, stain_matrix: torch.Tensor) -> torch.Tensor:
    """Least-squares stain concentrations ``pinv(S) @ od``: (B, 3, ...) OD to (B, 2, ...).

    Args:
        od: optical density, (B, 3, ...) (e.g. (B, 3, H, W) or (B, 3, N) pixels).
        stain_matrix: (3, 2) or (B, 3, 2) stain OD vectors as columns.

    Example:
        >>> stains = torch.tensor([[0.65, 0.07], [0.70, 0.99], [0.29, 0.11]])
        >>> od = stains @ torch.tensor([[0.5], [-0.2]])
        >>> least_squares_concentrations(od[None], stains).flatten().round(decimals=4).tolist()
        [0.5, -0.2]
    """
    _check_od(od)
    stains = _batched(stain_matrix, od.shape[0]).to(od)
    return _apply(torch.linalg.pinv(stains), od)


def _face_ratios(stains: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The Gram matrix ``S^T S`` (B, 2, 2) and the ratios (G01 / G00, G01 / G11) as (B, 2)."""
    gram = stains.mT @ stains
    diagonal = torch.diagonal(gram, dim1=1, dim2=2).clamp(min=torch.finfo(gram.dtype).tiny)
    return gram, gram[:, 0, 1, None] / diagonal


def nnls_concentrations(od: torch.Tensor, stain_matrix: torch.Tensor, l1: float = 0.0) -> torch.Tensor:
    """Exact non-negative (optionally L1-penalised) least squares for two stains, in closed form.

    Solves, for every pixel, ``min_c 1/2 ||od - S c||^2 + l1 * (c_0 + c_1)`` subject to ``c >= 0``.
    The unconstrained minimum ``c = G^-1 (S^T od - l1)`` (``G = S^T S``) is the answer when it is
    non-negative. Otherwise the answer lies on an axis, where the other concentration solves a 1-D
    problem clamped at zero. When the two stain vectors make an angle of at most 90 degrees (always
    the case for non-negative stain matrices) the axis is the one of the negative component, and
    the update reduces to ``c_0 <- max(c_0 + G01/G00 * min(c_1, 0), 0)`` (and symmetrically); for
    other matrices both axes are tried and the one with the lower objective is kept.

    Args:
        od: optical density, (B, 3, ...).
        stain_matrix: (3, 2) or (B, 3, 2) stain OD vectors as columns, linearly independent.
        l1: the L1 penalty on the concentrations (0 for plain NNLS), as in sparse coding.

    Returns:
        (B, 2, ...) non-negative concentrations.

    Example:
        >>> stains = torch.tensor([[0.65, 0.07], [0.70, 0.99], [0.29, 0.11]])
        >>> od = stains @ torch.tensor([[0.5], [-0.2]])
        >>> nnls_concentrations(od[None], stains).flatten().round(decimals=4).tolist()
        [0.4266, 0.0]
    """
    _check_od(od)
    stains = _batched(stain_matrix, od.shape[0]).to(od)
    gram, ratios = _face_ratios(stains)
    unconstrained = _apply(torch.linalg.pinv(stains), od)
    if l1:
        shift = torch.linalg.pinv(gram).sum(dim=2) * l1  # G^-1 @ (l1, l1)
        unconstrained = unconstrained - shift.reshape(shift.shape[0], 2, *([1] * (od.ndim - 2)))
    shape = (ratios.shape[0], 2, *([1] * (od.ndim - 2)))
    if bool((gram[:, 0, 1] >= 0).all()):
        # c_i <- max(c_i + r_i * min(c_j, 0), 0): unchanged when c_j >= 0, the 1-D solution otherwise.
        return (unconstrained + ratios.reshape(shape) * unconstrained.flip(1).clamp(max=0.0)).clamp(min=0.0)
    return _nnls_general(unconstrained, gram, shape)


def _nnls_general(unconstrained: torch.Tensor, gram: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Two-stain NNLS for any Gram matrix: keep the better of the two axis solutions where needed."""
    linear = _apply(gram, unconstrained)  # S^T od - l1, recovered from the unconstrained solution
    diagonal = torch.diagonal(gram, dim1=1, dim2=2).clamp(min=torch.finfo(gram.dtype).tiny).reshape(shape)
    on_axis = linear.clamp(min=0.0) / diagonal  # the 1-D solution on each axis
    # Objective on axis i is -1/2 * linear_i^2 / G_ii (for positive linear_i): the larger gain wins.
    gain = on_axis * linear.clamp(min=0.0)
    first_axis = gain[:, :1] >= gain[:, 1:]
    axis_solution = torch.cat([on_axis[:, :1] * first_axis, on_axis[:, 1:] * ~first_axis], dim=1)
    feasible = (unconstrained >= 0).all(dim=1, keepdim=True)
    return torch.where(feasible, unconstrained, axis_solution)


def masked_quantile(values: torch.Tensor, mask: torch.Tensor, q: float | list[float]) -> torch.Tensor:
    """Per-row quantiles of ``values`` (B, ..., N) over the pixels where ``mask`` (B, N) is True.

    Returns (B, ..., len(q)) for a list, (B, ...) for a float; NaN for rows with no selected pixel.

    Example:
        >>> values = torch.arange(10.0).reshape(1, 10)
        >>> masked_quantile(values, values < 5, 0.5).tolist()
        [2.0]
    """
    selected = values.masked_fill(~mask.reshape(mask.shape[0], *([1] * (values.ndim - 2)), -1), torch.nan)
    quantiles = torch.as_tensor(q, dtype=values.dtype, device=values.device)
    result = torch.nanquantile(selected, quantiles, dim=-1)
    return result.movedim(0, -1) if quantiles.ndim else result


def max_concentrations(concentrations: torch.Tensor, mask: torch.Tensor, percentile: float = 99.0) -> torch.Tensor:
    """Robust maximum stain concentrations (B, 2): a high percentile over the masked pixels.

    Args:
        concentrations: (B, 2, N) concentrations of N pixels.
        mask: (B, N) boolean, the pixels to use (tissue); all pixels where a row selects none.
        percentile: the percentile, 99 as in Macenko et al. (2009).
    """
    mask = mask | ~mask.any(dim=1, keepdim=True)
    return masked_quantile(concentrations, mask, percentile / 100.0).clamp(min=MIN_MAX_CONCENTRATION)


def stain_transfer(
    rgb: torch.Tensor,
    source_stains: torch.Tensor,
    source_max: torch.Tensor,
    target_stains: torch.Tensor,
    target_max: torch.Tensor,
    solver: str = "lstsq",
) -> torch.Tensor:
    """Re-render images with the target's stains: unmix with the source, rescale, remix with the target.

    Concentrations ``c`` from the source stain matrix are scaled by ``target_max / source_max`` and
    recomposed as ``od_out = T @ c``. OD is ``-log(max(rgb, 1/255))``; zero OD (white) stays white.

    Computed with few passes over full resolution. With ``solver="lstsq"`` the whole map is one
    3x3 matrix per image, ``T diag(scale) pinv(S)``, applied to ``log(rgb)`` before a single ``exp``.
    With ``solver="nnls"`` the closed-form NNLS correction of :func:`nnls_concentrations` is applied
    in between, on the two concentration planes.

    Args:
        rgb: (B, 3, H, W) images in [0, 1].
        source_stains: (B, 3, 2) or (3, 2) source stain matrices.
        source_max: (B, 2) or (2,) source maximum concentrations.
        target_stains: (3, 2) or (B, 3, 2) target stain matrix.
        target_max: (2,) or (B, 2) target maximum concentrations.
        solver: ``"lstsq"`` (least squares, Macenko) or ``"nnls"`` (non-negative, Vahadane).

    Returns:
        (B, 3, H, W) images in [0, 1].

    Example:
        >>> stains = torch.tensor([[0.65, 0.07], [0.70, 0.99], [0.29, 0.11]])
        >>> stains = stains / stains.norm(dim=0)
        >>> rgb = torch.rand(2, 3, 8, 8) * 0.5 + 0.5
        >>> out = stain_transfer(rgb, stains, torch.ones(2), stains, torch.ones(2), solver="nnls")
        >>> out.shape, bool(out.isfinite().all())
        (torch.Size([2, 3, 8, 8]), True)
    """
    if solver not in ("lstsq", "nnls"):
        raise ValueError(f"solver must be 'lstsq' or 'nnls', got {solver!r}")
    batch_size = rgb.shape[0]
    source = _batched(source_stains, batch_size).to(rgb)
    target = _batched(target_stains, batch_size).to(rgb)
    scale = target_max.to(rgb).expand(batch_size, 2) / source_max.to(rgb).expand(batch_size, 2).clamp(
        min=MIN_MAX_CONCENTRATION
    )
    remix = target * scale[:, None, :]  # T diag(scale): (B, 3, 2)
    unmix = torch.linalg.pinv(source)  # (B, 2, 3)
    # Work on log(rgb) = -OD throughout, so that no negation pass is needed: out = exp(M @ log(rgb)).
    log_rgb = rgb.clamp(min=MIN_INTENSITY).log_()
    if solver == "lstsq":
        out = _apply(remix @ unmix, log_rgb)
        return out.exp_().clamp_(max=1.0)
    gram, ratios = _face_ratios(source)
    if not bool((gram[:, 0, 1] >= 0).all()):
        concentrations = nnls_concentrations(log_rgb.neg_(), source)
        return _apply(remix, concentrations).neg_().exp_().clamp_(max=1.0)
    # In -OD units (u = -c), the NNLS update c_i <- max(c_i + r_i min(c_j, 0), 0) reads
    # u_i <- min(u_i + r_i max(u_j, 0), 0).
    neg_c = _apply(unmix, log_rgb)
    ratios = ratios.reshape(batch_size, 2, 1, 1)
    neg_c = neg_c.flip(1).clamp_(min=0.0).mul_(ratios).add_(neg_c).clamp_(max=0.0)
    # remix >= 0 and neg_c <= 0, so the result is already in (0, 1]; the clamp only guards rounding.
    return _apply(remix, neg_c).exp_().clamp_(max=1.0)
