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
from typing import Any

import numpy as np
import torch
from albumentations.core.transforms_interface import ImageOnlyTransform

from . import augment
from .base import StainTransform, transform_class
from .functional.hed import SHIFT_RAMP

# A normalizer passed as an object is embedded in A.to_dict() only up to this many numbers; a
# larger one (a StainGAN generator) must be referenced by weights= or by a saved file's path.
MAX_EMBEDDED_NUMBERS = 100_000


def _tensors_to_spec(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    return {
        name: {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape), "data": t.flatten().tolist()}
        for name, t in state.items()
    }


def _tensors_from_spec(tensors: dict[str, Any]) -> dict[str, torch.Tensor]:
    return {
        name: torch.tensor(t["data"], dtype=getattr(torch, t["dtype"])).reshape(t["shape"])
        for name, t in tensors.items()
    }


def transform_to_spec(transform: StainTransform) -> dict[str, Any]:
    """A JSON-serialisable description of a transform: class name, settings and tensors.

    A model-based normalizer (one with a ``model`` made by huggingface_hub's mixin, as StainNet and
    StainGAN) is described by its own settings plus the model's class, constructor arguments and
    weights.

    Example:
        >>> import stain_transforms
        >>> from stain_transforms.testing import synthetic_tissue
        >>> fitted = stain_transforms.ReinhardNormalize().fit(synthetic_tissue(64, seed=0))
        >>> spec = transform_to_spec(fitted)
        >>> spec["class"], sorted(spec["state"])
        ('ReinhardNormalize', ['fitted', 'target_mean', 'target_std'])
        >>> torch.equal(transform_from_spec(spec).target_mean, fitted.target_mean)
        True
    """
    numbers = sum(t.numel() for t in transform.state_dict().values())
    if numbers > MAX_EMBEDDED_NUMBERS:
        raise ValueError(
            f"{type(transform).__name__} has {numbers} parameters, too many to embed in a serialised pipeline; "
            "build the wrapper with weights=<name or folder>, or save it and pass its path as normalizer="
        )
    spec: dict[str, Any] = {"class": type(transform).__name__, "config": dict(getattr(transform, "config", {}))}
    model = getattr(transform, "model", None)
    if isinstance(model, torch.nn.Module):
        spec["model"] = {
            "class": type(model).__name__,
            "config": dict(getattr(model, "_hub_mixin_config", {})),
            "state": _tensors_to_spec(model.state_dict()),
        }
    else:
        spec["state"] = _tensors_to_spec(transform.state_dict())
    return spec


def transform_from_spec(spec: dict[str, Any]) -> StainTransform:
    """Rebuild a transform from :func:`transform_to_spec`'s description.

    Example:
        >>> import stain_transforms
        >>> from stain_transforms.testing import synthetic_tissue
        >>> fitted = stain_transforms.MacenkoNormalize().fit(synthetic_tissue(64, seed=0))
        >>> rebuilt = transform_from_spec(transform_to_spec(fitted))
        >>> type(rebuilt).__name__, torch.equal(rebuilt.target_stain_matrix, fitted.target_stain_matrix)
        ('MacenkoNormalize', True)
    """
    from . import models

    try:
        klass, config = transform_class(spec["class"]), spec["config"]
        if "model" in spec:
            model = getattr(models, spec["model"]["class"])(**spec["model"]["config"])
            model.load_state_dict(_tensors_from_spec(spec["model"]["state"]))
            return klass(model, **config)
        transform = klass(**config)
        transform.load_state_dict(_tensors_from_spec(spec["state"]))
        return transform
    except (KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"not a serialised stain_transforms transform ({type(error).__name__}: {error})") from error


class _NormalizeWrapper(ImageOnlyTransform):
    """Base of the normalizer wrappers; subclasses name their core class in ``core``."""

    core = ""

    def __init__(self, normalizer: Any = None, p: float = 1.0) -> None:
        super().__init__(p=p)
        self.normalizer, self._reference = self._resolve(normalizer)

    def _resolve(self, normalizer: Any) -> tuple[StainTransform, dict[str, Any] | str | None]:
        klass = transform_class(self.core)
        if isinstance(normalizer, (str, Path)):
            # A file is what a normalizer's save() wrote; a name or folder is for from_pretrained().
            if hasattr(klass, "load") and (Path(normalizer).is_file() or not hasattr(klass, "from_pretrained")):
                loaded = klass.load(normalizer)
            else:
                loaded = klass.from_pretrained(str(normalizer))
            return self._check(loaded, klass), str(normalizer)
        if isinstance(normalizer, dict):
            return self._check(transform_from_spec(normalizer), klass), None
        if normalizer is None:
            raise ValueError(f"{type(self).__name__} needs normalizer= (a fitted {self.core}, or a saved file's path)")
        return self._check(normalizer, klass), None

    def _check(self, normalizer: Any, klass: type[StainTransform]) -> StainTransform:
        if not isinstance(normalizer, klass):
            raise ValueError(f"{type(self).__name__} needs a {klass.__name__}, got {type(normalizer).__name__}")
        if not bool(getattr(normalizer, "fitted", True)):
            raise ValueError(f"the {klass.__name__} is not fitted: call .fit(reference_images) first")
        return normalizer

    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
        return self.normalizer(img)

    def apply_to_images(self, images: np.ndarray, **params: Any) -> np.ndarray:
        return self.normalizer(np.asarray(images))  # one batched call

    def get_transform_init_args(self) -> dict[str, Any]:
        return {"normalizer": self._reference if self._reference is not None else self.normalizer}

    def to_dict_private(self) -> dict[str, Any]:
        state = super().to_dict_private()
        if not isinstance(self._reference, str):
            state["normalizer"] = transform_to_spec(self.normalizer)
        return state


class _ModelNormalizeWrapper(_NormalizeWrapper):
    """A wrapper for model-based normalizers, which can also be given by ``weights=``."""

    def __init__(self, normalizer: Any = None, weights: str | None = None, p: float = 1.0) -> None:
        if (normalizer is None) == (weights is None):
            raise ValueError(f"{type(self).__name__} needs exactly one of normalizer= and weights=")
        self.weights = str(weights) if weights is not None else None
        super().__init__(normalizer if weights is None else str(weights), p=p)

    def get_transform_init_args(self) -> dict[str, Any]:
        if self.weights is not None:
            return {"weights": self.weights}
        return super().get_transform_init_args()

    def to_dict_private(self) -> dict[str, Any]:
        if self.weights is not None:
            return ImageOnlyTransform.to_dict_private(self)
        state = super().to_dict_private()
        state.pop("weights", None)
        return state


class ReinhardNormalize(_NormalizeWrapper):
    """:class:`stain_transforms.ReinhardNormalize` for albumentations: ``ReinhardNormalize(normalizer=fitted)``.

    Example:
        >>> import stain_transforms
        >>> from stain_transforms.testing import synthetic_tissue
        >>> fitted = stain_transforms.ReinhardNormalize().fit(synthetic_tissue(64, seed=0))
        >>> ReinhardNormalize(normalizer=fitted)(image=synthetic_tissue(64, seed=1))["image"].shape
        (64, 64, 3)
    """

    core = "ReinhardNormalize"


class MacenkoNormalize(_NormalizeWrapper):
    """:class:`stain_transforms.MacenkoNormalize` for albumentations: ``MacenkoNormalize(normalizer=fitted)``.

    Example:
        >>> import stain_transforms
        >>> from stain_transforms.testing import synthetic_tissue
        >>> fitted = stain_transforms.MacenkoNormalize().fit(synthetic_tissue(64, seed=0))
        >>> MacenkoNormalize(normalizer=fitted)(image=synthetic_tissue(64, seed=1))["image"].dtype
        dtype('uint8')
    """

    core = "MacenkoNormalize"


class VahadaneNormalize(_NormalizeWrapper):
    """:class:`stain_transforms.VahadaneNormalize` for albumentations: ``VahadaneNormalize(normalizer=fitted)``.

    Example:
        >>> import stain_transforms
        >>> from stain_transforms.testing import synthetic_tissue
        >>> fitted = stain_transforms.VahadaneNormalize().fit(synthetic_tissue(64, seed=0))
        >>> VahadaneNormalize(normalizer=fitted, p=1.0).p
        1.0
    """

    core = "VahadaneNormalize"


class StainNetNormalize(_ModelNormalizeWrapper):
    """:class:`stain_transforms.StainNetNormalize` for albumentations: ``normalizer=`` or ``weights=``.

    Example:
        >>> import stain_transforms
        >>> from stain_transforms.models import StainNet
        >>> wrapper = StainNetNormalize(normalizer=stain_transforms.StainNetNormalize(StainNet()))
        >>> wrapper(image=np.full((8, 8, 3), 200, np.uint8))["image"].shape
        (8, 8, 3)
    """

    core = "StainNetNormalize"


class StainGANNormalize(_ModelNormalizeWrapper):
    """:class:`stain_transforms.StainGANNormalize` for albumentations: ``normalizer=`` or ``weights=``.

    Example:
        >>> import stain_transforms
        >>> from stain_transforms.models import StainGANGenerator
        >>> core = stain_transforms.StainGANNormalize(StainGANGenerator(ngf=8, n_blocks=1), tile_size=64, overlap=16)
        >>> StainGANNormalize(normalizer=core).normalizer is core
        True
    """

    core = "StainGANNormalize"


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
        unit = self.random_generator.uniform(-1.0, 1.0, size=(2, 3))
        return {"factors": 1.0 + np.asarray(self.alpha) * unit[0], "shifts": np.asarray(self.beta) * unit[1]}

    def _core_params(self, factors: np.ndarray, shifts: np.ndarray) -> dict[str, torch.Tensor]:
        return {
            "factors": torch.as_tensor(factors, dtype=torch.float32)[None],
            "shifts": torch.as_tensor(shifts, dtype=torch.float32)[None],
            "apply": torch.ones(1, dtype=torch.bool),
        }

    def apply(self, img: np.ndarray, factors: np.ndarray, shifts: np.ndarray, **params: Any) -> np.ndarray:
        return self.jitter.apply_params(img, self._core_params(factors, shifts))

    def apply_to_images(self, images: np.ndarray, factors: np.ndarray, shifts: np.ndarray, **params: Any) -> np.ndarray:
        return self.jitter.apply_params(np.asarray(images), self._core_params(factors, shifts))
