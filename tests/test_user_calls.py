"""Calls a new user makes (issue 20, item 1): lists of images, file names, re-running a trainer into the same folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from torchvision import tv_tensors

import stain_transforms as st
from stain_transforms.cli import main
from stain_transforms.testing import synthetic_tissue

REFERENCES = [synthetic_tissue(64, seed=s) for s in range(3)]


@pytest.fixture(scope="module")
def normalizer():
    return st.ReinhardNormalize().fit(REFERENCES)


def _sources():
    return [synthetic_tissue(64, seed=10 + i, stain_scale=1.4) for i in range(3)]


@pytest.mark.parametrize(
    "convert",
    [
        pytest.param(lambda x: x, id="numpy"),
        pytest.param(lambda x: torch.from_numpy(x).permute(2, 0, 1).contiguous(), id="tensor"),
        pytest.param(lambda x: PIL.Image.fromarray(x), id="pil"),
        pytest.param(lambda x: tv_tensors.Image(torch.from_numpy(x).permute(2, 0, 1)), id="tv_image"),
    ],
)
def test_a_list_of_images_normalizes_every_image(normalizer, convert):
    images = [convert(x) for x in _sources()]
    out = normalizer(images)
    assert type(out) is list and len(out) == len(images)
    for image, result in zip(images, out):
        assert type(result) is type(image)
        expected = normalizer(image)  # one image at a time: the reference result
        assert np.array_equal(np.asarray(result), np.asarray(expected))
        assert not np.array_equal(np.asarray(result), np.asarray(image))  # it did change


def test_a_list_of_images_gets_one_random_draw_per_image():
    jitter = st.HEDJitter(alpha=0.3, beta=0.1, p=1.0, generator=torch.Generator().manual_seed(0))
    image = synthetic_tissue(32, seed=0)
    first, second = jitter([image, image.copy()])
    assert not np.array_equal(first, image) and not np.array_equal(second, image)
    assert not np.array_equal(first, second)


def test_a_tuple_sample_still_transforms_only_its_image(normalizer):
    image, other = _sources()[:2]
    out_image, out_other = normalizer((image, other))  # torchvision's rule: the first plain array is the image
    assert np.array_equal(out_image, normalizer(image))
    assert out_other is other
    out_image, label = normalizer((image, 3))
    assert np.array_equal(out_image, normalizer(image)) and label == 3


def test_a_list_with_non_images_is_a_sample(normalizer):
    image = _sources()[0]
    out = normalizer([image, 7, "slide_1"])
    assert np.array_equal(out[0], normalizer(image)) and out[1:] == [7, "slide_1"]


@pytest.mark.parametrize("path", ["tile.png", Path("tile.png"), ["a.png", "b.png"]], ids=["str", "path", "list"])
def test_a_file_name_is_a_clear_error(normalizer, path):
    with pytest.raises(ValueError, match="file name .*read the file first"):
        normalizer(path)
    with pytest.raises(ValueError, match="file name"):
        st.HEDJitter()(path)


def _fake_model(folder: Path) -> bytes:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text('{"model_type": "stainnet"}')
    (folder / "model.safetensors").write_bytes(b"finished model")
    return (folder / "model.safetensors").read_bytes()


def _tiles(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(2):
        PIL.Image.fromarray(synthetic_tissue(32, seed=i)).save(folder / f"{i}.png")
    return folder


@pytest.mark.parametrize("command", ["distill", "train-staingan"])
def test_trainers_do_not_overwrite_a_finished_model(tmp_path, capsys, command):
    source = _tiles(tmp_path / "source")
    out = tmp_path / "model"
    before = _fake_model(out)
    if command == "distill":
        argv = ["distill", "--source", str(source), "--teacher-outputs", str(source), "--out", str(out)]
    else:
        argv = ["train-staingan", "--source", str(source), "--target", str(source), "--out", str(out)]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert "already holds a model" in error and "--overwrite" in error
    assert (out / "model.safetensors").read_bytes() == before


def test_train_staingan_refuses_to_restart_over_a_checkpoint(tmp_path, capsys):
    source = _tiles(tmp_path / "source")
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "latest.pt").write_bytes(b"checkpoint")
    assert main(["train-staingan", "--source", str(source), "--target", str(source), "--out", str(out)]) == 2
    assert "--resume" in capsys.readouterr().err


def test_distill_overwrite_replaces_the_model(tmp_path, capsys):
    source = _tiles(tmp_path / "source")
    out = tmp_path / "model"
    before = _fake_model(out)
    argv = ["distill", "--source", str(source), "--teacher-outputs", str(source), "--out", str(out),
            "--steps", "5", "--val-fraction", "0", "--no-progress", "--overwrite"]
    assert main(argv) == 0
    assert (out / "model.safetensors").read_bytes() != before
