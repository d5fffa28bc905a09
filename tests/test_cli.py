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


# -- safe file handling (issue 8): what the tests above leave out ---------------------------------


def test_unreadable_and_unusable_images_are_each_reported_and_the_rest_processed(folders, capsys):
    import PIL.Image

    (folders / "in" / "broken.png").write_bytes(b"\x89PNG truncated")
    PIL.Image.fromarray(np.full((8, 8), 4000, np.uint16)).save(folders / "in" / "deep.png")  # 16-bit
    write_image_atomic(np.full((1, 1, 3), 120, np.uint8), folders / "in" / "dot.png")  # too small to normalize
    out = folders / "out"
    reference = str(folders / "ref")
    code = main(["normalize", "--method", "reinhard", "--reference", reference, str(folders / "in"), str(out)])
    captured = capsys.readouterr()
    assert code == 1
    assert sorted(p.name for p in out.iterdir()) == ["tile0.png", "tile1.png", "tile2.png"]
    assert "normalized 3 of 6 image(s)" in captured.out
    assert "3 image(s) failed:" in captured.err
    for name, reason in [("broken.png", "cannot read image"), ("deep.png", "16-bit"), ("dot.png", "too small")]:
        assert any(name in line and reason in line for line in captured.err.splitlines()), (name, captured.err)


def test_output_folder_equal_to_the_input_or_linked_into_it_is_refused(folders, capsys):
    inp = folders / "in"
    link = folders / "link_into_input"
    link.symlink_to(inp)
    before = sorted(p.name for p in inp.iterdir())
    for output in (inp, link, link / "sub"):
        code = main(["normalize", "--method", "reinhard", "--reference", str(folders / "ref"), str(inp), str(output)])
        assert code == 2
        assert "inside the input" in capsys.readouterr().err
    assert sorted(p.name for p in inp.iterdir()) == before


def test_any_existing_output_stops_the_run_before_anything_is_written(folders, capsys):
    out = folders / "out"
    write_image_atomic(np.zeros((4, 4, 3), np.uint8), out / "tile1.png")
    args = ["normalize", "--method", "reinhard", "--reference", str(folders / "ref")]
    assert main(args + [str(folders / "in"), str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["tile1.png"]  # tile0 and tile2 not written either
    single = folders / "single.png"
    write_image_atomic(np.zeros((4, 4, 3), np.uint8), single)
    before = single.read_bytes()
    assert main(args + [str(folders / "in" / "tile0.png"), str(single)]) == 2
    assert single.read_bytes() == before


def test_a_failed_write_leaves_no_partial_or_temporary_file(folders, monkeypatch, capsys):
    import PIL.Image

    def disk_full(self, path, *args, **kwargs):
        with open(path, "wb") as handle:
            handle.write(b"\x89PNG half")  # a partial file, then the failure
        raise OSError(28, "No space left on device")

    out = folders / "out"
    write_image_atomic(np.zeros((4, 4, 3), np.uint8), out / "kept.png")
    before = (out / "kept.png").read_bytes()
    monkeypatch.setattr(PIL.Image.Image, "save", disk_full)
    with pytest.raises(OSError):
        write_image_atomic(np.zeros((4, 4, 3), np.uint8), out / "new.png")
    with pytest.raises(OSError):
        write_image_atomic(np.zeros((4, 4, 3), np.uint8), out / "kept.png", overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["kept.png"]  # no new.png, no hidden temporary file
    assert (out / "kept.png").read_bytes() == before
    # Through the command line: one error line, and again nothing half-written.
    reference = str(folders / "ref")
    code = main(["normalize", "--method", "reinhard", "--reference", reference, str(folders / "in"), str(out / "n")])
    err = capsys.readouterr().err
    assert code == 2 and "No space left on device" in err and "Traceback" not in err
    assert not (out / "n").exists() or not list((out / "n").iterdir())
