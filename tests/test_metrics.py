"""The paper's metrics, checked against direct scikit-image calls and the reference figures."""

import csv
import json

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from stain_transforms.evaluation import evaluate_folders
from stain_transforms.files import write_image_atomic
from stain_transforms.metrics import crop_border, fidelity


def test_metrics_match_scikit_image(source_tile, reference_tile):
    score = fidelity(source_tile, reference_tile, reference_tile)
    assert score.psnr_target == pytest.approx(peak_signal_noise_ratio(reference_tile, source_tile, data_range=255))
    assert score.ssim_target == pytest.approx(structural_similarity(reference_tile, source_tile, channel_axis=-1, data_range=255))
    gray = lambda x: x.astype(float) @ [0.299, 0.587, 0.114]
    stretch = lambda g: (g - g.min()) / (g.max() - g.min()) * 255
    expected = structural_similarity(stretch(gray(reference_tile)), stretch(gray(source_tile)), data_range=255)
    assert score.ssim_source == pytest.approx(expected)


def test_ssim_source_ignores_colour_but_not_structure(reference_tile):
    recoloured = reference_tile // 2 + 60  # same structure, affine in every channel
    assert fidelity(recoloured, reference_tile, reference_tile).ssim_source > 0.99
    assert fidelity(np.rot90(reference_tile).copy(), reference_tile, reference_tile).ssim_source < 0.5


@pytest.mark.filterwarnings("ignore:divide by zero")  # identical images: PSNR is infinite
def test_evaluate_folders_applies_shift_and_crop(tmp_path, source_tile, reference_tile):
    for sub in ("src", "tgt", "out"):
        (tmp_path / sub).mkdir()
    shifted = np.roll(reference_tile, (3, -2), axis=(0, 1))
    write_image_atomic(source_tile, tmp_path / "src" / "a.png")
    write_image_atomic(shifted, tmp_path / "tgt" / "a.png")
    write_image_atomic(reference_tile, tmp_path / "out" / "a.png")
    with open(tmp_path / "pairs.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([["pair", "shift_dy", "shift_dx"], ["a.png", -3, 2]])
    result = evaluate_folders(tmp_path / "src", tmp_path / "tgt", tmp_path / "out", tmp_path / "pairs.csv", crop=4, progress=False)
    assert result.mean.ssim_target == pytest.approx(1.0) and np.isinf(result.mean.psnr_target)
    unshifted = evaluate_folders(tmp_path / "src", tmp_path / "tgt", tmp_path / "out", crop=4, progress=False)
    assert unshifted.mean.ssim_target < 0.9
    json.dumps(unshifted.as_dict())


def test_crop_border_rejects_crops_larger_than_the_image(reference_tile):
    assert crop_border(reference_tile, 16).shape == (64, 64, 3)
    with pytest.raises(ValueError, match="leaves nothing"):
        crop_border(reference_tile, 48)


def test_reference_figures_on_mitos_pairs(shared_data):
    """../shared/README.md: unnormalized 0.563 / 19.14 dB; CycleGAN outputs 0.671 / 22.93 dB / 0.926."""
    pairs = shared_data / "mitos_atypia14_pairs"
    args = dict(shift_csv=pairs / "pairs.csv", crop=16, progress=False)
    raw = evaluate_folders(pairs / "aperio", pairs / "hamamatsu", pairs / "aperio", **args).mean
    assert (round(raw.ssim_target, 3), round(raw.psnr_target, 2), raw.ssim_source) == (0.563, 19.14, 1.0)
    gan = evaluate_folders(pairs / "aperio", pairs / "hamamatsu", pairs / "cyclegan_fake_hamamatsu", **args).mean
    assert (round(gan.ssim_target, 3), round(gan.psnr_target, 2), round(gan.ssim_source, 3)) == (0.671, 22.93, 0.926)
