"""Whole-slide images: reading, slide statistics, slide-context transforms, writing pyramidal TIFFs, tile datasets.

Slides are synthetic pyramidal TIFFs written here with tifffile (Beer-Lambert tissue with a known
stain matrix); the test on the real slide skips when ../shared/data is absent.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

pytest.importorskip("tiffslide", reason="the whole-slide tests need the [slides] extra (tiffslide)")
import tifffile
import tiffslide

import stain_transforms as st
from stain_transforms.cli import main
from stain_transforms.functional import (
    lab_statistics,
    lab_to_rgb,
    reinhard_transfer,
    reinhard_transfer_from,
    rgb_to_lab,
    stain_transfer,
)
from stain_transforms.slides import (
    Slide,
    SlideContextNormalize,
    SlideStatistics,
    SlideTileDataset,
    fit_slide,
    normalize_slide,
    open_slide,
    sample_tiles,
    tissue_tiles,
)
from stain_transforms.slides.testing import SyntheticSlide, write_synthetic_slide
from stain_transforms.testing import synthetic_tissue

# The slide's "site": other stains, darker, than the references'.
SLIDE_STAINS = np.array([[0.70, 0.15], [0.68, 0.90], [0.22, 0.40]])
SLIDE_STAINS = SLIDE_STAINS / np.linalg.norm(SLIDE_STAINS, axis=0)
WIDTH, HEIGHT, TILE = 2048, 1536, 256


@pytest.fixture(scope="module")
def slide_path(tmp_path_factory):
    folder = tmp_path_factory.mktemp("slides")
    return write_synthetic_slide(
        folder / "site_b.tiff", WIDTH, HEIGHT, tile=TILE, mpp=0.25, stain_matrix=SLIDE_STAINS, stain_scale=1.3, seed=3
    )


@pytest.fixture(scope="module")
def references():
    return [synthetic_tissue(256, seed=s) for s in range(4)]


@pytest.fixture(scope="module")
def macenko(references):
    return st.MacenkoNormalize().fit(references)


@pytest.fixture(scope="module")
def reinhard(references):
    return st.ReinhardNormalize().fit(references)


def as_batch(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1)[None].double() / 255


def no_partial_files(folder) -> bool:
    return not [p for p in folder.iterdir() if ".partial" in p.name]


# -- reading -----------------------------------------------------------------------------------


def test_reader_levels_mpp_and_pixels_match_what_was_written(slide_path):
    slide = open_slide(slide_path)
    assert slide.backend in ("tiffslide", "openslide")
    assert slide.level_dimensions == ((2048, 1536), (1024, 768), (512, 384), (256, 192))
    assert slide.mpp == (0.25, 0.25)
    truth = SyntheticSlide(WIDTH, HEIGHT, seed=3, stain_matrix=SLIDE_STAINS, stain_scale=1.3)
    assert np.array_equal(slide.read(700, 500, 300, 200), truth.region(700, 500, 300, 200))
    assert np.array_equal(slide.read(100, 90, 64, 64, level=2), truth.region(100, 90, 64, 64, downsample=4))
    beyond = slide.read(WIDTH - 10, HEIGHT - 10, 20, 20)  # padded with white glass
    assert (beyond[10:, :] == 255).all() and (beyond[:, 10:] == 255).all()
    copy = pickle.loads(pickle.dumps(slide))
    assert np.array_equal(copy.read(0, 0, 32, 32, level=1), slide.read(0, 0, 32, 32, level=1))


def test_reader_errors_name_the_problem(slide_path, tmp_path):
    with pytest.raises(FileNotFoundError, match="no slide at"):
        Slide(tmp_path / "missing.svs")
    (tmp_path / "image.png").write_bytes(b"png")
    with pytest.raises(ValueError, match="unsupported slide format .png"):
        Slide(tmp_path / "image.png")
    (tmp_path / "garbage.svs").write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(ValueError, match="garbage.svs: cannot open as a slide"):
        Slide(tmp_path / "garbage.svs")
    with pytest.raises(ValueError, match="has levels 0 to 3; there is no level 4"):
        open_slide(slide_path).read(0, 0, 8, 8, level=4)


def test_truncated_slide_gives_a_clear_error_and_no_partial_output(slide_path, tmp_path, reinhard):
    data = slide_path.read_bytes()
    truncated = tmp_path / "truncated.tiff"
    with tifffile.TiffFile(slide_path) as tif:  # cut inside level 0's tile data, keeping the header
        offsets = tif.pages[0].dataoffsets
    truncated.write_bytes(data[: offsets[len(offsets) // 2]])
    with pytest.raises(ValueError, match="truncated.tiff: cannot (open|read)"):
        slide = open_slide(truncated)
        normalize_slide(slide, tmp_path / "out.tiff", reinhard, source=None, tile_size=TILE, progress=False)
    assert not (tmp_path / "out.tiff").exists() and no_partial_files(tmp_path)


# -- slide statistics ---------------------------------------------------------------------------


def test_fit_slide_finds_the_stains_the_slide_was_rendered_with(slide_path, macenko):
    stats = fit_slide(slide_path, macenko, n_tiles=12, tile_size=TILE, progress=False)
    assert stats.tiles == 12 and stats.slide_id == "site_b" and stats.info["mpp"] == [0.25, 0.25]
    estimated = stats["stain_matrix"].numpy()
    cosines = (estimated * SLIDE_STAINS).sum(axis=0)  # unit columns: H then E
    assert cosines.min() > 0.97, cosines
    assert not torch.equal(stats["stain_matrix"], macenko.target_stain_matrix)


def test_fit_slide_pools_the_tiles_statistics_as_fit_does(slide_path, reinhard):
    stats = fit_slide(slide_path, "reinhard", n_tiles=6, tile_size=TILE, seed=1, progress=False)
    tiles = list(sample_tiles(slide_path, n_tiles=6, tile_size=TILE, seed=1))
    means = torch.cat([lab_statistics(as_batch(t))[0] for t in tiles])
    assert torch.allclose(stats["mean"], means.quantile(0.5, dim=0), atol=1e-4)


def test_statistics_save_and_load(slide_path, tmp_path, reinhard):
    stats = fit_slide(slide_path, reinhard, n_tiles=4, tile_size=TILE, progress=False)
    again = SlideStatistics.load(stats.save(tmp_path / "stats.safetensors"))
    assert again.normalizer == "ReinhardNormalize" and again.info == stats.info
    assert all(torch.equal(again[name], stats[name]) for name in ("mean", "std"))
    reinhard.save(tmp_path / "normalizer.safetensors")
    with pytest.raises(ValueError, match="holds no slide statistics"):
        SlideStatistics.load(tmp_path / "normalizer.safetensors")


def test_slide_without_tissue_is_refused(tmp_path, reinhard):
    blank = tmp_path / "blank.tiff"
    tifffile.imwrite(blank, np.full((512, 512, 3), 250, np.uint8), tile=(256, 256), photometric="rgb")
    with pytest.raises(ValueError, match="blank.tiff has no tissue"):
        fit_slide(blank, reinhard, progress=False)
    with pytest.raises(ValueError, match="has no tissue"):
        normalize_slide(blank, tmp_path / "out.tiff", reinhard, tile_size=256, progress=False)
    assert not (tmp_path / "out.tiff").exists() and no_partial_files(tmp_path)


# -- slide context in tile transforms -----------------------------------------------------------


def test_reinhard_transfer_from_is_the_lab_formula():
    rgb = torch.rand(2, 3, 16, 16, dtype=torch.float64) * 0.8 + 0.1
    source_mean, source_std = torch.tensor([60.0, 25.0, -8.0]), torch.tensor([12.0, 7.0, 5.0])
    target_mean, target_std = torch.tensor([72.0, 18.0, -4.0]), torch.tensor([9.0, 6.0, 4.0])
    lab = rgb_to_lab(rgb)
    expected = lab_to_rgb((lab - source_mean[:, None, None]) * (target_std / source_std)[:, None, None] + target_mean[:, None, None])
    out = reinhard_transfer_from(rgb, source_mean, source_std, target_mean, target_std)
    assert torch.allclose(out, expected.clamp(0, 1), atol=1e-6)
    own_mean, own_std = lab_statistics(rgb)
    assert torch.allclose(reinhard_transfer_from(rgb, own_mean, own_std, target_mean, target_std), reinhard_transfer(rgb, target_mean, target_std))


def test_with_source_uses_the_given_statistics_for_every_image(slide_path, macenko, reinhard):
    tiles = list(sample_tiles(slide_path, n_tiles=3, tile_size=128))
    blank = np.full((128, 128, 3), 255, np.uint8)
    batch = torch.cat([as_batch(t) for t in tiles + [blank]])
    stats = fit_slide(slide_path, macenko, n_tiles=8, tile_size=TILE, progress=False)
    context = macenko.with_source(stats)
    assert type(context) is st.MacenkoNormalize and macenko.source is None  # a copy; the original is untouched
    expected = stain_transfer(batch, stats["stain_matrix"], stats["max_concentrations"], macenko.target_stain_matrix,
                              macenko.target_max_concentrations, solver=macenko.solver)
    assert torch.allclose(context(batch), expected)
    assert torch.equal(context(batch)[3], batch[3])  # white stays white under a stain-matrix map
    r_stats = fit_slide(slide_path, reinhard, n_tiles=8, tile_size=TILE, progress=False)
    r_expected = reinhard_transfer_from(batch, r_stats["mean"], r_stats["std"], reinhard.target_mean, reinhard.target_std)
    assert torch.allclose(reinhard.with_source(r_stats)(batch), r_expected)
    assert reinhard.with_source(r_stats).with_source(None).source is None
    with pytest.raises(ValueError, match="'stain_matrix' is missing"):
        macenko.with_source(r_stats)


def test_slide_context_normalize_by_source_entry_by_slide_id_and_by_batch(slide_path, tmp_path, macenko):
    other_path = write_synthetic_slide(tmp_path / "site_c.tiff", 1024, 768, tile=TILE, stain_scale=0.8, seed=5)
    stats = {p.stem: fit_slide(p, macenko, n_tiles=6, tile_size=TILE, progress=False) for p in (slide_path, other_path)}
    tile_b = next(iter(sample_tiles(slide_path, 1, 128)))
    tile_c = next(iter(sample_tiles(other_path, 1, 128)))
    expected_b = macenko.with_source(stats["site_b"])(tile_b)
    expected_c = macenko.with_source(stats["site_c"])(tile_c)
    transform = SlideContextNormalize(macenko, stats)
    out = transform({"image": tile_b, "slide_id": "site_b", "label": 3})
    assert np.array_equal(out["image"], expected_b) and out["label"] == 3
    assert np.array_equal(SlideContextNormalize(macenko)({"image": tile_c, "source": stats["site_c"]})["image"], expected_c)
    batch = torch.stack([torch.from_numpy(t).permute(2, 0, 1) for t in (tile_b, tile_c)])
    out = transform({"image": batch, "slide_id": ["site_b", "site_c"]})["image"]
    assert np.array_equal(out[0].permute(1, 2, 0).numpy(), expected_b)
    assert np.array_equal(out[1].permute(1, 2, 0).numpy(), expected_c)
    with pytest.raises(ValueError, match="no statistics for slide 'unknown'"):
        transform({"image": tile_b, "slide_id": "unknown"})


def test_slide_context_in_albumentations_and_monai(slide_path, macenko):
    stats = fit_slide(slide_path, macenko, n_tiles=6, tile_size=TILE, progress=False)
    tile = next(iter(sample_tiles(slide_path, 1, 128)))
    expected = macenko.with_source(stats)(tile)
    A = pytest.importorskip("albumentations")
    import stain_transforms.albumentations as sta

    out = A.Compose([sta.MacenkoNormalize(normalizer=macenko.with_source(stats))])(image=tile)["image"]
    assert np.array_equal(out, expected)
    from stain_transforms.slides.albumentations import SlideContextNormalize as AlbumentationsSlideContext

    out = A.Compose([AlbumentationsSlideContext(macenko, {"site_b": stats})])(image=tile, slide_id="site_b")
    assert np.array_equal(out["image"], expected) and out["slide_id"] == "site_b"
    pytest.importorskip("monai")
    from monai.data import MetaTensor

    import stain_transforms.monai as stm

    image = MetaTensor(torch.from_numpy(tile).permute(2, 0, 1), meta={"id": 1})
    out = stm.MacenkoNormalized(keys="image", normalizer=macenko.with_source(stats))({"image": image})["image"]
    assert np.array_equal(out.permute(1, 2, 0).numpy(), expected)
    by_id = SlideContextNormalize(macenko, {"site_b": stats}, keys="image")({"image": image, "slide_id": "site_b"})
    assert isinstance(by_id["image"], MetaTensor) and np.array_equal(by_id["image"].permute(1, 2, 0).numpy(), expected)


# -- writing a whole slide ------------------------------------------------------------------------


def border_step(image: np.ndarray, tile: int) -> tuple[float, float]:
    """Mean absolute colour step between neighbouring columns/rows across tile borders, and elsewhere."""
    image = image[: image.shape[0] // tile * tile, : image.shape[1] // tile * tile]
    steps_x = np.abs(np.diff(image.astype(np.float64), axis=1)).mean(axis=(0, 2))
    steps_y = np.abs(np.diff(image.astype(np.float64), axis=0)).mean(axis=(1, 2))
    at_x = np.arange(tile - 1, len(steps_x), tile)
    at_y = np.arange(tile - 1, len(steps_y), tile)
    border = np.concatenate([steps_x[at_x], steps_y[at_y]]).mean()
    inside = np.concatenate([np.delete(steps_x, at_x), np.delete(steps_y, at_y)]).mean()
    return float(border), float(inside)


def test_normalize_slide_writes_a_pyramid_equal_to_the_tile_transform(slide_path, tmp_path, macenko):
    stats = fit_slide(slide_path, macenko, n_tiles=8, tile_size=TILE, progress=False)
    out = normalize_slide(slide_path, tmp_path / "out.tiff", macenko, source=stats, tile_size=TILE,
                          compression="zlib", progress=False)
    written = tiffslide.TiffSlide(out)
    assert written.level_dimensions == ((2048, 1536), (1024, 768), (512, 384), (256, 192))
    assert written.properties["tiffslide.mpp-x"] == pytest.approx(0.25)
    assert written.properties["tiffslide.level[2].downsample"] == pytest.approx(4.0)
    region = written.read_region((512, 256), 0, (512, 512), as_array=True)
    expected = macenko.with_source(stats)(open_slide(slide_path).read(512, 256, 512, 512))
    assert np.array_equal(region, expected)  # lossless: exactly the tile transform with the slide's statistics
    level1 = written.read_region((512, 256), 1, (64, 64), as_array=True).astype(int)
    full = expected[:128, :128].astype(int)
    assert np.abs(level1 - full.reshape(64, 2, 64, 2, 3).mean(axis=(1, 3))).max() <= 1  # 2x2 means
    border, inside = border_step(written.read_region((0, 0), 0, (2048, 1536), as_array=True), TILE)
    source_border, source_inside = border_step(open_slide(slide_path).read(0, 0, 2048, 1536), TILE)
    # No seams: across a tile border the colour steps as much as it does in the source, relative to elsewhere.
    assert border / inside < 1.1 * source_border / source_inside, (border, inside, source_border, source_inside)
    assert no_partial_files(tmp_path)
    assert out.stat().st_mode & 0o044  # readable by others, as files usually are (not mkstemp's 0600)


def test_per_tile_statistics_leave_seams_that_slide_context_removes(slide_path, tmp_path, macenko):
    per_tile = normalize_slide(slide_path, tmp_path / "per_tile.tiff", macenko, source=None, tile_size=128,
                               compression="zlib", progress=False)
    image = tiffslide.TiffSlide(per_tile).read_region((0, 0), 0, (2048, 1536), as_array=True)
    border, inside = border_step(image, 128)
    source_border, source_inside = border_step(open_slide(slide_path).read(0, 0, 2048, 1536), 128)
    assert border / inside > 1.3 * source_border / source_inside, (border, inside, source_border, source_inside)


def test_normalize_slide_jpeg_stainnet_and_staingan_margin(slide_path, tmp_path):
    stainnet = st.StainNetNormalize.from_pretrained("stainnet-mitos-aperio-to-hamamatsu")
    out = normalize_slide(slide_path, tmp_path / "stainnet.tiff", stainnet, level=1, tile_size=TILE, progress=False)
    written = tiffslide.TiffSlide(out)
    assert written.dimensions == (1024, 768) and written.properties["tiffslide.mpp-x"] == pytest.approx(0.5)
    with tifffile.TiffFile(out) as tif:
        assert tif.pages[0].compression == tifffile.COMPRESSION.JPEG and tif.pages[0].is_tiled
    torch.manual_seed(0)
    staingan = st.StainGANNormalize(st.models.StainGANGenerator(ngf=8, n_blocks=1), tile_size=64, overlap=16)
    out = normalize_slide(slide_path, tmp_path / "staingan.tiff", staingan, level=2, tile_size=128,
                          compression="zlib", progress=False)
    image = tiffslide.TiffSlide(out).read_region((0, 0), 0, (512, 384), as_array=True)
    assert image.shape == (384, 512, 3)
    border, inside = border_step(image, 128)
    assert border < 2.0 * inside, (border, inside)  # each tile is translated with 16 pixels of context


def test_normalize_slide_refuses_bad_requests(slide_path, tmp_path, reinhard):
    existing = tmp_path / "existing.tiff"
    existing.write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        normalize_slide(slide_path, existing, reinhard, progress=False)
    assert existing.read_bytes() == b"keep me"
    with pytest.raises(ValueError, match="no level 9"):
        normalize_slide(slide_path, tmp_path / "out.tiff", reinhard, level=9, progress=False)
    with pytest.raises(ValueError, match="must be a .tif or .tiff"):
        normalize_slide(slide_path, tmp_path / "out.png", reinhard, progress=False)
    with pytest.raises(ValueError, match="overwrite the input"):
        normalize_slide(slide_path, slide_path, reinhard, overwrite=True, progress=False)

    class Failing(torch.nn.Module):
        def forward(self, batch):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        normalize_slide(slide_path, tmp_path / "failed.tiff", Failing(), tile_size=TILE, progress=False)
    assert not (tmp_path / "failed.tiff").exists() and no_partial_files(tmp_path)


def test_command_line(slide_path, tmp_path, capsys):
    from stain_transforms.files import write_image_atomic

    write_image_atomic(synthetic_tissue(256, seed=0), tmp_path / "reference.png")
    out = tmp_path / "cli.tiff"
    args = ["normalize-slide", str(slide_path), str(out), "--method", "vahadane", "--reference", str(tmp_path / "reference.png"),
            "--tile-size", "256", "--level", "1", "--fit-tiles", "4", "--save-statistics", str(tmp_path / "s.safetensors"),
            "--no-progress"]
    assert main(args) == 0
    assert "with the slide's statistics" in capsys.readouterr().out
    assert tiffslide.TiffSlide(out).dimensions == (1024, 768)
    assert SlideStatistics.load(tmp_path / "s.safetensors").normalizer == "VahadaneNormalize"
    assert main(args) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err


# -- tile datasets ------------------------------------------------------------------------------------


def test_tile_dataset_with_workers_and_slide_context(slide_path, macenko):
    stats = {"site_b": fit_slide(slide_path, macenko, n_tiles=6, tile_size=TILE, progress=False)}
    dataset = SlideTileDataset([slide_path], tile_size=TILE, transform=SlideContextNormalize(macenko, stats))
    corners = tissue_tiles(slide_path, TILE)
    assert len(dataset) == len(corners) > 10
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=2)
    batches = list(loader)
    assert sum(len(b["slide_id"]) for b in batches) == len(dataset)
    first = batches[0]
    x, y = int(first["x"][0]), int(first["y"][0])
    expected = macenko.with_source(stats["site_b"])(open_slide(slide_path).read(x, y, TILE, TILE))
    assert np.array_equal(first["image"][0].permute(1, 2, 0).numpy(), expected)


# -- the real slide ----------------------------------------------------------------------------------


@pytest.mark.shared_data
def test_real_svs_slide(shared_data, tmp_path, reinhard):
    path = shared_data / "samples" / "cmu_small_region.svs"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    slide = open_slide(path)
    assert slide.dimensions == (2220, 2967) and slide.mpp == pytest.approx((0.499, 0.499))
    out = normalize_slide(slide, tmp_path / "cmu.tiff", reinhard, tile_size=512, fit_tiles=16, progress=False)
    written = tiffslide.TiffSlide(out)
    assert written.dimensions == (2220, 2967) and written.level_count == 4
    assert float(written.properties["tiffslide.mpp-x"]) == pytest.approx(0.499)
