"""MONAI array and dictionary transforms: same output as the core, metadata kept, MONAI seeding."""

from __future__ import annotations

import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

monai = pytest.importorskip("monai")

from _transforms import NORMALIZERS, as_form, as_numpy, assert_same_form, fitted_normalizer
from monai.data import MetaTensor
from monai.transforms import Compose

import stain_transforms
import stain_transforms.models
import stain_transforms.monai as stm
from stain_transforms.testing import synthetic_tissue


@pytest.fixture(scope="module")
def chw() -> torch.Tensor:
    return torch.from_numpy(synthetic_tissue(64, seed=21, stain_scale=1.2)).permute(2, 0, 1).contiguous()


def _meta_image(chw: torch.Tensor) -> MetaTensor:
    image = MetaTensor(chw.clone(), meta={"filename_or_obj": "tile.png", "spacing": [0.5, 0.5]})
    image.push_applied_operation({"class": "LoadImage"})
    return image


def test_importing_the_package_does_not_import_monai():
    code = "import sys, stain_transforms; assert 'monai' not in sys.modules, 'monai imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("name", NORMALIZERS)
def test_array_transform_equals_core(name, chw):
    core = fitted_normalizer(name)
    transform = getattr(stm, name)(normalizer=core)
    assert not torch.equal(core(chw), chw)
    hwc = chw.permute(1, 2, 0).numpy()
    for form in ("tensor CHW uint8", "tensor CHW float32", "numpy CHW uint8", "MetaTensor"):
        x = as_form(hwc, form)
        out = transform(x)
        assert_same_form(out, x)
        # The core transform takes channel-first images as tensors.
        np.testing.assert_array_equal(as_numpy(out), as_numpy(core(torch.as_tensor(x).as_subclass(torch.Tensor))))


@pytest.mark.parametrize("name", NORMALIZERS)
def test_metatensor_keeps_its_metadata(name, chw):
    core = fitted_normalizer(name)
    image = _meta_image(chw)
    out = getattr(stm, name)(normalizer=core)(image)
    assert isinstance(out, MetaTensor)
    assert out.meta["filename_or_obj"] == "tile.png" and out.meta["spacing"] == [0.5, 0.5]
    assert [op["class"] for op in out.applied_operations] == ["LoadImage"]
    assert torch.equal(out.as_tensor(), core(chw))
    batch = MetaTensor(torch.stack([chw, chw]), meta={"id": 3})
    out = getattr(stm, name)(normalizer=core)(batch)
    assert isinstance(out, MetaTensor) and out.meta["id"] == 3 and out.shape == (2, 3, 64, 64)


@pytest.mark.parametrize("name", NORMALIZERS)
def test_dictionary_transform(name, chw):
    core = fitted_normalizer(name)
    dict_class = getattr(stm, name + "d")
    label = torch.zeros(1, 64, 64)
    data = {"image": _meta_image(chw), "label": label, "id": "a"}
    out = dict_class(keys="image", normalizer=core)(data)
    assert out["label"] is label and out["id"] == "a"
    assert isinstance(out["image"], MetaTensor) and out["image"].meta["filename_or_obj"] == "tile.png"
    assert torch.equal(out["image"].as_tensor(), core(chw))
    assert data["image"].meta["filename_or_obj"] == "tile.png" and torch.equal(data["image"].as_tensor(), chw)
    with pytest.raises(KeyError):
        dict_class(keys=["image", "other"], normalizer=core)(data)
    partial = dict_class(keys=["image", "other"], normalizer=core, allow_missing_keys=True)(data)
    assert "other" not in partial and torch.equal(partial["image"].as_tensor(), core(chw))


def test_normalizer_errors():
    with pytest.raises(ValueError, match="not fitted"):
        stm.ReinhardNormalize(normalizer=stain_transforms.ReinhardNormalize())
    with pytest.raises(ValueError, match="needs normalizer="):
        stm.MacenkoNormalize(normalizer=fitted_normalizer("ReinhardNormalize"))
    with pytest.raises(ValueError, match="needs normalizer="):
        stm.VahadaneNormalized(keys="image")
    with pytest.raises(ValueError, match="channel-first"):
        stm.ReinhardNormalize(normalizer=fitted_normalizer("ReinhardNormalize"))([1, 2, 3])


def test_float_0_255_images_are_refused_with_a_hint(chw):
    with pytest.raises(ValueError, match="divide 0-255 data by 255"):
        stm.ReinhardNormalize(normalizer=fitted_normalizer("ReinhardNormalize"))(chw.float())


def test_rand_hed_jitter_equals_core_with_its_draw(chw):
    transform = stm.RandHEDJitter(alpha=0.2, beta=0.1, prob=1.0)
    transform.set_random_state(0)
    out = transform(_meta_image(chw))
    expected = stain_transforms.HEDJitter(alpha=0.2, beta=0.1).apply_params(chw, transform.params)
    assert isinstance(out, MetaTensor) and out.meta["filename_or_obj"] == "tile.png"
    assert torch.equal(out.as_tensor(), expected)
    assert not torch.equal(expected, chw)
    factors, shifts = transform.params["factors"], transform.params["shifts"]
    assert ((factors - 1).abs() <= 0.2).all() and (shifts.abs() <= 0.1).all()


def test_rand_hed_jitter_follows_set_random_state(chw):
    def run(seed: int) -> list[torch.Tensor]:
        torch.manual_seed(seed + 50)  # the torch RNG must play no part
        transform = Compose([stm.RandHEDJitter(alpha=0.2, beta=0.1, prob=0.7)]).set_random_state(seed)
        return [transform(chw) for _ in range(6)]

    first, second, other = run(0), run(0), run(1)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert any(not torch.equal(a, c) for a, c in zip(first, other))


def test_rand_hed_jitter_probability(chw):
    transform = stm.HEDJitter(alpha=0.2, beta=0.1, prob=0.5)
    transform.set_random_state(1)
    changed = [not torch.equal(transform(chw), chw) for _ in range(40)]
    assert 5 < sum(changed) < 35
    assert torch.equal(stm.RandHEDJitter(prob=0.0)(chw), chw)


def test_rand_hed_jitter_dictionary_shares_one_draw(chw):
    transform = stm.RandHEDJitterd(keys=["image", "copy"], alpha=0.2, beta=0.1, prob=1.0).set_random_state(3)
    label = torch.ones(1, 64, 64)
    out = transform({"image": _meta_image(chw), "copy": chw.numpy().copy(), "label": label})
    assert isinstance(out["image"], MetaTensor) and isinstance(out["copy"], np.ndarray)
    np.testing.assert_array_equal(out["image"].as_tensor().numpy(), out["copy"])
    assert not torch.equal(out["image"].as_tensor(), chw)
    assert out["label"] is label
    again = stm.HEDJitterd(keys="image", alpha=0.2, beta=0.1, prob=1.0).set_random_state(3)({"image": chw})
    assert torch.equal(again["image"], out["image"].as_tensor())
    never = stm.RandHEDJitterd(keys="image", prob=0.0)({"image": chw})
    assert never["image"] is chw


def test_transforms_pickle(chw):
    transforms = [
        stm.MacenkoNormalized(keys="image", normalizer=fitted_normalizer("MacenkoNormalize")),
        stm.RandHEDJitterd(keys="image", prob=1.0).set_random_state(0),
    ]
    for transform in transforms:
        copy = pickle.loads(pickle.dumps(transform))
        assert torch.equal(copy({"image": chw})["image"], transform({"image": chw})["image"])


@pytest.mark.parametrize("name", ["StainNetNormalize", "StainGANNormalize"])
def test_model_transforms_take_weights(name, chw, tmp_path):
    core = fitted_normalizer(name)
    core.save_pretrained(tmp_path)
    x = chw.float() / 255
    expected = core(x)
    assert torch.equal(getattr(stm, name)(weights=str(tmp_path))(x), expected)
    out = getattr(stm, name + "d")(keys="image", weights=str(tmp_path))({"image": x})
    assert torch.equal(out["image"], expected)
    with pytest.raises(ValueError, match="exactly one of"):
        getattr(stm, name)(normalizer=core, weights=str(tmp_path))
