"""Concentration solvers and stain transfer against scipy / numpy references written independently."""

import numpy as np
import pytest
import torch
from scipy.optimize import nnls

from stain_transforms.functional import concentrations
from stain_transforms.functional.concentrations import (
    least_squares_concentrations,
    masked_quantile,
    max_concentrations,
    nnls_concentrations,
    stain_transfer,
)

H_AND_E = np.array([[0.65, 0.07], [0.70, 0.99], [0.29, 0.11]])
H_AND_E = H_AND_E / np.linalg.norm(H_AND_E, axis=0)


def unit(matrix) -> np.ndarray:
    matrix = np.asarray(matrix, dtype=np.float64)
    return matrix / np.linalg.norm(matrix, axis=0)


def random_problems(rng, n_matrices, n_pixels, non_negative=True):
    """Random (3, 2) unit-column stain matrices and OD pixels, many of them outside the stain cone."""
    matrices = rng.uniform(0.0, 1.0, (n_matrices, 3, 2)) if non_negative else rng.normal(size=(n_matrices, 3, 2))
    matrices /= np.linalg.norm(matrices, axis=1, keepdims=True)
    od = rng.normal(0.3, 0.8, (n_matrices, 3, n_pixels))
    return matrices, od


def scipy_nnls(matrices, od, l1=0.0):
    """The reference: scipy's active-set NNLS, pixel by pixel.

    The L1-penalised problem 1/2||od - S c||^2 + l1 * sum(c) is a plain NNLS after completing the
    square: with G = S^T S = R^T R (Cholesky), it equals 1/2||R c - R^-T (S^T od - l1)||^2 + const.
    """
    out = np.zeros((matrices.shape[0], 2, od.shape[2]))
    for b, stains in enumerate(matrices):
        upper = np.linalg.cholesky(stains.T @ stains).T
        for n in range(od.shape[2]):
            rhs = np.linalg.solve(upper.T, stains.T @ od[b, :, n] - l1)
            out[b, :, n] = nnls(upper, rhs)[0]
    return out


@pytest.mark.parametrize("non_negative", [True, False], ids=["stain-like", "any-sign"])
@pytest.mark.parametrize("l1", [0.0, 0.1])
def test_nnls_matches_scipy(non_negative, l1):
    rng = np.random.default_rng(0)
    matrices, od = random_problems(rng, 6, 200, non_negative)
    ours = nnls_concentrations(torch.from_numpy(od), torch.from_numpy(matrices), l1=l1).numpy()
    np.testing.assert_allclose(ours, scipy_nnls(matrices, od, l1), atol=1e-9)
    assert (ours >= 0).all()


def test_nnls_keeps_the_spatial_shape_and_a_shared_matrix():
    rng = np.random.default_rng(1)
    od = rng.uniform(0, 1.5, (2, 3, 5, 7))
    ours = nnls_concentrations(torch.from_numpy(od), torch.from_numpy(H_AND_E))
    assert ours.shape == (2, 2, 5, 7)
    expected = scipy_nnls(np.stack([H_AND_E] * 2), od.reshape(2, 3, -1)).reshape(2, 2, 5, 7)
    np.testing.assert_allclose(ours.numpy(), expected, atol=1e-9)


def test_least_squares_matches_numpy_lstsq():
    rng = np.random.default_rng(2)
    matrices, od = random_problems(rng, 4, 50)
    ours = least_squares_concentrations(torch.from_numpy(od), torch.from_numpy(matrices)).numpy()
    for b in range(4):
        np.testing.assert_allclose(ours[b], np.linalg.lstsq(matrices[b], od[b], rcond=None)[0], atol=1e-10)


def test_float32_solvers_agree_with_float64():
    rng = np.random.default_rng(3)
    matrices, od = random_problems(rng, 3, 100)
    for solve in (nnls_concentrations, least_squares_concentrations):
        out64 = solve(torch.from_numpy(od), torch.from_numpy(matrices))
        out32 = solve(torch.from_numpy(od).float(), torch.from_numpy(matrices).float())
        assert out32.dtype == torch.float32
        torch.testing.assert_close(out32.double(), out64, atol=1e-4, rtol=1e-4)


def test_masked_quantile_matches_numpy_percentile():
    rng = np.random.default_rng(4)
    values, mask = rng.normal(size=(5, 2, 500)), rng.uniform(size=(5, 500)) < 0.3
    mask[3] = False
    mask[3, 17] = True  # a single selected pixel
    mask[4] = True
    quantiles = [0.0, 0.01, 0.3, 0.5, 0.99, 1.0]
    ours = masked_quantile(torch.from_numpy(values), torch.from_numpy(mask), quantiles).numpy()
    for b in range(5):
        for c in range(2):
            expected = np.percentile(values[b, c][mask[b]], [100 * q for q in quantiles])
            np.testing.assert_allclose(ours[b, c], expected, atol=1e-12)
    empty = masked_quantile(torch.from_numpy(values), torch.zeros(5, 500, dtype=torch.bool), 0.99)
    assert empty.shape == (5, 2) and torch.isnan(empty).all()


def test_max_concentrations_uses_every_pixel_when_none_is_selected():
    values = torch.arange(200.0).reshape(1, 2, 100)
    mask = torch.zeros(1, 100, dtype=torch.bool)
    expected = torch.from_numpy(np.percentile(values.numpy(), 99, axis=2))
    torch.testing.assert_close(max_concentrations(values, mask), expected.float())


def numpy_transfer(rgb, source, source_max, target, target_max, solver):
    """Unmix with the source matrix, rescale, remix with the target: the textbook order of operations."""
    od = -np.log(np.maximum(rgb, 1 / 255)).reshape(3, -1)
    if solver == "lstsq":
        conc = np.linalg.lstsq(source, od, rcond=None)[0]
    else:
        conc = np.stack([nnls(source, od[:, n])[0] for n in range(od.shape[1])], axis=1)
    conc *= (target_max / source_max)[:, None]
    return np.clip(np.exp(-np.maximum(target @ conc, 0)), 0, 1).reshape(rgb.shape)


@pytest.mark.parametrize("solver", ["lstsq", "nnls"])
def test_stain_transfer_matches_the_textbook_computation(solver):
    rng = np.random.default_rng(5)
    rgb = rng.uniform(0.2, 1.0, (2, 3, 6, 5))
    rgb[:, :, 0, 0] = 1.0  # white
    source = np.stack([H_AND_E, np.array([[0.6, 0.2], [0.75, 0.8], [0.3, 0.57]])])
    source /= np.linalg.norm(source, axis=1, keepdims=True)
    target = np.array([[0.55, 0.25], [0.75, 0.85], [0.37, 0.46]])
    target /= np.linalg.norm(target, axis=0)
    source_max, target_max = np.array([[1.2, 0.8], [0.5, 1.5]]), np.array([1.9, 1.0])
    ours = stain_transfer(
        torch.from_numpy(rgb), torch.from_numpy(source), torch.from_numpy(source_max),
        torch.from_numpy(target), torch.from_numpy(target_max), solver=solver,
    ).numpy()
    for b in range(2):
        expected = numpy_transfer(rgb[b], source[b], source_max[b], target, target_max, solver)
        np.testing.assert_allclose(ours[b], expected, atol=1e-10)
    np.testing.assert_array_equal(ours[:, :, 0, 0], 1.0)


@pytest.mark.parametrize(
    "source, target",
    [
        ([[0.9, -0.3], [0.1, 0.9], [0.42, -0.31]], H_AND_E),  # stains > 90 degrees apart: the general NNLS
        (H_AND_E, [[0.6, -0.1], [0.7, 0.9], [0.3, 0.4]]),  # a target with a negative entry: output clamped
    ],
)
def test_stain_transfer_nnls_with_unusual_matrices(source, target):
    rng = np.random.default_rng(6)
    rgb = rng.uniform(0.2, 1.0, (1, 3, 4, 4))
    source, target = unit(source), unit(target)
    ones = torch.ones(2, dtype=torch.float64)
    ours = stain_transfer(
        torch.from_numpy(rgb), torch.from_numpy(source), ones, torch.from_numpy(target), ones, solver="nnls"
    ).numpy()
    expected = numpy_transfer(rgb[0], source, np.ones(2), target, np.ones(2), "nnls")
    np.testing.assert_allclose(ours[0], expected, atol=1e-10)
    assert ours.max() <= 1.0


@pytest.mark.parametrize("solver", ["lstsq", "nnls"])
def test_stain_transfer_in_chunks_equals_in_one_go(solver, monkeypatch):
    rng = np.random.default_rng(7)
    rgb = torch.from_numpy(rng.uniform(0.1, 1.0, (2, 3, 40, 60)))
    source = torch.from_numpy(np.stack([H_AND_E, H_AND_E[:, ::-1].copy()]))
    args = (source, torch.tensor([[1.0, 0.7], [0.4, 1.1]], dtype=torch.float64), torch.from_numpy(H_AND_E),
            torch.tensor([1.5, 0.9], dtype=torch.float64))
    whole = stain_transfer(rgb, *args, solver=solver)
    # 2 images of 2400 pixels, 1024 pixels per chunk: 3 chunks, the last one short.
    monkeypatch.setattr(concentrations, "TRANSFER_CHUNK", 2048)
    torch.testing.assert_close(stain_transfer(rgb, *args, solver=solver), whole, atol=1e-12, rtol=0)


def test_stain_transfer_does_not_modify_its_input():
    rgb = torch.rand(1, 3, 8, 8)
    before = rgb.clone()
    stains = torch.from_numpy(H_AND_E).float()
    for solver in ("lstsq", "nnls"):
        stain_transfer(rgb, stains, torch.ones(2), stains, torch.full((2,), 2.0), solver=solver)
    assert torch.equal(rgb, before)


def test_bad_arguments_raise_value_error():
    stains = torch.from_numpy(H_AND_E).float()
    with pytest.raises(ValueError, match="solver"):
        stain_transfer(torch.rand(1, 3, 4, 4), stains, torch.ones(2), stains, torch.ones(2), solver="svd")
    with pytest.raises(ValueError, match="stain_matrix"):
        nnls_concentrations(torch.rand(1, 3, 10), torch.rand(3, 3))
    with pytest.raises(ValueError, match="od"):
        least_squares_concentrations(torch.rand(1, 4, 10), stains)
