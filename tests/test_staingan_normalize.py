"""StainGANNormalize: tiling and blending, passthrough of blank input, and the transform contracts.

The generators here are test fixtures (small seeded initialisations), not trained weights.
"""

from __future__ import annotations

import itertools
import pickle

import numpy as np
import PIL.Image
import pytest
import torch
from _transforms import CORE_FORMS, as_form, as_numpy, assert_same_form

from stain_transforms import StainGANNormalize
from stain_transforms.models import StainGANGenerator
from stain_transforms.normalizers.staingan import ramp_window, tile_starts
from stain_transforms.testing import synthetic_tissue


def fixture_generator(seed: int = 0, ngf: int = 8, n_blocks: int = 2) -> StainGANGenerator:
    torch.manual_seed(seed)
    return StainGANGenerator(ngf=ngf, n_blocks=n_blocks).eval()


@pytest.fixture(scope="module")
def generator() -> StainGANGenerator:
    return fixture_generator()


def tissue_batch(size: int, seeds=(0,)) -> torch.Tensor:
    return torch.stack([torch.from_numpy(synthetic_tissue(size, seed=s)).permute(2, 0, 1) for s in seeds]).float() / 255


# -- tiling ---------------------------------------------------------------------------------------


def test_tile_geometry():
    for length, tile, overlap in [(1000, 512, 64), (2048, 512, 64), (513, 512, 0), (300, 96, 32)]:
        starts = tile_starts(length, tile, overlap)
        assert starts[0] == 0 and starts[-1] == length - tile
        assert all(b - a <= tile - overlap for a, b in itertools.pairwise(starts))  # overlaps of at least `overlap`
    ramp = ramp_window(16, 6, True, True, torch.zeros(1, dtype=torch.float64))
    falling, rising = ramp[-6:], ramp[:6]
    torch.testing.assert_close(falling + rising, torch.ones(6, dtype=torch.float64))  # neighbours sum to one
    assert (ramp > 0).all() and ramp[6:10].eq(1).all()


def test_small_image_is_one_pass(generator):
    x = tissue_batch(96, seeds=(1, 2))
    normalize = StainGANNormalize(generator, tile_size=128, overlap=32)
    with torch.no_grad():
        assert torch.equal(normalize.apply_batch(x, {}), generator.translate(x))


def test_tile_interior_is_that_tile_translated(generator):
    x = tissue_batch(200)
    normalize = StainGANNormalize(generator, tile_size=96, overlap=32)
    out = normalize.apply_batch(x, {})
    with torch.no_grad():
        first = generator.translate(x[..., :96, :96])
    solo = 96 - 32  # before the second tile starts, only the first one contributes, with weight 1
    assert torch.equal(out[..., :solo, :solo], first[..., :solo, :solo])
    assert out.shape == x.shape and torch.isfinite(out).all()


def seam_ratio(out: torch.Tensor, whole: torch.Tensor, tile: int, overlap: int) -> float:
    """Largest jump of (tiled - whole) across a tile edge, relative to the median jump anywhere."""
    diff = out - whole
    worst = 0.0
    for dim in (-1, -2):
        steps = diff.diff(dim=dim).abs().mean(dim=tuple(d for d in range(4) if d != dim % 4))
        length = diff.shape[dim]
        starts = tile_starts(length, tile, overlap)
        edges = {s - 1 for s in starts if s > 0} | {s + tile - 1 for s in starts if s + tile < length}
        worst = max(worst, (steps[sorted(edges)].max() / steps.median()).item())
    return worst


def test_blending_leaves_no_seams(generator, shared_data_or_synthetic):
    x = shared_data_or_synthetic
    with torch.no_grad():
        whole = generator.translate(x)
    blended = StainGANNormalize(generator, tile_size=96, overlap=32, min_tissue_fraction=0).apply_batch(x, {})
    naive = StainGANNormalize(generator, tile_size=96, overlap=0, min_tissue_fraction=0).apply_batch(x, {})
    blended_seams = seam_ratio(blended, whole, 96, 32)
    assert blended_seams < 1.6
    assert blended_seams < seam_ratio(naive, whole, 96, 0)  # hard tile edges show more
    assert (blended - whole).abs().mean() < (naive - whole).abs().mean()


@pytest.fixture
def shared_data_or_synthetic() -> torch.Tensor:
    """A 256x256 tile of real tissue: Camelyon17 when ../shared/data is present, else scikit-image's IHC image."""
    from conftest import shared_data_dir

    path = shared_data_dir() / "camelyon17_tiles" / "domain_1_701.png"
    if path.is_file():
        image = np.array(PIL.Image.open(path).convert("RGB"))[:256, :256]
    else:  # synthetic tissue is too smooth for hard tile edges to stand out
        from skimage.data import immunohistochemistry

        image = immunohistochemistry()[128:384, 128:384]
    return torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255


def test_tiles_bound_the_generator_input():
    generator = fixture_generator(ngf=4, n_blocks=1)
    sizes = []
    generator.model.register_forward_pre_hook(lambda module, args: sizes.append(tuple(args[0].shape[-2:])))
    x = tissue_batch(256).repeat(1, 1, 3, 3)
    out = StainGANNormalize(generator, tile_size=256, overlap=32).apply_batch(x, {})
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert len(sizes) == 16 and max(max(s) for s in sizes) == 256


def test_2048_image_in_512_tiles():
    generator = fixture_generator(ngf=4, n_blocks=1)
    sizes = []
    generator.model.register_forward_pre_hook(lambda module, args: sizes.append(tuple(args[0].shape[-2:])))
    image = np.tile(synthetic_tissue(256, seed=3), (8, 8, 1))
    out = StainGANNormalize(generator)(image)
    assert out.shape == (2048, 2048, 3) and out.dtype == np.uint8
    assert len(sizes) == 25 and max(max(s) for s in sizes) == 512


# -- blank input -----------------------------------------------------------------------------------


def test_blank_and_flat_images_pass_through(generator):
    normalize = StainGANNormalize(generator, tile_size=64, overlap=16)
    for value in (255, 0, 180):
        flat = np.full((48, 48, 3), value, np.uint8)
        assert np.array_equal(normalize(flat), flat)
    background = np.full((48, 48, 3), 245, np.uint8)
    background[0, 0] = (120, 60, 140)  # a speck: far below 1% tissue
    assert np.array_equal(normalize(background), background)
    batch = torch.stack([torch.ones(3, 64, 64), tissue_batch(64)[0]])
    out = normalize.apply_batch(batch, {})
    assert torch.equal(out[0], batch[0])
    with torch.no_grad():
        assert torch.equal(out[1], generator.translate(batch[1:])[0])


def test_flat_tiles_inside_a_large_image_are_kept(generator):
    image = np.full((256, 256, 3), 255, np.uint8)
    image[:, :96] = synthetic_tissue(256, seed=4)[:, :96]
    out = StainGANNormalize(generator, tile_size=64, overlap=16)(image)
    assert np.array_equal(out[:, 200:], image[:, 200:])  # covered only by all-white tiles
    assert not np.array_equal(out[:, :40], image[:, :40])


# -- contracts -------------------------------------------------------------------------------------


def grey_levels(image) -> np.ndarray:
    """One image in any form, as float64 (H, W, 3) on the 0-255 scale."""
    values = as_numpy(image)
    scale = 255.0 if values.dtype.kind == "f" else 1.0
    if isinstance(image, torch.Tensor):
        values = values.reshape(3, *values.shape[-2:]).transpose(1, 2, 0)
    return values.astype(np.float64) * scale


def test_same_in_same_out(generator):
    normalize = StainGANNormalize(generator, tile_size=64, overlap=16)
    image = synthetic_tissue(80, seed=5)
    original = image.copy()
    expected = normalize(image)
    for form in CORE_FORMS:
        x = as_form(image, form)
        before = as_numpy(x).copy()
        out = normalize(x)
        assert_same_form(out, x)
        assert np.array_equal(as_numpy(x), before), form  # the input is left alone
        assert np.abs(grey_levels(out) - expected).max() <= 1.0, form
    assert np.array_equal(image, original)


def test_pickling(generator):
    normalize = StainGANNormalize(generator, tile_size=64, overlap=16)
    clone = pickle.loads(pickle.dumps(normalize))
    image = synthetic_tissue(96, seed=6)
    assert np.array_equal(clone(image), normalize(image))
    assert clone.config == normalize.config


def test_argument_checks(generator):
    with pytest.raises(ValueError, match="StainGANGenerator"):
        StainGANNormalize(torch.nn.Identity())
    with pytest.raises(ValueError, match="overlap"):
        StainGANNormalize(generator, tile_size=64, overlap=40)
    with pytest.raises(ValueError, match="tile_size"):
        StainGANNormalize(generator, tile_size=8)
    with pytest.raises(ValueError, match="grayscale"):
        StainGANNormalize(generator)(np.zeros((32, 32), np.uint8))


# -- guided filter --------------------------------------------------------------------------------


def test_guided_filter_redraws_the_output_with_the_source_edges(generator):
    from stain_transforms.functional.guided import guided_filter

    plain = StainGANNormalize(generator, tile_size=128, overlap=16)
    guided = StainGANNormalize(generator, tile_size=128, overlap=16, guided_radius=4, guided_eps=1e-3)
    batch = tissue_batch(96, seeds=(0, 1))
    expected = guided_filter(batch, plain(batch), 4, 1e-3).clamp(0, 1)
    torch.testing.assert_close(guided(batch), expected)


def test_guided_settings_are_saved_and_can_be_overridden(generator, tmp_path):
    StainGANNormalize(generator, tile_size=64, overlap=16, guided_radius=8, guided_eps=1e-4).save_pretrained(tmp_path)
    loaded = StainGANNormalize.from_pretrained(tmp_path)
    assert (loaded.guided_radius, loaded.guided_eps) == (8, 1e-4)
    assert StainGANNormalize.from_pretrained(tmp_path, guided_radius=0).guided_radius == 0
    image = synthetic_tissue(64, seed=3)
    assert np.array_equal(loaded(image), StainGANNormalize(generator, tile_size=64, overlap=16, guided_radius=8, guided_eps=1e-4)(image))


@pytest.mark.parametrize(("radius", "eps", "message"), [(-1, 1e-3, "guided_radius"), (2.0, 1e-3, "guided_radius"),
                                                        (True, 1e-3, "guided_radius"), (4, 0.0, "guided_eps"),
                                                        (4, float("nan"), "guided_eps"), (4, "1e-3", "guided_eps")])
def test_guided_argument_checks(generator, radius, eps, message):
    with pytest.raises(ValueError, match=message):
        StainGANNormalize(generator, guided_radius=radius, guided_eps=eps)
