"""The command line, run in-process through its entry point."""

import json

import numpy as np
import pytest

from stain_transforms.cli import main
from stain_transforms.files import read_rgb, write_image_atomic
from stain_transforms.testing import synthetic_tissue


@pytest.fixture
def folders(tmp_path, source_tile, reference_tile):
    inp, ref = tmp_path / "in", tmp_path / "ref"
    inp.mkdir(), ref.mkdir()
    for i in range(3):
        write_image_atomic(synthetic_tissue(64, seed=i, stain_scale=1.4), inp / f"tile{i}.png")
    write_image_atomic(reference_tile, ref / "r0.png")
    write_image_atomic(synthetic_tissue(96, seed=5), ref / "r1.png")
    return tmp_path


def test_normalize_folder_keeps_names_and_fits_on_a_reference_folder(folders, capsys):
    out = folders / "out"
    assert main(["normalize", "--method", "reinhard", "--reference", str(folders / "ref"), str(folders / "in"), str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["tile0.png", "tile1.png", "tile2.png"]
    assert "normalized 3 of 3" in capsys.readouterr().out
    assert read_rgb(out / "tile0.png").shape == (64, 64, 3)
    assert not list(out.glob(".*"))  # no temporary files left behind


def test_corrupt_image_is_reported_skipped_and_fails_the_run(folders, capsys):
    (folders / "in" / "broken.png").write_bytes(b"\x89PNG truncated")
    out = folders / "out"
    code = main(["normalize", "--method", "reinhard", "--reference", str(folders / "ref" / "r0.png"), str(folders / "in"), str(out)])
    assert code == 1
    assert len(list(out.glob("*.png"))) == 3
    assert "broken.png" in capsys.readouterr().err


def test_existing_outputs_need_overwrite(folders, capsys):
    args = ["normalize", "--method", "reinhard", "--reference", str(folders / "ref"), str(folders / "in"), str(folders / "out")]
    assert main(args) == 0
    before = (folders / "out" / "tile0.png").read_bytes()
    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (folders / "out" / "tile0.png").read_bytes() == before
    assert main(args + ["--overwrite"]) == 0


def test_output_inside_input_and_missing_reference_are_refused(folders, capsys):
    inp = str(folders / "in")
    assert main(["normalize", "--method", "reinhard", "--reference", str(folders / "ref"), inp, inp + "/sub"]) == 2
    assert "inside the input" in capsys.readouterr().err
    assert main(["normalize", "--method", "macenko", inp, str(folders / "o")]) == 2
    assert "needs --reference" in capsys.readouterr().err


def test_single_file_in_and_out(folders):
    out = folders / "single.png"
    assert main(["normalize", "--method", "reinhard", "--reference", str(folders / "ref"), str(folders / "in" / "tile1.png"), str(out)]) == 0
    assert read_rgb(out).shape == (64, 64, 3)


def test_evaluate_prints_json(folders, capsys):
    inp = str(folders / "in")
    assert main(["evaluate", "--source", inp, "--target", inp, "--normalized", inp, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 3 and result["ssim_target"] == pytest.approx(1.0) and result["ssim_source"] == pytest.approx(1.0)


def test_module_entry_point_runs():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "stain_transforms", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "normalize" in done.stdout
