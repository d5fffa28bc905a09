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

from collections.abc import Callable, Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, RandomizableTransform, Transform
from monai.utils import TransformBackends
from monai.utils.type_conversion import convert_to_dst_type

from . import augment
from .base import StainTransform, transform_class
from .functional.hed import SHIFT_RAMP

_BACKEND = [TransformBackends.TORCH, TransformBackends.NUMPY]


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
    """Base of the normalizer array transforms; subclasses name their core class in ``core``."""

    backend = _BACKEND
    core = ""

    def __init__(self, normalizer: StainTransform | None = None) -> None:
        klass = transform_class(self.core)
        if not isinstance(normalizer, klass):
            raise ValueError(
                f"{type(self).__name__} needs normalizer=, a {klass.__name__}, got {type(normalizer).__name__}"
            )
        if not bool(getattr(normalizer, "fitted", True)):
            raise ValueError(f"the {klass.__name__} is not fitted: call .fit(reference_images) first")
        self.normalizer = normalizer

    def __call__(self, img: Any) -> Any:
        return _channel_first(img, self.normalizer)


class _ModelNormalize(_Normalize):
    """A normalizer array transform that can also load its model by ``weights=``."""

    def __init__(self, normalizer: StainTransform | None = None, weights: str | None = None) -> None:
        if (normalizer is None) == (weights is None):
            raise ValueError(f"{type(self).__name__} needs exactly one of normalizer= and weights=")
        super().__init__(normalizer if weights is None else transform_class(self.core).from_pretrained(weights))


class ReinhardNormalize(_Normalize):
    """:class:`stain_transforms.ReinhardNormalize` as a MONAI array transform.

    Example:
        >>> import stain_transforms
        >>> from stain_transforms.testing import synthetic_tissue
        >>> tile = torch.from_numpy(synthetic_tissue(64, seed=1)).permute(2, 0, 1)
        >>> fitted = stain_transforms.ReinhardNormalize().fit(synthetic_tissue(64, seed=0))
        >>> ReinhardNormalize(normalizer=fitted)(tile).shape
        torch.Size([3, 64, 64])
    """

    core = "ReinhardNormalize"


class MacenkoNormalize(_Normalize):
    """:class:`stain_transforms.MacenkoNormalize` as a MONAI array transform.

    Example:
        >>> import stain_transforms
        >>> from stain_transforms.testing import synthetic_tissue
        >>> tile = torch.from_numpy(synthetic_tissue(64, seed=1)).permute(2, 0, 1)
        >>> fitted = stain_transforms.MacenkoNormalize().fit(synthetic_tissue(64, seed=0))
        >>> MacenkoNormalize(normalizer=fitted)(tile).shape
        torch.Size([3, 64, 64])
    """

    core = "MacenkoNormalize"


class VahadaneNormalize(_Normalize):
    """:class:`stain_transforms.VahadaneNormalize` as a MONAI array transform.

    Example:
        >>> import stain_transforms
        >>> from stain_transforms.testing import synthetic_tissue
        >>> tile = torch.from_numpy(synthetic_tissue(64, seed=1)).permute(2, 0, 1)
        >>> fitted = stain_transforms.VahadaneNormalize().fit(synthetic_tissue(64, seed=0))
        >>> VahadaneNormalize(normalizer=fitted)(tile).shape
        torch.Size([3, 64, 64])
    """

    core = "VahadaneNormalize"


class StainNetNormalize(_ModelNormalize):
    """:class:`stain_transforms.StainNetNormalize` as a MONAI array transform (``normalizer=`` or ``weights=``).

    Example:
        >>> import stain_transforms
        >>> from stain_transforms.models import StainNet
        >>> transform = StainNetNormalize(normalizer=stain_transforms.StainNetNormalize(StainNet()))
        >>> transform(torch.full((3, 8, 8), 0.5)).shape
        torch.Size([3, 8, 8])
    """

    core = "StainNetNormalize"


class StainGANNormalize(_ModelNormalize):
    """:class:`stain_transforms.StainGANNormalize` as a MONAI array transform (``normalizer=`` or ``weights=``).

    Example:
        >>> import stain_transforms
        >>> from stain_transforms.models import StainGANGenerator
        >>> core = stain_transforms.StainGANNormalize(StainGANGenerator(ngf=8, n_blocks=1), tile_size=64, overlap=16)
        >>> StainGANNormalize(normalizer=core).normalizer is core
        True
    """

    core = "StainGANNormalize"


class _Normalized(MapTransform):
    """Base of the normalizer dictionary transforms: the array transform on each key."""

    backend = _BACKEND
    array_transform: type[_Normalize] = _Normalize

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
    """A normalizer dictionary transform that can also load its model by ``weights=``."""

    def __init__(
        self,
        keys: KeysCollection,
        normalizer: StainTransform | None = None,
        weights: str | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.transform = self.array_transform(normalizer=normalizer, weights=weights)


class ReinhardNormalized(_Normalized):
    """:class:`ReinhardNormalize` on the entries ``keys`` of a dictionary.

    Example:
        >>> import stain_transforms
        >>> from stain_transforms.testing import synthetic_tissue
        >>> tile = torch.from_numpy(synthetic_tissue(64, seed=1)).permute(2, 0, 1)
        >>> fitted = stain_transforms.ReinhardNormalize().fit(synthetic_tissue(64, seed=0))
        >>> out = ReinhardNormalized(keys="image", normalizer=fitted)({"image": tile, "label": 0})
        >>> out["image"].shape, out["label"]
        (torch.Size([3, 64, 64]), 0)
    """

    array_transform = ReinhardNormalize


class MacenkoNormalized(_Normalized):
    """:class:`MacenkoNormalize` on the entries ``keys`` of a dictionary.

    Example:
        >>> import stain_transforms
        >>> from stain_transforms.testing import synthetic_tissue
        >>> tile = torch.from_numpy(synthetic_tissue(64, seed=1)).permute(2, 0, 1)
        >>> fitted = stain_transforms.MacenkoNormalize().fit(synthetic_tissue(64, seed=0))
        >>> out = MacenkoNormalized(keys="image", normalizer=fitted)({"image": tile, "label": 0})
        >>> out["image"].shape, out["label"]
        (torch.Size([3, 64, 64]), 0)
    """

    array_transform = MacenkoNormalize


class VahadaneNormalized(_Normalized):
    """:class:`VahadaneNormalize` on the entries ``keys`` of a dictionary.

    Example:
        >>> import stain_transforms
        >>> from stain_transforms.testing import synthetic_tissue
        >>> tile = torch.from_numpy(synthetic_tissue(64, seed=1)).permute(2, 0, 1)
        >>> fitted = stain_transforms.VahadaneNormalize().fit(synthetic_tissue(64, seed=0))
        >>> out = VahadaneNormalized(keys="image", normalizer=fitted)({"image": tile, "label": 0})
        >>> out["image"].shape, out["label"]
        (torch.Size([3, 64, 64]), 0)
    """

    array_transform = VahadaneNormalize


class StainNetNormalized(_ModelNormalized):
    """:class:`StainNetNormalize` on the entries ``keys`` of a dictionary.

    Example:
        >>> import stain_transforms
        >>> from stain_transforms.models import StainNet
        >>> transform = StainNetNormalized(keys="image", normalizer=stain_transforms.StainNetNormalize(StainNet()))
        >>> transform({"image": torch.full((3, 8, 8), 0.5)})["image"].shape
        torch.Size([3, 8, 8])
    """

    array_transform = StainNetNormalize


class StainGANNormalized(_ModelNormalized):
    """:class:`StainGANNormalize` on the entries ``keys`` of a dictionary.

    Example:
        >>> import stain_transforms
        >>> from stain_transforms.models import StainGANGenerator
        >>> core = stain_transforms.StainGANNormalize(StainGANGenerator(ngf=8, n_blocks=1), tile_size=64, overlap=16)
        >>> StainGANNormalized(keys=["image"], normalizer=core).keys
        ('image',)
    """

    array_transform = StainGANNormalize


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
        if not self._do_transform:
            return
        unit = self.R.uniform(-1.0, 1.0, size=(2, 3))
        self.params = {
            "factors": torch.as_tensor(1.0 + np.asarray(self.jitter.alpha) * unit[0], dtype=torch.float32)[None],
            "shifts": torch.as_tensor(np.asarray(self.jitter.beta) * unit[1], dtype=torch.float32)[None],
            "apply": torch.ones(1, dtype=torch.bool),
        }

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
