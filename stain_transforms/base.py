"""The base of every stain_transforms transform: a ``torchvision.transforms.v2.Transform``.

Subclasses implement :meth:`StainTransform.apply_batch` on a (B, 3, H, W) float batch in [0, 1].
This class does the rest: input validation, type conversion back to what the user gave, and the
v2 conventions (dicts and tuples pass through with only their image entries changed).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import PIL.Image
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2._utils import is_pure_tensor

from .io import is_well_formed, to_batch


def _is_plain_array(x: Any) -> bool:
    return isinstance(x, np.ndarray) or is_pure_tensor(x)


def _is_image(x: Any) -> bool:
    return isinstance(x, (tv_tensors.Image, PIL.Image.Image)) or _is_plain_array(x)


def _is_splittable_cpu_batch(x: Any) -> bool:
    """A well-formed (B, H, W, 3) array or plain (B, 3, H, W) CPU tensor of B > 1 images.

    Malformed batches are not split, so that their error describes the batch as the caller gave it.
    """
    on_cpu = isinstance(x, np.ndarray) or (type(x) is torch.Tensor and x.device.type == "cpu")
    return on_cpu and is_well_formed(x) and x.ndim == 4 and len(x) > 1


class StainTransform(v2.Transform):
    """A v2 transform that accepts numpy HWC, CHW/BCHW tensors and PIL images, and returns the same.

    In a dict or tuple sample, ``tv_tensors.Image`` and PIL images are transformed; plain tensors and
    numpy arrays are treated as images only when the sample has no explicit image, and then only the
    first one, as torchvision does. Masks, boxes, labels and other entries pass through untouched.

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
    """

    _transformed_types = (tv_tensors.Image, PIL.Image.Image, _is_plain_array)

    #: Whether :meth:`apply_batch` also takes uint8 batches (see there). A transform that converts
    #: block by block, in cache, saves the image-sized float copies of the input and the result.
    accepts_uint8: bool = False

    def _needs_transform_list(self, flat_inputs: list[Any]) -> list[bool]:
        explicit_image = any(isinstance(x, (tv_tensors.Image, tv_tensors.Video, PIL.Image.Image)) for x in flat_inputs)
        first_plain_pending = not explicit_image
        needs = []
        for x in flat_inputs:
            if isinstance(x, (tv_tensors.Image, PIL.Image.Image)):
                needs.append(True)
            elif _is_plain_array(x) and first_plain_pending:
                first_plain_pending = False
                needs.append(True)
            else:
                needs.append(False)
        return needs

    def forward(self, *inputs: Any) -> Any:
        if len(inputs) == 1 and _is_image(inputs[0]):
            # One bare image, the usual call inside a dataset: v2's pytree round trip would cost as much
            # as normalizing a small tile, and it does nothing here. Same result as the general path.
            self.check_inputs(list(inputs))
            return self.transform(inputs[0], self.make_params(list(inputs)))
        return super().forward(*inputs)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        """Validate ``inpt`` (an image or a batch), apply :meth:`apply_batch`, and return the result as ``inpt``'s type."""
        # On the CPU a batch goes through one image at a time, with the same result: every float
        # intermediate of a whole batch is tens of MB, out of cache, and each fresh one costs a page
        # fault per 4 KiB (at 16 x 512 x 512, 1.2-1.7x slower per image). A plain array is split
        # before its conversion to float; other batches (tv_tensors, MetaTensor) after it.
        if _is_splittable_cpu_batch(inpt):
            images = [self.transform(image, self.image_params(params, i, len(inpt))) for i, image in enumerate(inpt)]
            return np.stack(images) if isinstance(inpt, np.ndarray) else torch.stack(images)
        batch, restore = to_batch(inpt, keep_uint8=self.accepts_uint8)
        if batch.device.type == "cpu" and len(batch) > 1:
            count = len(batch)
            return restore(torch.cat([self.apply_batch(batch[i : i + 1], self.image_params(params, i, count)) for i in range(count)]))
        return restore(self.apply_batch(batch, params))

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


def transform_class(name: str) -> type[StainTransform]:
    """The public stain_transforms transform class called ``name`` (how the adapters name their core).

    Example:
        >>> transform_class("HEDJitter").__name__
        'HEDJitter'
    """
    import stain_transforms  # the package imports this module: look it up at call time

    klass = getattr(stain_transforms, name, None)
    if not (isinstance(klass, type) and issubclass(klass, StainTransform)):
        raise ValueError(f"stain_transforms has no transform named {name!r}")
    return klass
