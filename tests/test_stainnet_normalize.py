"""StainNetNormalize: the exact lookup table, the backends, and the transform contracts.

The networks here are test fixtures (seeded initialisations), except where the official
checkpoints of ../shared/data are used.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors

from stain_transforms import StainNetNormalize
from stain_transforms.models import StainNet
from stain_transforms.testing import synthetic_tissue

HISTOLOGY = "stainnet_official/checkpoints/aligned_histopathology_dataset"


def fixture_model(seed: int = 0) -> StainNet:
    torch.manual_seed(seed)
    model = StainNet()
    with torch.no_grad():  # larger weights than the default init: a less trivial colour map
        for p in model.parameters():
            p.mul_(2.0)
    return model


@pytest.fixture(scope="module")
def compiled() -> StainNetNormalize:
    """One fixture network with its table built (shared: never modify it)."""
    return StainNetNormalize(fixture_model(), backend="lut").compile()


def conv_of(normalize: StainNetNormalize) -> StainNetNormalize:
    return StainNetNormalize(normalize.model, backend="conv")


def random_colours(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 3), dtype=np.uint8)


# -- the table is the network, exactly -----------------------------------------------------------


def test_lut_equals_network_on_images(compiled):
    conv = conv_of(compiled)
    images = [
        synthetic_tissue(128, seed=1),
        random_colours(97 * 61).reshape(97, 61, 3),  # odd sizes, every region of the cube
        np.stack([synthetic_tissue(64, seed=s) for s in range(3)]),  # a (B, H, W, 3) batch
        random_colours(2 * 3).reshape(2, 3, 1, 3).repeat(2, axis=2),  # tiny
    ]
    for image in images:
        assert np.array_equal(compiled(image), conv(image))
    tensor = torch.from_numpy(random_colours(4 * 40 * 30)).reshape(4, 40, 30, 3).permute(0, 3, 1, 2)
    assert torch.equal(compiled(tensor), conv(tensor))
    assert torch.equal(compiled(tensor.contiguous()), conv(tensor.contiguous()))


def test_lut_equals_network_on_rounding_boundaries(compiled):
    """Colours whose exact output is within 1e-3 of a rounding boundary, where float paths disagree."""
    model64 = StainNet().double()
    model64.load_state_dict(compiled.model.state_dict())
    colours = np.random.default_rng(1).integers(0, 256, (1 << 20, 3), dtype=np.uint8)
    with torch.no_grad():
        exact = model64(torch.from_numpy(colours).double().T.reshape(1, 3, 1, -1) / 255.0).reshape(3, -1).T * 255.0
    near = ((exact - exact.floor() - 0.5).abs() < 1e-3).any(dim=1).numpy()
    hard = colours[near]
    assert len(hard) > 100
    conv = conv_of(compiled)
    for width in (1, 7, 64):
        n = len(hard) // width * width
        image = hard[:n].reshape(-1, width, 3)
        if image.shape[0] >= 2 and width >= 2:
            assert np.array_equal(compiled(image), conv(image))
    assert np.array_equal(compiled(np.stack([hard[:2], hard[2:4]])), conv(np.stack([hard[:2], hard[2:4]])))


@pytest.mark.slow
def test_lut_equals_network_on_the_whole_cube(compiled):
    table = compiled.lookup_table().reshape(256, 256, 256, 3)  # [b, g, r]
    conv = conv_of(compiled)
    grid = np.stack(np.meshgrid(np.arange(256), np.arange(256), indexing="ij"), -1).astype(np.uint8)  # [g, r]
    for blue in range(256):
        image = np.concatenate([grid[..., ::-1], np.full((256, 256, 1), blue, np.uint8)], axis=-1)  # (g, r) -> rgb
        assert np.array_equal(conv(image), table[blue].numpy()), blue


@pytest.mark.shared_data
def test_lut_on_real_tissue_with_official_weights(shared_data):
    checkpoint = next((shared_data / HISTOLOGY).glob("*.pth"), None)
    tiles = sorted((shared_data / "camelyon17_tiles").glob("*.png"))[::5]
    if checkpoint is None or not tiles:
        pytest.skip("official checkpoint or camelyon17 tiles missing")
    model = StainNet.from_official_checkpoint(checkpoint)
    fast, conv = StainNetNormalize(model), StainNetNormalize(model, backend="conv")
    for path in tiles:
        image = np.asarray(PIL.Image.open(path).convert("RGB"))
        assert np.array_equal(fast(image), conv(image)), path.name


def test_table_layout(compiled):
    table = compiled.lookup_table()
    assert table.shape == (256**3, 3) and table.dtype == torch.uint8
    r, g, b = 12, 200, 77
    pixel = np.array([[[r, g, b]] * 2] * 2, dtype=np.uint8)
    assert table[r + 256 * g + 65536 * b].tolist() == conv_of(compiled)(pixel)[0, 0].tolist()


# -- backends --------------------------------------------------------------------------------------


def test_auto_uses_the_table_for_uint8_cpu_only():
    normalize = StainNetNormalize(fixture_model())
    normalize(torch.rand(3, 8, 8))  # float: the network
    assert not normalize._tables
    normalize(synthetic_tissue(16, seed=0))  # uint8 on the CPU: the table
    assert torch.device("cpu") in normalize._tables


def test_lut_backend_rejects_float_input(compiled):
    with pytest.raises(ValueError, match="backend='lut' needs uint8"):
        compiled(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="grayscale"):
        compiled(np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match="backend"):
        StainNetNormalize(fixture_model(), backend="onnx")
    with pytest.raises(ValueError, match="StainNet"):
        StainNetNormalize(torch.nn.Conv2d(3, 3, 1))


def test_table_follows_weight_changes():
    model = fixture_model(seed=2)
    normalize = StainNetNormalize(model)
    image = synthetic_tissue(32, seed=3)
    before = normalize(image)
    with torch.no_grad():
        model.net[-1].bias.add_(0.2)  # in place, as an optimiser step does
    after = normalize(image)
    assert not np.array_equal(before, after)
    assert np.array_equal(after, StainNetNormalize(model, backend="conv")(image))


# -- the transform contracts -----------------------------------------------------------------------


def test_same_in_same_out(compiled):
    auto = StainNetNormalize(compiled.model)
    auto._tables = compiled._tables  # reuse the built table
    image = synthetic_tissue(48, seed=4)
    original = image.copy()
    expected = conv_of(compiled)(image)
    cases = {
        "numpy uint8": image,
        "numpy float": image / 255.0,
        "tensor CHW uint8": torch.from_numpy(image).permute(2, 0, 1),
        "tensor BCHW float": torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255,
        "PIL": PIL.Image.fromarray(image),
        "tv_tensors.Image": tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1)),
    }
    for name, x in cases.items():
        out = auto(x)
        assert type(out) is type(x), name
        if isinstance(x, (np.ndarray, torch.Tensor)):
            assert out.shape == x.shape and out.dtype == x.dtype, name
        as_uint8 = np.asarray(out) if not isinstance(out, torch.Tensor) else out.reshape(3, 48, 48).permute(1, 2, 0)
        if name in ("numpy float", "tensor BCHW float"):
            as_uint8 = np.round(np.asarray(as_uint8, dtype=np.float64) * 255)
        assert np.abs(np.asarray(as_uint8, dtype=np.int64) - expected.astype(np.int64)).max() <= 1, name
    assert np.array_equal(image, original)
    sample = {"image": tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1)), "label": 3}
    out = auto(sample)
    assert out["label"] == 3 and isinstance(out["image"], tv_tensors.Image)
    assert np.array_equal(out["image"].permute(1, 2, 0).numpy(), expected)


def test_batched_equals_one_by_one(compiled):
    batch = torch.stack([torch.from_numpy(synthetic_tissue(32, seed=s)).permute(2, 0, 1) for s in range(4)])
    for normalize in (compiled, conv_of(compiled)):
        whole = normalize(batch)
        assert torch.equal(whole, torch.stack([normalize(image) for image in batch]))
    floats = conv_of(compiled)(batch.double() / 255)
    assert floats.dtype == torch.float64 and floats.shape == batch.shape
    assert torch.equal(floats, torch.stack([conv_of(compiled)(image.double() / 255) for image in batch]))


def test_pickling_drops_the_table(compiled):
    blob = pickle.dumps(compiled)
    assert len(blob) < 1_000_000  # the 48 MB table stays behind
    clone = pickle.loads(blob)
    assert not clone._tables
    image = synthetic_tissue(32, seed=5)
    assert np.array_equal(clone(image), compiled(image))
    assert "_tables" not in str(compiled.state_dict().keys())


class Tiles(Dataset):
    def __init__(self, transform):
        self.transform = transform

    def __len__(self):
        return 4

    def __getitem__(self, index):
        return torch.from_numpy(self.transform(synthetic_tissue(32, seed=10 + index)))


def test_dataloader_workers(compiled):
    serial = torch.cat(list(DataLoader(Tiles(compiled), batch_size=2)))
    parallel = torch.cat(list(DataLoader(Tiles(compiled), batch_size=2, num_workers=2)))
    assert torch.equal(serial, parallel)


def test_from_pretrained_keeps_backend(tmp_path: Path):
    StainNetNormalize(fixture_model()).save_pretrained(tmp_path / "w")
    loaded = StainNetNormalize.from_pretrained(tmp_path / "w", backend="conv")
    assert loaded.backend == "conv"
    image = synthetic_tissue(16, seed=6)
    assert np.array_equal(loaded(image), StainNetNormalize(fixture_model(), backend="conv")(image))
