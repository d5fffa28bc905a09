"""Macenko stain estimation and normalization, against known stains, torchstain, and real scanner pairs.

The second half holds the contract tests shared by the two stain-matrix normalizers (Macenko and
Vahadane), parametrised over both classes; test_vahadane.py covers what is specific to Vahadane.
"""

import csv

import numpy as np
import pytest
import torch

from stain_transforms import MacenkoNormalize, StainNormalizer, VahadaneNormalize
from stain_transforms.functional.color import rgb_to_od
from stain_transforms.functional.concentrations import least_squares_concentrations, max_concentrations
from stain_transforms.functional.macenko import REFERENCE_STAIN_MATRIX, macenko_stain_matrix
from stain_transforms.testing import render, synthetic_concentrations, synthetic_tissue

STAIN_MATRICES = {
    "typical": [[0.5626, 0.2159], [0.7201, 0.8012], [0.4062, 0.5581]],
    "warm": [[0.70, 0.28], [0.65, 0.85], [0.30, 0.45]],
    "blue": [[0.49, 0.22], [0.70, 0.90], [0.52, 0.38]],
}
NORMALIZERS = [MacenkoNormalize, VahadaneNormalize]


def unit(matrix) -> np.ndarray:
    matrix = np.asarray(matrix, dtype=np.float64)
    return matrix / np.linalg.norm(matrix, axis=0)


def angles_deg(estimate, truth) -> np.ndarray:
    """Angle between corresponding columns (stain vectors), in degrees."""
    estimate, truth = unit(np.asarray(estimate)), unit(truth)
    return np.degrees(np.arccos(np.clip((estimate * truth).sum(0), -1.0, 1.0)))


def tissue_with_pure_stains(stain_matrix, size=128, seed=0, scale=1.0) -> np.ndarray:
    """``synthetic_tissue``'s layout with nucleus cores stained by haematoxylin alone.

    Stain vectors are identifiable only when some pixels carry one stain alone: in
    ``synthetic_tissue`` every nucleus also holds eosin, so no tissue pixel lies within 5 degrees
    of the haematoxylin vector and no method that reads stain vectors off the data can get closer.
    """
    haematoxylin, eosin = scale * synthetic_concentrations(size, seed)
    eosin = np.where(haematoxylin > 0.6 * scale, 0.02 * eosin, eosin)
    return render(np.stack([haematoxylin, eosin]), unit(stain_matrix), seed=seed)


def to_tensor(image: np.ndarray, dtype=torch.float32) -> torch.Tensor:
    return torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].to(dtype) / 255.0


# -- stain matrix estimation -------------------------------------------------------------------


@pytest.mark.parametrize("scale", [1.0, 1.5])
@pytest.mark.parametrize("name", list(STAIN_MATRICES))
def test_recovers_known_stain_vectors(name, scale):
    truth = unit(STAIN_MATRICES[name])
    image = tissue_with_pure_stains(truth, size=160, seed=3, scale=scale)
    estimate = macenko_stain_matrix(to_tensor(image))[0].numpy()
    assert (angles_deg(estimate, truth) < 5.0).all(), angles_deg(estimate, truth)
    np.testing.assert_allclose(np.linalg.norm(estimate, axis=0), 1.0, atol=1e-6)
    assert (estimate >= 0).all()


def test_recovers_each_image_of_a_batch_with_its_own_stains():
    truths = [unit(m) for m in STAIN_MATRICES.values()]
    images = [tissue_with_pure_stains(t, size=128, seed=i) for i, t in enumerate(truths)]
    batch = torch.cat([to_tensor(image) for image in images])
    estimates = macenko_stain_matrix(batch).numpy()
    for estimate, truth in zip(estimates, truths):
        assert (angles_deg(estimate, truth) < 5.0).all()


def test_fitted_target_is_the_known_stain_matrix():
    truth = unit(STAIN_MATRICES["warm"])
    normalizer = MacenkoNormalize().fit(tissue_with_pure_stains(truth, size=160, seed=4))
    assert (angles_deg(normalizer.target_stain_matrix.numpy(), truth) < 5.0).all()


def test_subsample_estimate_is_close_to_the_full_resolution_estimate():
    image = to_tensor(synthetic_tissue(256, seed=5), torch.float64)
    full = macenko_stain_matrix(image, max_pixels=None)[0].numpy()
    sampled = macenko_stain_matrix(image, max_pixels=2**12)[0].numpy()
    assert (angles_deg(sampled, full) < 0.5).all()


def test_too_few_usable_pixels_gives_the_reference_matrix():
    white = torch.ones(2, 3, 32, 32)
    white[1, :, :2, :2] = 0.5  # four grey pixels: too few to estimate from
    torch.testing.assert_close(macenko_stain_matrix(white), REFERENCE_STAIN_MATRIX.float().expand(2, 3, 2))


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


def test_normalizes_onto_the_target_stains():
    # The same tissue rendered with two stain matrices: normalizing one onto the other must give it back.
    concentrations = synthetic_concentrations(128, seed=6)
    concentrations[1] = np.where(concentrations[0] > 0.6, 0.02 * concentrations[1], concentrations[1])
    source = render(concentrations, unit(STAIN_MATRICES["blue"]), seed=6)
    target = render(concentrations, unit(STAIN_MATRICES["warm"]), seed=7)
    for solver in ("nnls", "lstsq"):
        out = MacenkoNormalize(solver=solver).fit(target)(source)
        error = np.abs(out.astype(float) - target)
        assert error.mean() < 2.0 and np.percentile(error, 99) < 10, (solver, error.mean())


def test_least_squares_option_uses_least_squares():
    image = synthetic_tissue(96, seed=8)
    lstsq, nnls = MacenkoNormalize(solver="lstsq").fit(image), MacenkoNormalize().fit(image)
    torch.testing.assert_close(lstsq.target_stain_matrix, nnls.target_stain_matrix)
    assert lstsq.solver == "lstsq" and nnls.solver == "nnls"
    assert not np.array_equal(lstsq(image), nnls(image))


# -- contract tests shared by MacenkoNormalize and VahadaneNormalize ---------------------------


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    return tissue_with_pure_stains(STAIN_MATRICES["typical"], size=96, seed=10)


@pytest.fixture(scope="module")
def source() -> np.ndarray:
    return tissue_with_pure_stains(STAIN_MATRICES["blue"], size=96, seed=11, scale=1.3)


@pytest.mark.parametrize("cls", NORMALIZERS)
def test_self_normalization_is_nearly_the_identity(cls, reference):
    out = cls().fit(reference)(reference)
    assert np.abs(out.astype(float) - reference).mean() < 1.5


@pytest.mark.parametrize("cls", NORMALIZERS)
def test_white_background_stays_white(cls, reference, source):
    out = cls().fit(reference)(source)
    white = (source == 255).all(axis=2)
    assert white.any()
    assert (out[white] == 255).all()


@pytest.mark.parametrize("cls", NORMALIZERS)
def test_batch_equals_per_image(cls, reference, source):
    normalizer = cls().fit(reference)
    batch = torch.from_numpy(np.stack([source, reference, np.full_like(source, 255)])).permute(0, 3, 1, 2)
    out = normalizer(batch)
    for i in range(3):
        assert torch.equal(out[i], normalizer(batch[i]))
    stats = normalizer.image_statistics(batch[:2].float() / 255)
    for i in range(2):
        single = normalizer.image_statistics(batch[i : i + 1].float() / 255)
        for name, value in single.items():
            torch.testing.assert_close(stats[name][i : i + 1], value)


@pytest.mark.parametrize("cls", NORMALIZERS)
def test_float64_agrees_with_float32(cls, reference, source):
    normalizer = cls().fit(reference)
    x = torch.from_numpy(source).permute(2, 0, 1)
    out32, out64 = normalizer(x.float() / 255), normalizer(x.double() / 255)
    assert out64.dtype == torch.float64
    torch.testing.assert_close(out32.double(), out64, atol=2e-4, rtol=0)


@pytest.mark.parametrize("cls", NORMALIZERS)
@pytest.mark.parametrize("value", [0, 255, 128])
def test_tissue_free_and_single_colour_tiles_pass_through(cls, reference, value):
    tile = np.full((64, 64, 3), value, dtype=np.uint8)
    assert np.array_equal(cls().fit(reference)(tile), tile)


@pytest.mark.parametrize("cls", NORMALIZERS)
def test_no_nan_on_odd_inputs(cls, reference):
    normalizer = cls().fit(reference)
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    sparse = np.full((64, 64, 3), 255, dtype=np.uint8)
    sparse[:4, :12] = (120, 60, 150)  # just above the minimum tissue fraction, one colour of tissue
    two_pixels = np.full((64, 64, 3), 250, dtype=np.uint8)
    two_pixels[0, 0], two_pixels[5, 5] = (0, 0, 0), (40, 10, 90)
    dark = rng.integers(0, 12, (64, 64, 3), dtype=np.uint8)
    for image in (noise, sparse, two_pixels, dark):
        out = normalizer(torch.from_numpy(image).permute(2, 0, 1).float() / 255)
        assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("cls", NORMALIZERS)
def test_input_is_not_modified(cls, reference, source):
    normalizer = cls().fit(reference)
    array, tensor = source.copy(), torch.from_numpy(source).permute(2, 0, 1).float() / 255
    tensor_before = tensor.clone()
    normalizer(array)
    normalizer(tensor)
    normalizer.fit([array, tensor])
    assert np.array_equal(array, source) and torch.equal(tensor, tensor_before)


@pytest.mark.parametrize("cls", NORMALIZERS)
def test_same_type_out(cls, reference, source):
    normalizer = cls().fit(reference)
    out = normalizer(source)
    assert isinstance(out, np.ndarray) and out.dtype == np.uint8 and out.shape == source.shape
    tensor = torch.from_numpy(source).permute(2, 0, 1)
    assert normalizer(tensor).dtype == torch.uint8 and normalizer(tensor).shape == tensor.shape


@pytest.mark.parametrize("cls", NORMALIZERS)
def test_save_load_round_trip(cls, reference, source, tmp_path):
    normalizer = cls(luminosity_threshold=0.85, max_pixels=4096).fit(reference)
    path = normalizer.save(tmp_path / "normalizer.safetensors")
    loaded = StainNormalizer.load(path)
    assert type(loaded) is cls and loaded.config == normalizer.config
    for name, value in normalizer.target_statistics().items():
        torch.testing.assert_close(loaded.target_statistics()[name], value)
    assert np.array_equal(loaded(source), normalizer(source))


@pytest.mark.parametrize("cls", NORMALIZERS)
def test_fit_on_many_takes_the_median(cls, reference, source):
    odd_one = tissue_with_pure_stains(STAIN_MATRICES["warm"], size=96, seed=12, scale=0.7)
    single = cls().fit(reference)
    many = cls().fit([reference, reference, odd_one])
    for name, value in single.target_statistics().items():
        torch.testing.assert_close(many.target_statistics()[name], value)
    # The pooled stain matrix keeps unit columns.
    three = cls().fit([reference, source, odd_one])
    torch.testing.assert_close(
        three.target_stain_matrix.norm(dim=0), torch.ones(2, dtype=torch.float64), atol=1e-12, rtol=0
    )


@pytest.mark.parametrize("cls", NORMALIZERS)
def test_fit_on_a_dataloader_equals_fit_on_a_list(cls, reference, source):
    images = [torch.from_numpy(image).permute(2, 0, 1) for image in (reference, source, reference)]
    dataset = [(image, label) for label, image in enumerate(images)]
    loader = torch.utils.data.DataLoader(dataset, batch_size=2)
    from_loader, from_list = cls().fit(loader, progress=False), cls().fit(images)
    for name, value in from_list.target_statistics().items():
        torch.testing.assert_close(from_loader.target_statistics()[name], value, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("cls", NORMALIZERS)
def test_bad_settings_raise_value_error(cls):
    with pytest.raises(ValueError, match="solver"):
        cls(solver="svd")
    with pytest.raises(ValueError, match="max_pixels"):
        cls(max_pixels=10)


@pytest.mark.parametrize("cls", NORMALIZERS)
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_runs_on_cuda(cls, reference, source):
    normalizer = cls().fit(reference)
    x = torch.from_numpy(source).permute(2, 0, 1)[None].float() / 255
    out_gpu = normalizer.to("cuda")(x.cuda())
    assert out_gpu.device.type == "cuda"
    torch.testing.assert_close(out_gpu.cpu(), normalizer.to("cpu")(x), atol=2e-3, rtol=0)


# -- real scanner pairs ------------------------------------------------------------------------

UNNORMALIZED_PSNR = 19.14  # /work/shared/README.md: source vs target, all 80 MITOS-ATYPIA-14 pairs


@pytest.mark.slow
@pytest.mark.shared_data
@pytest.mark.parametrize("cls", NORMALIZERS)
def test_beats_no_normalization_on_mitos_scanner_pairs(cls, shared_data):
    """Aperio -> Hamamatsu, fitted on the Hamamatsu images of the *other* slides (leave one slide out)."""
    from PIL import Image
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    root = shared_data / "mitos_atypia14_pairs"
    if not (root / "pairs.csv").is_file():
        pytest.skip(f"{root} not found")
    with open(root / "pairs.csv") as handle:
        rows = list(csv.DictReader(handle))

    def load(folder, name):
        return np.asarray(Image.open(root / folder / name).convert("RGB"))

    targets = {row["pair"]: load("hamamatsu", row["pair"]) for row in rows}
    psnr, ssim, baseline = [], [], []
    for frame in sorted({row["frame"] for row in rows}):
        references = [targets[row["pair"]] for row in rows if row["frame"] != frame]
        normalizer = cls().fit(references, progress=False)
        for row in (row for row in rows if row["frame"] == frame):
            source = load("aperio", row["pair"])
            shift = (int(row["shift_dy"]), int(row["shift_dx"]))
            target = np.roll(targets[row["pair"]], shift, axis=(0, 1))[16:-16, 16:-16]
            out, source = normalizer(source)[16:-16, 16:-16], source[16:-16, 16:-16]
            psnr.append(peak_signal_noise_ratio(target, out, data_range=255))
            ssim.append(structural_similarity(target, out, channel_axis=2, data_range=255))
            baseline.append(peak_signal_noise_ratio(target, source, data_range=255))
    assert len(psnr) == len(rows)
    assert abs(np.mean(baseline) - UNNORMALIZED_PSNR) < 0.01  # the protocol matches the README's
    print(f"{cls.__name__}: PSNR {np.mean(psnr):.2f} dB, SSIM {np.mean(ssim):.3f}", end=" ")
    print(f"(unnormalized {np.mean(baseline):.2f} dB)")
    assert np.mean(psnr) > UNNORMALIZED_PSNR + 0.2
