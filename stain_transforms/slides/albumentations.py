"""Slide context for albumentations: each image normalized with its slide's statistics, by the ``slide_id`` passed along.

Importing this module imports albumentations. For one slide, the plain wrappers already work:
``stain_transforms.albumentations.MacenkoNormalize(normalizer=normalizer.with_source(stats))``.

Example:
    >>> import albumentations as A
    >>> import stain_transforms
    >>> from stain_transforms.testing import synthetic_tissue
    >>> normalizer = stain_transforms.ReinhardNormalize().fit(synthetic_tissue(64, seed=0))
    >>> stats = {"a": normalizer.pooled_statistics([synthetic_tissue(64, seed=s, stain_scale=1.3) for s in (1, 2)])}
    >>> pipeline = A.Compose([SlideContextNormalize(normalizer, stats)])
    >>> tile = synthetic_tissue(64, seed=1, stain_scale=1.3)
    >>> out = pipeline(image=tile, slide_id="a")
    >>> bool((out["image"] == normalizer.with_source(stats["a"])(tile)).all()), out["slide_id"]
    (True, 'a')
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from typing import Any

import numpy as np
from albumentations.core.transforms_interface import ImageOnlyTransform

from .context import SlideContextNormalize as _Context


class SlideContextNormalize(ImageOnlyTransform):
    """:class:`stain_transforms.slides.SlideContextNormalize` as an albumentations ``ImageOnlyTransform``.

    Call the pipeline with the slide's id (``pipeline(image=tile, slide_id="a")``) or its statistics
    (``source=stats``); the statistics are looked up as the core transform does (``statistics``, then ``fit``),
    and ``id_key=`` / ``source_key=`` rename those two keys as there.

    Example:
        >>> import albumentations as A
        >>> import stain_transforms
        >>> from stain_transforms.testing import synthetic_tissue
        >>> normalizer = stain_transforms.MacenkoNormalize().fit(synthetic_tissue(64, seed=0))
        >>> stats = normalizer.pooled_statistics([synthetic_tissue(64, seed=3)])
        >>> out = A.Compose([SlideContextNormalize(normalizer)])(image=synthetic_tissue(64, seed=3), source=stats)
        >>> out["image"].shape
        (64, 64, 3)
    """

    def __init__(
        self,
        normalizer: Any,
        statistics: Mapping[Hashable, Any] | None = None,
        fit: Callable[[Any], Any] | None = None,
        p: float = 1.0,
        **keys: str,
    ) -> None:
        super().__init__(p=p)
        self.context = _Context(normalizer, statistics, fit, **keys)  # id_key=, source_key=: the data's keys

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        return {"source": self.context._source_of(data)}

    def apply(self, img: np.ndarray, source: Any = None, **params: Any) -> np.ndarray:
        return self.context.transform(img, {"source": source})

    def apply_to_images(self, images: np.ndarray, source: Any = None, **params: Any) -> np.ndarray:
        return self.context.transform(np.asarray(images), {"source": source})

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ()
