"""`stain-transforms normalize` and `normalize_folder` on real folder layouts (issue 20, items 2 and 3)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from stain_transforms.cli import main
from stain_transforms.files import write_image_atomic
from stain_transforms.testing import synthetic_tissue


@pytest.fixture
def root(tmp_path: Path) -> Path:
    write_image_atomic(synthetic_tissue(48, seed=0), tmp_path / "refs" / "r.png")
    write_image_atomic(synthetic_tissue(48, seed=1, stain_scale=1.4), tmp_path / "one.png")
    for name, seed in [("normal/a.png", 2), ("normal/b.png", 3), ("tumour/c.png", 4), ("top.png", 5)]:
        write_image_atomic(synthetic_tissue(48, seed=seed, stain_scale=1.3), tmp_path / "in" / name)
    return tmp_path


def normalize(root: Path, *args: str) -> int:
    return main(["normalize", "--method", "reinhard", "--reference", str(root / "refs"), *args])


# -- item 2: output paths ----------------------------------------------------------------------


def test_one_image_into_a_new_folder_with_a_trailing_slash(root, capsys):
    assert normalize(root, str(root / "one.png"), f"{root / 'newdir'}/") == 0
    assert (root / "newdir" / "one.png").is_file()


def test_one_image_into_a_new_folder_without_an_extension(root):
    assert normalize(root, str(root / "one.png"), str(root / "results")) == 0
    assert (root / "results" / "one.png").is_file()


def test_an_unsupported_output_extension_blames_the_output_up_front(root, capsys):
    assert normalize(root, str(root / "one.png"), str(root / "one_normalized.svs")) == 2
    error = capsys.readouterr().err
    assert "output" in error and "one_normalized.svs" in error and ".svs" in error
    assert "one.png:" not in error  # the input is not blamed
    assert not list(root.glob("*.svs")) and not list(root.glob(".*"))  # nothing (temporary) left behind


def test_write_errors_name_the_output_and_no_temporary_file(root, capsys):
    assert normalize(root, str(root / "in"), str(root / "out")) == 0
    # A folder in the place of an output file: the write fails; the error names that output.
    (root / "out2" / "top.png").mkdir(parents=True)
    assert normalize(root, str(root / "in"), str(root / "out2"), "--overwrite") == 2
    error = capsys.readouterr().err
    assert str(root / "out2" / "top.png") in error
    assert ".tmp" not in error and not any(p.name.startswith(".") for p in (root / "out2").iterdir())


def test_written_files_respect_the_umask(root):
    previous = os.umask(0o022)
    try:
        assert normalize(root, str(root / "one.png"), str(root / "out.png")) == 0
    finally:
        os.umask(previous)
    assert (root / "out.png").stat().st_mode & 0o777 == 0o644


# -- item 3: folder layouts, formats, flags ------------------------------------------------------


def test_recursive_keeps_the_class_subfolders(root):
    assert normalize(root, "--recursive", str(root / "in"), str(root / "out")) == 0
    written = sorted(p.relative_to(root / "out").as_posix() for p in (root / "out").rglob("*.png"))
    assert written == ["normal/a.png", "normal/b.png", "top.png", "tumour/c.png"]


def test_without_recursive_only_the_top_level(root):
    assert normalize(root, str(root / "in"), str(root / "out")) == 0
    assert sorted(p.name for p in (root / "out").rglob("*.png")) == ["top.png"]


def test_output_format_and_jpeg_quality(root):
    assert normalize(root, "--recursive", "--format", "jpg", "--jpeg-quality", "50", str(root / "in"), str(root / "lo")) == 0
    assert normalize(root, "--recursive", "--format", "jpg", "--jpeg-quality", "98", str(root / "in"), str(root / "hi")) == 0
    low, high = root / "lo" / "normal" / "a.jpg", root / "hi" / "normal" / "a.jpg"
    with PIL.Image.open(low) as image:
        assert image.format == "JPEG"
    assert low.stat().st_size < high.stat().st_size


def test_ignored_flags_warn(root, capsys):
    assert main(["normalize", "--method", "stainnet", "--weights", "stainnet-mitos-aperio-to-hamamatsu",
                 "--reference", str(root / "refs"), str(root / "one.png"), str(root / "a.png")]) == 0
    assert "warning: --reference is ignored by --method stainnet" in capsys.readouterr().err
    assert main(["normalize", "--method", "macenko", "--weights", "stainnet-mitos-aperio-to-hamamatsu",
                 "--reference", str(root / "refs"), str(root / "one.png"), str(root / "b.png")]) == 0
    assert "warning: --weights is ignored by --method macenko" in capsys.readouterr().err
    assert normalize(root, "--jpeg-quality", "80", str(root / "one.png"), str(root / "c.png")) == 0
    assert "warning: --jpeg-quality is ignored" in capsys.readouterr().err


def test_grayscale_input_is_refused(root, capsys):
    gray = np.asarray(PIL.Image.fromarray(synthetic_tissue(48, seed=7)).convert("L"))
    PIL.Image.fromarray(gray).save(root / "in" / "gray.png")
    assert normalize(root, str(root / "in"), str(root / "out")) == 1
    error = capsys.readouterr().err
    assert "gray.png" in error and "grayscale" in error
    assert not (root / "out" / "gray.png").exists() and (root / "out" / "top.png").exists()


def test_two_inputs_mapped_to_one_output_are_refused(root, capsys):
    write_image_atomic(synthetic_tissue(48, seed=8), root / "in" / "top.jpg")
    assert normalize(root, "--format", "png", str(root / "in"), str(root / "out")) == 2
    assert "would both be written to" in capsys.readouterr().err


def test_normalize_folder_python_api(root):
    from stain_transforms.folders import normalize_folder

    result = normalize_folder(root / "in", root / "out", "macenko", reference=root / "refs", recursive=True,
                              format="tif", progress=False)
    assert result.ok and len(result.written) == 4
    assert (root / "out" / "tumour" / "c.tif").is_file()
    with pytest.warns(UserWarning, match="reference= is ignored"):
        normalize_folder(root / "one.png", root / "sn/", "stainnet", weights="stainnet-mitos-aperio-to-hamamatsu",
                         reference=root / "refs", progress=False)
    with pytest.raises(ValueError, match="exist"):
        normalize_folder(root / "in", root / "out", "macenko", reference=root / "refs", recursive=True, format="tif")


def test_grayscale_references_are_refused(root, capsys):
    PIL.Image.fromarray(synthetic_tissue(48, seed=9)).convert("L").save(root / "refs" / "gray.png")
    assert normalize(root, str(root / "one.png"), str(root / "out.png")) == 2
    assert "gray.png" in capsys.readouterr().err
