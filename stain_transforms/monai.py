"""MONAI transforms: every stain_transforms method as an array transform and a dictionary transform.

Importing this module imports MONAI; ``import stain_transforms`` alone does not.

The transforms are channel-first, as MONAI expects: (3, H, W) or (B, 3, H, W) tensors, MONAI
``MetaTensor`` s (returned as ``MetaTensor`` s with their metadata and applied operations kept) and
numpy arrays; uint8, or float in [0, 1]. (``LoadImage`` gives float 0-255 images by default: load with
``dtype=np.uint8`` or scale to [0, 1] first; anything else is refused with a ``ValueError``.) Each
wrapper converts types and delegates to the core transform.

- Normalizers: ``MacenkoNormalize(normalizer=fitted)`` and ``MacenkoNormalized(keys="image",
  normalizer=fitted, allow_missing_keys=False)``; the same for Reinhard, Vahadane, StainNet and
  StainGAN (the last two also take ``weights=``, a name or folder for their ``from_pretrained``).
- Augmentation: :class:`RandHEDJitter` / :class:`RandHEDJitterd` (also named ``HEDJitter`` /
  ``HEDJitterd``), ``RandomizableTransform`` s that draw from MONAI's ``self.R``, so
  ``set_random_state`` (or ``Compose(...).set_random_state``) reproduces them.
- Caching: :func:`hash_transform`, for ``PersistentDataset(..., hash_transform=hash_transform)``, keys
  the cache on the fitted state of the normalizers, so that a re-fit invalidates it.

Example:
    >>> import torch
    >>> from monai.data import MetaTensor
    >>> import stain_transforms
    >>> from stain_transforms.testing import synthetic_tissue
    >>> fitted = stain_transforms.MacenkoNormalize().fit(synthetic_tissue(seed=0))
    >>> image = MetaTensor(torch.from_numpy(synthetic_tissue(seed=1)).permute(2, 0, 1), meta={"id": 7})
    >>> out = MacenkoNormalized(keys="image", normalizer=fitted)({"image": image, "label": 1})
    >>> type(out["image"]).__name__, out["image"].meta["id"], out["label"]
    ('MetaTensor', 7, 1)
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Hashable, Mapping
from typing import Any, ClassVar

import numpy as np
import torch

from .adapters import core_transform, hed_jitter_params, method_docstring, require_library

require_library("monai", extra="monai", needed_by=__name__)

from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, RandomizableTransform, Transform
from monai.utils import TransformBackends
from monai.utils.type_conversion import convert_to_dst_type

from . import augment
from .functional.jitter import SHIFT_RAMP
from .transform import StainTransform

_BACKEND = [TransformBackends.TORCH, TransformBackends.NUMPY]

# The docstrings of each method's array and dictionary transforms, filled in from the registry's table.
_ARRAY_DOC = """:class:`stain_transforms.{core}` as a MONAI array transform.

{summary}

Takes {takes}.

Example:
    >>> import stain_transforms
    >>> from stain_transforms.testing import synthetic_tissue
    >>> core = {example}
    >>> tile = torch.from_numpy(synthetic_tissue(64, seed=1)).permute(2, 0, 1)
    >>> {name}(normalizer=core)(tile).shape
    torch.Size([3, 64, 64])
"""
_DICT_DOC = """:class:`{array}` on the entries ``keys`` of a dictionary.

Takes ``keys``, ``allow_missing_keys`` and what :class:`{array}` takes: {takes}.

Example:
    >>> import stain_transforms
    >>> from stain_transforms.testing import synthetic_tissue
    >>> core = {example}
    >>> tile = torch.from_numpy(synthetic_tissue(64, seed=1)).permute(2, 0, 1)
    >>> out = {name}(keys="image", normalizer=core)({{"image": tile, "label": 0}})
    >>> out["image"].shape, out["label"]
    (torch.Size([3, 64, 64]), 0)
"""


def _channel_first(img: Any, apply: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """Run ``apply`` on a channel-first tensor view of ``img`` and return ``img``'s type."""
    if isinstance(img, MetaTensor):
        return convert_to_dst_type(apply(img.as_tensor()), img)[0]  # a MetaTensor with img's metadata
    if isinstance(img, torch.Tensor):
        return apply(img)
    if isinstance(img, np.ndarray):
        if not (img.flags.writeable and img.dtype.isnative and min(img.strides, default=0) >= 0):
            # torch.from_numpy refuses negative strides and foreign byte order, and warns on read-only arrays.
            img = np.array(img, dtype=img.dtype.newbyteorder("="))
        return apply(torch.from_numpy(img)).numpy()
    raise ValueError(f"expected a channel-first tensor, MetaTensor or numpy array, got {type(img).__name__}")


class _Normalize(Transform):
    """Base of the normalizer array transforms: the core transform of the registry's method ``method``.

    A subclass names its method as a class keyword, ``class X(_Normalize, method="macenko")``.
    """

    backend = _BACKEND
    method: ClassVar[str] = ""

    def __init_subclass__(cls, method: str = "", **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if method:
            cls.method = method
            cls.__doc__ = method_docstring(_ARRAY_DOC, method, name=cls.__name__)

    def __init__(self, normalizer: StainTransform | None = None) -> None:
        self.normalizer = core_transform(type(self).__name__, self.method, normalizer)

    def __call__(self, img: Any) -> Any:
        return _channel_first(img, self.normalizer)


class _ModelNormalize(_Normalize):
    """A normalizer array transform of a learned method, which also takes ``weights=``."""

    def __init__(self, normalizer: StainTransform | None = None, weights: str | None = None) -> None:
        self.normalizer = core_transform(type(self).__name__, self.method, normalizer, weights)


class _Normalized(MapTransform):
    """Base of the normalizer dictionary transforms: the array transform ``array_transform`` on each key.

    A subclass names its array transform as a class keyword, ``class Xd(_Normalized, array=X)``.
    """

    backend = _BACKEND
    array_transform: ClassVar[type[_Normalize]] = _Normalize

    def __init_subclass__(cls, array: type[_Normalize] | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if array is not None:
            cls.array_transform = array
            cls.__doc__ = method_docstring(_DICT_DOC, array.method, name=cls.__name__, array=array.__name__)

    def __init__(
        self, keys: KeysCollection, normalizer: StainTransform | None = None, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = self.array_transform(normalizer=normalizer)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key])
        return d


class _ModelNormalized(_Normalized):
    """A normalizer dictionary transform of a learned method, which also takes ``weights=``."""

    def __init__(
        self,
        keys: KeysCollection,
        normalizer: StainTransform | None = None,
        weights: str | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.transform = self.array_transform(normalizer=normalizer, weights=weights)


class ReinhardNormalize(_Normalize, method="reinhard"): ...


class MacenkoNormalize(_Normalize, method="macenko"): ...


class VahadaneNormalize(_Normalize, method="vahadane"): ...


class StainNetNormalize(_ModelNormalize, method="stainnet"): ...


class StainGANNormalize(_ModelNormalize, method="staingan"): ...


class ReinhardNormalized(_Normalized, array=ReinhardNormalize): ...


class MacenkoNormalized(_Normalized, array=MacenkoNormalize): ...


class VahadaneNormalized(_Normalized, array=VahadaneNormalize): ...


class StainNetNormalized(_ModelNormalized, array=StainNetNormalize): ...


class StainGANNormalized(_ModelNormalized, array=StainGANNormalize): ...


class RandHEDJitter(RandomizableTransform):
    """:class:`stain_transforms.HEDJitter` as a MONAI random array transform.

    With probability ``prob`` a call draws factors and shifts from ``self.R`` (MONAI's seeded
    ``RandomState``) and applies them; a batched (B, 3, H, W) input shares the call's one draw (use
    the core transform for per-image draws on a batch). Other arguments are the core transform's.

    Example:
        >>> from stain_transforms.testing import synthetic_tissue
        >>> tile = torch.from_numpy(synthetic_tissue(64, seed=1)).permute(2, 0, 1)
        >>> jitter = RandHEDJitter(alpha=0.2, beta=0.1, prob=1.0)
        >>> first = jitter.set_random_state(0)(tile)
        >>> torch.equal(jitter.set_random_state(0)(tile), first), torch.equal(first, tile)
        (True, False)
    """

    backend = _BACKEND

    def __init__(
        self,
        alpha: float | tuple[float, float, float] = 0.05,
        beta: float | tuple[float, float, float] = 0.05,
        prob: float = 0.5,
        basis: str = "ruifrok",
        shift_ramp: tuple[float, float] = SHIFT_RAMP,
    ) -> None:
        RandomizableTransform.__init__(self, prob)
        self.jitter = augment.HEDJitter(alpha=alpha, beta=beta, p=1.0, basis=basis, shift_ramp=shift_ramp)
        self.params: dict[str, torch.Tensor] | None = None

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        if self._do_transform:
            self.params = hed_jitter_params(**self.jitter.draw_with_numpy(self.R))

    def __call__(self, img: Any, randomize: bool = True) -> Any:
        if randomize:
            self.randomize()
        if not self._do_transform:
            return img
        params = self.params
        return _channel_first(img, lambda tensor: self.jitter.apply_params(tensor, params))


class RandHEDJitterd(RandomizableTransform, MapTransform):
    """:class:`RandHEDJitter` on the entries ``keys`` of a dictionary, with one draw shared by the keys.

    Example:
        >>> from stain_transforms.testing import synthetic_tissue
        >>> tile = torch.from_numpy(synthetic_tissue(64, seed=1)).permute(2, 0, 1)
        >>> out = RandHEDJitterd(keys=["a", "b"], prob=1.0).set_random_state(0)({"a": tile, "b": tile.clone()})
        >>> torch.equal(out["a"], out["b"])
        True
    """

    backend = _BACKEND

    def __init__(
        self,
        keys: KeysCollection,
        alpha: float | tuple[float, float, float] = 0.05,
        beta: float | tuple[float, float, float] = 0.05,
        prob: float = 0.5,
        basis: str = "ruifrok",
        shift_ramp: tuple[float, float] = SHIFT_RAMP,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.jitter = RandHEDJitter(alpha=alpha, beta=beta, prob=1.0, basis=basis, shift_ramp=shift_ramp)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> RandHEDJitterd:
        super().set_random_state(seed, state)
        self.jitter.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        self.jitter.randomize()
        for key in self.key_iterator(d):
            d[key] = self.jitter(d[key], randomize=False)
        return d


HEDJitter = RandHEDJitter
HEDJitterd = RandHEDJitterd


def _hash_entry(transform: Any) -> str:
    """A stable text that changes whenever ``transform``'s output may change (see :func:`hash_transform`)."""
    name = f"{type(transform).__module__}.{type(transform).__qualname__}"
    if isinstance(transform, StainTransform):
        return f"{name}:{transform.content_hash()}"
    if isinstance(transform, _Normalize):
        return f"{name}:{transform.normalizer.content_hash()}"
    if isinstance(transform, _Normalized):
        keys = [str(key) for key in transform.keys]
        return f"{name}:{keys}:{transform.allow_missing_keys}:{transform.transform.normalizer.content_hash()}"
    from monai.data.utils import pickle_hashing

    return f"{name}:{pickle_hashing(transform).decode()}"  # another library's transform: MONAI's own hash


def hash_transform(transforms: Any) -> bytes:
    """A ``hash_transform`` for MONAI's ``PersistentDataset`` that follows the fitted state of stain normalizers.

    MONAI hashes the deterministic transforms at the start of the pipeline into every cache key. Its
    default (no transform hash) and ``json_hashing`` do not see a normalizer's fitted statistics, so a
    re-fit serves stale cached outputs; ``pickle_hashing`` differs between two identical fits (pickled
    tensors record memory addresses), so the cache is never reused. Here each stain_transforms
    transform (core, array or dictionary) contributes its :meth:`~stain_transforms.StainTransform.content_hash`
    (class, settings, fitted state or model weights) and its keys; any other transform contributes
    MONAI's ``pickle_hashing`` of it. Returns a hex sha256 as bytes, as MONAI's hash functions do.

    Example:
        >>> import tempfile
        >>> from monai.data import PersistentDataset
        >>> from monai.transforms import Compose
        >>> import stain_transforms
        >>> from stain_transforms.testing import synthetic_tissue
        >>> fitted = stain_transforms.ReinhardNormalize().fit(synthetic_tissue(64, seed=0))
        >>> pipeline = Compose([ReinhardNormalized(keys="image", normalizer=fitted)])
        >>> data = [{"image": torch.from_numpy(synthetic_tissue(64, seed=1)).permute(2, 0, 1)}]
        >>> dataset = PersistentDataset(data, pipeline, cache_dir=tempfile.mkdtemp(), hash_transform=hash_transform)
        >>> dataset.transform_hash == hash_transform([pipeline.transforms[0]]).decode()
        True
    """
    if not isinstance(transforms, (list, tuple)):
        transforms = [transforms]
    digest = hashlib.sha256()
    for transform in transforms:
        digest.update(_hash_entry(transform).encode())
        digest.update(b"\n")
    return digest.hexdigest().encode()
