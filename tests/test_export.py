"""Export (stain_transforms.export): the exported graphs compute what the library computes, to 1/255.

ONNX graphs run in onnxruntime (the ``[export]`` extra; those tests skip without it); TorchScript files
run in torch. Inputs mix batch sizes and odd image sizes, since both are free in the graphs.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from stain_transforms import MacenkoNormalize, ReinhardNormalize, StainNetNormalize, VahadaneNormalize
from stain_transforms.cli import main
from stain_transforms.export import (
    ReinhardModule,
    StainTransferModule,
    export,
    export_module,
    export_onnx,
    export_torchscript,
    run_onnx,
)
from stain_transforms.files import write_image_atomic
from stain_transforms.functional.color import lab_to_rgb, rgb_to_lab
from stain_transforms.testing import synthetic_tissue

HAVE_ONNX = all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxscript", "onnxruntime"))
needs_onnx = pytest.mark.skipif(not HAVE_ONNX, reason="onnx, onnxscript and onnxruntime are not installed ([export] extra)")
LEVEL = 1.0 / 255.0
PRETRAINED = "stainnet-mitos-aperio-to-hamamatsu"


def tiles(size: int, seeds, scale: float = 1.3) -> torch.Tensor:
    return torch.stack([torch.from_numpy(synthetic_tissue(size, seed=s, stain_scale=scale)).permute(2, 0, 1)
                        for s in seeds]).float() / 255.0


@pytest.fixture(scope="module")
def batches() -> list[torch.Tensor]:
    odd = tiles(70, [7])[:, :, :45, :]  # 45 x 70
    return [tiles(64, [1, 2, 3]), odd]


@pytest.fixture(scope="module")
def references() -> list[np.ndarray]:
    return [synthetic_tissue(64, seed=s) for s in (20, 21, 22)]


@pytest.fixture(scope="module")
def slide() -> list[np.ndarray]:
    return [synthetic_tissue(64, seed=s, stain_scale=1.3) for s in (30, 31)]


def library_with_source(normalizer, batch, slide):
    """The library's apply step with the source statistics pooled from ``slide``."""
    source = type(normalizer)(**normalizer.config).fit(slide).target_statistics()
    return normalizer.normalize_with(batch, source)


def reinhard_with_source(normalizer, batch, slide):
    """Reinhard with fixed source statistics, from the library's Lab conversions."""
    source = ReinhardNormalize().fit(slide)
    scale = normalizer.target_std / source.target_std
    lab = rgb_to_lab(batch.double())
    mapped = (lab - source.target_mean.view(1, 3, 1, 1)) * scale.view(1, 3, 1, 1) + normalizer.target_mean.view(1, 3, 1, 1)
    return lab_to_rgb(mapped).float()


@pytest.fixture(scope="module")
def cases(references, slide):
    """(name, transform, source, the library's result as a function of a batch)."""
    stainnet = StainNetNormalize.from_pretrained(PRETRAINED, backend="conv")
    reinhard = ReinhardNormalize().fit(references)
    macenko = MacenkoNormalize().fit(references)
    macenko_lstsq = MacenkoNormalize(solver="lstsq").fit(references)
    vahadane = VahadaneNormalize().fit(references)
    return [
        ("stainnet", stainnet, None, stainnet),
        ("reinhard", reinhard, None, reinhard),
        ("reinhard_slide", reinhard, slide, lambda b: reinhard_with_source(reinhard, b, slide)),
        ("macenko_slide", macenko, slide, lambda b: library_with_source(macenko, b, slide)),
        ("macenko_lstsq_slide", macenko_lstsq, slide, lambda b: library_with_source(macenko_lstsq, b, slide)),
        ("vahadane_slide", vahadane, slide, lambda b: library_with_source(vahadane, b, slide)),
    ]


def test_modules_match_the_library(cases, batches):
    for name, transform, source, library in cases:
        module = export_module(transform, source)
        for batch in batches:
            with torch.no_grad():
                difference = (module(batch) - library(batch)).abs().max().item()
            assert difference < LEVEL / 4, (name, difference)


@needs_onnx
def test_onnx_matches_the_library(cases, batches, tmp_path):
    for name, transform, source, library in cases:
        path = export_onnx(transform, tmp_path / f"{name}.onnx", source=source)
        for batch in batches:
            with torch.no_grad():
                expected = library(batch).numpy()
            difference = np.abs(run_onnx(path, batch) - expected).max()
            assert difference < LEVEL, (name, batch.shape, difference)


def test_torchscript_matches_the_library(cases, batches, tmp_path):
    for name, transform, source, library in cases:
        loaded = torch.jit.load(str(export_torchscript(transform, tmp_path / f"{name}.pt", source=source)))
        for batch in batches:
            with torch.no_grad():
                difference = (loaded(batch) - library(batch)).abs().max().item()
            assert difference < LEVEL, (name, batch.shape, difference)


@needs_onnx
def test_stainnet_onnx_rounds_to_the_lookup_table(tmp_path):
    """uint8 in, uint8 out: the graph, rounded, against the library's exact table path."""
    normalize = StainNetNormalize.from_pretrained(PRETRAINED)
    levels = torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    table = normalize(levels)
    graph = run_onnx(export_onnx(normalize, tmp_path / "s.onnx"), levels.float() / 255.0)
    rounded = np.rint(graph * 255.0).astype(np.int16)
    assert np.abs(rounded - table.numpy().astype(np.int16)).max() <= 1


def test_per_image_stain_matrices_are_not_exported(references):
    for klass in (MacenkoNormalize, VahadaneNormalize):
        with pytest.raises(ValueError, match="pass source= images"):
            export_module(klass().fit(references))
    with pytest.raises(ValueError, match="cannot be exported"):
        export_module(torch.nn.Identity())
    with pytest.raises(ValueError, match="only StainNet"):
        export(ReinhardNormalize().fit(references), "r.cube")


def test_given_statistics_and_a_normalizer_source_are_used(references, slide, batches):
    macenko = MacenkoNormalize().fit(references)
    pooled = MacenkoNormalize().fit(slide).target_statistics()
    from_images = export_module(macenko, slide)
    from_statistics = export_module(macenko, pooled)
    assert torch.equal(from_images(batches[0]), from_statistics(batches[0]))
    if hasattr(macenko, "with_source"):  # slide context: the normalizer carries its source statistics
        assert torch.equal(export_module(macenko.with_source(pooled))(batches[0]), from_images(batches[0]))


@pytest.mark.skipif(not hasattr(ReinhardNormalize, "with_source"), reason="no slide context (with_source) here")
def test_exported_slide_context_matches_with_source(references, slide, batches):
    for klass in (ReinhardNormalize, MacenkoNormalize, VahadaneNormalize):
        normalizer = klass().fit(references)
        in_context = normalizer.with_source(normalizer.pooled_statistics(slide))
        module = export_module(in_context)
        for batch in batches:
            with torch.no_grad():
                difference = (module(batch) - in_context(batch)).abs().max().item()
            assert difference < LEVEL / 4, (klass.__name__, difference)


def test_modules_are_plain(references, slide):
    assert isinstance(export_module(ReinhardNormalize().fit(references)), ReinhardModule)
    assert isinstance(export_module(MacenkoNormalize().fit(references), slide), StainTransferModule)


def test_cube_export(tmp_path):
    path = export(StainNetNormalize.from_pretrained(PRETRAINED), tmp_path / "stainnet.cube")
    assert path.read_text().count("\n") > 33**3


@needs_onnx
def test_cli_export(tmp_path, references, slide, capsys):
    for i, image in enumerate(references):
        write_image_atomic(image, tmp_path / "refs" / f"{i}.png")
    for i, image in enumerate(slide):
        write_image_atomic(image, tmp_path / "slide" / f"{i}.png")
    base = ["export", "--reference", str(tmp_path / "refs")]
    assert main([*base, "--method", "macenko", "--source", str(tmp_path / "slide"), "-o", str(tmp_path / "m.onnx")]) == 0
    assert main([*base, "--method", "macenko", "-o", str(tmp_path / "m2.onnx")]) == 2  # no --source: explained
    assert "pass source= images" in capsys.readouterr().err
    assert main([*base, "--method", "macenko", "--source", str(tmp_path / "slide"), "-o", str(tmp_path / "m.onnx")]) == 2
    assert main(["export", "--method", "stainnet", "--weights", PRETRAINED, "-o", str(tmp_path / "s.pt")]) == 0
    assert (tmp_path / "m.onnx").is_file() and (tmp_path / "s.pt").is_file()
