"""Slide context in tile pipelines: normalize every tile with its slide's statistics, looked up per sample.

:meth:`StainNormalizer.with_source <stain_transforms.StainNormalizer.with_source>` fixes one slide's
statistics on a normalizer. :class:`SlideContextNormalize` picks them per sample instead, for
datasets that mix slides: from the sample's ``"source"`` entry (statistics), or from a cache keyed by
the sample's ``"slide_id"``, filled from a mapping or, on first sight of a slide, by a function
(e.g. ``lambda slide_id: fit_slide(paths[slide_id], normalizer)``).

Example:
    >>> import stain_transforms
    >>> from stain_transforms.testing import synthetic_tissue
    >>> from stain_transforms.slides import SlideStatistics
    >>> normalizer = stain_transforms.ReinhardNormalize().fit(synthetic_tissue(64, seed=0))
    >>> tiles_a = [synthetic_tissue(64, seed=s, stain_scale=1.3) for s in (1, 2)]
    >>> stats = {"a": SlideStatistics.from_tiles(normalizer, tiles_a, slide_id="a")}
    >>> transform = SlideContextNormalize(normalizer, stats)
    >>> out = transform({"image": tiles_a[0], "slide_id": "a", "label": 1})
    >>> bool((out["image"] == normalizer.with_source(stats["a"])(tiles_a[0])).all()), out["label"]
    (True, 1)
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import torch

from ..transform import StainTransform


class SlideContextNormalize(StainTransform):
    """Normalize each sample's tile with its slide's statistics (a torchvision v2 transform; also a MONAI one).

    Samples are dicts. The statistics come from ``sample[source_key]`` when present (a
    :class:`~stain_transforms.slides.SlideStatistics` or a mapping of tensors), else from the cache
    by ``sample[id_key]``: ``statistics[slide_id]`` or ``fit(slide_id)``, kept for later samples.
    A collated batch (``image`` (B, 3, H, W), ``slide_id`` a list of B names) gets each image's own
    slide's statistics, in one call on the batch's device.

    With ``keys`` (MONAI style) only those entries are normalized; otherwise the image entries as
    torchvision finds them (see :class:`~stain_transforms.StainTransform`).

    In a DataLoader with ``num_workers > 0`` each worker has its own cache: pass the statistics
    computed beforehand (``statistics=``) rather than ``fit=``, so that no worker measures a slide again.

    Args:
        normalizer: a fitted normalizer with ``normalize_with`` (Reinhard, Macenko, Vahadane).
        statistics: slide id -> statistics, known beforehand.
        fit: slide id -> statistics, called for a slide the cache lacks.
        id_key: the sample entry naming the slide.
        source_key: the sample entry that may hold the statistics themselves.
        keys: the entries to normalize (default: the images, as torchvision finds them).

    Raises:
        ValueError: (when called) for a sample that is not a dict, or whose slide has no statistics.

    Example:
        >>> import stain_transforms
        >>> from stain_transforms.testing import synthetic_tissue
        >>> normalizer = stain_transforms.MacenkoNormalize().fit(synthetic_tissue(64, seed=0))
        >>> measured = []
        >>> def fit(slide_id):
        ...     measured.append(slide_id)
        ...     return normalizer.pooled_statistics([synthetic_tissue(64, seed=7)])
        >>> transform = SlideContextNormalize(normalizer, fit=fit)
        >>> batch = torch.stack([torch.from_numpy(synthetic_tissue(64, seed=s)).permute(2, 0, 1) for s in (1, 2)])
        >>> out = transform({"image": batch, "slide_id": ["x", "x"]})
        >>> out["image"].shape, measured  # measured once, then cached
        (torch.Size([2, 3, 64, 64]), ['x'])
    """

    def __init__(
        self,
        normalizer: Any,
        statistics: Mapping[Hashable, Any] | None = None,
        fit: Callable[[Any], Any] | None = None,
        id_key: str = "slide_id",
        source_key: str = "source",
        keys: Sequence[str] | str | None = None,
    ) -> None:
        super().__init__()
        if not callable(getattr(normalizer, "normalize_with", None)) or not hasattr(normalizer, "statistics"):
            raise ValueError(f"{type(normalizer).__name__} takes no slide statistics; use Reinhard, Macenko or Vahadane")
        self.normalizer = normalizer.with_source(None) if getattr(normalizer, "source", None) is not None else normalizer
        self.cache: dict[Hashable, dict[str, torch.Tensor]] = {}
        for slide_id, value in (statistics or {}).items():
            self.cache[slide_id] = self._checked(value)
        self.fit = fit
        self.id_key, self.source_key = id_key, source_key
        self.keys = (keys,) if isinstance(keys, str) else (tuple(keys) if keys is not None else None)

    def _checked(self, value: Any) -> dict[str, torch.Tensor]:
        """The statistics the normalizer needs, as float64 CPU tensors (checked by ``with_source``)."""
        return self.normalizer.with_source(value).source

    def statistics_for(self, slide_id: Hashable) -> dict[str, torch.Tensor]:
        """The cached statistics of ``slide_id``, measured by ``fit`` on first request.

        Raises:
            ValueError: if the slide is not cached and there is no ``fit``.

        Example:
            >>> import stain_transforms
            >>> from stain_transforms.testing import synthetic_tissue
            >>> normalizer = stain_transforms.ReinhardNormalize().fit(synthetic_tissue(64, seed=0))
            >>> SlideContextNormalize(normalizer).statistics_for("unknown")
            Traceback (most recent call last):
            ...
            ValueError: no statistics for slide 'unknown': pass statistics={...} or fit=
        """
        if slide_id not in self.cache:
            if self.fit is None:
                raise ValueError(f"no statistics for slide {slide_id!r}: pass statistics={{...}} or fit=")
            self.cache[slide_id] = self._checked(self.fit(slide_id))
        return self.cache[slide_id]

    def _source_of(self, sample: Mapping[Any, Any]) -> dict[str, torch.Tensor]:
        given = sample.get(self.source_key)
        if given is not None:
            return self._checked(given)
        if self.id_key not in sample:
            raise ValueError(f"the sample has neither a {self.source_key!r} nor a {self.id_key!r} entry")
        slide_id = sample[self.id_key]
        if isinstance(slide_id, torch.Tensor):
            slide_id = slide_id.tolist()
        if isinstance(slide_id, (list, tuple)):  # a collated batch: one slide per image
            per_image = [self.statistics_for(one) for one in slide_id]
            return {name: torch.stack([stats[name] for stats in per_image]) for name in per_image[0]}
        return self.statistics_for(slide_id)

    def forward(self, *inputs: Any) -> Any:
        sample = inputs if len(inputs) > 1 else inputs[0]
        if not isinstance(sample, Mapping):
            raise ValueError(
                f"SlideContextNormalize takes dict samples with {self.id_key!r} or {self.source_key!r}; "
                f"got {type(sample).__name__} (for one slide, use normalizer.with_source(statistics))"
            )
        params = {"source": self._source_of(sample)}
        if self.keys is None:
            return self.transform_sample(sample, params)
        out = dict(sample)
        for key in self.keys:
            out[key] = self.transform(out[key], params)
        return out

    def image_params(self, params: dict[str, Any], index: int, batch_size: int) -> dict[str, Any]:
        source = params["source"]
        batched = any(value.dim() > getattr(self.normalizer, f"target_{name}").dim() for name, value in source.items())
        return {"source": {name: value[index] for name, value in source.items()}} if batched else params

    def apply_batch(self, batch: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
        self.normalizer._require_fitted()
        source = {name: value.to(batch.device) for name, value in params["source"].items()}
        return self.normalizer.normalize_with(batch, source)
