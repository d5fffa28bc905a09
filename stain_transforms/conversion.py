"""Conversion between the image types users pass and the (B, 3, H, W) batches transforms work on.

The one module that knows about dtypes, layouts, PIL images, tv_tensors and MONAI MetaTensors (it
does no file I/O: that is :mod:`stain_transforms.files`).

Every transform works internally on a (B, 3, H, W) float tensor in [0, 1]. :func:`to_batch` turns
whatever the user gave into that form, after checking it, and returns a function that turns a result
back into the user's type, layout, dtype and device ("same in, same out"). The user's data is never
modified: the batch is a fresh tensor (or, for transforms that ask for it, a read-only view of uint8
input).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import PIL.Image
import torch

from ._kernels.levels import levels_to_unit, unit_to_channel_last_uint8_, unit_to_dtype_

MIN_SIDE = 2
FLOAT_TOLERANCE = 1e-3  # float images may stray this far outside [0, 1] (rounding); they are clipped

ImageLike = Any  # np.ndarray | torch.Tensor | PIL.Image.Image
Restore = Callable[[torch.Tensor], ImageLike]


def _describe(x: Any) -> str:
    if isinstance(x, (np.ndarray, torch.Tensor)):
        return f"{type(x).__name__} of shape {tuple(x.shape)} and dtype {x.dtype}"
    return type(x).__name__


def _check_channels(channels: int, x: Any, hint: str) -> None:
    if channels == 3:
        return
    if channels == 1:
        raise ValueError(f"grayscale input is not supported ({_describe(x)}); stain methods need RGB. {hint}")
    if channels == 4:
        raise ValueError(f"RGBA input is not supported ({_describe(x)}); drop the alpha channel first. {hint}")
    raise ValueError(f"expected 3 colour channels, got {channels} ({_describe(x)}). {hint}")


def _check_size(height: int, width: int, x: Any) -> None:
    if height * width == 0 or 0 in x.shape:
        raise ValueError(f"empty image ({_describe(x)}): every side must be at least {MIN_SIDE} pixels")
    if min(height, width) < MIN_SIDE:
        raise ValueError(f"image too small ({_describe(x)}): every side must be at least {MIN_SIDE} pixels")


def _check_values(batch: torch.Tensor, integer_input: bool, x: Any) -> torch.Tensor:
    if integer_input:
        return batch
    if not torch.isfinite(batch).all():
        raise ValueError(f"input contains NaN or infinite values ({_describe(x)}); clean it before normalizing")
    low, high = batch.min().item(), batch.max().item()
    if low < -FLOAT_TOLERANCE or high > 1 + FLOAT_TOLERANCE:
        raise ValueError(
            f"float input must lie in [0, 1], got values in [{low:.4g}, {high:.4g}] ({_describe(x)}); "
            "divide 0-255 data by 255, or pass uint8"
        )
    return batch.clamp(0.0, 1.0)


def _working_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _from_uint8_or_float(t: torch.Tensor, x: Any, keep_uint8: bool) -> tuple[torch.Tensor, bool]:
    if t.dtype == torch.uint8:
        return (t if keep_uint8 else levels_to_unit(t)), True
    if t.dtype.is_floating_point:
        return t.to(_working_dtype(t.dtype), copy=True, memory_format=torch.contiguous_format), False
    raise ValueError(f"unsupported dtype {t.dtype} ({_describe(x)}); use uint8, or float in [0, 1]")


def _owned(result: torch.Tensor, given: torch.Tensor) -> torch.Tensor:
    """``result``, copied if it still shares memory with ``given`` (a view of the caller's data)."""
    if result.untyped_storage().data_ptr() == given.untyped_storage().data_ptr():
        return result.clone()
    return result


def _tensor_to_batch(x: torch.Tensor, keep_uint8: bool) -> tuple[torch.Tensor, Restore]:
    hint = "Tensors must be channel-first: (3, H, W) or (B, 3, H, W)."
    if x.ndim == 2:
        _check_channels(1, x, hint)
    if x.ndim not in (3, 4):
        raise ValueError(f"expected a (3, H, W) or (B, 3, H, W) tensor, got {_describe(x)}")
    channels = x.shape[-3]
    if channels != 3 and x.shape[-1] in (3, 4) and channels not in (1, 4):
        raise ValueError(f"tensor looks channel-last ({_describe(x)}). {hint} Use x.permute(2, 0, 1).")
    _check_channels(channels, x, hint)
    _check_size(x.shape[-2], x.shape[-1], x)
    # A float tensor that autograd tracks keeps its graph: the batch is computed from it out of place,
    # so a transform whose maths is differentiable passes gradients back to the caller's tensor.
    keep_graph = torch.is_grad_enabled() and x.requires_grad
    given = (x if keep_graph else x.detach()).reshape(-1, *x.shape[-3:])
    batch, integer_input = _from_uint8_or_float(given, x, keep_uint8)
    batch = _check_values(batch, integer_input, x)
    shape, dtype = x.shape, x.dtype

    def restore(out: torch.Tensor) -> torch.Tensor:
        if out.dtype == torch.uint8:  # a result computed on the uint8 levels (keep_uint8)
            result = _owned(out, given).contiguous().reshape(shape)
        elif keep_graph and out.requires_grad:
            result = out.clamp(0.0, 1.0).to(dtype).reshape(shape)  # out of place: autograd may need out
        else:
            result = unit_to_dtype_(out, dtype).reshape(shape)
        # Tensor subclasses (MONAI MetaTensor, tv_tensors.Image) keep their type and metadata.
        if type(x) is not torch.Tensor:
            result = _wrap_like(result, x)
        return result

    return batch, restore


def _wrap_like(result: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    try:
        from torchvision import tv_tensors

        if isinstance(like, tv_tensors.TVTensor):
            return tv_tensors.wrap(result, like=like)
    except ImportError:  # pragma: no cover - torchvision is a core dependency
        pass
    if hasattr(like, "meta") and hasattr(like, "applied_operations"):  # MONAI MetaTensor
        return type(like)(result, meta=dict(like.meta), applied_operations=list(like.applied_operations))
    return result.as_subclass(type(like))


def _numpy_to_batch(x: np.ndarray, keep_uint8: bool) -> tuple[torch.Tensor, Restore]:
    hint = "NumPy arrays must be channel-last: (H, W, 3) or (B, H, W, 3)."
    if x.ndim == 2:
        _check_channels(1, x, hint)
    if x.ndim not in (3, 4):
        raise ValueError(f"expected an (H, W, 3) or (B, H, W, 3) array, got {_describe(x)}")
    channels = x.shape[-1]
    if channels != 3 and x.shape[-3] in (3, 4) and channels not in (1, 4):
        raise ValueError(f"array looks channel-first ({_describe(x)}). {hint} Use np.moveaxis(x, 0, -1).")
    _check_channels(channels, x, hint)
    if x.dtype != np.uint8 and not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"unsupported dtype {x.dtype} ({_describe(x)}); use uint8, or float in [0, 1]")
    _check_size(x.shape[-3], x.shape[-2], x)
    # torch reads the array in place when it can: the conversion to float below always copies, so the
    # caller's array is never written to. Other arrays (read-only, strided, flipped, big-endian) are
    # first copied into a native-byte-order, C-ordered one.
    readable = x.flags.c_contiguous and x.flags.writeable and x.dtype.isnative
    array = x if readable else np.array(x, dtype=x.dtype.newbyteorder("="), order="C")
    t = torch.from_numpy(array).reshape(-1, *x.shape[-3:]).permute(0, 3, 1, 2)
    batch, integer_input = _from_uint8_or_float(t, x, keep_uint8)
    batch = _check_values(batch, integer_input, x)
    shape, dtype = x.shape, x.dtype

    def restore(out: torch.Tensor) -> np.ndarray:
        if out.dtype == torch.uint8:  # a result computed on the uint8 levels (keep_uint8)
            channel_last = _owned(out, t).cpu().permute(0, 2, 3, 1).contiguous()
        elif integer_input:
            channel_last = unit_to_channel_last_uint8_(out)
        else:
            channel_last = unit_to_dtype_(out.permute(0, 2, 3, 1).cpu().contiguous(), torch.float64)
        return channel_last.numpy().astype(dtype, copy=False).reshape(shape)

    return batch, restore


def _pil_to_batch(x: PIL.Image.Image, keep_uint8: bool) -> tuple[torch.Tensor, Restore]:
    if x.mode in ("L", "1", "I", "I;16", "F"):
        raise ValueError(f"grayscale PIL image (mode {x.mode!r}) is not supported; stain methods need RGB")
    if x.mode in ("RGBA", "LA", "P", "PA"):
        raise ValueError(f"PIL image mode {x.mode!r} is not supported; use image.convert('RGB') first")
    if x.mode != "RGB":
        raise ValueError(f"PIL image mode {x.mode!r} is not supported; use image.convert('RGB') first")
    batch, restore_array = _numpy_to_batch(np.asarray(x), keep_uint8)
    return batch, lambda out: PIL.Image.fromarray(restore_array(out))


def is_well_formed(x: Any) -> bool:
    """Whether ``x`` passes the shape, mode and dtype checks of :func:`to_batch`, without raising.

    An RGB PIL image; an (H, W, 3) or (B, H, W, 3) array or a (3, H, W) or (B, 3, H, W) tensor of uint8
    or float; every side at least ``MIN_SIDE``. Values (NaN, range) are not looked at. For fast paths
    that must leave any other input to :func:`to_batch`, whose error then names the problem.

    Example:
        >>> is_well_formed(np.zeros((4, 4, 3), np.uint8)), is_well_formed(np.zeros((3, 4, 4), np.uint8))
        (True, False)
    """
    if isinstance(x, PIL.Image.Image):
        return x.mode == "RGB" and min(x.size) >= MIN_SIDE
    if isinstance(x, np.ndarray):
        supported = x.dtype == np.uint8 or np.issubdtype(x.dtype, np.floating)
        return supported and x.ndim in (3, 4) and x.shape[-1] == 3 and min(x.shape[-3:-1]) >= MIN_SIDE
    if isinstance(x, torch.Tensor):
        supported = x.dtype == torch.uint8 or x.dtype.is_floating_point
        return supported and x.ndim in (3, 4) and x.shape[-3] == 3 and min(x.shape[-2:]) >= MIN_SIDE
    return False


def to_batch(x: ImageLike, keep_uint8: bool = False) -> tuple[torch.Tensor, Restore]:
    """Validate ``x`` and return ``(batch, restore)``.

    ``batch`` is a fresh (B, 3, H, W) float tensor in [0, 1] on ``x``'s device (float64 for float64
    input, float32 otherwise); ``restore(out)`` converts a batch of the same shape back to ``x``'s
    type, layout, dtype and device. ``restore`` may overwrite ``out``, which must be the transform's
    own result (``batch`` itself included), never a tensor the caller still holds. A float tensor that
    autograd tracks keeps its graph: ``batch`` is computed from it out of place, and ``restore`` works
    out of place on a result that autograd tracks.

    With ``keep_uint8``, uint8 input is not converted: ``batch`` is then a (B, 3, H, W) uint8 view of
    the caller's data (channel-last in memory for arrays and PIL images), which must not be written
    to, and ``restore`` also takes a uint8 result of the levels 0-255 (it copies one that still shares
    the caller's memory). This serves transforms that convert block by block, in cache.

    Raises:
        ValueError: naming the problem, for grayscale, RGBA, wrong layout, unsupported dtype,
            NaN/inf, float values outside [0, 1], or a side shorter than 2 pixels.

    Example:
        >>> img = np.full((4, 4, 3), 200, dtype=np.uint8)
        >>> batch, restore = to_batch(img)
        >>> tuple(batch.shape), restore(batch).dtype
        ((1, 3, 4, 4), dtype('uint8'))
    """
    if isinstance(x, torch.Tensor):
        return _tensor_to_batch(x, keep_uint8)
    if isinstance(x, np.ndarray):
        return _numpy_to_batch(x, keep_uint8)
    if isinstance(x, PIL.Image.Image):
        return _pil_to_batch(x, keep_uint8)
    raise ValueError(f"unsupported input type {type(x).__name__}; pass a numpy array, a torch tensor or a PIL image")


def iter_batches(images: Any) -> Iterator[torch.Tensor]:
    """Yield (B, 3, H, W) float batches from one image, a list of images, or any iterable of them.

    Items of an iterable that are ``(image, label, ...)`` tuples (as a DataLoader yields) or dicts
    with an ``"image"`` key contribute their image.

    Example:
        >>> images = [np.zeros((4, 4, 3), np.uint8), torch.rand(2, 3, 4, 4)]
        >>> [tuple(batch.shape) for batch in iter_batches(images)]
        [(1, 3, 4, 4), (2, 3, 4, 4)]
        >>> loader = iter([(torch.rand(3, 4, 4), 0), {"image": torch.rand(3, 4, 4), "label": 1}])
        >>> [tuple(batch.shape) for batch in iter_batches(loader)]
        [(1, 3, 4, 4), (1, 3, 4, 4)]
    """
    if isinstance(images, (np.ndarray, torch.Tensor, PIL.Image.Image)):
        yield to_batch(images)[0]
        return
    if isinstance(images, (str, bytes)):
        raise ValueError("fit() takes images, not paths; load them first (e.g. with PIL.Image.open)")
    if not isinstance(images, Iterable):
        raise ValueError(f"cannot fit on {type(images).__name__}; pass an image, a list or an iterable of images")
    for item in images:
        if isinstance(item, dict):
            item = item["image"]
        elif isinstance(item, (tuple, list)) and not isinstance(images, (tuple, list)):
            item = item[0]
        yield to_batch(item)[0]
