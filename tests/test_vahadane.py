"""Vahadane: sparse non-negative dictionary learning in torch, against scipy NNLS, and its seeded subsampling.

What Vahadane shares with Macenko (stain vectors recovered from tissue with known stains, the normalizer
contract, real scanner pairs) is tested for both in test_stain_matrix.py.
"""

import numpy as np
import pytest
import torch
from _stains import STAIN_MATRICES, angles_deg, tissue_with_pure_stains, to_tensor
from scipy.optimize import nnls

from stain_transforms import VahadaneNormalize
from stain_transforms.functional import dictionary_learning, macenko_from_od, rgb_to_od, vahadane_stain_matrix
from stain_transforms.functional.macenko import pixel_masks
from stain_transforms.functional.vahadane import random_pixels

REGULARIZER = 0.1


def objective(od: np.ndarray, dictionary: np.ndarray, regularizer: float = REGULARIZER) -> float:
    """1/2 ||X - W H||^2 + lambda sum(H) at the best H >= 0, computed with scipy's NNLS, pixel by pixel.

    The penalised problem is a plain NNLS after completing the square (G = S^T S = R^T R).
    """
    upper = np.linalg.cholesky(dictionary.T @ dictionary).T
    total = 0.0
    for x in od.T:
        code = nnls(upper, np.linalg.solve(upper.T, dictionary.T @ x - regularizer))[0]
        total += 0.5 * np.sum((x - dictionary @ code) ** 2) + regularizer * code.sum()
    return total


def learning_problem(size=64, seed=0):
    """The OD and tissue mask of a small tile, with the Macenko start, all in float64."""
    pixels = to_tensor(tissue_with_pure_stains(STAIN_MATRICES["warm"], size=size, seed=seed), torch.float64).flatten(2)
    od, mask = rgb_to_od(pixels), pixel_masks(pixels, 0.8)
    return od, mask, macenko_from_od(od, mask)


def test_each_iteration_lowers_the_objective():
    od, mask, init = learning_problem()
    tissue_od = od[0][:, mask[0]].numpy()
    values = [
        objective(tissue_od, dictionary_learning(od, mask, init, REGULARIZER, iterations)[0].numpy())
        for iterations in range(5)
    ]
    assert all(later <= earlier + 1e-9 for earlier, later in zip(values, values[1:])), values
    assert values[-1] < values[0]


def test_learnt_dictionary_is_a_constrained_stationary_point():
    # At convergence no single stain vector can be moved to lower the objective: compare with a
    # brute-force search over small rotations of each column.
    od, mask, init = learning_problem(size=48, seed=1)
    learnt = dictionary_learning(od, mask, init, REGULARIZER, 100)[0].numpy()
    tissue_od = od[0][:, mask[0]].numpy()
    assert (learnt >= 0).all() and (np.linalg.norm(learnt, axis=0) <= 1 + 1e-9).all()
    best = objective(tissue_od, learnt)
    rng = np.random.default_rng(0)
    for _ in range(5):
        for column in range(2):
            moved = learnt.copy()
            moved[:, column] = np.clip(moved[:, column] + rng.normal(0, 0.01, 3), 0, None)
            moved[:, column] /= max(np.linalg.norm(moved[:, column]), 1.0)
            assert objective(tissue_od, moved) >= best - 1e-6


def test_deterministic_under_a_seed():
    image = to_tensor(tissue_with_pure_stains(STAIN_MATRICES["typical"], size=256, seed=4))
    first = vahadane_stain_matrix(image, max_pixels=2000, generator=torch.Generator().manual_seed(7))
    again = vahadane_stain_matrix(image, max_pixels=2000, generator=torch.Generator().manual_seed(7))
    other = vahadane_stain_matrix(image, max_pixels=2000, generator=torch.Generator().manual_seed(8))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)  # another subsample...
    assert (angles_deg(first[0].numpy(), other[0].numpy()) < 2.0).all()  # ...much the same answer
    assert torch.equal(vahadane_stain_matrix(image, max_pixels=2000), vahadane_stain_matrix(image, max_pixels=2000))


def test_normalizer_seed_is_part_of_its_config():
    image = tissue_with_pure_stains(STAIN_MATRICES["warm"], size=256, seed=5)
    seeded = [VahadaneNormalize(seed=seed, max_pixels=2000).fit(image) for seed in (0, 0, 1)]
    assert torch.equal(seeded[0].target_stain_matrix, seeded[1].target_stain_matrix)
    assert not torch.equal(seeded[0].target_stain_matrix, seeded[2].target_stain_matrix)
    assert seeded[2].config["seed"] == 1


def test_random_pixels_are_shared_by_the_batch():
    images = torch.rand(2, 3, 64, 64)
    images[1] = images[0]
    pixels = random_pixels(images, 500, torch.Generator().manual_seed(0))
    assert pixels.shape == (2, 3, 500) and torch.equal(pixels[0], pixels[1])
    assert random_pixels(images, 10_000).shape == (2, 3, 64 * 64)  # small images are used whole


def test_float64_agrees_with_float32():
    image = tissue_with_pure_stains(STAIN_MATRICES["typical"], size=128, seed=6)
    out32 = vahadane_stain_matrix(to_tensor(image, torch.float32))
    out64 = vahadane_stain_matrix(to_tensor(image, torch.float64))
    assert out64.dtype == torch.float64
    torch.testing.assert_close(out32.double(), out64, atol=1e-4, rtol=0)


def test_bad_settings_raise_value_error():
    with pytest.raises(ValueError, match="regularizer"):
        VahadaneNormalize(regularizer=-1)
    with pytest.raises(ValueError, match="iterations"):
        VahadaneNormalize(iterations=0)
    with pytest.raises(ValueError, match="rgb"):
        vahadane_stain_matrix(torch.rand(3, 8, 8))
