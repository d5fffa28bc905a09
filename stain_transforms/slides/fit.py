"""Slide-level statistics: a tissue mask on a low-resolution overview, then N tissue tiles at the working level.

:func:`fit_slide` measures a slide's stain statistics (Macenko/Vahadane stain matrix and maximum
concentrations, Reinhard Lab mean and std) on a random sample of tissue tiles, read one at a time:
the :class:`~stain_transforms.slides.SlideStatistics` that ``normalizer.with_source`` takes. The
same sample of tiles fits a normalizer's *target* on a slide: ``normalizer.fit(sample_tiles(...))``.

Example:
    >>> import tempfile
    >>> import stain_transforms
    >>> from stain_transforms.testing import synthetic_tissue
    >>> from stain_transforms.slides.testing import write_synthetic_slide
    >>> path = write_synthetic_slide(Path(tempfile.mkdtemp()) / "slide.tiff", width=1024, height=768, stain_scale=1.3)
    >>> normalizer = stain_transforms.MacenkoNormalize().fit(synthetic_tissue(128, seed=0))
    >>> stats = fit_slide(path, normalizer, tile_size=256, n_tiles=4, progress=False)
    >>> stats.slide_id, stats.tiles, tuple(stats["stain_matrix"].shape)
    ('slide', 4, (3, 2))
    >>> same_map = normalizer.with_source(stats)  # every tile of the slide gets this one colour map
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from ..functional.tissue import tissue_mask
from .reader import Slide, open_slide
from .statistics import SlideStatistics

# The long side of the overview the tissue mask is computed on.
MASK_SIZE = 1024


def slide_tissue_mask(
    slide: Slide | str | Path, max_size: int = MASK_SIZE, luminosity_threshold: float = 0.8
) -> tuple[np.ndarray, float]:
    """Boolean tissue mask of the slide's overview (at most ``max_size`` on its long side), and its downsample from level 0.

    Tissue is darker than ``luminosity_threshold`` (L*/100) and not clipped black, as for tiles
    (:func:`~stain_transforms.functional.tissue.tissue_mask`), then cleaned of specks and holes
    (a binary opening and closing).

    Example:
        >>> import tempfile
        >>> from stain_transforms.slides.testing import write_synthetic_slide
        >>> mask, downsample = slide_tissue_mask(write_synthetic_slide(Path(tempfile.mkdtemp()) / "s.tiff"), 256)
        >>> mask.shape, downsample, bool(0.3 < mask.mean() < 0.8)
        ((192, 256), 8.0, True)
    """
    slide = open_slide(slide)
    overview, downsample = slide.thumbnail(max_size)
    rgb = torch.from_numpy(overview).permute(2, 0, 1)[None].float().div_(255)
    mask = tissue_mask(rgb, luminosity_threshold)[0].numpy()
    structure = np.ones((3, 3), bool)
    mask = ndimage.binary_closing(ndimage.binary_opening(mask, structure), structure)
    return mask, downsample


def tissue_tiles(
    slide: Slide | str | Path,
    tile_size: int = 512,
    level: int = 0,
    min_tissue: float = 0.5,
    mask: tuple[np.ndarray, float] | None = None,
) -> np.ndarray:
    """The (N, 2) top-left (x, y) corners, in ``level``'s pixels, of the grid tiles with at least ``min_tissue`` tissue.

    The tiles are those of a regular grid of ``tile_size`` over the level (the last row and column
    may reach beyond the slide); their tissue fraction is read off the overview mask.

    Raises:
        ValueError: for a level the slide lacks.

    Example:
        >>> import tempfile
        >>> from stain_transforms.slides.testing import write_synthetic_slide
        >>> slide = open_slide(write_synthetic_slide(Path(tempfile.mkdtemp()) / "s.tiff", width=1024, height=1024))
        >>> corners = tissue_tiles(slide, tile_size=256)
        >>> len(corners) <= 16, [0, 0] not in corners.tolist(), [384, 384] in (corners + 128).tolist()
        (True, True, True)
    """
    slide = open_slide(slide)
    level = slide.check_level(level)
    mask_image, mask_downsample = mask if mask is not None else slide_tissue_mask(slide)
    width, height = slide.level_dimensions[level]
    scale = slide.level_downsamples[level] / mask_downsample  # mask pixels per level pixel
    integral = np.pad(mask_image.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    ys, xs = np.mgrid[0:height:tile_size, 0:width:tile_size]
    corners = np.stack([xs.ravel(), ys.ravel()], axis=1)

    def to_mask(values: np.ndarray, limit: int) -> np.ndarray:
        return np.clip(np.round(values * scale).astype(np.int64), 0, limit)

    x0, y0 = to_mask(corners[:, 0], mask_image.shape[1]), to_mask(corners[:, 1], mask_image.shape[0])
    x1 = np.maximum(to_mask(corners[:, 0] + tile_size, mask_image.shape[1]), x0 + 1).clip(max=mask_image.shape[1])
    y1 = np.maximum(to_mask(corners[:, 1] + tile_size, mask_image.shape[0]), y0 + 1).clip(max=mask_image.shape[0])
    area = np.maximum((x1 - x0) * (y1 - y0), 1)
    tissue = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    return corners[tissue / area >= min_tissue]


class TileSample:
    """Tiles of a slide at given corners, read one at a time when iterated; ``len()`` is their number.

    Example:
        >>> import tempfile
        >>> from stain_transforms.slides.testing import write_synthetic_slide
        >>> slide = open_slide(write_synthetic_slide(Path(tempfile.mkdtemp()) / "s.tiff", width=512, height=512))
        >>> sample = TileSample(slide, np.array([[0, 0], [128, 256]]), tile_size=64)
        >>> len(sample), [tile.shape for tile in sample]
        (2, [(64, 64, 3), (64, 64, 3)])
    """

    def __init__(self, slide: Slide, corners: np.ndarray, tile_size: int, level: int = 0) -> None:
        self.slide, self.corners, self.tile_size, self.level = slide, np.asarray(corners), int(tile_size), int(level)

    def __len__(self) -> int:
        return len(self.corners)

    def __iter__(self) -> Iterator[np.ndarray]:
        for x, y in self.corners:
            yield self.slide.read(int(x), int(y), self.tile_size, self.tile_size, self.level)


def sample_tiles(
    slide: Slide | str | Path,
    n_tiles: int = 64,
    tile_size: int = 512,
    level: int = 0,
    min_tissue: float = 0.5,
    seed: int = 0,
) -> TileSample:
    """Up to ``n_tiles`` random tissue tiles (HWC uint8) of ``level``, read one at a time when iterated.

    Raises:
        ValueError: if the slide has no tissue tile (a blank slide, or a threshold too strict).

    Example:
        >>> import tempfile
        >>> import stain_transforms
        >>> from stain_transforms.slides.testing import write_synthetic_slide
        >>> path = write_synthetic_slide(Path(tempfile.mkdtemp()) / "reference_slide.tiff")
        >>> target = stain_transforms.ReinhardNormalize().fit(sample_tiles(path, n_tiles=4, tile_size=256), progress=False)  # a slide as the reference
        >>> bool(target.fitted)
        True
    """
    slide = open_slide(slide)
    corners = tissue_tiles(slide, tile_size, level, min_tissue)
    if len(corners) == 0:
        raise ValueError(
            f"{slide.path.name} has no tissue: no {tile_size}-pixel tile of level {level} is at least "
            f"{min_tissue:.0%} tissue (pixels darker than the luminosity threshold)"
        )
    chosen = np.random.default_rng(seed).permutation(len(corners))[:n_tiles]
    return TileSample(slide, corners[np.sort(chosen)], tile_size, level)  # in reading order


def fit_slide(
    slide: Slide | str | Path,
    normalizer: Any = "macenko",
    n_tiles: int = 64,
    tile_size: int = 512,
    level: int = 0,
    min_tissue: float = 0.5,
    seed: int = 0,
    progress: bool | None = True,
) -> SlideStatistics:
    """A slide's stain statistics, for ``normalizer.with_source``: measured on ``n_tiles`` random tissue tiles.

    The tissue mask is made on a low-resolution overview; the tiles are read at ``level`` (the level
    you will normalize), one at a time, with a progress bar. Each tile's statistics are those the
    normalizer estimates per image; they are pooled by the median, as ``fit`` pools references.

    Args:
        slide: a :class:`~stain_transforms.slides.Slide` or a path.
        normalizer: a normalizer (fitted or not; only its settings are used) or a registry method
            name (``"reinhard"``, ``"macenko"``, ``"vahadane"``).
        n_tiles: how many tissue tiles to measure (all of them if the slide has fewer).
        tile_size: their side, in pixels of ``level``.
        level: the slide level to read them from.
        min_tissue: the least tissue fraction of a tile.
        seed: which tiles are drawn.
        progress: show a tqdm bar.

    Raises:
        ValueError: for a slide without tissue, a level it lacks, or a method that takes no statistics.

    Example:
        >>> import tempfile
        >>> from stain_transforms.slides.testing import write_synthetic_slide
        >>> path = write_synthetic_slide(Path(tempfile.mkdtemp()) / "s.tiff", width=1024, height=768)
        >>> stats = fit_slide(path, "reinhard", n_tiles=4, tile_size=256, progress=False)
        >>> stats.normalizer, sorted(stats.statistics), stats.info["level"]
        ('ReinhardNormalize', ['mean', 'std'], 0)
    """
    if isinstance(normalizer, str):
        from ..registry import FITTED, method

        row = method(normalizer)
        if row.kind != FITTED:
            raise ValueError(f"{row.name} has no slide statistics; only Reinhard, Macenko and Vahadane do")
        normalizer = row.transform_class()
    if not callable(getattr(normalizer, "pooled_statistics", None)):
        raise ValueError(f"{type(normalizer).__name__} has no slide statistics; only Reinhard, Macenko and Vahadane do")
    slide = open_slide(slide)
    tiles = sample_tiles(slide, n_tiles, tile_size, level, min_tissue, seed)
    mpp = slide.mpp
    return SlideStatistics.from_tiles(
        normalizer,
        tiles,
        slide_id=slide.slide_id,
        progress=progress,
        level=level,
        tile_size=tile_size,
        path=str(slide.path),
        mpp=list(mpp) if mpp else None,
    )
