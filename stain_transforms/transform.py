"""The base of every stain_transforms transform: a ``torchvision.transforms.v2.Transform``.

Subclasses implement :meth:`StainTransform.apply_batch` on a (B, 3, H, W) float batch in [0, 1].
This class does the rest: input validation, type conversion back to what the user gave, and the
v2 conventions (dicts and tuples pass through with only their image entries changed), except that a
plain list of images is a set of images and every one is transformed (see :class:`StainTransform`).
"""

from __future__ import annotations

import collections
import copy
import hashlib
import json
import os
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import PIL.Image
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2.functional import is_pure_tensor

from .conversion import is_well_formed, to_batch

# The containers a sample is made of, as torchvision's transforms walk them; anything else is one entry.
_MAPPINGS = (dict, collections.OrderedDict, collections.defaultdict)
_SEQUENCES = (list, tuple)


def _is_plain_array(x: Any) -> bool:
    return isinstance(x, np.ndarray) or is_pure_tensor(x)


def _is_image(x: Any) -> bool:
    return isinstance(x, (tv_tensors.Image, PIL.Image.Image)) or _is_plain_array(x)


def _is_container(x: Any) -> bool:
    is_namedtuple = isinstance(x, tuple) and hasattr(type(x), "_fields")
    return type(x) in _MAPPINGS or type(x) in _SEQUENCES or is_namedtuple


def _entries(sample: Any) -> list[Any]:
    """The leaves of a (nested) sample, depth first: the order torchvision's transforms see them in."""
    if not _is_container(sample):
        return [sample]
    children = sample.values() if isinstance(sample, dict) else sample
    return [entry for child in children for entry in _entries(child)]


def _rebuild(sample: Any, entries: Iterator[Any]) -> Any:
    """``sample`` with its leaves replaced, in :func:`_entries` order, by ``entries``."""
    if not _is_container(sample):
        return next(entries)
    if isinstance(sample, dict):
        out = copy.copy(sample)  # keeps an OrderedDict's order, a defaultdict's factory
        for key, value in sample.items():
            out[key] = _rebuild(value, entries)
        return out
    items = [_rebuild(value, entries) for value in sample]
    return type(sample)(items) if type(sample) in _SEQUENCES else type(sample)(*items)  # namedtuple: by position


def _image_mask(entries: list[Any]) -> list[bool]:
    """Which entries are images: ``tv_tensors.Image`` and PIL images always; plain tensors and numpy
    arrays only when the sample has no explicit image (or video), and then only the first one, as
    torchvision decides. Masks, boxes, labels and other tv_tensors are not images."""
    explicit_image = any(isinstance(x, (tv_tensors.Image, tv_tensors.Video, PIL.Image.Image)) for x in entries)
    first_plain_pending = not explicit_image
    mask = []
    for x in entries:
        if isinstance(x, (tv_tensors.Image, PIL.Image.Image)):
            mask.append(True)
        elif _is_plain_array(x) and first_plain_pending:
            first_plain_pending = False
            mask.append(True)
        else:
            mask.append(False)
    return mask


def _is_image_list(sample: Any) -> bool:
    """A plain ``list`` (not a tuple) whose entries are all images: mapped over, image by image."""
    return type(sample) is list and len(sample) > 0 and all(_is_image(x) for x in sample)


def _reject_paths(sample: Any) -> None:
    """Raise for a file name (or a list of them) given where images are expected."""
    paths = sample if type(sample) in _SEQUENCES and len(sample) > 0 else [sample]
    if all(isinstance(x, (str, bytes, os.PathLike)) for x in paths):
        raise ValueError(
            f"expected an image (numpy array, tensor or PIL image), got the file name {paths[0]!r}: read the "
            "file first, e.g. with PIL.Image.open(path).convert('RGB') or stain_transforms.files.read_rgb(path)"
        )


def _is_splittable_cpu_batch(x: Any) -> bool:
    """A well-formed (B, H, W, 3) array or plain (B, 3, H, W) CPU tensor of B > 1 images.

    Malformed batches are not split, so that their error describes the batch as the caller gave it.
    """
    on_cpu = isinstance(x, np.ndarray) or (type(x) is torch.Tensor and x.device.type == "cpu")
    return on_cpu and is_well_formed(x) and x.ndim == 4 and len(x) > 1


_WARNED_DETACHED: set[type] = set()


def _warn_detached(klass: type, reason: str) -> None:
    """Warn, once per class, that a result does not carry gradients back to a tracked input."""
    if klass in _WARNED_DETACHED:
        return
    _WARNED_DETACHED.add(klass)
    warnings.warn(
        f"{klass.__name__} returns a result detached from the autograd graph of its input ({reason}); "
        "gradients do not flow back through it",
        UserWarning,
        stacklevel=4,
    )


class StainTransform(v2.Transform):
    """A v2 transform that accepts numpy HWC, CHW/BCHW tensors and PIL images, and returns the same.

    What a call transforms:

    - **one image** (numpy array, tensor, PIL image) or a batch: all of it;
    - **a list of images** ``[img1, img2, ...]`` given as the whole input (a ``list`` whose entries
      are all images): every image, each as in its own call (a random transform draws for each),
      returned as a list of the same types;
    - **a sample** (a dict, a tuple such as ``(image, label)``, a list with other entries, nested):
      ``tv_tensors.Image`` and PIL images are transformed; plain tensors and numpy arrays are treated
      as images only when the sample has no explicit image, and then only the first one, as
      torchvision does. Masks, boxes, labels and other entries pass through untouched;
    - **a file name** (``str`` or ``Path``, or a list of them): ``ValueError``; read the image first.

    A batch on the CPU is worked one image at a time (see :meth:`transform`); a random transform that
    draws one set of parameters per image in ``make_params`` overrides :meth:`image_params` so that
    each image gets its own.

    Example:
        A transform that inverts colours: only :meth:`apply_batch` is written, the rest is inherited.

        >>> class Invert(StainTransform):
        ...     def apply_batch(self, batch, params):
        ...         return 1.0 - batch
        >>> Invert()(np.zeros((2, 2, 3), np.uint8))[0, 0]
        array([255, 255, 255], dtype=uint8)
        >>> sample = {"image": tv_tensors.Image(torch.zeros(3, 2, 2)), "mask": torch.zeros(2, 2), "label": 3}
        >>> out = Invert()(sample)
        >>> out["image"].max().item(), out["mask"].max().item(), out["label"]
        (1.0, 0.0, 3)
        >>> [image[0, 0].tolist() for image in Invert()([np.zeros((2, 2, 3), np.uint8)] * 2)]  # a list: every image
        [[255, 255, 255], [255, 255, 255]]
        >>> image, label = Invert()((np.zeros((2, 2, 3), np.uint8), np.zeros(1)))  # a tuple sample: its image
        >>> image[0, 0].tolist(), label.tolist()
        ([255, 255, 255], [0.0])
    """

    #: Whether :meth:`apply_batch` also takes uint8 batches (see there). A transform that converts
    #: block by block, in cache, saves the image-sized float copies of the input and the result.
    accepts_uint8: bool = False
    #: Whether a CPU batch is worked one image at a time (see :meth:`transform`). A transform without
    #: float intermediates (a lookup table) sets it to False and takes the batch in one call.
    splits_cpu_batches: bool = True
    #: Whether :meth:`apply_batch` is differentiable on a float batch. Where it is not, a float tensor
    #: that autograd tracks is detached (with a warning, once per class) instead of failing in backward.
    differentiable: bool = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # torch.save(transform) files load with torch.load's default weights_only=True: every transform
        # class is an allowed global (the models allow their layers). Portable files: StainNormalizer.save,
        # save_pretrained, or state_dict.
        torch.serialization.add_safe_globals([cls])

    def forward(self, *inputs: Any) -> Any:
        sample = inputs if len(inputs) > 1 else inputs[0]
        if _is_image(sample):
            # One bare image, the usual call inside a dataset: walking the sample would cost as much
            # as normalizing a small tile, and it does nothing here. Same result as the general path.
            self.check_inputs([sample])
            return self.transform(sample, self.make_params([sample]))
        _reject_paths(sample)
        return self.transform_sample(sample)

    def transform_sample(self, sample: Any, params: dict[str, Any] | None = None) -> Any:
        """Transform the images of ``sample`` (nested dicts, lists and tuples; see the class docstring).

        ``params`` are parameters to replay; by default :meth:`make_params` makes them for this call.
        The other entries are returned as they are, in a sample of the same structure.

        Example:
            >>> class Invert(StainTransform):
            ...     def apply_batch(self, batch, params):
            ...         return 1.0 - batch
            >>> image, label = Invert().transform_sample((torch.zeros(3, 2, 2), torch.zeros(1)))
            >>> image.max().item(), label.max().item()
            (1.0, 0.0)
        """
        if _is_image_list(sample):
            # A list of images is a set of images, each transformed as in its own call (a fresh
            # draw each for a random transform; given ``params`` apply to every image).
            if params is not None:
                return [self.transform(image, params) for image in sample]
            outputs = []
            for image in sample:
                self.check_inputs([image])
                outputs.append(self.transform(image, self.make_params([image])))
            return outputs
        entries = _entries(sample)
        is_image = _image_mask(entries)
        if params is None:
            self.check_inputs(entries)
            params = self.make_params([x for x, image in zip(entries, is_image) if image])
        outputs = [self.transform(x, params) if image else x for x, image in zip(entries, is_image)]
        return _rebuild(sample, iter(outputs))

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        """Validate ``inpt`` (an image or a batch), apply :meth:`apply_batch`, and return the result as its type.

        A float tensor that autograd tracks (``requires_grad``) keeps its graph where the transform's
        maths is differentiable, so gradients flow back to it. Where it is not (see
        :attr:`differentiable`), or where the path taken does not carry gradients, the result is
        detached, with a warning, once per class.
        """
        if not (isinstance(inpt, torch.Tensor) and inpt.requires_grad and torch.is_grad_enabled()):
            return self._transform(inpt, params)
        if not self.differentiable:
            _warn_detached(type(self), "its maths is not differentiable")
            return self._transform(inpt.detach(), params)
        out = self._transform(inpt, params)
        if not out.requires_grad:
            _warn_detached(type(self), "this input took a path without gradients")
        return out

    def _transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        # On the CPU a batch goes through one image at a time, with the same result: every float
        # intermediate of a whole batch is tens of MB, out of cache, and each fresh one costs a page
        # fault per 4 KiB. A plain array is split before its conversion to float; other batches
        # (tv_tensors, MetaTensor) after it.
        if self.splits_cpu_batches and _is_splittable_cpu_batch(inpt):
            images = [self.transform(image, self.image_params(params, i, len(inpt))) for i, image in enumerate(inpt)]
            return np.stack(images) if isinstance(inpt, np.ndarray) else torch.stack(images)
        batch, restore = to_batch(inpt, keep_uint8=self.accepts_uint8)
        if self.splits_cpu_batches and batch.device.type == "cpu" and len(batch) > 1:
            count = len(batch)
            images = [self.apply_batch(batch[i : i + 1], self.image_params(params, i, count)) for i in range(count)]
            return restore(torch.cat(images))
        return restore(self.apply_batch(batch, params))

    def content_hash(self) -> str:
        """Hex sha256 of what decides this transform's output: its class, settings and state.

        The settings are :attr:`config` (where the class has one); the state is ``state_dict()``:
        fitted statistics, model weights. Two transforms with equal hashes transform alike (up to
        their random draws, which are not hashed); a re-fit on other references changes the hash, an
        identical fit does not, in any process. For keying caches, e.g. MONAI's ``PersistentDataset``
        (:func:`stain_transforms.monai.hash_transform`). ``pickle.dumps`` is no such key: a pickled
        tensor records the memory address of its storage.

        Example:
            >>> from stain_transforms import ReinhardNormalize
            >>> from stain_transforms.testing import synthetic_tissue
            >>> first = ReinhardNormalize().fit(synthetic_tissue(64, seed=0))
            >>> second = ReinhardNormalize().fit(synthetic_tissue(64, seed=0))
            >>> other = ReinhardNormalize().fit(synthetic_tissue(64, seed=1))
            >>> first.content_hash() == second.content_hash(), first.content_hash() == other.content_hash()
            (True, False)
        """
        digest = hashlib.sha256(f"{type(self).__module__}.{type(self).__qualname__}\n".encode())
        digest.update(json.dumps(getattr(self, "config", None), sort_keys=True, default=repr).encode())
        for name, value in sorted(self.state_dict().items()):
            tensor = value.detach().to("cpu").contiguous().reshape(-1)
            digest.update(f"\n{name}:{tensor.dtype}:{tuple(value.shape)}\n".encode())
            digest.update(tensor.view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()

    def image_params(self, params: dict[str, Any], index: int, batch_size: int) -> dict[str, Any]:
        """The parameters for image ``index`` of a batch of ``batch_size`` that is split into images.

        The default shares the call's parameters; a random transform that draws per image selects.
        """
        return params

    def apply_batch(self, batch: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
        """Transform a validated (B, 3, H, W) float batch in [0, 1]; must not modify ``batch``.

        Where :attr:`accepts_uint8` is set, uint8 input arrives as it is, a (B, 3, H, W) uint8 view of
        the caller's data, and the result must be uint8 too. ``params`` is what ``make_params``
        returned for this call (empty unless overridden). See the class example.
        """
        raise NotImplementedError
