"""Synthetic pyramidal whole-slide images for tests, benchmarks and examples, written tile by tile with tifffile.

The tissue is :func:`stain_transforms.testing.synthetic_tissue` (Beer-Lambert H&E with a known
stain matrix), laid out in blocks inside an elliptical tissue region on white glass. Any size can be
written in the memory of a few tiles: a 40,000 x 40,000 slide is a generator of tiles.

Example:
    >>> import tempfile, tiffslide
    >>> path = write_synthetic_slide(Path(tempfile.mkdtemp()) / "slide.tiff", width=1024, height=512, mpp=0.25)
    >>> slide = tiffslide.TiffSlide(path)
    >>> slide.level_dimensions, slide.properties["tiffslide.mpp-x"]
    (((1024, 512), (512, 256), (256, 128)), 0.25)
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import numpy as np

from ..testing import synthetic_tissue

# The side of one block of synthetic tissue; a slide repeats a few blocks.
BLOCK = 240  # not a power of two: block edges do not fall on tile borders


class SyntheticSlide:
    """A synthetic slide's pixels, computed on demand: :meth:`region` of any level, in level pixels.

    Args:
        width, height: level-0 size.
        seed: the tissue blocks' seed.
        stain_matrix, stain_scale: as :func:`~stain_transforms.testing.synthetic_tissue` (the slide's "site").
        blocks: how many different tissue blocks are tiled over the slide.
        tissue_fraction: the fraction of the slide's area inside the tissue ellipse (about).

    Example:
        >>> slide = SyntheticSlide(2048, 1024)
        >>> slide.region(0, 0, 16, 16).tolist() == np.full((16, 16, 3), 255).tolist()  # the corner is glass
        True
        >>> bool(slide.region(1000, 500, 8, 8, downsample=1).min() < 200)  # the centre is tissue
        True
    """

    def __init__(
        self,
        width: int,
        height: int,
        seed: int = 0,
        stain_matrix: np.ndarray | None = None,
        stain_scale: float = 1.0,
        blocks: int = 6,
        tissue_fraction: float = 0.6,
    ) -> None:
        self.width, self.height = int(width), int(height)
        self.blocks = [
            synthetic_tissue(BLOCK, seed=seed + i, stain_matrix=stain_matrix, stain_scale=stain_scale, background_fraction=0.15)
            for i in range(blocks)
        ]
        self.radius = float(np.sqrt(tissue_fraction / (np.pi / 4)))  # ellipse semi-axes, as a fraction of the half sides

    def region(self, x: int, y: int, width: int, height: int, downsample: int = 1) -> np.ndarray:
        """The (height, width, 3) uint8 region at (x, y) of the level ``downsample`` times smaller than level 0.

        Example:
            >>> SyntheticSlide(512, 512).region(0, 0, 4, 2, downsample=2).shape
            (2, 4, 3)
        """
        ys = (y + np.arange(height)) * downsample
        xs = (x + np.arange(width)) * downsample
        out = np.empty((height, width, 3), np.uint8)
        rows, cols = ys // BLOCK, xs // BLOCK
        row_runs = np.flatnonzero(np.diff(rows, prepend=-1, append=-2))  # where the block row changes
        col_runs = np.flatnonzero(np.diff(cols, prepend=-1, append=-2))
        for r0, r1 in pairwise(row_runs):
            for c0, c1 in pairwise(col_runs):
                block = self.blocks[(rows[r0] * 7 + cols[c0] * 3) % len(self.blocks)]
                top, left = ys[r0] % BLOCK, xs[c0] % BLOCK
                out[r0:r1, c0:c1] = block[top : top + (r1 - r0) * downsample : downsample, left : left + (c1 - c0) * downsample : downsample]
        inside = ((ys[:, None] / self.height - 0.5) / 0.5) ** 2 + ((xs[None, :] / self.width - 0.5) / 0.5) ** 2
        out[inside > self.radius**2] = 255
        return out

    def tiles(self, tile: int, downsample: int = 1) -> Iterator[np.ndarray]:
        """The tiles of the level ``downsample`` times smaller, row by row, as tifffile writes them.

        Example:
            >>> [t.shape for t in SyntheticSlide(512, 256).tiles(256)]
            [(256, 256, 3), (256, 256, 3)]
        """
        width, height = -(-self.width // downsample), -(-self.height // downsample)
        for top in range(0, height, tile):
            for left in range(0, width, tile):
                yield self.region(left, top, tile, tile, downsample)


def write_synthetic_slide(
    path: str | Path,
    width: int = 2048,
    height: int = 1536,
    tile: int = 256,
    mpp: float = 0.5,
    levels: int | None = None,
    compression: str = "zlib",
    seed: int = 0,
    stain_matrix: np.ndarray | None = None,
    stain_scale: float = 1.0,
) -> Path:
    """Write a synthetic pyramidal tiled TIFF (levels downsampled by 2) that tiffslide and OpenSlide read; returns ``path``.

    Levels are added while the smallest exceeds ``tile`` (or ``levels`` of them), each from a
    generator of tiles, so memory is that of a few tiles.

    Example:
        >>> import tempfile
        >>> from stain_transforms.slides import open_slide
        >>> path = write_synthetic_slide(Path(tempfile.mkdtemp()) / "s.tiff", width=1024, height=1024, levels=3)
        >>> open_slide(path).level_downsamples
        (1.0, 2.0, 4.0)
    """
    import tifffile

    path = Path(path)
    synthetic = SyntheticSlide(width, height, seed=seed, stain_matrix=stain_matrix, stain_scale=stain_scale)
    if levels is None:
        levels = 1
        while max(width, height) / 2 ** (levels - 1) > tile:
            levels += 1
    resolution = 1e4 / mpp  # pixels per centimetre
    with tifffile.TiffWriter(path, bigtiff=width * height * 3 > 2**31) as writer:
        for level in range(levels):
            factor = 2**level
            shape = (-(-height // factor), -(-width // factor), 3)
            writer.write(
                synthetic.tiles(tile, factor),
                shape=shape,
                dtype=np.uint8,
                tile=(tile, tile),
                photometric="rgb",
                compression=compression,
                subfiletype=1 if level else 0,
                resolution=(resolution / factor, resolution / factor),
                resolutionunit="CENTIMETER",
            )
    return path
