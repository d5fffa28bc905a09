"""Training curves as a PNG: training losses, validation PSNR and validation SSIM against epoch or step.

The trainers (:func:`~stain_transforms.training.distill.distill`, the StainGAN trainer) keep a history,
one dict per epoch or validation, and draw it with :func:`plot_curves`. The figure is drawn with
matplotlib's Agg canvas directly, so plotting neither needs a display nor changes the backend of a
user's pyplot.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

# The validation panels: their keys and titles. The loss panel's keys are the caller's.
PSNR_KEYS = ("val_psnr",)
SSIM_KEYS = ("val_ssim_target", "val_ssim_source")


def plot_curves(
    history: Sequence[dict[str, float]],
    path: str | Path,
    x_key: str,
    title: str,
    loss_keys: Sequence[str] = ("loss",),
) -> Path:
    """Draw ``history`` into a PNG at ``path``: one panel each for losses, validation PSNR and validation SSIM.

    Args:
        history: one dict per point, e.g. ``{"epoch": 3, "loss": 0.1, "val_psnr": 28.0}``; a key may be
            missing from some entries (e.g. validation only every few epochs).
        path: the PNG to write (its folder is created).
        x_key: the key of the horizontal axis, e.g. ``"epoch"`` or ``"step"``.
        title: the figure's title.
        loss_keys: the keys drawn together in the training-loss panel.

    A panel whose keys occur in no entry is left out: the PSNR panel without ``val_psnr``, the SSIM
    panel without ``val_ssim_target`` and ``val_ssim_source``.

    Returns:
        ``path``.

    Raises:
        ValueError: if ``history`` is empty, an entry lacks ``x_key``, or no panel has anything to draw.
        ImportError: without matplotlib (the ``stain-transforms[train]`` extra).

    Example:
        >>> import tempfile
        >>> history = [{"step": s, "loss": 1 / s, "val_psnr": 20 + s} for s in (1, 2, 3)]
        >>> png = plot_curves(history, Path(tempfile.mkdtemp()) / "curves.png", "step", "distil")
        >>> png.read_bytes()[:4]
        b'\\x89PNG'
    """
    if not history:
        raise ValueError("the training history is empty: nothing to plot")
    missing = [i for i, entry in enumerate(history) if x_key not in entry]
    if missing:
        raise ValueError(f"x_key {x_key!r} is missing from history entries {missing[:5]}")
    panels = [
        (f"training loss{'es' if len(loss_keys) > 1 else ''}", list(loss_keys)),
        ("validation PSNR (dB)", list(PSNR_KEYS)),
        ("validation SSIM", list(SSIM_KEYS)),
    ]
    present = [(name, [k for k in keys if any(k in entry for entry in history)]) for name, keys in panels]
    present = [(name, keys) for name, keys in present if keys]
    if not present:
        wanted = [k for _, keys in panels for k in keys]
        raise ValueError(f"the history holds none of the keys to plot ({', '.join(wanted)})")
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:  # pragma: no cover - matplotlib is in the test environment
        raise ImportError("plotting training curves needs matplotlib: pip install 'stain-transforms[train]'") from error

    figure = Figure(figsize=(4.5 * len(present), 3.6), layout="constrained")
    FigureCanvasAgg(figure)
    for axes, (name, keys) in zip(figure.subplots(1, len(present), squeeze=False)[0], present):
        for key in keys:
            points = [(entry[x_key], entry[key]) for entry in history if entry.get(key) is not None]
            xs, ys = zip(*points)
            axes.plot(xs, ys, marker="o" if len(points) < 30 else None, markersize=3, label=key)
        axes.set_title(name)
        axes.set_xlabel(x_key)
        axes.grid(alpha=0.3)
        if len(keys) > 1:
            axes.legend(fontsize="small")
    figure.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=100)
    return path


def write_curves(
    history: Sequence[dict[str, float]],
    path: str | Path,
    x_key: str,
    title: str,
    loss_keys: Sequence[str] = ("loss",),
) -> Path | None:
    """:func:`plot_curves` for the trainers: without matplotlib (an optional extra), warn and go on training.

    Returns ``path``, or None when nothing was drawn (an empty history, or no matplotlib).

    Example:
        >>> write_curves([], "unused.png", "step", "distil") is None
        True
    """
    if not history:
        return None
    try:
        return plot_curves(history, path, x_key, title, loss_keys)
    except ImportError as error:
        warnings.warn(f"no {Path(path).name}: {error}", stacklevel=2)
        return None


__all__ = ["plot_curves", "write_curves"]
