"""Macenko stain estimation: subsampling, and agreement with torchstain.

What Macenko shares with Vahadane (stain vectors recovered from tissue with known stains, the normalizer
contract, real scanner pairs) is tested for both in test_stain_matrix.py.
"""

import numpy as np
import pytest
import torch
from _stains import angles_deg, to_tensor

from stain_transforms import MacenkoNormalize
from stain_transforms.functional import (
    least_squares_concentrations,
    macenko_stain_matrix,
    max_concentrations,
    rgb_to_od,
)
from stain_transforms.testing import synthetic_tissue


def test_subsample_estimate_is_close_to_the_full_resolution_estimate():
    image = to_tensor(synthetic_tissue(256, seed=5), torch.float64)
    full = macenko_stain_matrix(image, max_pixels=None)[0].numpy()
    sampled = macenko_stain_matrix(image, max_pixels=2**12)[0].numpy()
    assert (angles_deg(sampled, full) < 0.5).all()


def torchstain_macenko(image: np.ndarray):
    """torchstain's numpy Macenko fit, on the same optical densities as ours.

    torchstain computes OD as -log((I + 1) / Io) with Io = 240 by default; ours is -log(max(I, 1) / 255).
    Feeding it I - 1 (clipped at 0) with Io = 255 makes the two definitions identical, so both must
    find the same stain matrix. torchstain does not orient its eigenvectors, so its stain vectors
    may come out negated; we flip them to positive and order them (haematoxylin first) like ours.
    """
    torchstain = pytest.importorskip("torchstain")
    normalizer = torchstain.normalizers.MacenkoNormalizer(backend="numpy")
    normalizer.fit(np.maximum(image.astype(np.float64) - 1.0, 0.0), Io=255, alpha=1, beta=0.15)
    stains = normalizer.HERef * np.where(normalizer.HERef.sum(0) < 0, -1.0, 1.0)
    order = [0, 1] if stains[0, 0] >= stains[0, 1] else [1, 0]
    return stains[:, order], normalizer.HERef, normalizer.maxCRef


def check_against_torchstain(image: np.ndarray):
    theirs, raw_theirs, their_max = torchstain_macenko(image)
    rgb = to_tensor(image, torch.float64)
    # The original method: no luminosity mask and every pixel, as torchstain does.
    ours = macenko_stain_matrix(rgb, luminosity_threshold=None, max_pixels=None)[0].numpy()
    assert (angles_deg(ours, theirs) < 0.1).all()
    # Their 99th-percentile concentrations: least squares over all pixels with their matrix.
    od = rgb_to_od(rgb).flatten(2)
    concentrations = least_squares_concentrations(od, torch.from_numpy(raw_theirs))
    ours_max = max_concentrations(concentrations, torch.ones(1, od.shape[2], dtype=torch.bool))[0].numpy()
    np.testing.assert_allclose(ours_max, their_max, rtol=1e-6)


def test_matches_torchstain_on_synthetic_tissue():
    check_against_torchstain(synthetic_tissue(256, seed=2))


@pytest.mark.shared_data
def test_matches_torchstain_on_its_sample_images(shared_data):
    from PIL import Image

    for name in ("src_512.png", "ref_512.png"):
        path = shared_data / "peer_samples" / name
        if not path.is_file():
            pytest.skip(f"{path} not found")
        check_against_torchstain(np.asarray(Image.open(path).convert("RGB")))


def test_least_squares_option_uses_least_squares():
    image = synthetic_tissue(96, seed=8)
    lstsq, nnls = MacenkoNormalize(solver="lstsq").fit(image), MacenkoNormalize().fit(image)
    torch.testing.assert_close(lstsq.target_stain_matrix, nnls.target_stain_matrix)
    assert lstsq.solver == "lstsq" and nnls.solver == "nnls"
    assert not np.array_equal(lstsq(image), nnls(image))
