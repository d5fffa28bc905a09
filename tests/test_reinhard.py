"""Reinhard normalization against a numpy/scikit-image re-derivation and the target's Lab statistics."""

import numpy as np
import pytest
import torch
from skimage import color as skcolor

from stain_transforms import ReinhardNormalize


def numpy_reinhard(source: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Reinhard et al. (2001) in CIE Lab, written independently with scikit-image."""
    src, ref = skcolor.rgb2lab(source / 255.0), skcolor.rgb2lab(reference / 255.0)
    src_mean, src_std = src.reshape(-1, 3).mean(0), src.reshape(-1, 3).std(0, ddof=1)
    ref_mean, ref_std = ref.reshape(-1, 3).mean(0), ref.reshape(-1, 3).std(0, ddof=1)
    lab = (src - src_mean) * (ref_std / src_std) + ref_mean
    return np.clip(np.round(skcolor.lab2rgb(lab) * 255), 0, 255).astype(np.uint8)


def test_matches_numpy_reimplementation(source_tile, reference_tile):
    ours = ReinhardNormalize().fit(reference_tile)(source_tile)
    expected = numpy_reinhard(source_tile, reference_tile)
    assert np.abs(ours.astype(int) - expected).max() <= 1


def test_output_lab_statistics_match_the_target(reference_tile):
    source = (reference_tile.astype(np.float64) / 255) * 0.9 + 0.05  # a contrast change, within gamut after transfer
    out = ReinhardNormalize().fit(reference_tile)(source)
    out_lab, ref_lab = skcolor.rgb2lab(out).reshape(-1, 3), skcolor.rgb2lab(reference_tile).reshape(-1, 3)
    np.testing.assert_allclose(out_lab.mean(0), ref_lab.mean(0), atol=0.3)
    np.testing.assert_allclose(out_lab.std(0), ref_lab.std(0), rtol=0.03)


def test_fit_on_many_takes_the_median_of_per_image_statistics(reference_tile, source_tile):
    odd_one = (reference_tile * 0.5).astype(np.uint8)
    normalizer = ReinhardNormalize().fit([reference_tile, reference_tile, odd_one])
    single = ReinhardNormalize().fit(reference_tile)
    for name, value in single.target_statistics().items():
        torch.testing.assert_close(normalizer.target_statistics()[name], value)


def test_batch_equals_per_image(reference_tile, source_tile):
    normalizer = ReinhardNormalize().fit(reference_tile)
    batch = torch.from_numpy(np.stack([source_tile, reference_tile])).permute(0, 3, 1, 2)
    out = normalizer(batch)
    for i in range(2):
        assert torch.equal(out[i], normalizer(batch[i]))


def test_float64_agrees_with_float32(reference_tile, source_tile):
    normalizer = ReinhardNormalize().fit(reference_tile)
    x = torch.from_numpy(source_tile).permute(2, 0, 1)
    out32, out64 = normalizer(x.float() / 255), normalizer(x.double() / 255)
    assert out64.dtype == torch.float64
    torch.testing.assert_close(out32.double(), out64, atol=1e-4, rtol=0)


@pytest.mark.parametrize("value", [0, 255, 128])
def test_tissue_free_and_single_colour_tiles_pass_through(reference_tile, value):
    normalizer = ReinhardNormalize().fit(reference_tile)
    tile = np.full((32, 32, 3), value, np.uint8)
    assert np.array_equal(normalizer(tile), tile)
    assert not normalizer.informative(torch.from_numpy(tile).permute(2, 0, 1)[None] / 255.0).any()


def test_mixed_batch_passes_blank_images_through(reference_tile, source_tile):
    normalizer = ReinhardNormalize().fit(reference_tile)
    white = np.full_like(source_tile, 255)
    out = normalizer(np.stack([source_tile, white]))
    assert np.array_equal(out[1], white) and np.array_equal(out[0], normalizer(source_tile))


def test_unfitted_and_unusable_references_are_reported(reference_tile):
    with pytest.raises(RuntimeError, match="not fitted"):
        ReinhardNormalize()(reference_tile)
    with pytest.raises(ValueError, match="enough tissue"):
        ReinhardNormalize().fit(np.full((16, 16, 3), 255, np.uint8))


def test_state_survives_save_load_pickle_and_state_dict(tmp_path, reference_tile, source_tile):
    import pickle

    normalizer = ReinhardNormalize(luminosity_threshold=0.85).fit(reference_tile)
    expected = normalizer(source_tile)
    path = normalizer.save(tmp_path / "reinhard.safetensors")
    loaded = ReinhardNormalize.load(path)
    assert loaded.luminosity_threshold == 0.85 and np.array_equal(loaded(source_tile), expected)
    assert np.array_equal(pickle.loads(pickle.dumps(normalizer))(source_tile), expected)
    fresh = ReinhardNormalize()
    fresh.load_state_dict(normalizer.state_dict())
    assert np.array_equal(fresh(source_tile), expected)


def test_load_rejects_foreign_and_corrupt_files(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        ReinhardNormalize.load(bad)
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not written by"):
        ReinhardNormalize.load(tmp_path / "other.safetensors")


def test_input_is_never_modified(reference_tile, source_tile):
    normalizer = ReinhardNormalize().fit(reference_tile)
    x = torch.from_numpy(source_tile).permute(2, 0, 1).float() / 255
    before, array_before = x.clone(), source_tile.copy()
    normalizer(x)
    normalizer(source_tile)
    assert torch.equal(x, before) and np.array_equal(source_tile, array_before)
