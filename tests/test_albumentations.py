"""albumentations wrappers: same output as the core transforms, seeding, probability, serialisation."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no network check on import
A = pytest.importorskip("albumentations")

from _transforms import NORMALIZERS, as_form, assert_same_form, fitted_normalizer

import stain_transforms
import stain_transforms.albumentations as sta
import stain_transforms.models
from stain_transforms.testing import synthetic_tissue


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return synthetic_tissue(64, seed=11, stain_scale=1.2)


def test_importing_the_package_does_not_import_albumentations():
    code = "import sys, stain_transforms; assert 'albumentations' not in sys.modules, 'albumentations imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("name", NORMALIZERS)
@pytest.mark.parametrize("form", ["numpy HWC uint8", "numpy HWC float32"])
def test_normalizer_wrapper_equals_core(name, form, image):
    core = fitted_normalizer(name)
    x = as_form(image, form)
    mask = (image[..., 0] < 128).astype(np.uint8)
    pipeline = A.Compose([getattr(sta, name)(normalizer=core)])
    out = pipeline(image=x, mask=mask)
    assert_same_form(out["image"], x)
    np.testing.assert_array_equal(out["image"], core(x))
    np.testing.assert_array_equal(out["mask"], mask)
    assert not np.array_equal(out["image"], x)


@pytest.mark.parametrize("name", NORMALIZERS)
def test_normalizer_wrapper_on_a_stack_of_images(name, image):
    core = fitted_normalizer(name)
    stack = np.stack([image, synthetic_tissue(64, seed=12)])
    out = A.Compose([getattr(sta, name)(normalizer=core)])(images=stack)["images"]
    np.testing.assert_array_equal(out, core(stack))


@pytest.mark.parametrize("name", NORMALIZERS)
def test_normalizer_wrapper_probability_zero(name, image):
    out = A.Compose([getattr(sta, name)(normalizer=fitted_normalizer(name), p=0.0)])(image=image)["image"]
    np.testing.assert_array_equal(out, image)


@pytest.mark.parametrize("name", NORMALIZERS)
def test_serialisation_embeds_the_fitted_state(name, image, tmp_path):
    core = fitted_normalizer(name)
    image = image.astype(np.float32) / 255  # float: no lookup table for a restored StainNet to build
    pipeline = A.Compose([getattr(sta, name)(normalizer=core, p=1.0)])
    path = tmp_path / "pipeline.json"
    A.save(pipeline, str(path))
    restored = A.load(str(path))
    wrapper = restored.transforms[0]
    assert type(wrapper) is getattr(sta, name)
    assert wrapper.normalizer is not core
    np.testing.assert_array_equal(restored(image=image)["image"], core(image))
    again = A.from_dict(A.to_dict(pipeline))
    np.testing.assert_array_equal(again(image=image)["image"], core(image))


def test_serialisation_keeps_the_settings(image):
    core = stain_transforms.StainNetNormalize(fitted_normalizer("StainNetNormalize").model, backend="conv")
    restored = A.from_dict(A.to_dict(A.Compose([sta.StainNetNormalize(normalizer=core)])))
    assert restored.transforms[0].normalizer.backend == "conv"


def test_serialisation_keeps_a_saved_file_by_path(image, tmp_path):
    core = fitted_normalizer("MacenkoNormalize")
    saved = core.save(tmp_path / "macenko.safetensors")
    wrapper = sta.MacenkoNormalize(normalizer=str(saved))
    serialised = A.to_dict(A.Compose([wrapper]))
    assert serialised["transform"]["transforms"][0]["normalizer"] == str(saved)
    restored = A.from_dict(serialised)
    np.testing.assert_array_equal(restored(image=image)["image"], core(image))


def test_wrapper_errors():
    with pytest.raises(ValueError, match="not fitted"):
        sta.ReinhardNormalize(normalizer=stain_transforms.ReinhardNormalize())
    with pytest.raises(ValueError, match="needs normalizer=, a fitted MacenkoNormalize"):
        sta.MacenkoNormalize(normalizer=fitted_normalizer("ReinhardNormalize"))
    with pytest.raises(ValueError, match="needs normalizer="):
        sta.VahadaneNormalize()
    with pytest.raises(ValueError, match="alpha"):
        sta.HEDJitter(alpha=2.0)


def test_hed_jitter_equals_core_with_the_drawn_parameters(image):
    wrapper = sta.HEDJitter.strong(p=1.0)
    pipeline = A.Compose([wrapper], seed=3, save_applied_params=True)
    for x in (image, image.astype(np.float32) / 255):
        out = pipeline(image=x)["image"]
        params = wrapper.get_applied_params()
        expected = stain_transforms.HEDJitter.strong().apply_params(
            x,
            {
                "factors": torch.tensor(params["factors"], dtype=torch.float32)[None],
                "shifts": torch.tensor(params["shifts"], dtype=torch.float32)[None],
                "apply": torch.ones(1, dtype=torch.bool),
            },
        )
        assert_same_form(out, x)
        np.testing.assert_array_equal(out, expected)
        assert np.all(np.abs(params["factors"] - 1) <= 0.2) and np.all(np.abs(params["shifts"]) <= 0.2)


def test_hed_jitter_follows_albumentations_seeding(image):
    def run(seed: int) -> list[np.ndarray]:
        torch.manual_seed(seed + 100)  # the torch RNG must play no part
        pipeline = A.Compose([sta.HEDJitter.strong(p=0.7)], seed=seed)
        return [pipeline(image=image)["image"] for _ in range(6)]

    first, second, other = run(0), run(0), run(1)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, c) for a, c in zip(first, other))


def test_hed_jitter_probability(image):
    pipeline = A.Compose([sta.HEDJitter.strong(p=0.5)], seed=0)
    changed = [not np.array_equal(pipeline(image=image)["image"], image) for _ in range(40)]
    assert 5 < sum(changed) < 35
    never = A.Compose([sta.HEDJitter.strong(p=0.0)], seed=0)
    np.testing.assert_array_equal(never(image=image)["image"], image)


def test_hed_jitter_serialisation(image, tmp_path):
    pipeline = A.Compose([sta.HEDJitter(alpha=(0.1, 0.2, 0.0), beta=0.03, basis="macenko", p=0.8)], seed=5)
    path = tmp_path / "jitter.json"
    A.save(pipeline, str(path))
    restored = A.load(str(path))
    restored.set_random_seed(5)
    jitter = restored.transforms[0]
    assert isinstance(jitter, sta.HEDJitter)
    assert jitter.alpha == (0.1, 0.2, 0.0) and jitter.beta == (0.03,) * 3 and jitter.basis == "macenko"
    assert jitter.p == 0.8
    for _ in range(3):
        np.testing.assert_array_equal(restored(image=image)["image"], pipeline(image=image)["image"])


def test_hed_jitter_on_a_stack_shares_one_draw(image):
    stack = np.stack([image, image])
    out = A.Compose([sta.HEDJitter.strong(p=1.0)], seed=0)(images=stack)["images"]
    np.testing.assert_array_equal(out[0], out[1])
    assert not np.array_equal(out[0], image)


@pytest.mark.parametrize("name", ["StainNetNormalize", "StainGANNormalize"])
def test_model_wrappers_take_weights_and_serialise_the_reference(name, image, tmp_path):
    core = fitted_normalizer(name)
    folder = tmp_path / "weights"
    core.save_pretrained(folder)
    wrapper = getattr(sta, name)(weights=str(folder))
    x = image.astype(np.float32) / 255
    expected = core(x)
    np.testing.assert_array_equal(A.Compose([wrapper])(image=x)["image"], expected)
    serialised = A.to_dict(A.Compose([wrapper]))["transform"]["transforms"][0]
    assert serialised["weights"] == str(folder) and "normalizer" not in serialised
    restored = A.from_dict({"transform": {"__class_fullname__": "Compose", "p": 1.0, "transforms": [serialised]}})
    np.testing.assert_array_equal(restored(image=x)["image"], expected)
    with pytest.raises(ValueError, match="exactly one of"):
        getattr(sta, name)(normalizer=core, weights=str(folder))
    with pytest.raises(ValueError, match="exactly one of"):
        getattr(sta, name)()


def test_large_models_must_be_referenced(monkeypatch):
    core = fitted_normalizer("StainGANNormalize")
    monkeypatch.setattr(sta, "MAX_EMBEDDED_NUMBERS", 1000)
    with pytest.raises(ValueError, match="too many to embed"):
        A.to_dict(A.Compose([sta.StainGANNormalize(normalizer=core)]))
