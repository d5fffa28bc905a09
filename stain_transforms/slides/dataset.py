"""Tile datasets over whole slides: tissue tiles with their slide id, for DataLoaders with any number of workers.

Example:
    >>> import tempfile
    >>> from stain_transforms.slides.testing import write_synthetic_slide
    >>> folder = Path(tempfile.mkdtemp())
    >>> paths = [write_synthetic_slide(folder / f"slide_{i}.tiff", width=512, height=512, seed=i) for i in range(2)]
    >>> dataset = SlideTileDataset(paths, tile_size=128)
    >>> sample = dataset[0]
    >>> sample["image"].shape, sample["slide_id"], sorted(sample)
    (torch.Size([3, 128, 128]), 'slide_0', ['image', 'level', 'slide_id', 'x', 'y'])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .fit import tissue_tiles
from .reader import Slide, open_slide


class SlideTileDataset(Dataset):
    """The tissue tiles of a list of slides: each item ``{"image", "slide_id", "x", "y", "level"}``.

    The tiles are the cells of a regular grid of ``tile_size`` over ``level`` with at least
    ``min_tissue`` tissue on the slide's low-resolution tissue mask, found once when the dataset is
    made. The image is a (3, tile_size, tile_size) uint8 tensor read when the item is asked for; the
    slides are opened lazily in each DataLoader worker (a slide's open file is never shared with a
    worker). ``transform`` (e.g. a :class:`~stain_transforms.slides.SlideContextNormalize`, which
    reads ``slide_id``) is applied to the whole item.

    Args:
        slides: slide paths or :class:`~stain_transforms.slides.Slide` s.
        tile_size: tile side in pixels of ``level``.
        level: the slide level to read.
        min_tissue: the least tissue fraction of a tile.
        transform: called on each item (a dict).
        backend: the slide reader (see :class:`~stain_transforms.slides.Slide`).

    Raises:
        ValueError: if a slide cannot be read or lacks ``level``; FileNotFoundError for a missing one.

    Example:
        >>> import tempfile
        >>> from torch.utils.data import DataLoader
        >>> import stain_transforms
        >>> from stain_transforms.testing import synthetic_tissue
        >>> from stain_transforms.slides import SlideContextNormalize, fit_slide
        >>> from stain_transforms.slides.testing import write_synthetic_slide
        >>> folder = Path(tempfile.mkdtemp())
        >>> paths = [write_synthetic_slide(folder / f"s{i}.tiff", width=512, height=512, seed=i) for i in range(2)]
        >>> normalizer = stain_transforms.MacenkoNormalize().fit(synthetic_tissue(128, seed=0))
        >>> stats = {Path(p).stem: fit_slide(p, normalizer, n_tiles=4, tile_size=128, progress=False) for p in paths}
        >>> dataset = SlideTileDataset(paths, tile_size=128, transform=SlideContextNormalize(normalizer, stats))
        >>> batch = next(iter(DataLoader(dataset, batch_size=4, num_workers=2)))
        >>> batch["image"].shape, batch["image"].dtype, len(batch["slide_id"])
        (torch.Size([4, 3, 128, 128]), torch.uint8, 4)
    """

    def __init__(
        self,
        slides: Sequence[str | Path | Slide],
        tile_size: int = 256,
        level: int = 0,
        min_tissue: float = 0.5,
        transform: Callable[[dict[str, Any]], Any] | None = None,
        backend: str = "auto",
    ) -> None:
        self.slides = [open_slide(slide, backend=backend) for slide in slides]
        ids = [slide.slide_id for slide in self.slides]
        if len(set(ids)) != len(ids):
            raise ValueError("two slides have the same slide_id; open them as Slide(path, slide_id=...) with distinct ids")
        self.tile_size, self.level, self.transform = int(tile_size), int(level), transform
        corners = []
        for index, slide in enumerate(self.slides):
            found = tissue_tiles(slide, tile_size, slide.check_level(level), min_tissue)
            corners.append(np.concatenate([np.full((len(found), 1), index), found], axis=1))
            slide.close()  # workers open their own
        #: (N, 3) rows of (slide index, x, y).
        self.tiles = np.concatenate(corners).astype(np.int64) if corners else np.zeros((0, 3), np.int64)

    def __len__(self) -> int:
        return len(self.tiles)

    def __getitem__(self, index: int) -> Any:
        slide_index, x, y = (int(v) for v in self.tiles[index])
        slide = self.slides[slide_index]
        region = slide.read(x, y, self.tile_size, self.tile_size, self.level)
        item = {
            "image": torch.from_numpy(region).permute(2, 0, 1).contiguous(),
            "slide_id": slide.slide_id,
            "x": x,
            "y": y,
            "level": self.level,
        }
        return self.transform(item) if self.transform is not None else item
