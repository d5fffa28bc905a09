"""One fitted transform shared by several threads, or by DataLoader workers, gives the serial results.

``tests/test_dataloader.py`` covers workers on HWC uint8 arrays (and HEDJitter's seeding there);
here: threads, for every transform and two adapters, a StainNet whose lookup table is first needed
by several threads at once, and workers on float CHW tensors over two epochs of persistent workers.
"""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from _transforms import TRANSFORMS, as_form, make_transform
from torch.utils.data import DataLoader, Dataset

import stain_transforms
import stain_transforms.models
from stain_transforms.testing import synthetic_tissue

THREADS = 4
ROUNDS = 3  # each image is transformed this many times, interleaved across the threads


# StainGAN's tiles are smaller than the images, so that the tiled path runs.
TRANSFORM_SETTINGS = {"StainGANNormalize": {"tile_size": 32, "overlap": 8}}
FORMS = ("numpy HWC uint8", "tensor CHW uint8", "tensor CHW float32")  # every conversion path


def _core(name: str) -> stain_transforms.StainTransform:
    return make_transform(name, **TRANSFORM_SETTINGS.get(name, {}))


@functools.cache
def _images() -> tuple[np.ndarray, ...]:
    tiles = [synthetic_tissue(48, seed=300 + i, stain_scale=0.8 + 0.1 * i) for i in range(6)]
    blank = np.full((48, 48, 3), 250, np.uint8)  # passes through: mixes both code paths
    return (*tiles, blank)


def _inputs() -> list:
    """Each image in each of FORMS."""
    return [as_form(image, form) for image in _images() for form in FORMS]


def _caller(name: str):
    """A function of (index, image) that applies the shared transform deterministically."""
    transform = _core(name)
    if name != "HEDJitter":
        return lambda index, image: transform(image)

    def jitter(index: int, image):
        # Random draws are per call, so a shared jitter is reproducible only with explicit parameters.
        params = transform.generate_parameters(1, generator=torch.Generator().manual_seed(index))
        return transform.apply_params(image, params)

    return jitter


def _same(a, b) -> bool:
    return np.array_equal(np.asarray(a), np.asarray(b)) if isinstance(a, np.ndarray) else torch.equal(a, b)


def _serial_and_threaded(call, inputs: list) -> tuple[list, list]:
    serial = [call(i, x) for i, x in enumerate(inputs)]
    jobs = [(i, x) for _ in range(ROUNDS) for i, x in enumerate(inputs)]
    with ThreadPoolExecutor(THREADS) as pool:
        threaded = list(pool.map(lambda job: call(*job), jobs))
    return serial * ROUNDS, threaded


@pytest.mark.parametrize("name", TRANSFORMS)
def test_threads_give_the_serial_results(name):
    inputs = _inputs()
    snapshot = [x.copy() if isinstance(x, np.ndarray) else x.clone() for x in inputs]
    serial, threaded = _serial_and_threaded(_caller(name), inputs)
    for k, (a, b) in enumerate(zip(serial, threaded)):
        assert type(a) is type(b) and _same(a, b), f"call {k} differs between serial and threaded use"
    assert all(_same(x, before) for x, before in zip(inputs, snapshot)), "an input was modified"


@pytest.mark.parametrize("name", ["MacenkoNormalize", "StainGANNormalize"])
def test_adapters_from_threads_give_the_serial_results(name):
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    albumentations = pytest.importorskip("albumentations")
    pytest.importorskip("monai")
    import stain_transforms.albumentations as sta
    import stain_transforms.monai as stm

    pipeline = albumentations.Compose([getattr(sta, name)(normalizer=_core(name))])
    dictionary = getattr(stm, f"{name}d")(keys="image", normalizer=_core(name))
    images = list(_images())
    chws = [as_form(image, "numpy CHW uint8") for image in images]
    for call, inputs in [
        (lambda i, x: pipeline(image=x)["image"], images),
        (lambda i, x: dictionary({"image": x, "index": i})["image"], chws),
    ]:
        serial, threaded = _serial_and_threaded(call, inputs)
        assert all(_same(a, b) for a, b in zip(serial, threaded))


def test_stainnet_lookup_table_first_needed_by_several_threads():
    # A fresh instance: the threads all find the table missing at once. They must all get the
    # right output, and the 48 MB table should be built once, not once per thread.
    with torch.random.fork_rng():
        torch.manual_seed(0)
        normalize = stain_transforms.StainNetNormalize(stain_transforms.models.StainNet(), backend="auto")
    conv = stain_transforms.StainNetNormalize(normalize.model, backend="conv")
    builds = []
    build = normalize._build_table
    normalize._build_table = lambda: builds.append(1) or build()
    images = list(_images())
    with ThreadPoolExecutor(THREADS) as pool:
        threaded = list(pool.map(normalize, images))
    assert len(builds) == 1
    for image, out in zip(images, threaded):
        np.testing.assert_array_equal(out, conv(image))  # the table equals the network, bit for bit


class FloatTiles(Dataset):
    """CHW float32 tensors in [0, 1], transformed in the worker by ``call(index, image)``."""

    def __init__(self, call) -> None:
        self.call = call

    def __len__(self) -> int:
        return len(_images())

    def __getitem__(self, index: int):
        image = torch.from_numpy(_images()[index]).permute(2, 0, 1).to(torch.float32) / 255
        return self.call(index, image), index


def _epochs(dataset: Dataset, workers: int, epochs: int = 2) -> list[torch.Tensor]:
    options = {"multiprocessing_context": "fork", "persistent_workers": True} if workers else {}
    loader = DataLoader(dataset, batch_size=3, num_workers=workers, **options)
    results = []
    for _ in range(epochs):
        images, indices = zip(*loader)
        assert torch.cat(indices).tolist() == list(range(len(dataset)))
        results.append(torch.cat(images))
    return results


@pytest.mark.skipif(os.name == "nt", reason="uses fork-started workers")
@pytest.mark.parametrize("name", TRANSFORMS)
def test_dataloader_workers_give_the_serial_results(name):
    serial = _epochs(FloatTiles(_caller(name)), workers=0, epochs=1)[0]
    first, second = _epochs(FloatTiles(_caller(name)), workers=2)
    assert torch.equal(first, serial) and torch.equal(second, serial)
