"""albumentations wrappers: every stain_transforms method as an ``ImageOnlyTransform``.

Importing this module imports albumentations; ``import stain_transforms`` alone does not.

Each wrapper converts nothing itself: the core transform already takes HWC uint8 or float32 arrays
(and (N, H, W, 3) stacks, for albumentations' ``images`` target) and returns the same type. Masks,
boxes and keypoints are not touched (these are image-only transforms).

Normalizers are passed fitted (``normalizer=``), or by the path of a file written by their
``save()``; model-based ones (StainNet, StainGAN) also by ``weights=`` (a registered name or a
folder, as their ``from_pretrained`` takes). ``A.to_dict`` / ``A.save`` keep that reference, or,
for a normalizer passed as an object, embed its class, settings and fitted tensors, so that
``A.from_dict`` / ``A.load`` rebuild it (after ``import stain_transforms.albumentations``).

:class:`HEDJitter` draws its parameters from the albumentations transform's own random generator,
so ``A.Compose([...], seed=...)`` reproduces a pipeline.

Example:
    >>> import albumentations as A
    >>> import stain_transforms
    >>> from stain_transforms.testing import synthetic_tissue
    >>> fitted = stain_transforms.ReinhardNormalize().fit(synthetic_tissue(seed=0))
    >>> pipeline = A.Compose([ReinhardNormalize(normalizer=fitted), HEDJitter.light(p=0.5)], seed=0)
    >>> out = pipeline(image=synthetic_tissue(seed=1))["image"]
    >>> out.shape, out.dtype
    ((128, 128, 3), dtype('uint8'))
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from .adapters import require_library

require_library("albumentations", extra="albumentations", needed_by=__name__)

from albumentations.core.transforms_interface import ImageOnlyTransform

from . import augment
from .adapters import (
    MAX_EMBEDDED_NUMBERS,
    core_transform,
    hed_jitter_params,
    method_docstring,
    transform_from_spec,
    transform_to_spec,
)
from .functional.jitter import SHIFT_RAMP

__all__ = [
    "MAX_EMBEDDED_NUMBERS", "transform_from_spec", "transform_to_spec",
    "ReinhardNormalize", "MacenkoNormalize", "VahadaneNormalize", "StainNetNormalize", "StainGANNormalize", "HEDJitter",
]

# The docstring of each normalizer wrapper, filled in from the registry's table.
_WRAPPER_DOC = """:class:`stain_transforms.{core}` for albumentations, as an ``ImageOnlyTransform``.

{summary}

Takes {takes}. ``p`` is the probability of applying it. ``A.to_dict`` keeps a path or a name as
given, and embeds a transform passed as an object (see the module docstring).

Example:
    >>> import stain_transforms
    >>> from stain_transforms.testing import synthetic_tissue
    >>> core = {example}
    >>> {name}(normalizer=core)(image=synthetic_tissue(64, seed=1))["image"].shape
    (64, 64, 3)
"""


class _NormalizeWrapper(ImageOnlyTransform):
    """Base of the normalizer wrappers: the core transform of the registry's method ``method``.

    A subclass sets ``method`` in its body (albumentations' metaclass takes no class keywords).
    """

    method: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "method" in vars(cls):
            cls.__doc__ = method_docstring(_WRAPPER_DOC, cls.method, name=cls.__name__)

    def __init__(self, normalizer: Any = None, p: float = 1.0) -> None:
        self._wrap(normalizer, None, p)

    def _wrap(self, normalizer: Any, weights: Any, p: float) -> None:
        super().__init__(p=p)
        self.normalizer = core_transform(type(self).__name__, self.method, normalizer, weights)
        self.weights = None if weights is None else str(weights)
        # What A.to_dict keeps as given: the weights, or a saved file's path; otherwise it embeds the normalizer.
        path = str(normalizer) if isinstance(normalizer, (str, Path)) else None
        self._reference = self.weights if self.weights is not None else path

    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
        return self.normalizer(img)

    def apply_to_images(self, images: np.ndarray, **params: Any) -> np.ndarray:
        return self.normalizer(np.asarray(images))  # one batched call

    def get_transform_init_args(self) -> dict[str, Any]:
        if self.weights is not None:
            return {"weights": self.weights}
        return {"normalizer": self._reference if self._reference is not None else self.normalizer}

    def to_dict_private(self) -> dict[str, Any]:
        state = super().to_dict_private()
        if self._reference is None:  # the limit is read here, so that setting this module's constant takes effect
            state["normalizer"] = transform_to_spec(self.normalizer, MAX_EMBEDDED_NUMBERS)
        return state


class _ModelNormalizeWrapper(_NormalizeWrapper):
    """A wrapper of a learned method, which also takes ``weights=``."""

    def __init__(self, normalizer: Any = None, weights: str | None = None, p: float = 1.0) -> None:
        self._wrap(normalizer, weights, p)


class ReinhardNormalize(_NormalizeWrapper):
    method = "reinhard"


class MacenkoNormalize(_NormalizeWrapper):
    method = "macenko"


class VahadaneNormalize(_NormalizeWrapper):
    method = "vahadane"


class StainNetNormalize(_ModelNormalizeWrapper):
    method = "stainnet"


class StainGANNormalize(_ModelNormalizeWrapper):
    method = "staingan"


class HEDJitter(ImageOnlyTransform):
    """:class:`stain_transforms.HEDJitter` for albumentations, drawing from albumentations' seeded RNG.

    Args are those of the core transform (``p`` defaults to 0.5, albumentations' convention). The
    presets are the same classmethods: ``HEDJitter.light(p=0.5)``, ``.strong()``, ``.brh()``.
    Applied to a stack of images (the ``images`` target), one draw is shared by the stack.

    Example:
        >>> import albumentations as A
        >>> from stain_transforms.testing import synthetic_tissue
        >>> image = synthetic_tissue(64, seed=0)
        >>> first = A.Compose([HEDJitter.strong(p=1.0)], seed=0)(image=image)["image"]
        >>> again = A.Compose([HEDJitter.strong(p=1.0)], seed=0)(image=image)["image"]
        >>> bool((first == again).all()), bool((first == image).all())
        (True, False)
    """

    def __init__(
        self,
        alpha: float | tuple[float, float, float] = 0.05,
        beta: float | tuple[float, float, float] = 0.05,
        basis: str = "ruifrok",
        shift_ramp: tuple[float, float] = SHIFT_RAMP,
        p: float = 0.5,
    ) -> None:
        super().__init__(p=p)
        self.jitter = augment.HEDJitter(alpha=alpha, beta=beta, p=1.0, basis=basis, shift_ramp=shift_ramp)
        self.alpha, self.beta = self.jitter.alpha, self.jitter.beta
        self.basis, self.shift_ramp = basis, self.jitter.shift_ramp

    @classmethod
    def light(cls, **kwargs: Any) -> HEDJitter:
        """Tellez et al. (2019) "HED-light"."""
        return cls(**{**augment.HEDJitter.PRESETS["light"], **kwargs})

    @classmethod
    def strong(cls, **kwargs: Any) -> HEDJitter:
        """Tellez et al. (2019) "HED-strong"."""
        return cls(**{**augment.HEDJitter.PRESETS["strong"], **kwargs})

    @classmethod
    def brh(cls, **kwargs: Any) -> HEDJitter:
        """The StainNet paper's BRH HED jitter: factors in [0.75, 1.25]."""
        return cls(**{**augment.HEDJitter.PRESETS["brh"], **kwargs})

    def get_params(self) -> dict[str, Any]:
        return self.jitter.draw_with_numpy(self.random_generator)

    def apply(self, img: np.ndarray, factors: np.ndarray, shifts: np.ndarray, **params: Any) -> np.ndarray:
        return self.jitter.apply_params(img, hed_jitter_params(factors, shifts))

    def apply_to_images(self, images: np.ndarray, factors: np.ndarray, shifts: np.ndarray, **params: Any) -> np.ndarray:
        return self.jitter.apply_params(np.asarray(images), hed_jitter_params(factors, shifts))
