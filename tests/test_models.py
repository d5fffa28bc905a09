"""The models: StainNet against the official checkpoints, StainGAN against CycleGAN's layout, the PatchGAN."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from stain_transforms.models import PatchGANDiscriminator, StainGANGenerator, StainNet
from stain_transforms.normalizers.stainnet import StainNetNormalize

OFFICIAL = "stainnet_official"


# -- StainNet ----------------------------------------------------------------------------------


def numpy_stainnet(state: dict[str, torch.Tensor], rgb_uint8: np.ndarray) -> np.ndarray:
    """Independent float64 re-implementation of the official network on an (H, W, 3) uint8 image."""
    layers = sorted({int(k.split(".")[-2]) for k in state})
    h = (rgb_uint8.reshape(-1, 3).astype(np.float64) / 255.0 - 0.5) / 0.5
    for i, index in enumerate(layers):
        weight = state[f"rgb_trans.{index}.weight"].double().numpy()[:, :, 0, 0]
        bias = state[f"rgb_trans.{index}.bias"].double().numpy()
        h = h @ weight.T + bias
        if i < len(layers) - 1:
            h = np.maximum(h, 0.0)
    out = np.clip(h * 0.5 + 0.5, 0.0, 1.0)
    return np.round(out * 255.0).astype(np.uint8).reshape(rgb_uint8.shape)


def official_checkpoints(root: Path) -> list[Path]:
    paths = sorted((root / OFFICIAL / "checkpoints").glob("*/*.pth"))
    if not paths:
        pytest.skip(f"official StainNet checkpoints not found under {root / OFFICIAL}")
    return paths


@pytest.mark.shared_data
def test_official_checkpoints_match_numpy_reimplementation(shared_data):
    source = np.asarray(Image.open(next((shared_data / OFFICIAL / "assets").glob("*_ori.png"))).convert("RGB"))
    for path in official_checkpoints(shared_data):
        state = torch.load(path, map_location="cpu", weights_only=True)
        expected = numpy_stainnet(state, source)
        model = StainNet.from_official_checkpoint(path)
        for backend in ("conv", "lut"):
            ours = StainNetNormalize(model, backend=backend)(source)
            diff = np.abs(ours.astype(int) - expected.astype(int))
            assert diff.max() <= 1, (path.name, backend, diff.max())  # within 1/255
            assert (diff > 0).mean() < 1e-3  # and almost always identical


@pytest.mark.shared_data
def test_official_cytology_checkpoint_moves_source_towards_target(shared_data):
    assets = shared_data / OFFICIAL / "assets"
    source = np.asarray(Image.open(next(assets.glob("*_ori.png"))).convert("RGB")).astype(np.float64)
    target = np.asarray(Image.open(next(assets.glob("*_target.png"))).convert("RGB")).astype(np.float64)
    path = next(p for p in official_checkpoints(shared_data) if "cytopathology" in str(p))
    out = StainNetNormalize(StainNet.from_official_checkpoint(path), backend="conv")(source.astype(np.uint8) / 255.0)
    error_before = np.abs(source - target).mean()
    error_after = np.abs(out * 255.0 - target).mean()
    assert error_after < 0.7 * error_before


def test_stainnet_architecture():
    model = StainNet()
    convs = [m for m in model.net if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [
        (3, 32, (1, 1)),
        (32, 32, (1, 1)),
        (32, 3, (1, 1)),
    ]
    assert [type(m).__name__ for m in model.net] == ["Conv2d", "ReLU", "Conv2d", "ReLU", "Conv2d"]
    assert sorted(model.state_dict()) == sorted(f"net.{i}.{p}" for i in (0, 2, 4) for p in ("weight", "bias"))
    assert len([m for m in StainNet(n_layer=5, n_channel=8).net if isinstance(m, nn.Conv2d)]) == 5
    with pytest.raises(ValueError):
        StainNet(n_layer=0)


def test_stainnet_forward_is_official_preprocessing():
    model = StainNet(n_channel=8)
    x = torch.rand(2, 3, 5, 7)
    expected = (model.net((x - 0.5) / 0.5) * 0.5 + 0.5).clamp(0, 1)
    assert torch.equal(model(x), expected)
    assert torch.equal(model.forward_raw((x - 0.5) / 0.5), model.net((x - 0.5) / 0.5))
    assert model(x).min() >= 0 and model(x).max() <= 1
    pixels = model.forward_pixels(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    torch.testing.assert_close(pixels, model(x), atol=1e-6, rtol=0)


def test_from_official_checkpoint_converts_keys(tmp_path):
    reference = StainNet(n_layer=4, n_channel=16)
    official = {k.replace("net.", "module.rgb_trans."): v for k, v in reference.state_dict().items()}
    torch.save(official, tmp_path / "official.pth")
    model = StainNet.from_official_checkpoint(tmp_path / "official.pth")
    assert (model.n_layer, model.n_channel) == (4, 16)
    x = torch.rand(1, 3, 4, 4)
    assert torch.equal(model(x), reference(x))
    torch.save({"conv.weight": torch.zeros(3, 3, 1, 1)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="rgb_trans"):
        StainNet.from_official_checkpoint(tmp_path / "other.pth")
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read"):
        StainNet.from_official_checkpoint(tmp_path / "garbage.pth")


def read_cube(path: Path) -> tuple[int, np.ndarray]:
    """Parse a .cube file independently: (size, table[b, g, r, channel])."""
    size, rows = 0, []
    for line in path.read_text().splitlines():
        parts = line.split()
        if not parts or parts[0].startswith("#") or parts[0] in ("TITLE", "DOMAIN_MIN", "DOMAIN_MAX"):
            continue
        if parts[0] == "LUT_3D_SIZE":
            size = int(parts[1])
        else:
            rows.append([float(v) for v in parts])
    table = np.array(rows)
    assert table.shape == (size**3, 3)
    return size, table.reshape(size, size, size, 3)  # red varies fastest: the last grid axis is red


def trilinear(table: np.ndarray, rgb: np.ndarray) -> np.ndarray:
    size = table.shape[0]
    pos = rgb * (size - 1)
    low = np.clip(np.floor(pos).astype(int), 0, size - 2)
    frac = pos - low
    out = np.zeros_like(rgb)
    for corner in range(8):
        offset = np.array([(corner >> 2) & 1, (corner >> 1) & 1, corner & 1])  # r, g, b
        weight = np.prod(np.where(offset == 1, frac, 1 - frac), axis=1)
        r, g, b = (low + offset).T
        out += weight[:, None] * table[b, g, r]
    return out


def test_export_cube_round_trip(tmp_path):
    torch.manual_seed(3)
    model = StainNet(n_channel=8)
    path = model.export_cube(tmp_path / "stainnet.cube", size=17)
    text = path.read_text()
    assert "LUT_3D_SIZE 17" in text
    size, table = read_cube(path)
    # Grid points are the network's outputs, in the documented order.
    grid = np.linspace(0, 1, size)
    r, g, b = np.meshgrid(grid, grid, grid, indexing="ij")
    colours = np.stack([r, g, b], -1).reshape(-1, 3)
    with torch.no_grad():
        exact = model(torch.tensor(colours, dtype=torch.float32).T.reshape(1, 3, -1, 1)).reshape(3, -1).T.numpy()
    assert np.abs(trilinear(table, colours) - exact).max() < 2e-6
    # Between grid points, interpolation approximates the network.
    rng = np.random.default_rng(0)
    colours = rng.random((2000, 3))
    with torch.no_grad():
        exact = model(torch.tensor(colours, dtype=torch.float32).T.reshape(1, 3, -1, 1)).reshape(3, -1).T.numpy()
    assert np.abs(trilinear(table, colours) - exact).mean() < 2 / 255
    with pytest.raises(ValueError):
        model.export_cube(tmp_path / "bad.cube", size=1)


# -- StainGAN ----------------------------------------------------------------------------------


def reference_cyclegan_resnet(ngf: int, n_blocks: int, dropout: bool = False) -> nn.Sequential:
    """CycleGAN's ResnetGenerator layer list, rebuilt here from its description (independently of ours)."""

    class Block(nn.Module):
        def __init__(self, dim):
            super().__init__()
            body = [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3), nn.InstanceNorm2d(dim), nn.ReLU(True)]
            body += [nn.Dropout(0.5)] if dropout else []
            body += [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3), nn.InstanceNorm2d(dim)]
            self.conv_block = nn.Sequential(*body)

        def forward(self, x):
            return x + self.conv_block(x)

    layers = [nn.ReflectionPad2d(3), nn.Conv2d(3, ngf, 7), nn.InstanceNorm2d(ngf), nn.ReLU(True)]
    layers += [nn.Conv2d(ngf, ngf * 2, 3, 2, 1), nn.InstanceNorm2d(ngf * 2), nn.ReLU(True)]
    layers += [nn.Conv2d(ngf * 2, ngf * 4, 3, 2, 1), nn.InstanceNorm2d(ngf * 4), nn.ReLU(True)]
    layers += [Block(ngf * 4) for _ in range(n_blocks)]
    layers += [
        nn.ConvTranspose2d(ngf * 4, ngf * 2, 3, 2, 1, output_padding=1),
        nn.InstanceNorm2d(ngf * 2),
        nn.ReLU(True),
    ]
    layers += [nn.ConvTranspose2d(ngf * 2, ngf, 3, 2, 1, output_padding=1), nn.InstanceNorm2d(ngf), nn.ReLU(True)]
    layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, 3, 7), nn.Tanh()]
    holder = nn.Module()
    holder.model = nn.Sequential(*layers)
    return holder


@pytest.mark.parametrize("ngf, n_blocks, dropout", [(8, 9, False), (4, 6, False), (4, 2, True)])
def test_staingan_loads_cyclegan_state_dict(tmp_path, ngf, n_blocks, dropout):
    torch.manual_seed(1)
    reference = reference_cyclegan_resnet(ngf, n_blocks, dropout).eval()
    state = {f"module.{k}": v for k, v in reference.state_dict().items()}
    state["module.model.2.running_mean"] = torch.zeros(ngf)  # stale keys of old PyTorch versions
    torch.save(state, tmp_path / "latest_net_G_A.pth")
    ours = StainGANGenerator.from_cyclegan_checkpoint(tmp_path / "latest_net_G_A.pth")
    assert (ours.ngf, ours.n_blocks) == (ngf, n_blocks)
    assert sorted(ours.state_dict()) == sorted(reference.state_dict())
    x = torch.rand(2, 3, 32, 40) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference.model(x), atol=1e-6, rtol=0)


def test_staingan_default_layout_is_cyclegan_resnet_9blocks():
    model = StainGANGenerator()
    reference = reference_cyclegan_resnet(64, 9)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    assert sum(p.numel() for p in model.parameters()) == 11_378_179  # CycleGAN's resnet_9blocks
    with pytest.raises(ValueError, match="model.1.weight"):
        StainGANGenerator.from_cyclegan_state_dict({"net.0.weight": torch.zeros(1)})


def test_staingan_translate_any_size():
    model = StainGANGenerator(ngf=4, n_blocks=1)
    for h, w in [(2, 2), (5, 7), (16, 16), (30, 18)]:
        x = torch.rand(1, 3, h, w)
        with torch.no_grad():
            y = model.translate(x)
        assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model.translate(x), (model((x - 0.5) / 0.5) * 0.5 + 0.5).clamp(0, 1))


def test_patchgan_receptive_field_is_70():
    torch.manual_seed(0)
    model = PatchGANDiscriminator(ndf=4)
    assert sum(p.numel() for p in PatchGANDiscriminator().parameters()) == 2_764_737  # CycleGAN's basic D
    # Instance norm couples every output to the whole image; the patch is the convolutions' reach.
    for i, layer in enumerate(model.model):
        if isinstance(layer, nn.InstanceNorm2d):
            model.model[i] = nn.Identity()
    x = torch.rand(1, 3, 160, 160, requires_grad=True)
    out = model(x)
    assert out.shape == (1, 1, 18, 18)
    out[0, 0, 9, 9].backward()
    rows = x.grad.abs().sum(dim=(0, 1, 3)).nonzero()
    cols = x.grad.abs().sum(dim=(0, 1, 2)).nonzero()
    assert rows.max() - rows.min() + 1 == 70 and cols.max() - cols.min() + 1 == 70
