"""A new user's first hour (issue 20, item 5): demo, optional extras, import time, docs, training outputs."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from stain_transforms.testing import synthetic_tissue

REPO = Path(__file__).resolve().parents[1]


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300, check=False,
        cwd=tempfile.gettempdir(),  # not the repository: the package is the installed (or PYTHONPATH) one
    )


# -- the demo ----------------------------------------------------------------------------------


def test_the_demo_uses_real_bundled_tiles():
    from stain_transforms import demo

    references, sources = demo.demo_images()
    assert len(references) >= 3 and len(sources) >= 2
    bundled = sorted(demo.TILES_DIR.glob("*.jpg"))
    assert len(bundled) == len(references) + len(sources)
    assert sum(path.stat().st_size for path in bundled) < 300_000  # small enough to ship
    assert "CC0" in (demo.TILES_DIR / "README.md").read_text()
    # Read from those files, not rendered: each tile is one of the bundled JPEGs.
    first = np.asarray(PIL.Image.open(bundled[0]).convert("RGB"))
    assert any(np.array_equal(first, image) for image in [*references, *sources.values()])


def test_the_demo_labels_what_each_model_maps_from_and_to():
    from stain_transforms import demo

    references, _ = demo.demo_images()
    labels = dict(demo.demo_methods(references).keys())
    assert labels["Macenko"] == "source -> hospital 0"
    assert labels["StainNet (pretrained)"] == "Aperio -> Hamamatsu"
    assert "whatever the reference" in demo.FOOTER


# -- optional extras ---------------------------------------------------------------------------


@pytest.mark.parametrize("module, library, extra", [("albumentations", "albumentations", "albumentations"), ("monai", "monai", "monai")])
def test_a_missing_extra_names_what_to_install(module, library, extra):
    result = run_python(
        f"""
        import sys
        sys.modules["{library}"] = None  # as if it were not installed
        try:
            import stain_transforms.{module}
        except ImportError as error:
            print(error)
        """
    )
    assert result.returncode == 0, result.stderr
    assert f'pip install "stain-transforms[{extra}]"' in result.stdout


# -- import time -------------------------------------------------------------------------------


def test_import_stain_transforms_is_lazy_and_complete():
    result = run_python(
        """
        import sys
        import stain_transforms as st
        assert "torch" not in sys.modules, "import stain_transforms imported torch"
        from stain_transforms import MacenkoNormalize
        assert MacenkoNormalize.__name__ == "MacenkoNormalize"
        for name in st.__all__:
            assert getattr(st, name) is not None and name in dir(st), name
        assert st.testing.synthetic_tissue and st.models.StainNet and st.normalize_folder
        print("ok")
        """
    )
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr


# -- docs --------------------------------------------------------------------------------------


def _imported_names(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.asname or alias.name.partition(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            names |= {alias.asname or alias.name for alias in node.names}
    return names


@pytest.mark.parametrize("page", ["training.md"])
def test_each_code_block_imports_the_modules_it_uses(page):
    """Blocks under their own heading are copied alone: each imports what it uses (``st`` ...)."""
    sys.path.insert(0, str(REPO / "tests"))
    try:
        from test_docs import DOCS, python_blocks
    finally:
        sys.path.pop(0)
    trees = [ast.parse(block) for block in python_blocks(DOCS / page)]
    everywhere = set().union(*(_imported_names(tree) for tree in trees))
    for index, tree in enumerate(trees):
        used = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
        missing = (used & everywhere) - _imported_names(tree)
        assert not missing, f"{page} block {index + 1} uses {sorted(missing)} without importing them"


# -- training outputs --------------------------------------------------------------------------


def test_sample_grids_have_row_labels(tmp_path):
    import torch

    from stain_transforms.training.staingan import SOURCE_ROW_LABELS, StainGANConfig, _Trainer

    config = StainGANConfig(ngf=4, n_blocks=1, ndf=4, crop_size=32, progress=False)
    trainer = _Trainer(config, torch.device("cpu"))
    images = [synthetic_tissue(32, seed=s) for s in range(2)]
    path = tmp_path / "grid.png"
    trainer.sample_grid(images, images, path)
    grid = np.asarray(PIL.Image.open(path).convert("RGB"))
    assert grid.shape[0] == 6 * 32 and grid.shape[1] > 2 * 32  # six rows, and a label column
    label_column = grid[:, : grid.shape[1] - 2 * 32]
    assert (label_column < 128).any() and (label_column == 255).mean() > 0.8  # dark text on white
    assert SOURCE_ROW_LABELS[1] == "source -> target"


def test_model_cards_take_source_and_target_domain_flags(tmp_path):
    from stain_transforms.cli import main

    source = tmp_path / "source"
    source.mkdir()
    for seed in range(2):
        PIL.Image.fromarray(synthetic_tissue(32, seed=seed)).save(source / f"{seed}.png")
    out = tmp_path / "stainnet"
    argv = ["distill", "--source", str(source), "--teacher-outputs", str(source), "--out", str(out), "--steps", "3",
            "--val-fraction", "0", "--no-progress", "--source-domain", "H&E, scanner A", "--target-domain", "H&E, scanner B"]
    assert main(argv) == 0
    card = (out / "README.md").read_text()
    assert "Source domain: H&E, scanner A" in card and "Target domain: H&E, scanner B" in card
    parser = importlib.import_module("stain_transforms.cli").build_parser()
    args = parser.parse_args(["train-staingan", "--source", "a", "--target", "b", "--out", "c", "--source-domain", "A",
                              "--target-domain", "B"])
    assert (args.source_domain, args.target_domain) == ("A", "B")
