"""torchvision v2: every transform in v2.Compose, with tv_tensors, plain tensors, PIL and structured samples."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch
from _transforms import TRANSFORMS, as_form, as_numpy, assert_same_form, fitted_normalizer, make_transform
from torchvision import tv_tensors
from torchvision.transforms import v2

import stain_transforms
from stain_transforms import HEDJitter
from stain_transforms.testing import synthetic_tissue


@pytest.fixture(scope="module")
def hwc() -> np.ndarray:
    return synthetic_tissue(64, seed=31, stain_scale=1.2)


def _replay(transform: stain_transforms.StainTransform, x):
    """What the transform just did, done to x alone: the normalizer itself, or the jitter with its last draw."""
    if isinstance(transform, HEDJitter):
        return transform.apply_params(x, transform.last_params)
    return transform(x)


@pytest.mark.parametrize("name", TRANSFORMS)
def test_inputs_keep_their_type_in_compose(name, hwc):
    transform = make_transform(name)
    pipeline = v2.Compose([transform])
    for form in ("tv_tensors.Image", "tensor CHW uint8", "PIL"):
        x = as_form(hwc, form)
        out = pipeline(x)
        assert_same_form(out, x)
        # The result is what the transform does to a plain tensor or array of the same image.
        plain = x.as_subclass(torch.Tensor) if isinstance(x, torch.Tensor) else np.asarray(x)
        expected = _replay(transform, plain)
        np.testing.assert_array_equal(as_numpy(out), as_numpy(expected))
        assert not np.array_equal(as_numpy(out), as_numpy(plain))


@pytest.mark.parametrize("name", TRANSFORMS)
def test_dict_sample_changes_only_the_image(name, hwc):
    transform = make_transform(name)
    chw = torch.from_numpy(hwc).permute(2, 0, 1).contiguous()
    mask = tv_tensors.Mask((chw[0] < 128).to(torch.uint8))
    boxes = tv_tensors.BoundingBoxes([[2, 3, 20, 30]], format="XYXY", canvas_size=(64, 64))
    sample = {"image": tv_tensors.Image(chw), "mask": mask, "boxes": boxes, "label": 3, "name": "tile"}
    out = v2.Compose([transform])(sample)
    assert out["mask"] is mask and out["boxes"] is boxes and out["label"] == 3 and out["name"] == "tile"
    expected = _replay(transform, chw)
    assert torch.equal(out["image"].as_subclass(torch.Tensor), expected)


@pytest.mark.parametrize("name", TRANSFORMS)
def test_tuple_samples(name, hwc):
    transform = make_transform(name)
    image, label = PIL.Image.fromarray(hwc), torch.tensor(1)
    out_image, out_label = transform((image, label))
    assert out_label is label
    np.testing.assert_array_equal(np.asarray(out_image), _replay(transform, hwc))
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
