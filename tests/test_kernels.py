"""Every speed kernel of ``stain_transforms._kernels`` equals the plain formula it replaces."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from stain_transforms._kernels import blocks, gram, jitter, lab, levels, lookup_table
from stain_transforms._kernels.constants import Constant
from stain_transforms.functional.color.lab import GAINED_FROM_WHITE_XYZ, WHITE_XYZ_FROM_GAINED, XYZ_FROM_RGB
from stain_transforms.functional.jitter import RUIFROK_STAINS, SHIFT_RAMP, shift_weight
from stain_transforms.testing import synthetic_tissue

GENERATOR = torch.Generator().manual_seed(0)


def plain_to_uint8(values: torch.Tensor) -> torch.Tensor:
    return (values * 255).round().clamp(0, 255).to(torch.uint8)  # in the values' own dtype


def every_kind_of_value(dtype: torch.dtype) -> torch.Tensor:
    """(2, 3, 16, 32): exact ties (k + 0.5) / 255, every level, values just outside [0, 1], random values."""
    values = torch.cat([(torch.arange(255) + 0.5) / 255, torch.arange(256) / 255, torch.tensor([-0.2, -0.0, 1.3])])
    batch = torch.cat([values, torch.rand(2 * 3 * 16 * 32 - len(values), generator=GENERATOR)])
    return batch.reshape(2, 3, 16, 32).to(dtype)


# -- constants ---------------------------------------------------------------------------------


def test_constant_is_the_value_converted_and_kept_per_dtype():
    constant = Constant([[1.0, 2.0], [3.0, 4.0]])
    for like in (torch.zeros(1), torch.zeros(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float16)):
        assert torch.equal(constant.like(like), constant.value.to(like))
        assert constant.like(like) is constant.like(like.clone())
    assert len(constant._copies) == 3  # one per dtype and device: it cannot grow with the data


# -- levels ------------------------------------------------------------------------------------


def test_levels_to_unit_is_division_by_255_into_contiguous_float32():
    u8 = torch.randint(0, 256, (2, 5, 7, 3), dtype=torch.uint8, generator=GENERATOR).permute(0, 3, 1, 2)
    unit = levels.levels_to_unit(u8)
    assert unit.is_contiguous() and torch.equal(unit, u8.float() / 255)
    assert torch.equal(levels.levels_to_unit(u8, out=torch.empty(u8.shape)), unit)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_unit_to_dtype_rounds_half_to_even_like_the_plain_formula(dtype):
    values = every_kind_of_value(dtype)
    assert torch.equal(levels.unit_to_dtype_(values.clone(), torch.uint8), plain_to_uint8(values))
    assert torch.equal(levels.unit_to_dtype_(values.clone(), torch.float64), values.clamp(0, 1).double())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rounding_by_the_float_bit_pattern_equals_the_plain_formula(dtype):
    values = every_kind_of_value(dtype)
    assert torch.equal(levels.unit_to_levels_(values.clone()), plain_to_uint8(values))
    assert levels.unit_to_levels_(values.half()) is None and levels.unit_to_levels_(values.mT) is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize("contiguous", [True, False])
def test_channel_last_uint8_equals_permuting_and_rounding(dtype, contiguous):
    batch = every_kind_of_value(dtype)
    if not contiguous:  # a transposed result takes the plain path
        batch = batch.transpose(2, 3).contiguous().transpose(2, 3)
    result = levels.unit_to_channel_last_uint8_(batch.clone())
    assert result.shape == (2, 16, 32, 3) and result.dtype == torch.uint8 and result.is_contiguous()
    assert torch.equal(result, plain_to_uint8(batch.permute(0, 2, 3, 1)))


def test_channel_gather_and_copy_equal_torch_copies():
    planes = torch.randint(0, 256, (2, 3, 40), dtype=torch.uint8, generator=GENERATOR)
    assert torch.equal(levels.gather_channel_last(planes), planes.permute(0, 2, 1))
    strided = planes[:, :, ::2]
    assert torch.equal(levels.gather_channel_last(strided), strided.permute(0, 2, 1))
    for into in (torch.empty(2, 40, 3, dtype=torch.uint8).transpose(1, 2), torch.empty(2, 3, 40, dtype=torch.uint8)):
        levels.copy_levels(planes, into)
        assert torch.equal(into, planes)


# -- blocks ------------------------------------------------------------------------------------


def test_cpu_blocks_cover_every_pixel_of_every_image_once(monkeypatch):
    monkeypatch.setattr(blocks, "CPU_BLOCK_PER_THREAD", 7)
    size, parts = blocks.cpu_blocks(3, 50)
    covered = torch.zeros(3, 1, 50, dtype=torch.int64)
    for part in parts:
        covered[part] += 1
    assert size == min(7 * torch.get_num_threads(), 50) and bool((covered == 1).all())


def test_thread_scratch_is_kept_per_thread_and_per_shape():
    rows = {"a": 3, "b": 2}
    mine = blocks.thread_scratch(rows, 16, torch.float32)
    assert blocks.thread_scratch(rows, 16, torch.float32) is mine
    assert blocks.thread_scratch(rows, 17, torch.float32) is not mine
    other = []
    thread = threading.Thread(target=lambda: other.append(blocks.thread_scratch(rows, 17, torch.float32)))
    thread.start()
    thread.join()
    assert other[0]["a"].data_ptr() != blocks.thread_scratch(rows, 17, torch.float32)["a"].data_ptr()


# -- jitter ------------------------------------------------------------------------------------


def plain_jitter(rgb, stains, factors, shifts, ramp=SHIFT_RAMP):
    """The documented formula, one operation each: OD -> concentrations -> scale and shift -> OD -> RGB."""
    unit = 1.0 / -np.log(1e-6)  # scikit-image's HED units
    mix = stains.double() / unit
    unmix = torch.linalg.pinv(stains.double()) * unit
    od = -torch.log(rgb.double().clamp(min=1 / 255)).flatten(2)
    concentrations = unmix @ od
    scaled = factors.double().unsqueeze(-1) * concentrations
    weight = shift_weight(od.unsqueeze(-1), ramp).flatten(2)
    shift = (shifts.double().unsqueeze(-1) * weight).clamp(min=-scaled.clamp(min=0))
    delta_od = mix @ (scaled + shift - concentrations)
    return (rgb.double().flatten(2) * torch.exp(-delta_od)).clamp(0, 1).view(rgb.shape)


@pytest.mark.parametrize("shift_sign", [1.0, -1.0])
@pytest.mark.parametrize("basis", ["ruifrok", "two stains"])
def test_jitter_kernel_equals_the_plain_formula(shift_sign, basis):
    images = torch.stack([torch.from_numpy(synthetic_tissue(40, seed=s)).permute(2, 0, 1) for s in range(2)])
    rgb = images.double() / 255
    stains = RUIFROK_STAINS if basis == "ruifrok" else RUIFROK_STAINS[:, :2]
    k = stains.shape[1]
    factors = torch.tensor([[1.2, 0.8, 1.1], [0.9, 1.15, 0.95]], dtype=torch.float64)[:, :k]
    shifts = shift_sign * torch.tensor([[0.1, 0.05, 0.02], [0.03, 0.15, 0.0]], dtype=torch.float64)[:, :k]
    unit = -np.log(1e-6)
    mix, unmix = stains.double() * unit, torch.linalg.pinv(stains.double()) / unit
    scale = (mix * (factors - 1).unsqueeze(-2)) @ unmix
    out = jitter.apply_jitter(rgb, scale, mix, shifts, factors.unsqueeze(-1) * unmix, SHIFT_RAMP)
    expected = plain_jitter(rgb, stains, factors, shifts)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-10)
    assert (out - rgb).abs().max() > 0.05  # the test image is really jittered


# -- Lab curves --------------------------------------------------------------------------------


def plain_srgb_to_linear(c):
    return torch.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)


def plain_cie_f(t):
    return torch.where(t > 0.008856, t ** (1 / 3), 7.787 * t + 16 / 116)


def dark_and_bright(n: int = 4096) -> torch.Tensor:
    """(1, 3, n) values in [0, 1] with some below every toe of the curves."""
    values = torch.rand(1, 3, n, dtype=torch.float64, generator=GENERATOR)
    values[..., : n // 8] *= 0.01
    return values


def test_srgb_curves_equal_the_standard():
    rgb = dark_and_bright()
    torch.testing.assert_close(lab.srgb_to_linear(rgb), plain_srgb_to_linear(rgb))
    gained = lab.srgb_to_linear(rgb, gained=True)
    torch.testing.assert_close(gained, plain_srgb_to_linear(rgb) * lab.SRGB_GAIN)
    torch.testing.assert_close(lab.gained_linear_to_srgb_(gained.clone()), rgb)


def test_cie_f_and_its_inverse_equal_the_standard():
    t = dark_and_bright()
    f = lab.cie_f_(t.clone())
    torch.testing.assert_close(f, plain_cie_f(t))
    torch.testing.assert_close(lab.cie_f_inverse(f), t)
    torch.testing.assert_close(lab.cie_f_inverse(f, out=torch.empty_like(f)), t)


@pytest.mark.parametrize("requires_grad", [False, True])
def test_lab_f_kernels_equal_the_plain_conversion(requires_grad):
    rgb = dark_and_bright().view(1, 3, 64, 64).requires_grad_(requires_grad)
    f, spare = lab.rgb_to_lab_f_and_spare(rgb, WHITE_XYZ_FROM_GAINED)
    white = torch.tensor([0.95047, 1.0, 1.08883], dtype=torch.float64)
    xyz = (XYZ_FROM_RGB / white[:, None]) @ plain_srgb_to_linear(rgb.detach()).flatten(2)
    torch.testing.assert_close(f.detach(), plain_cie_f(xyz).view_as(f))
    back = lab.lab_f_to_rgb_(f, spare, GAINED_FROM_WHITE_XYZ)
    torch.testing.assert_close(back.detach(), rgb.detach())
    if requires_grad:
        back.sum().backward()
        assert rgb.grad is not None and torch.isfinite(rgb.grad).all()


def test_power_and_curve_helpers_equal_their_formulas():
    x = torch.rand(100, dtype=torch.float64, generator=GENERATOR)
    torch.testing.assert_close(lab.power_(x.clone(), 2.4), x**2.4)
    curve = lab.apply_curve_(x.clone(), 0.5, lambda v: v.mul_(2), lambda v: v - 1)
    torch.testing.assert_close(curve, torch.where(x > 0.5, 2 * x, x - 1))


# -- gram --------------------------------------------------------------------------------------


def test_blocked_gram_equals_one_product():
    x = torch.rand(2, 3, 5 * gram.GRAM_BLOCK + 17, dtype=torch.float64, generator=GENERATOR)
    torch.testing.assert_close(gram.gram(x), x @ x.mT)


# -- lookup table ------------------------------------------------------------------------------


def test_pixel_indices_equal_the_plain_formula():
    pixels = np.random.default_rng(0).integers(0, 256, (1000, 3), dtype=np.uint8)
    r, g, b = pixels.astype(np.int64).T
    plain = r + 256 * g + 65536 * b
    np.testing.assert_array_equal(lookup_table.interleaved_index(pixels), plain)
    np.testing.assert_array_equal(lookup_table.planar_index(np.ascontiguousarray(pixels.T)), plain)


@pytest.fixture(scope="module")
def squaring_table():
    def colour_map(colours: torch.Tensor) -> torch.Tensor:
        return colours.flip(-1) ** 2

    return colour_map, lookup_table.build_table(colour_map)


def test_table_rows_equal_the_map_of_their_colours(squaring_table):
    colour_map, table = squaring_table
    rows = torch.randint(0, lookup_table.N_COLOURS, (5000,), generator=GENERATOR)
    colours = torch.stack([rows % 256, rows // 256 % 256, rows // 65536], dim=1).to(torch.uint8)
    expected = plain_to_uint8(colour_map(colours.float() / 255))
    assert torch.equal(table[rows], expected)


@pytest.mark.parametrize("layout", ["channel-first", "channel-last", "strided"])
def test_applying_the_table_equals_a_plain_gather(squaring_table, layout):
    _, table = squaring_table
    images = torch.randint(0, 256, (2, 3, 30, 20), dtype=torch.uint8, generator=GENERATOR)
    if layout == "channel-last":
        images = images.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    elif layout == "strided":
        images = images[..., ::2]
    index = images[:, 0].long() + 256 * images[:, 1].long() + 65536 * images[:, 2].long()
    expected = table[index].permute(0, 3, 1, 2)
    assert torch.equal(lookup_table.apply_table(table, images), expected)
