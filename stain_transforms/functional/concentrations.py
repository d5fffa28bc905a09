"""Stain concentrations from optical density, and stain transfer between two stain matrices.

With a (3, 2) stain matrix ``S`` (unit OD vectors of haematoxylin and eosin as columns), a pixel's
optical density is ``od = S @ c`` for its two stain concentrations ``c``. Two solvers recover ``c``:

- :func:`least_squares_concentrations`: ``c = pinv(S) @ od = (S^T S)^-1 S^T od``, as in Macenko
  et al. (2009); a concentration may come out negative where the pixel is not a mix of the two stains.
- :func:`nnls_concentrations`: exact non-negative least squares, in closed form. With two unknowns
  the constrained minimum is either the unconstrained one, or lies on an axis, where it is a 1-D
  problem. Vahadane et al. (2016) need concentrations to be non-negative.

Both are batched over images and pixels: ``od`` is (B, 3, ...) and the result (B, 2, ...).
:func:`stain_transfer` maps whole images from a source to a target stain matrix with as few
full-resolution passes as possible.
"""

from __future__ import annotations

import torch

from .color.optical_density import MIN_INTENSITY

# A source stain's 99th-percentile concentration is at least this, so the rescaling stays finite.
MIN_MAX_CONCENTRATION = 1e-4
# stain_transfer works through batches of more than this many pixels in chunks, to bound its memory.
TRANSFER_CHUNK = 2**18


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


def _normal_equations(stains: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The Gram matrices ``G = S^T S`` (B, 2, 2) and their inverses, in closed form.

    A ridge of a few float epsilons keeps the inverse finite when the two stain vectors coincide
    (a singular ``G``): the OD is then split evenly between them, as the pseudo-inverse does. For
    any usable stain matrix its effect is below the floating-point precision of the result.
    """
    gram = stains.mT @ stains
    g00, g01, g11 = gram[:, 0, 0], gram[:, 0, 1], gram[:, 1, 1]
    ridge = (g00 + g11) * (8 * torch.finfo(gram.dtype).eps)
    g00, g11 = g00 + ridge, g11 + ridge
    det = (g00 * g11 - g01 * g01).clamp(min=torch.finfo(gram.dtype).tiny)
    inverse = torch.stack([g11, -g01, -g01, g00], dim=1).reshape(-1, 2, 2) / det[:, None, None]
    return gram, inverse


def _axis_map(gram: torch.Tensor) -> torch.Tensor:
    """R = [[0, G01/G00], [G01/G11, 0]] (B, 2, 2): ``c + R min(c, 0)`` moves a negative component's
    share onto the other stain, giving the 1-D (on-axis) least-squares solution of the other."""
    diagonal = torch.diagonal(gram, dim1=1, dim2=2).clamp(min=torch.finfo(gram.dtype).tiny)
    ratios = gram[:, 0, 1, None] / diagonal  # (G01 / G00, G01 / G11)
    zeros = torch.zeros_like(ratios[:, 0])
    return torch.stack([zeros, ratios[:, 0], ratios[:, 1], zeros], dim=1).reshape(-1, 2, 2)


def least_squares_concentrations(od: torch.Tensor, stain_matrix: torch.Tensor) -> torch.Tensor:
    """Least-squares stain concentrations ``pinv(S) @ od``: (B, 3, ...) OD to (B, 2, ...).

    Args:
        od: optical density, (B, 3, ...) (e.g. (B, 3, H, W) or (B, 3, N) pixels).
        stain_matrix: (3, 2) or (B, 3, 2) stain OD vectors as columns.

    Example:
        >>> stains = torch.tensor([[0.65, 0.07], [0.70, 0.99], [0.29, 0.11]])
        >>> od = stains @ torch.tensor([[0.5], [-0.2]])
        >>> [round(c, 4) for c in least_squares_concentrations(od[None], stains).flatten().tolist()]
        [0.5, -0.2]
    """
    _check_od(od)
    stains = _batched(stain_matrix, od.shape[0]).to(od)
    _, inverse = _normal_equations(stains)
    return _apply(inverse @ stains.mT, od)


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
        >>> [round(c, 4) for c in nnls_concentrations(od[None], stains).flatten().tolist()]
        [0.3454, 0.0]
    """
    _check_od(od)
    stains = _batched(stain_matrix, od.shape[0]).to(od)
    gram, inverse = _normal_equations(stains)
    unconstrained = (inverse @ stains.mT) @ od.flatten(2)  # (B, 2, N)
    if l1:
        unconstrained = unconstrained - inverse.sum(dim=2, keepdim=True) * l1  # G^-1 (S^T od - l1)
    if bool((gram[:, 0, 1] >= 0).all()):
        # c <- max(c + R min(c, 0), 0): unchanged where c >= 0, the on-axis solution otherwise.
        solution = torch.baddbmm(unconstrained, _axis_map(gram), unconstrained.clamp(max=0.0)).clamp_(min=0.0)
    else:
        solution = _nnls_general(unconstrained, gram)
    return solution.reshape(od.shape[0], 2, *od.shape[2:])


def _nnls_general(unconstrained: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """Two-stain NNLS for any Gram matrix, on (B, 2, N): keep the better of the two axis solutions."""
    linear = gram @ unconstrained  # S^T od - l1, recovered from the unconstrained solution
    diagonal = torch.diagonal(gram, dim1=1, dim2=2).clamp(min=torch.finfo(gram.dtype).tiny)[:, :, None]
    on_axis = linear.clamp(min=0.0) / diagonal  # the 1-D solution on each axis
    # Objective on axis i is -1/2 * linear_i^2 / G_ii (for positive linear_i): the larger gain wins.
    gain = on_axis * linear.clamp(min=0.0)
    first_axis = gain[:, :1] >= gain[:, 1:]
    axis_solution = torch.cat([on_axis[:, :1] * first_axis, on_axis[:, 1:] * ~first_axis], dim=1)
    feasible = (unconstrained >= 0).all(dim=1, keepdim=True)
    return torch.where(feasible, unconstrained, axis_solution)


def masked_quantile(values: torch.Tensor, mask: torch.Tensor, q: float | list[float]) -> torch.Tensor:
    """Per-row quantiles of ``values`` (B, ..., N) over the pixels where ``mask`` (B, N) is True.

    Linear interpolation between order statistics, as ``numpy.percentile``. Extreme quantiles (the
    1st and 99th percentiles that stain methods use) only need the few smallest or largest values,
    so they are read off a partial ``topk`` rather than a full sort: ``quantile_q(x) =
    -quantile_(1-q)(-x)`` turns an upper quantile into a lower one.

    Returns (B, ..., len(q)) for a list, (B, ...) for a float; NaN for rows with no selected pixel.

    Example:
        >>> values = torch.arange(10.0).reshape(1, 10)
        >>> masked_quantile(values, values < 5, 0.5).tolist()
        [2.0]
    """
    scalar = isinstance(q, (int, float))
    quantiles = [float(q)] if scalar else [float(qi) for qi in q]
    if any(not 0.0 <= qi <= 1.0 for qi in quantiles):
        raise ValueError(f"quantiles must lie in [0, 1], got {q}")
    # One lower-tail problem per quantile, stacked on a new axis: x for q <= 1/2, -x above.
    signs = torch.tensor([-1.0 if qi > 0.5 else 1.0 for qi in quantiles], dtype=values.dtype, device=values.device)
    tails = torch.tensor([min(qi, 1.0 - qi) for qi in quantiles], dtype=values.dtype, device=values.device)
    keep = mask.reshape(mask.shape[0], *([1] * (values.ndim - 1)), mask.shape[-1])  # (B, ..., 1, N)
    x = (values.unsqueeze(-2) * signs[:, None]).masked_fill_(~keep, torch.inf)  # (B, ..., nq, N)
    last = keep.sum(dim=-1, keepdim=True) - 1  # index of the largest selected value; -1 when none
    position = tails[:, None] * last.clamp(min=0)  # (B, ..., nq, 1)
    low = position.floor()
    k = min(int(low.max()) + 2, x.shape[-1])
    smallest = torch.topk(x, k, dim=-1, largest=False, sorted=True).values
    low_index = low.long().expand(*x.shape[:-1], 1)
    index = torch.cat([low_index, torch.minimum(low_index + 1, last.clamp(min=0))], dim=-1)
    pairs = smallest.gather(-1, index)
    result = torch.lerp(pairs[..., 0], pairs[..., 1], (position - low)[..., 0]) * signs
    result = result.masked_fill_(last[..., 0] < 0, torch.nan)
    return result[..., 0] if scalar else result


def max_concentrations(concentrations: torch.Tensor, mask: torch.Tensor, percentile: float = 99.0) -> torch.Tensor:
    """Robust maximum stain concentrations (B, 2): a high percentile over the masked pixels.

    Args:
        concentrations: (B, 2, N) concentrations of N pixels.
        mask: (B, N) boolean, the pixels to use (tissue); all pixels where a row selects none.
        percentile: the percentile, 99 as in Macenko et al. (2009).

    Example:
        >>> concentrations = torch.linspace(0, 1, 101).expand(1, 2, 101)
        >>> max_concentrations(concentrations, torch.ones(1, 101, dtype=torch.bool)).tolist()
        [[0.9900000095367432, 0.9900000095367432]]
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
    gram, inverse = _normal_equations(source)
    unmix = inverse @ source.mT  # pinv(S): (B, 2, 3)
    if solver == "lstsq":
        path, matrices = "lstsq", (remix @ unmix,)
    elif bool((gram[:, 0, 1] >= 0).all()):
        # With non-negative target stains the output needs no clamp (see _transfer_pixels).
        path = "nnls" if bool((remix >= 0).all()) else "nnls_clamped"
        matrices = (unmix, _axis_map(gram), remix)
    else:
        path, matrices = "nnls_general", (source, remix)
    flat = rgb.flatten(2)
    # Large images and batches go through in chunks of pixels, so that the temporaries stay small.
    chunk_size = max(TRANSFER_CHUNK // batch_size, 1024)
    if flat.shape[2] <= chunk_size:
        return _transfer_pixels(flat, path, matrices).reshape(rgb.shape)
    out = torch.empty_like(flat)
    for start in range(0, flat.shape[2], chunk_size):
        chunk = slice(start, start + chunk_size)
        out[:, :, chunk] = _transfer_pixels(flat[:, :, chunk], path, matrices)
    return out.reshape(rgb.shape)


def _transfer_pixels(rgb: torch.Tensor, path: str, matrices: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """:func:`stain_transfer` of (B, 3, N) pixels, with its small matrices already prepared."""
    # Work on log(rgb) = -OD throughout, so that no negation pass is needed: out = exp(M @ log(rgb)).
    log_rgb = rgb.clamp(min=MIN_INTENSITY).log_()
    if path == "lstsq":  # a single 3x3 map: T diag(scale) pinv(S)
        (mapping,) = matrices
        return (mapping @ log_rgb).exp_().clamp_(max=1.0)
    if path == "nnls_general":  # stain vectors more than 90 degrees apart
        source, remix = matrices
        return (remix @ nnls_concentrations(log_rgb.neg_(), source)).neg_().exp_().clamp_(max=1.0)
    unmix, axis_map, remix = matrices
    # In -OD units (u = -c) the NNLS update c <- max(c + R min(c, 0), 0) reads u <- min(u + R max(u, 0), 0):
    # one fused baddbmm on the two concentration planes. With remix >= 0 (non-negative target stains)
    # remix @ u <= 0 exactly, so exp lands in (0, 1] without a clamp.
    neg_c = unmix @ log_rgb
    neg_c = torch.baddbmm(neg_c, axis_map, neg_c.clamp(min=0.0)).clamp_(max=0.0)
    out = (remix @ neg_c).exp_()
    return out if path == "nnls" else out.clamp_(max=1.0)
