"""What the transform tests share: the core transforms, built once per process (tests must not modify them),
the forms an image may take, and the check that a transform gives back the form it was given."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np
import PIL.Image
import pytest
import torch
from torchvision import tv_tensors

import stain_transforms
import stain_transforms.models
from stain_transforms.testing import synthetic_tissue

NORMALIZERS = ["ReinhardNormalize", "MacenkoNormalize", "VahadaneNormalize", "StainNetNormalize", "StainGANNormalize"]
TRANSFORMS = (*NORMALIZERS, "HEDJitter")  # every public transform

# The model-based normalizers get untrained but deterministic models (adapters only pass data through), with
# these settings unless a test asks for others: "conv" spares StainNet the 6 s lookup-table build.
MODEL_SETTINGS = {"StainNetNormalize": {"backend": "conv"}, "StainGANNormalize": {"tile_size": 64, "overlap": 16}}


@functools.cache
def _fitted(name: str, settings: tuple[tuple[str, Any], ...]) -> stain_transforms.StainTransform:
    klass = getattr(stain_transforms, name, None)
    if klass is None:
        raise LookupError(name)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        if name == "StainNetNormalize":
            return klass(stain_transforms.models.StainNet(), **dict(settings))
        if name == "StainGANNormalize":
            return klass(stain_transforms.models.StainGANGenerator(ngf=8, n_blocks=1), **dict(settings))
    return klass(**dict(settings)).fit([synthetic_tissue(64, seed=s) for s in range(3)])


def fitted_normalizer(name: str, **settings: Any) -> stain_transforms.StainTransform:
    """A ready core normalizer of each method (one object per name and settings: never modify it).

    ``settings`` are constructor arguments, over :data:`MODEL_SETTINGS` for the model-based normalizers.
    """
    try:
        return _fitted(name, tuple(sorted({**MODEL_SETTINGS.get(name, {}), **settings}.items())))
    except LookupError:
        pytest.skip(f"stain_transforms.{name} is not available")


def make_transform(name: str, seed: int = 0, **settings: Any) -> stain_transforms.StainTransform:
    """Any public transform: :func:`fitted_normalizer`, or a new ``HEDJitter.strong(p=1)`` drawing from ``seed``."""
    if name == "HEDJitter":
        return stain_transforms.HEDJitter.strong(p=1.0, generator=torch.Generator().manual_seed(seed), **settings)
    return fitted_normalizer(name, **settings)


# -- the forms of an image -------------------------------------------------------------------------


def _bchw(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


def _meta_tensor(images: np.ndarray) -> torch.Tensor:
    monai_data = pytest.importorskip("monai.data")
    return monai_data.MetaTensor(_bchw(images)[0], meta={"filename_or_obj": "tile.png"})


# Each form made from a (B, H, W, 3) uint8 stack: batch (B...) forms keep B, the others take the first image.
INPUT_FORMS: dict[str, Callable[[np.ndarray], Any]] = {
    "numpy HWC uint8": lambda images: images[0].copy(),
    "numpy HWC float32": lambda images: images[0].astype(np.float32) / 255,
    "numpy HWC float64": lambda images: images[0] / 255.0,
    "numpy CHW uint8": lambda images: np.ascontiguousarray(images[0].transpose(2, 0, 1)),  # MONAI's layout
    "tensor CHW uint8": lambda images: _bchw(images)[0],
    "tensor BCHW uint8": _bchw,
    "tensor CHW float32": lambda images: _bchw(images)[0].to(torch.float32) / 255,
    "tensor BCHW float32": lambda images: _bchw(images).to(torch.float32) / 255,
    "tensor BCHW float64": lambda images: _bchw(images).to(torch.float64) / 255,
    "PIL": lambda images: PIL.Image.fromarray(images[0]),
    "tv_tensors.Image": lambda images: tv_tensors.Image(_bchw(images)[0]),
    "MetaTensor": _meta_tensor,
}
# The forms the core transforms take (channel-first arrays and MetaTensors are for the MONAI adapter).
CORE_FORMS = tuple(form for form in INPUT_FORMS if form not in ("numpy CHW uint8", "MetaTensor"))


def as_form(images: np.ndarray, form: str, device: str | torch.device = "cpu") -> Any:
    """``images`` ((H, W, 3) or (B, H, W, 3) uint8) in one of :data:`INPUT_FORMS`; tensors go to ``device``."""
    images = np.asarray(images)
    x = INPUT_FORMS[form](images[None] if images.ndim == 3 else images)
    return x.to(device) if isinstance(x, torch.Tensor) else x


def as_numpy(x: Any) -> np.ndarray:
    """The values of an array, tensor (any subclass or device) or PIL image, as a numpy array."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().as_subclass(torch.Tensor)
        return (x.to(torch.int32) if x.dtype == torch.uint16 else x).numpy()  # numpy has no torch.uint16
    return np.asarray(x)


def assert_same_form(out: Any, given: Any) -> None:
    """Same type in, same out: the type, shape, dtype and device of ``given``; float values finite, in [0, 1]."""
    assert type(out) is type(given), f"{type(given).__name__} in, {type(out).__name__} out"
    if isinstance(given, PIL.Image.Image):
        assert out.size == given.size and out.mode == given.mode
    else:
        assert tuple(out.shape) == tuple(given.shape)
    if isinstance(given, np.ndarray):  # the byte order of a big-endian input need not be kept
        assert out.dtype.newbyteorder("=") == given.dtype.newbyteorder("=")
    elif isinstance(given, torch.Tensor):
        assert out.dtype == given.dtype and out.device == given.device
    values = as_numpy(out)
    if values.dtype.kind == "f":
        assert np.isfinite(values).all(), "non-finite output"
        assert values.min() >= 0.0 and values.max() <= 1.0, "output outside [0, 1]"
