"""Input validation and "same in, same out" conversion (stain_transforms.conversion)."""

import re

import numpy as np
import PIL.Image
import pytest
import torch

from stain_transforms.conversion import iter_batches, to_batch


def roundtrip(x):
    batch, restore = to_batch(x)
    return batch, restore(batch)


def test_numpy_hwc_uint8_roundtrip_is_exact(source_tile):
    batch, back = roundtrip(source_tile)
    assert batch.shape == (1, 3, 96, 96) and batch.dtype == torch.float32
    assert back.dtype == np.uint8 and np.array_equal(back, source_tile)


def test_keep_uint8_gives_a_view_and_restore_never_returns_the_callers_memory(source_tile):
    chw = torch.from_numpy(source_tile.copy()).permute(2, 0, 1).contiguous()
    for x in (source_tile, chw, PIL.Image.fromarray(source_tile)):
        batch, restore = to_batch(x, keep_uint8=True)
        assert batch.shape == (1, 3, 96, 96) and batch.dtype == torch.uint8
        back = restore(batch)  # a transform that changed nothing returns its input batch
        if isinstance(x, torch.Tensor):
            assert back.dtype == torch.uint8 and torch.equal(back, x) and back.data_ptr() != x.data_ptr()
        else:  # an array, or a PIL image made from one
            assert np.array_equal(np.asarray(back), source_tile) and not np.shares_memory(np.asarray(back), source_tile)
    assert np.shares_memory(to_batch(source_tile, keep_uint8=True)[0].numpy(), source_tile)  # no copy in
    float_batch, _ = to_batch(chw.float() / 255, keep_uint8=True)  # only uint8 is kept
    assert float_batch.dtype == torch.float32


def test_tensor_layouts_and_dtypes_are_preserved(source_tile):
    chw = torch.from_numpy(source_tile).permute(2, 0, 1)
    for x in (chw, chw[None].repeat(2, 1, 1, 1), chw.float() / 255, chw.double() / 255, chw.half() / 255):
        batch, back = roundtrip(x)
        assert batch.ndim == 4 and back.shape == x.shape and back.dtype == x.dtype
        assert torch.allclose(back.float(), x.float(), atol=1e-3)
    assert to_batch(chw.double() / 255)[0].dtype == torch.float64


def test_pil_roundtrip(source_tile):
    _, back = roundtrip(PIL.Image.fromarray(source_tile))
    assert isinstance(back, PIL.Image.Image) and np.array_equal(np.asarray(back), source_tile)


def test_batch_is_a_copy_and_input_is_never_written(source_tile):
    x = torch.from_numpy(source_tile).permute(2, 0, 1).float() / 255
    before = x.clone()
    batch, _ = to_batch(x)
    batch.zero_()
    assert torch.equal(x, before)


def test_read_only_and_non_contiguous_arrays_are_accepted(source_tile):
    ro = source_tile.copy()
    ro.setflags(write=False)
    assert to_batch(ro)[0].shape == (1, 3, 96, 96)
    strided = np.ascontiguousarray(np.concatenate([source_tile, source_tile], axis=1))[:, ::2]
    assert not strided.flags["C_CONTIGUOUS"]
    assert np.array_equal(roundtrip(strided)[1], strided)


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((8, 8), np.uint8), "grayscale"),
        (np.zeros((8, 8, 4), np.uint8), "RGBA"),
        (np.zeros((3, 8, 8), np.uint8), "channel-first"),
        (torch.zeros(8, 8, 3), "channel-last"),
        (np.zeros((8, 8, 3), np.uint16), "unsupported dtype uint16"),
        (torch.zeros(3, 8, 8, dtype=torch.int32), "unsupported dtype"),
        (np.zeros((1, 1, 3), np.uint8), "too small"),
        (np.zeros((0, 5, 3), np.uint8), "empty"),
        (np.full((4, 4, 3), np.nan, np.float32), "NaN"),
        (np.full((4, 4, 3), np.inf, np.float32), "NaN or infinite"),
        (np.full((4, 4, 3), 200.0, np.float32), "must lie in [0, 1]"),
        (PIL.Image.new("L", (8, 8)), "grayscale"),
        (PIL.Image.new("RGBA", (8, 8)), "RGBA"),
        ("image.png", "unsupported input type"),
    ],
)
def test_bad_input_gets_a_value_error_naming_the_problem(bad, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        to_batch(bad)


def test_iter_batches_accepts_lists_loaders_and_pairs(source_tile):
    chw = torch.from_numpy(source_tile).permute(2, 0, 1)
    assert len(list(iter_batches([source_tile, chw]))) == 2
    loader = torch.utils.data.DataLoader([(chw, 0), (chw, 1), (chw, 1)], batch_size=2)
    assert [b.shape[0] for b in iter_batches(loader)] == [2, 1]
    assert len(list(iter_batches(iter([{"image": chw}])))) == 1
    with pytest.raises(ValueError, match="not paths"):
        list(iter_batches("a.png"))


@pytest.mark.parametrize(
    ("batch", "fragment"),
    [
        (np.zeros((2, 3, 8, 8), np.uint8), "(2, 3, 8, 8)"),  # a channel-first array batch
        (np.zeros((2, 8, 8, 4), np.uint8), "(2, 8, 8, 4)"),
        (np.zeros((2, 8, 8, 3), np.int32), "(2, 8, 8, 3)"),
        (torch.zeros(2, 8, 8, 3, dtype=torch.uint8), "(2, 8, 8, 3)"),
    ],
)
def test_a_malformed_batch_is_described_as_given(batch, fragment):
    # CPU batches are worked image by image; a malformed one must still be reported whole.
    from stain_transforms import HEDJitter, ReinhardNormalize
    from stain_transforms.testing import synthetic_tissue

    for transform in (ReinhardNormalize().fit(synthetic_tissue(32)), HEDJitter(p=1.0)):
        with pytest.raises(ValueError, match=re.escape(fragment)):
            transform(batch)
