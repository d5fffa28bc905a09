"""HEDJitter and the stain-jitter kernel, against an independent scikit-image re-derivation."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from skimage.color import hed2rgb, rgb2hed

from stain_transforms import HEDJitter
from stain_transforms._kernels import blocks
from stain_transforms._kernels.levels import levels_to_unit, unit_to_dtype_
from stain_transforms.functional.color import rgb_to_hed
from stain_transforms.functional.jitter import RUIFROK_STAINS, SHIFT_RAMP, hed_jitter, stain_jitter
from stain_transforms.testing import synthetic_tissue


def _to_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1)


def _reference(image: np.ndarray, factors: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """The documented HED jitter, re-derived with numpy and scikit-image's own HED conversion."""
    rgb = image.astype(np.float64) / 255.0
    od_max = (-np.log(np.maximum(rgb, 1 / 255))).max(axis=-1, keepdims=True)
    weight = np.clip((od_max - SHIFT_RAMP[0]) / (SHIFT_RAMP[1] - SHIFT_RAMP[0]), 0, 1)
    scaled = rgb2hed(rgb) * factors
    shifted = np.maximum(scaled + weight * shifts, np.minimum(scaled, 0))
    return hed2rgb(shifted)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_skimage_rederivation(seed):
    image = synthetic_tissue(64, seed=seed)
    rng = np.random.default_rng(seed)
    factors = rng.uniform(0.7, 1.3, 3)
    shifts = rng.uniform(-0.05, 0.05, 3)
    out = (
        hed_jitter(
            _to_tensor(image)[None].double() / 255,
            torch.from_numpy(factors)[None],
            torch.from_numpy(shifts)[None],
        )[0]
        .permute(1, 2, 0)
        .numpy()
    )
    expected = _reference(image, factors, shifts)
    # Compare where scikit-image's conversion is lossless: it clips negative stain amounts to 0 (we
    # keep them so that the round trip is exact), and clamps intensities at 1e-6 where we use 1/255.
    rgb = image / 255.0
    valid = (np.abs(hed2rgb(rgb2hed(rgb)) - rgb).max(axis=-1) < 1e-12) & (image >= 1).all(axis=-1)
    assert valid.mean() > 0.9 and (valid & (image < 200).any(axis=-1)).sum() > 1000
    np.testing.assert_allclose(out[valid], expected[valid], atol=1e-9)


def test_equals_literal_tellez_on_stained_pixels():
    # Where a pixel is clearly stained (full shift weight) and shifts are positive, the jitter is
    # exactly Tellez et al.'s hed2rgb(rgb2hed(x) * alpha + beta).
    image = synthetic_tissue(64, seed=5)
    factors, shifts = np.array([1.2, 0.85, 1.05]), np.array([0.03, 0.01, 0.02])
    out = hed_jitter(_to_tensor(image)[None].double() / 255, torch.tensor(factors)[None], torch.tensor(shifts)[None])
    literal = hed2rgb(rgb2hed(image) * factors + shifts)
    stained = (-np.log(np.maximum(image / 255.0, 1 / 255))).max(axis=-1) >= SHIFT_RAMP[1]
    stained &= (rgb2hed(image) > 0).all(axis=-1)  # scikit-image clips negative stain amounts
    assert stained.sum() > 100
    np.testing.assert_allclose(out[0].permute(1, 2, 0).numpy()[stained], literal[stained], atol=1e-9)


def test_white_stays_white_under_extreme_draws():
    image = synthetic_tissue(64, seed=3)
    white = (image == 255).all(axis=-1)
    assert white.sum() > 50
    jitter = HEDJitter(alpha=0.9, beta=1.0, generator=torch.Generator().manual_seed(0))
    batch = np.stack([image] * 8)
    out = jitter(batch)
    assert (out[:, white] == 255).all()
    blank = np.full((32, 32, 3), 255, np.uint8)
    np.testing.assert_array_equal(jitter(blank), blank)


def test_background_barely_changes_while_tissue_does():
    image = synthetic_tissue(64, seed=4)
    out = HEDJitter.strong(generator=torch.Generator().manual_seed(1))(image).astype(int)
    background = (image >= 250).all(axis=-1)
    tissue = (image < 200).any(axis=-1)
    assert np.abs(out - image)[background].max() <= 2
    assert np.abs(out - image)[tissue].mean() > 3


def test_raising_haematoxylin_adds_haematoxylin():
    batch = _to_tensor(synthetic_tissue(64, seed=6))[None].float() / 255
    out = hed_jitter(batch, torch.tensor([[1.3, 1.0, 1.0]]), torch.zeros(1, 3))
    before, after = rgb_to_hed(batch)[0, 0], rgb_to_hed(out)[0, 0]
    nuclei = before > before.quantile(0.9)
    assert (after[nuclei] > before[nuclei]).float().mean() > 0.95


def test_identity_parameters_return_the_input():
    image = synthetic_tissue(48, seed=7)
    image[0, 0] = 0  # a clipped-black pixel too
    jitter = HEDJitter()
    params = {"factors": torch.ones(1, 3), "shifts": torch.zeros(1, 3), "apply": torch.ones(1, dtype=torch.bool)}
    np.testing.assert_array_equal(jitter.apply_params(image, params), image)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_never_nan_and_in_range(dtype):
    torch.manual_seed(0)
    batch = torch.cat([torch.rand(4, 3, 16, 16), torch.zeros(1, 3, 16, 16), torch.ones(1, 3, 16, 16)]).to(dtype)
    batch[0, :, :4] = 1e-9  # darker than 1/255
    jitter = HEDJitter(alpha=0.99, beta=5.0)
    for _ in range(5):
        out = jitter(batch)
        assert out.dtype == dtype
        assert torch.isfinite(out).all()
        assert out.min() >= 0 and out.max() <= 1


def test_batch_draws_are_independent_and_match_per_image():
    images = torch.stack([_to_tensor(synthetic_tissue(48, seed=s)) for s in range(4)])
    jitter = HEDJitter.strong(generator=torch.Generator().manual_seed(2))
    out = jitter(images)
    params = jitter.last_params
    assert params["factors"].shape == (4, 3) and params["shifts"].shape == (4, 3) and params["apply"].shape == (4,)
    assert len({tuple(f.tolist()) for f in params["factors"]}) == 4
    for i in range(4):
        single = {name: value[i : i + 1] for name, value in params.items()}
        torch.testing.assert_close(jitter.apply_params(images[i], single), out[i], rtol=0, atol=1)


def test_parameter_ranges_and_per_channel_alpha():
    jitter = HEDJitter(alpha=(0.1, 0.0, 0.3), beta=(0.0, 0.02, 0.0))
    params = jitter.generate_parameters(500, generator=torch.Generator().manual_seed(0))
    factors, shifts = params["factors"], params["shifts"]
    assert params["apply"].all()
    assert (factors[:, 0] - 1).abs().max() <= 0.1 and (factors[:, 0] - 1).abs().max() > 0.09
    assert (factors[:, 1] == 1).all()
    assert (factors[:, 2] - 1).abs().max() <= 0.3 and (factors[:, 2] - 1).abs().max() > 0.29
    assert (shifts[:, [0, 2]] == 0).all() and shifts[:, 1].abs().max() <= 0.02


def test_seeding_with_manual_seed_and_generator():
    image = synthetic_tissue(32, seed=0)
    jitter = HEDJitter.strong()
    torch.manual_seed(11)
    first = jitter(image)
    torch.manual_seed(11)
    np.testing.assert_array_equal(jitter(image), first)
    a = HEDJitter.strong(generator=torch.Generator().manual_seed(3))
    b = HEDJitter.strong(generator=torch.Generator().manual_seed(3))
    c = HEDJitter.strong(generator=torch.Generator().manual_seed(4))
    torch.manual_seed(0)
    out_a = a(image)
    torch.manual_seed(1)  # the global RNG must not matter when a generator is given
    np.testing.assert_array_equal(b(image), out_a)
    assert not np.array_equal(c(image), out_a)


def test_probability():
    images = torch.stack([_to_tensor(synthetic_tissue(32, seed=s)) for s in range(32)])
    np.testing.assert_array_equal(HEDJitter.strong(p=0.0)(images), images)
    jitter = HEDJitter.strong(p=0.5, generator=torch.Generator().manual_seed(0))
    out = jitter(images)
    applied = jitter.last_params["apply"]
    assert 0 < applied.sum() < 32
    assert torch.equal(out[~applied], images[~applied])
    assert all(not torch.equal(out[i], images[i]) for i in torch.nonzero(applied).flatten())


def test_replay_gives_the_same_output_and_draws_advance():
    image = _to_tensor(synthetic_tissue(32, seed=1))
    jitter = HEDJitter.strong(generator=torch.Generator().manual_seed(0))
    first = jitter(image)
    params = jitter.last_params
    second = jitter(image)
    assert not torch.equal(first, second)
    torch.testing.assert_close(jitter.apply_params(image, params), first, rtol=0, atol=0)


def test_params_for_one_image_broadcast_and_mismatch_raises():
    images = torch.stack([_to_tensor(synthetic_tissue(32, seed=s)) for s in range(3)])
    jitter = HEDJitter.strong()
    one = jitter.generate_parameters(1)
    out = jitter.apply_params(images, one)
    assert out.shape == images.shape
    with pytest.raises(ValueError, match="drawn for 2 images"):
        jitter.apply_params(images, jitter.generate_parameters(2))


def test_input_not_modified():
    image = synthetic_tissue(32, seed=2)
    copy = image.copy()
    tensor = _to_tensor(image).float() / 255
    tensor_copy = tensor.clone()
    HEDJitter.strong()(image)
    HEDJitter.strong()(tensor)
    np.testing.assert_array_equal(image, copy)
    assert torch.equal(tensor, tensor_copy)


def test_presets():
    assert HEDJitter.light().alpha == (0.05,) * 3 and HEDJitter.light().beta == (0.05,) * 3
    assert HEDJitter.strong().alpha == (0.2,) * 3 and HEDJitter.strong().beta == (0.2,) * 3
    brh = HEDJitter.brh(p=0.25)
    assert brh.alpha == (0.25,) * 3 and brh.beta == (0.0,) * 3 and brh.p == 0.25
    assert HEDJitter.from_preset("light", beta=0.0).beta == (0.0,) * 3
    with pytest.raises(ValueError, match="unknown preset"):
        HEDJitter.from_preset("medium")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"alpha": 1.0}, "alpha"),
        ({"alpha": -0.1}, "alpha"),
        ({"alpha": (0.1, 0.2)}, "alpha"),
        ({"beta": float("nan")}, "beta"),
        ({"p": 1.5}, "p must be"),
        ({"basis": "lab"}, "basis"),
        ({"generator": 3}, "generator"),
        ({"shift_ramp": (0.3, 0.1)}, "shift_ramp"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        HEDJitter(**kwargs)


def test_kernel_rejects_bad_shapes():
    rgb = torch.rand(2, 3, 8, 8)
    with pytest.raises(ValueError, match="factors"):
        hed_jitter(rgb, torch.ones(3, 3), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="stains"):
        stain_jitter(rgb, torch.ones(4, 2), torch.ones(2, 2), torch.zeros(2, 2))


def test_two_stain_basis_keeps_the_residual():
    # With an H&E-only basis and unit factors / zero shifts, colour outside the basis is untouched;
    # scaling one stain changes the image along that stain's OD vector only.
    batch = _to_tensor(synthetic_tissue(32, seed=3))[None].double() / 255
    stains = torch.tensor([[0.65, 0.07], [0.70, 0.99], [0.29, 0.11]], dtype=torch.float64)
    stains = stains / stains.norm(dim=0)
    same = stain_jitter(batch, stains, torch.ones(1, 2), torch.zeros(1, 2))
    torch.testing.assert_close(same, batch)
    out = stain_jitter(batch, stains, torch.tensor([[1.0, 1.5]]), torch.zeros(1, 2))
    delta = (-torch.log(out.clamp(min=1 / 255)) + torch.log(batch.clamp(min=1 / 255))).flatten(2)[0]
    tissue = (batch < 0.9).any(dim=1).flatten() & (out > 1 / 255).all(dim=1).flatten()
    cross = torch.linalg.cross(delta[:, tissue].T, stains[:, 1].expand(int(tissue.sum()), 3))
    assert cross.abs().max() < 1e-9


def test_gradients_flow():
    rgb = (torch.rand(1, 3, 4, 4, dtype=torch.float64) * 0.6 + 0.2).requires_grad_()
    factors = torch.tensor([[1.1, 0.9, 1.0]], dtype=torch.float64)
    for shifts in ([[0.01, 0.02, 0.0]], [[-0.01, 0.02, 0.0]]):  # both code paths
        shifts = torch.tensor(shifts, dtype=torch.float64)
        assert torch.autograd.gradcheck(lambda x, s=shifts: hed_jitter(x, factors, s), (rgb,))


@pytest.mark.parametrize("basis", ["macenko", "vahadane"])
def test_estimated_basis_follows_the_image_stains(basis):
    # A tile rendered with known stain vectors, its eosin far from Ruifrok's: scaling eosin in an
    # estimated basis changes the optical density along the true eosin vector.
    truth = np.array([[0.70, 0.15], [0.68, 0.90], [0.22, 0.40]])
    truth = truth / np.linalg.norm(truth, axis=0)
    image = synthetic_tissue(96, seed=8, stain_matrix=truth)
    params = {
        "factors": torch.tensor([[1.0, 1.3, 1.0]]),
        "shifts": torch.zeros(1, 3),
        "apply": torch.ones(1, dtype=torch.bool),
    }

    def direction(jitter: HEDJitter) -> np.ndarray:
        out = jitter.apply_params(image.astype(np.float64) / 255, params)
        delta = np.log(np.maximum(image / 255.0, 1 / 255)) - np.log(np.maximum(out, 1 / 255))
        moved = (np.abs(delta).sum(-1) > 0.05) & (out > 1 / 255).all(-1) & (image > 0).all(-1)
        assert moved.sum() > 100
        mean = delta[moved].mean(axis=0)
        return mean / np.linalg.norm(mean)

    estimated = direction(HEDJitter(basis=basis))
    ruifrok = direction(HEDJitter(basis="ruifrok"))
    assert estimated @ truth[:, 1] > 0.99
    assert ruifrok @ truth[:, 1] < 0.97


@pytest.mark.parametrize("basis", ["macenko", "vahadane"])
def test_estimated_basis_on_background_and_batches(basis):
    blank = np.full((2, 32, 32, 3), 255, np.uint8)
    np.testing.assert_array_equal(HEDJitter.strong(basis=basis)(blank), blank)
    images = torch.stack([_to_tensor(synthetic_tissue(48, seed=s)) for s in range(3)])
    jitter = HEDJitter.strong(basis=basis, generator=torch.Generator().manual_seed(0))
    out = jitter(images)
    assert out.shape == images.shape and out.dtype == torch.uint8
    for i in range(3):
        single = {name: value[i : i + 1] for name, value in jitter.last_params.items()}
        torch.testing.assert_close(jitter.apply_params(images[i], single), out[i], rtol=0, atol=1)


@pytest.mark.parametrize("channel_last", [True, False])
@pytest.mark.parametrize("shift_sign", [1.0, -1.0])
def test_uint8_levels_give_the_bits_of_converting_first(monkeypatch, channel_last, shift_sign):
    # uint8 is converted block by block (odd-sized blocks here, so that the last one is ragged); the
    # result must be exactly that of converting the whole batch to float, jittering and rounding back.
    monkeypatch.setattr("stain_transforms._kernels.blocks.CPU_BLOCK_PER_THREAD", 997)
    images = np.stack([synthetic_tissue(72, seed=s) for s in range(2)])
    levels = torch.from_numpy(images).permute(0, 3, 1, 2)
    if not channel_last:
        levels = levels.contiguous()
    before = levels.clone()
    factors = torch.tensor([[1.2, 0.8, 1.1], [0.9, 1.15, 0.95]])
    shifts = shift_sign * torch.tensor([[0.1, 0.05, 0.02], [0.03, 0.15, 0.0]])
    out = stain_jitter(levels, RUIFROK_STAINS, factors, shifts)
    assert out.dtype == torch.uint8 and out.stride() == levels.stride()
    converted = stain_jitter(levels_to_unit(levels), RUIFROK_STAINS, factors, shifts)
    assert torch.equal(out, unit_to_dtype_(converted, torch.uint8))
    assert torch.equal(levels, before) and (out != levels).float().mean() > 0.5


def test_uint8_levels_in_one_whole_batch_block_as_off_the_cpu(monkeypatch):
    # The path a GPU takes (the whole batch as one block, no scratch buffers), run here on the CPU.
    images = np.stack([synthetic_tissue(40, seed=s) for s in range(3)])
    levels = torch.from_numpy(images).permute(0, 3, 1, 2)
    factors, shifts = torch.tensor([[1.2, 0.8, 1.1]]).repeat(3, 1), torch.tensor([[0.1, -0.05, 0.0]]).repeat(3, 1)
    by_blocks = stain_jitter(levels, RUIFROK_STAINS, factors, shifts)
    monkeypatch.setattr("stain_transforms._kernels.jitter.works_in_blocks", lambda rgb, needs_grad: False)
    whole = stain_jitter(levels, RUIFROK_STAINS, factors, shifts)
    assert whole.dtype == torch.uint8 and whole.stride() == levels.stride()
    assert (whole.int() - by_blocks.int()).abs().max() <= 1  # batched matrix products may round differently


def test_kept_scratch_is_reused_and_carries_nothing_between_calls(monkeypatch):
    # The scratch of a block is kept for the thread's next call (no page faults for new memory); a call
    # must not see anything of the previous one, whatever its input or dtype.
    monkeypatch.setattr("stain_transforms._kernels.blocks.CPU_BLOCK_PER_THREAD", 1024)
    first, second = (_to_tensor(synthetic_tissue(48, seed=s))[None] for s in (5, 6))
    factors, shifts = torch.tensor([[1.2, 0.8, 1.1]]), torch.tensor([[0.1, -0.05, 0.02]])
    expected = stain_jitter(first, RUIFROK_STAINS, factors, shifts)
    kept = blocks._KEPT.scratch
    stain_jitter(second, RUIFROK_STAINS, factors, -shifts)
    assert blocks._KEPT.scratch is kept  # reused, and left holding the second image's values
    assert torch.equal(stain_jitter(first, RUIFROK_STAINS, factors, shifts), expected)
    stain_jitter(second.double() / 255, RUIFROK_STAINS, factors, shifts)
    assert torch.equal(stain_jitter(first, RUIFROK_STAINS, factors, shifts), expected)


def test_threads_jittering_at_once_match_one_at_a_time():
    images = [_to_tensor(synthetic_tissue(96, seed=s))[None] for s in range(4)]
    factors, shifts = torch.tensor([[1.2, 0.8, 1.1]]), torch.tensor([[0.1, -0.05, 0.02]])
    expected = [stain_jitter(image, RUIFROK_STAINS, factors, shifts) for image in images]
    with ThreadPoolExecutor(max_workers=4) as pool:
        for _ in range(5):
            results = list(pool.map(lambda image: stain_jitter(image, RUIFROK_STAINS, factors, shifts), images))
            assert all(torch.equal(out, want) for out, want in zip(results, expected))


def test_unapplied_uint8_jitter_returns_a_copy():
    image = synthetic_tissue(32, seed=3)
    out = HEDJitter(p=0.0)(image)
    assert np.array_equal(out, image) and not np.shares_memory(out, image)
    tensor = _to_tensor(image)
    assert HEDJitter(p=0.0)(tensor).data_ptr() != tensor.data_ptr()


def test_cpu_batches_go_image_by_image_with_the_same_result():
    images = np.stack([synthetic_tissue(48, seed=s) for s in range(3)])
    jitter = HEDJitter.strong(generator=torch.Generator().manual_seed(4))
    out = jitter(images)
    assert isinstance(out, np.ndarray) and out.shape == images.shape and out.dtype == np.uint8
    # The whole-batch path (as on a GPU) gives the same bits.
    batch = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    whole = jitter.apply_batch(batch, jitter.last_params)
    expected = (whole * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(out, expected)
    with pytest.raises(ValueError, match="drawn for 2 images"):
        jitter.apply_params(images, jitter.generate_parameters(2))
