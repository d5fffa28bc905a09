"""Train-your-own without a registered answer: the structure term, the pixel generator and the teacher-free StainNet.

Ground truth comes from Beer-Lambert rendering: the same tissue (seed) rendered with a paler and a
darker staining is the registered answer that the unpaired trainers never see.
"""

from __future__ import annotations

import json

import numpy as np
import PIL.Image
import pytest
import torch

from stain_transforms.cli import main
from stain_transforms.metrics import psnr_target
from stain_transforms.models import StainNet
from stain_transforms.testing import synthetic_tissue
from stain_transforms.training import DistillConfig, PairSet, StainGANConfig, distill, train_staingan
from stain_transforms.training.losses import luma, structure_loss
from stain_transforms.training.schedules import warmup_cosine
from stain_transforms.training.unpaired import (
    ColourSampler,
    UnpairedStainNetConfig,
    sliced_wasserstein,
    train_stainnet_unpaired,
)

PALE, DARK = 0.7, 1.4


def _apply(model: StainNet, image: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out = model(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0)[0]
    return (out.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


# -- the structure term -------------------------------------------------------------------------


def test_structure_loss_ignores_stain_changes_and_sees_structural_ones():
    image = torch.from_numpy(synthetic_tissue(64, seed=1)).permute(2, 0, 1)[None].float() / 127.5 - 1
    restained = torch.from_numpy(synthetic_tissue(64, seed=1, stain_scale=1.5)).permute(2, 0, 1)[None].float() / 127.5 - 1
    shifted = torch.roll(image, shifts=(3, 3), dims=(2, 3))
    blurred = torch.nn.functional.avg_pool2d(image, 5, stride=1, padding=2)
    assert float(structure_loss(image, 0.6 * image - 0.3)) < 1e-4  # an affine change of luma keeps structure
    assert float(structure_loss(image, restained)) < 0.1  # a darker staining of the same tissue
    assert float(structure_loss(image, shifted)) > 3 * float(structure_loss(image, restained))
    assert float(structure_loss(image, blurred)) > float(structure_loss(image, restained))


def test_structure_loss_matches_a_numpy_local_correlation():
    rng = np.random.default_rng(0)
    a, b = rng.uniform(-1, 1, (2, 1, 3, 9, 9))
    window, c = 3, (0.03 * 2) ** 2 / 2
    la, lb = (np.tensordot([0.299, 0.587, 0.114], x[0], axes=1) for x in (a, b))
    values = []
    for i in range(9):
        for j in range(9):
            rows, cols = slice(max(0, i - 1), i + 2), slice(max(0, j - 1), j + 2)  # window clipped at the edge
            x, y = la[rows, cols].ravel(), lb[rows, cols].ravel()
            cov = (x * y).mean() - x.mean() * y.mean()
            values.append(1 - (cov + c) / (np.sqrt(x.var() * y.var()) + c))
    expected = np.mean(values)
    got = float(structure_loss(torch.from_numpy(a), torch.from_numpy(b), window=window))
    assert got == pytest.approx(expected, rel=1e-5)


def test_structure_loss_has_finite_gradients_on_flat_images():
    flat = torch.zeros(1, 3, 16, 16, requires_grad=True)
    loss = structure_loss(flat, torch.zeros(1, 3, 16, 16))
    loss.backward()
    assert torch.isfinite(flat.grad).all() and float(loss.detach()) == pytest.approx(0.0, abs=1e-3)
    with pytest.raises(ValueError, match="structure_loss needs"):
        structure_loss(torch.zeros(1, 3, 4, 4), torch.zeros(1, 1, 4, 4))
    assert luma(torch.ones(2, 3, 1, 1)).shape == (2, 1, 1, 1)


# -- sliced Wasserstein and the colour sampler --------------------------------------------------


def test_sliced_wasserstein_is_the_mean_sorted_squared_gap_per_direction():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(2, 500, 3))
    directions = rng.normal(size=(4, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    expected = np.mean([np.mean((np.sort(a @ d) - np.sort(b @ d)) ** 2) for d in directions])
    got = float(sliced_wasserstein(*(torch.from_numpy(x) for x in (a, b, directions))))
    assert got == pytest.approx(expected, rel=1e-10)
    with pytest.raises(ValueError, match="one shape"):
        sliced_wasserstein(torch.zeros(3, 3), torch.zeros(4, 3), torch.eye(3))


def test_colour_sampler_draws_colours_in_proportion_to_their_pixels():
    image = np.zeros((10, 10, 3), np.uint8)
    image[:2] = (255, 0, 0)  # 20 red pixels, 80 black
    sampler = ColourSampler([image, image])
    drawn = sampler.draw(20000, torch.Generator().manual_seed(0))
    red = float(((drawn[:, 0] > 0.9) & (drawn[:, 1] < -0.9)).float().mean())
    assert red == pytest.approx(0.2, abs=0.02)
    assert sampler.counts.tolist() == [160, 40]
    with pytest.raises(ValueError, match="HWC uint8"):
        ColourSampler([image.astype(np.float32)])
    with pytest.raises(ValueError, match="no images"):
        ColourSampler([])


# -- the teacher-free StainNet ------------------------------------------------------------------


def test_unpaired_stainnet_learns_the_restaining_it_never_saw_paired():
    # Different tissue in each domain (no pairs); scored on the same tissue rendered both ways.
    sources = [synthetic_tissue(64, seed=i, stain_scale=PALE) for i in range(6)]
    targets = [synthetic_tissue(64, seed=100 + i, stain_scale=DARK) for i in range(6)]
    held_out = synthetic_tissue(64, seed=50, stain_scale=PALE)
    answer = synthetic_tissue(64, seed=50, stain_scale=DARK)
    config = UnpairedStainNetConfig(steps=400, progress=False, val_every=100)
    validation = PairSet(["held_out"], [held_out], [answer])
    result = train_stainnet_unpaired(sources, targets, config, validation)
    before, after = psnr_target(held_out, answer), psnr_target(_apply(result.model, held_out), answer)
    assert after > before + 6, (before, after)
    assert [h["step"] for h in result.history] == [100, 200, 300, 400]
    assert result.history[-1]["val_psnr"] == pytest.approx(result.val_metrics.psnr_target)
    # The inverse maps the darker staining back.
    assert psnr_target(_apply(result.inverse, answer), held_out) > psnr_target(answer, held_out) + 6


def test_unpaired_stainnet_cli_writes_a_loadable_model_and_curves(tmp_path, capsys):
    for sub, scale, offset in (("src", PALE, 0), ("tgt", DARK, 10)):
        (tmp_path / sub).mkdir()
        for i in range(3):
            PIL.Image.fromarray(synthetic_tissue(32, seed=offset + i, stain_scale=scale)).save(tmp_path / sub / f"{i}.png")
    out = tmp_path / "run"
    args = ["train-stainnet-unpaired", "--source", str(tmp_path / "src"), "--target", str(tmp_path / "tgt"),
            "--out", str(out), "--steps", "30", "--no-progress", "--val-source", str(tmp_path / "src"),
            "--val-target", str(tmp_path / "src"), "--val-every", "10"]
    assert main(args) == 0
    assert "curves:" in capsys.readouterr().out
    model = StainNet.from_pretrained(out)
    assert sum(p.numel() for p in model.parameters()) == 1283
    assert (out / "curves.png").is_file() and (out / "inverse" / "model.safetensors").is_file()
    log = json.loads((out / "training_log.json").read_text())
    assert log["config"]["steps"] == 30 and len(log["history"]) == 3
    assert "sliced Wasserstein" in (out / "README.md").read_text()
    assert main(args) == 2  # a model is there: refused without --overwrite
    assert "--overwrite" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["train-stainnet-unpaired", "--source", str(empty), "--target", str(tmp_path / "tgt"), "--out", str(tmp_path / "x")]) == 2
    assert "no images" in capsys.readouterr().err


# -- the StainGAN trainer's new options ---------------------------------------------------------


@pytest.fixture
def domains(tmp_path):
    for sub, scale, offset in (("a", PALE, 0), ("b", DARK, 10)):
        (tmp_path / sub).mkdir()
        for i in range(2):
            PIL.Image.fromarray(synthetic_tissue(32, seed=offset + i, stain_scale=scale)).save(tmp_path / sub / f"{i}.png")
    return tmp_path


def test_pixel_generator_gan_saves_a_stainnet_and_records_the_structure_term(domains):
    config = StainGANConfig(
        generator="pixel", ndf=4, n_layers_d=1, epochs=2, epochs_decay=0, steps_per_epoch=2, crop_size=24,
        lambda_structure=1.0, progress=False,
    )
    validation = PairSet(["x"], [synthetic_tissue(32, seed=5, stain_scale=PALE)], [synthetic_tissue(32, seed=5, stain_scale=DARK)])
    result = train_staingan(domains / "a", domains / "b", domains / "run", config, validation=validation)
    assert isinstance(result.generator, StainNet)
    loaded = StainNet.from_pretrained(domains / "run")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), result.generator.state_dict().values()))
    assert isinstance(StainNet.from_pretrained(domains / "run" / "inverse"), StainNet)
    assert all(h["str"] > 0 for h in result.history) and "val_psnr" in result.history[-1]
    assert (domains / "run" / "curves.png").is_file()
    assert "1x1 convolutions" in (domains / "run" / "README.md").read_text()
    # A pixel generator cannot alter structure: its output is a colour map of the input.
    image = validation.sources[0]
    output = _apply(result.generator, image)
    flat = image.reshape(-1, 3)
    _, first, inverse = np.unique(flat, axis=0, return_index=True, return_inverse=True)
    assert np.array_equal(output.reshape(-1, 3), output.reshape(-1, 3)[first][inverse.ravel()])


def test_staingan_resume_refuses_another_generator_kind(domains):
    small = dict(ndf=4, n_layers_d=1, epochs=1, epochs_decay=0, steps_per_epoch=1, crop_size=24, progress=False)
    train_staingan(domains / "a", domains / "b", domains / "run", StainGANConfig(ngf=4, n_blocks=1, **small))
    with pytest.raises(ValueError, match="generator: resnet != pixel"):
        train_staingan(domains / "a", domains / "b", domains / "run", StainGANConfig(generator="pixel", **small), resume=True)
    with pytest.raises(ValueError, match="generator must be one of"):
        StainGANConfig(generator="unet")
    with pytest.raises(ValueError, match="lambda_structure"):
        StainGANConfig(lambda_structure=-1)


# -- the shared schedule ------------------------------------------------------------------------


def test_warmup_cosine_rises_then_decays_for_any_step_count():
    for steps in (1, 2, 7, 100):
        optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        schedule = warmup_cosine(optimizer, steps)
        rates = []
        for _ in range(steps):
            rates.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            schedule.step()
        peak = int(np.argmax(rates))
        assert max(rates) <= 1.0 and all(r > 0 for r in rates)
        assert rates[: peak + 1] == sorted(rates[: peak + 1]) and rates[peak:] == sorted(rates[peak:], reverse=True)
    # Few steps used to divide by zero in torch's OneCycleLR.
    pairs = PairSet(["a"], [synthetic_tissue(16)], [synthetic_tissue(16, stain_scale=1.2)])
    assert distill(pairs, config=DistillConfig(steps=3, val_every_steps=1, progress=False)).best_at >= 1
