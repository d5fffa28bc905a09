"""A slide's stain statistics: what :func:`~stain_transforms.slides.fit_slide` measures and ``with_source`` takes.

Example:
    >>> import tempfile
    >>> import stain_transforms
    >>> from stain_transforms.testing import synthetic_tissue
    >>> normalizer = stain_transforms.MacenkoNormalize()
    >>> tiles = [synthetic_tissue(64, seed=s) for s in range(3)]
    >>> stats = SlideStatistics.from_tiles(normalizer, tiles, slide_id="slide-1")
    >>> path = stats.save(Path(tempfile.mkdtemp()) / "slide-1.safetensors")
    >>> again = SlideStatistics.load(path)
    >>> again.slide_id, again.normalizer, torch.equal(again["stain_matrix"], stats["stain_matrix"])
    ('slide-1', 'MacenkoNormalize', True)
"""

from __future__ import annotations

import json
from collections.abc import Sized
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

FORMAT = "stain_transforms.slide_statistics"


@dataclass
class SlideStatistics:
    """One slide's source statistics for one kind of normalizer (float64 CPU tensors by name).

    The same statistics, pooled the same way (the median over tiles), as a normalizer's ``fit``
    makes its target from: a Macenko/Vahadane ``stain_matrix`` (3, 2) and ``max_concentrations``
    (2,) (the 99th percentile of each stain's concentration), or Reinhard's Lab ``mean`` and ``std`` (3,).
    Give them to ``normalizer.with_source(stats)`` so that every tile of the slide gets one colour map.

    Attributes:
        normalizer: the class name of the normalizer they were measured with (``"MacenkoNormalize"``).
        statistics: name -> tensor.
        slide_id: the slide's name.
        tiles: how many tissue tiles they were measured on.
        info: anything else worth keeping (level, tile size, mpp, path), JSON-serialisable.

    Example:
        >>> stats = SlideStatistics("ReinhardNormalize", {"mean": torch.tensor([70.0, 20, -5]), "std": torch.ones(3)})
        >>> sorted(stats.statistics), stats["mean"].dtype
        (['mean', 'std'], torch.float64)
    """

    normalizer: str
    statistics: dict[str, torch.Tensor]
    slide_id: str = ""
    tiles: int = 0
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.statistics = {
            name: torch.as_tensor(value).detach().to("cpu", torch.float64) for name, value in self.statistics.items()
        }

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.statistics[name]

    def __contains__(self, name: object) -> bool:
        return name in self.statistics

    @classmethod
    def from_tiles(cls, normalizer: Any, tiles: Any, slide_id: str = "", progress: bool | None = None, **info: Any) -> SlideStatistics:
        """Measure ``normalizer``'s statistics on ``tiles`` (anything ``fit`` takes) and pool them as ``fit`` does.

        Raises:
            ValueError: when no tile has enough tissue.

        Example:
            >>> from stain_transforms import ReinhardNormalize
            >>> from stain_transforms.testing import synthetic_tissue
            >>> stats = SlideStatistics.from_tiles(ReinhardNormalize(), [synthetic_tissue(64, seed=s) for s in range(2)])
            >>> stats.normalizer, stats.tiles, tuple(stats["std"].shape)
            ('ReinhardNormalize', 2, (3,))
        """
        counted: list[int] = []

        def counting(items: Any) -> Any:
            for item in items:
                counted.append(1)
                yield item

        array = isinstance(tiles, (np.ndarray, torch.Tensor))  # one image, or a batch
        sized = isinstance(tiles, Sized) and not array
        given = tiles if sized or array else counting(tiles)
        pooled = normalizer.pooled_statistics(given, progress=progress, desc=f"slide statistics {slide_id}".strip())
        count = len(tiles) if sized else (1 if array and tiles.ndim == 3 else len(tiles) if array else len(counted))
        return cls(type(normalizer).__name__, pooled, slide_id=slide_id, tiles=count, info=dict(info))

    def save(self, path: str | Path) -> Path:
        """Write to a ``.safetensors`` file (tensors, and the rest as metadata); returns the path.

        Example:
            >>> import tempfile
            >>> stats = SlideStatistics("ReinhardNormalize", {"mean": torch.zeros(3), "std": torch.ones(3)}, "a")
            >>> SlideStatistics.load(stats.save(Path(tempfile.mkdtemp()) / "a.safetensors")).slide_id
            'a'
        """
        path = Path(path)
        metadata = {
            "format": FORMAT,
            "normalizer": self.normalizer,
            "slide_id": self.slide_id,
            "tiles": str(self.tiles),
            "info": json.dumps(self.info),
        }
        save_file({name: value.contiguous() for name, value in self.statistics.items()}, str(path), metadata=metadata)
        return path

    @classmethod
    def load(cls, path: str | Path) -> SlideStatistics:
        """Read what :meth:`save` wrote.

        Raises:
            FileNotFoundError: if there is no file at ``path``.
            ValueError: if the file is not slide statistics written by :meth:`save`.

        Example:
            >>> SlideStatistics.load("missing.safetensors")
            Traceback (most recent call last):
            ...
            FileNotFoundError: no slide statistics at missing.safetensors
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no slide statistics at {path}")
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
        except (SafetensorError, OSError, ValueError) as error:
            raise ValueError(f"{path} is not a readable safetensors file ({error})") from error
        if metadata.get("format") != FORMAT:
            raise ValueError(f"{path} holds no slide statistics (it was not written by SlideStatistics.save)")
        return cls(
            metadata["normalizer"],
            tensors,
            slide_id=metadata.get("slide_id", ""),
            tiles=int(metadata.get("tiles", 0)),
            info=json.loads(metadata.get("info", "{}")),
        )
