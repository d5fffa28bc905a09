"""torchvision v2: every transform in v2.Compose, with tv_tensors, plain tensors, PIL and structured samples."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch
from _transforms import NORMALIZERS, fitted_normalizer
from torchvision import tv_tensors
from torchvision.transforms import v2

import stain_transforms
import stain_transforms.models
from stain_transforms import HEDJitter
from stain_transforms.testing import synthetic_tissue


def every_transform() -> list[str]:
    return [*NORMALIZERS, "HEDJitter"]


def make(name: str) -> stain_transforms.StainTransform:
    if name == "HEDJitter":
        return HEDJitter.strong(generator=torch.Generator().manual_seed(0))
    return fitted_normalizer(name)


@pytest.fixture(scope="module")
def hwc() -> np.ndarray:
    return synthetic_tissue(64, seed=31, stain_scale=1.2)


def _replay(transform: stain_transforms.StainTransform, x, params=None):
    """What the transform does to x alone: the normalizer itself, or the jitter with the same draw."""
    if isinstance(transform, HEDJitter):
        return transform.apply_params(x, params)
    return transform(x)


@pytest.mark.parametrize("name", every_transform())
def test_inputs_keep_their_type_in_compose(name, hwc):
    transform = make(name)
    pipeline = v2.Compose([transform])
    chw = torch.from_numpy(hwc).permute(2, 0, 1).contiguous()
    image = tv_tensors.Image(chw)
    out = pipeline(image)
    assert type(out) is tv_tensors.Image and out.dtype == torch.uint8 and out.shape == image.shape
    assert not torch.equal(out.as_subclass(torch.Tensor), chw)
    params = getattr(transform, "last_params", None)
    assert torch.equal(out.as_subclass(torch.Tensor), _replay(transform, chw, params))

    plain = pipeline(chw)
    assert type(plain) is torch.Tensor and torch.equal(
        plain, _replay(transform, chw, getattr(transform, "last_params", None))
    )

    pil = pipeline(PIL.Image.fromarray(hwc))
    assert isinstance(pil, PIL.Image.Image) and pil.mode == "RGB"
    expected = _replay(transform, hwc, getattr(transform, "last_params", None))
    np.testing.assert_array_equal(np.asarray(pil), expected)


@pytest.mark.parametrize("name", every_transform())
def test_dict_sample_changes_only_the_image(name, hwc):
    transform = make(name)
    chw = torch.from_numpy(hwc).permute(2, 0, 1).contiguous()
    mask = tv_tensors.Mask((chw[0] < 128).to(torch.uint8))
    boxes = tv_tensors.BoundingBoxes([[2, 3, 20, 30]], format="XYXY", canvas_size=(64, 64))
    sample = {"image": tv_tensors.Image(chw), "mask": mask, "boxes": boxes, "label": 3, "name": "tile"}
    out = v2.Compose([transform])(sample)
    assert out["mask"] is mask and out["boxes"] is boxes and out["label"] == 3 and out["name"] == "tile"
    expected = _replay(transform, chw, getattr(transform, "last_params", None))
    assert torch.equal(out["image"].as_subclass(torch.Tensor), expected)


@pytest.mark.parametrize("name", every_transform())
def test_tuple_samples(name, hwc):
    transform = make(name)
    image, label = PIL.Image.fromarray(hwc), torch.tensor(1)
    out_image, out_label = transform((image, label))
    assert out_label is label
    np.testing.assert_array_equal(
        np.asarray(out_image), _replay(transform, hwc, getattr(transform, "last_params", None))
    )
    # Without an explicit image, the first plain tensor is the image; a later plain tensor is left alone.
    chw = torch.from_numpy(hwc).permute(2, 0, 1).contiguous()
    target = torch.zeros(64, 64, dtype=torch.long)
    out_image, out_target = transform(chw, target)
    assert out_target is target and not torch.equal(out_image, chw)


def test_compose_with_torchvision_transforms(hwc):
    normalizer = fitted_normalizer("MacenkoNormalize")
    pipeline = v2.Compose(
        [
            v2.RandomCrop(48),
            normalizer,
            HEDJitter.light(p=0.5),
            v2.ToDtype(torch.float32, scale=True),
        ]
    )
    chw = torch.from_numpy(hwc).permute(2, 0, 1).contiguous()
    boxes = tv_tensors.BoundingBoxes([[10, 10, 40, 40]], format="XYXY", canvas_size=(64, 64))
    out = pipeline({"image": tv_tensors.Image(chw), "boxes": boxes, "label": 0})
    assert out["image"].shape == (3, 48, 48) and out["image"].dtype == torch.float32
    assert out["image"].min() >= 0 and out["image"].max() <= 1
    assert out["boxes"].canvas_size == (48, 48) and out["label"] == 0


def test_paired_images_share_one_draw(hwc):
    # Two explicit images in one sample (e.g. a registered pair) get the same jitter, as torchvision does.
    chw = torch.from_numpy(hwc).permute(2, 0, 1).contiguous()
    jitter = HEDJitter.strong(generator=torch.Generator().manual_seed(1))
    first, second = jitter(tv_tensors.Image(chw), tv_tensors.Image(chw.clone()))
    assert torch.equal(first, second) and not torch.equal(first.as_subclass(torch.Tensor), chw)


def test_batched_tv_image_gets_per_image_draws():
    batch = torch.stack([torch.from_numpy(synthetic_tissue(48, seed=s)).permute(2, 0, 1) for s in range(4)])
    jitter = HEDJitter.strong(generator=torch.Generator().manual_seed(2))
    out = v2.Compose([jitter])(tv_tensors.Image(batch))
    assert type(out) is tv_tensors.Image and out.shape == batch.shape
    assert jitter.last_params["factors"].shape == (4, 3)
    assert torch.equal(out.as_subclass(torch.Tensor), jitter.apply_params(batch, jitter.last_params))


def test_transforms_leave_other_tv_tensors_alone_even_alone():
    mask = tv_tensors.Mask(torch.ones(64, 64, dtype=torch.uint8))
    assert HEDJitter.strong()(mask) is mask
