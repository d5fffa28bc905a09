"""Normalizing an archive (stain_transforms.archive): in process and on a local Ray cluster of 2 CPUs.

The Ray tests skip when Ray Data is not installed (the ``[ray]`` extra). They share one local Ray
cluster per module (``ray.init(num_cpus=2)``), which takes a few seconds to start.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from stain_transforms import MacenkoNormalize, ReinhardNormalize, VahadaneNormalize
from stain_transforms.archive import (
    ArchiveResult,
    NormalizeBatch,
    clear_temporaries,
    connect_ray,
    fit_references,
    normalize_files,
)
from stain_transforms.cli import main
from stain_transforms.files import read_rgb, write_image_atomic
from stain_transforms.testing import synthetic_tissue

HAVE_RAY = importlib.util.find_spec("ray") is not None and importlib.util.find_spec("pyarrow") is not None
needs_ray = pytest.mark.skipif(not HAVE_RAY, reason="Ray Data is not installed (pip install 'stain-transforms[ray]')")
TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    """24 source tiles of two sizes, a corrupt file, and 3 references."""
    root = tmp_path_factory.mktemp("archive")
    for i in range(24):
        size = 48 if i % 3 else 64
        write_image_atomic(synthetic_tissue(size, seed=i, stain_scale=1.25), root / "in" / f"{i:03d}.png")
    for i in range(3):
        write_image_atomic(synthetic_tissue(64, seed=100 + i), root / "refs" / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def fitted(archive) -> MacenkoNormalize:
    return MacenkoNormalize().fit([read_rgb(p) for p in sorted((archive / "refs").iterdir())])


def pairs_into(archive: Path, out: Path) -> list[tuple[Path, Path]]:
    return [(p, out / p.name) for p in sorted((archive / "in").iterdir())]


def expected(normalizer, path: Path) -> np.ndarray:
    return normalizer(read_rgb(path))


# -- in process ---------------------------------------------------------------------------------


def test_local_engine_writes_what_the_transform_returns(archive, fitted, tmp_path):
    pairs = pairs_into(archive, tmp_path / "out")
    result = normalize_files(pairs, fitted, progress=False, batch_size=5)
    assert (result.written, result.skipped, result.failed) == (24, 0, [])
    for source, destination in pairs:
        np.testing.assert_array_equal(read_rgb(destination), expected(fitted, source))


def test_rerun_skips_done_files_and_clears_temporaries(archive, fitted, tmp_path):
    pairs = pairs_into(archive, tmp_path / "out")
    normalize_files(pairs[:10], fitted, progress=False)
    stale = tmp_path / "out" / f".{pairs[12][1].stem}.abcd1234.png"  # as a killed writer leaves it
    stale.write_bytes(b"half a png")
    result = normalize_files(pairs, fitted, progress=False)
    assert (result.written, result.skipped) == (14, 10)
    assert not stale.exists()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(d.name for _, d in pairs)


def test_existing_outputs_overwrite_or_error(archive, fitted, tmp_path):
    pairs = pairs_into(archive, tmp_path / "out")[:3]
    write_image_atomic(np.zeros((8, 8, 3), np.uint8), pairs[0][1])
    errors = normalize_files(pairs, fitted, existing="error", progress=False)
    assert errors.written == 2 and len(errors.failed) == 1 and "exists" in errors.failed[0][1]
    overwritten = normalize_files(pairs, fitted, existing="overwrite", progress=False)
    assert overwritten.written == 3
    np.testing.assert_array_equal(read_rgb(pairs[0][1]), expected(fitted, pairs[0][0]))


def test_bad_files_are_reported_and_skipped(tmp_path, fitted):
    write_image_atomic(synthetic_tissue(32, seed=1), tmp_path / "in" / "good.png")
    (tmp_path / "in" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    write_image_atomic(np.zeros((1, 1, 3), np.uint8), tmp_path / "in" / "tiny.png")  # too small to normalize
    pairs = [(p, tmp_path / "out" / p.name) for p in sorted((tmp_path / "in").iterdir())]
    result = normalize_files(pairs, fitted, progress=False)
    assert result.written == 1 and not result.ok
    assert sorted(Path(s).name for s, _ in result.failed) == ["corrupt.png", "tiny.png"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.png"]


def test_two_inputs_one_output_is_refused(tmp_path, fitted):
    with pytest.raises(ValueError, match="same output"):
        normalize_files([("a.png", tmp_path / "x.png"), ("b.png", tmp_path / "x.png")], fitted)


def test_a_factory_is_called_in_the_worker(archive, tmp_path):
    made = []

    def factory():
        made.append(1)
        return ReinhardNormalize().fit(synthetic_tissue(64, seed=0))

    worker = NormalizeBatch(factory, device="cpu")
    assert made == [1] and isinstance(worker.normalizer, ReinhardNormalize)


def test_clear_temporaries_leaves_other_files():
    assert clear_temporaries([]) == 0


def test_cli_resume_local(archive, tmp_path, capsys):
    args = ["normalize", "--method", "reinhard", "--reference", str(archive / "refs"), str(archive / "in"), str(tmp_path / "out")]
    assert main(args) == 0
    assert main(args) == 2  # outputs exist: refused without --resume or --overwrite
    assert main([*args[:1], "--resume", *args[1:]]) == 0
    assert "(24 existed and were skipped)" in capsys.readouterr().out


def test_unreachable_address_fails_fast():
    start = time.perf_counter()
    with pytest.raises(ConnectionError, match="no Ray cluster answers at 127.0.0.1:9"):
        connect_ray("127.0.0.1:9")
    assert time.perf_counter() - start < 10
    with pytest.raises(ValueError, match="is not 'auto'"):
        connect_ray("nonsense")


def test_cli_unreachable_address_is_one_error_line(archive, tmp_path, capsys):
    status = main(["normalize", "--method", "reinhard", "--reference", str(archive / "refs"), "--engine", "ray",
                   "--address", "127.0.0.1:9", str(archive / "in"), str(tmp_path / "out")])
    assert status == 2
    assert "error: no Ray cluster answers at 127.0.0.1:9" in capsys.readouterr().err


def test_cli_ray_refuses_existing_outputs_before_any_work(archive, tmp_path, capsys):
    write_image_atomic(np.zeros((8, 8, 3), np.uint8), tmp_path / "out" / "000.png")
    status = main(["normalize", "--method", "reinhard", "--reference", str(archive / "refs"), "--engine", "ray",
                   "--address", "127.0.0.1:9", str(archive / "in"), str(tmp_path / "out")])
    assert status == 2
    assert "1 output file(s) exist" in capsys.readouterr().err


# -- Ray ------------------------------------------------------------------------------------------


class DieOnce(torch.nn.Module):
    """Wraps a normalizer; the first call in any process kills that process (os._exit), once per marker file."""

    def __init__(self, inner, marker: str) -> None:
        super().__init__()
        self.inner, self.marker = inner, marker

    def forward(self, x):
        if not os.path.exists(self.marker):
            Path(self.marker).touch()
            os._exit(1)  # the actor dies mid-batch, as if killed
        return self.inner(x)


@pytest.fixture(scope="module")
def ray_cluster():
    if not HAVE_RAY:
        pytest.skip("Ray Data is not installed (pip install 'stain-transforms[ray]')")
    import ray

    ray.init(
        num_cpus=2, include_dashboard=False, log_to_driver=False,
        # the workers import this module (DieOnce) and stain_transforms from the checkout
        runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([str(TESTS), str(REPO)])}},
    )
    yield ray
    ray.shutdown()


@needs_ray
def test_ray_equals_local(ray_cluster, archive, fitted, tmp_path):
    pairs = pairs_into(archive, tmp_path / "out")
    result = normalize_files(pairs, fitted, engine="ray", num_workers=2, batch_size=4, progress=False)
    assert isinstance(result, ArchiveResult) and (result.written, result.failed) == (24, [])
    for source, destination in pairs:
        np.testing.assert_array_equal(read_rgb(destination), expected(fitted, source))
    again = normalize_files(pairs, fitted, engine="ray", num_workers=1, batch_size=24, progress=False)
    assert (again.written, again.skipped) == (0, 24)


def assert_same_target(a, b) -> None:
    for name in type(a).statistics:
        assert torch.equal(getattr(a, f"target_{name}"), getattr(b, f"target_{name}")), name


@pytest.mark.parametrize("klass", [ReinhardNormalize, MacenkoNormalize, VahadaneNormalize])
def test_fit_references_equals_fit(archive, klass, tmp_path, capsys):
    references = sorted((archive / "refs").iterdir()) + sorted((archive / "in").iterdir())[:5]
    (tmp_path / "bad.png").write_bytes(b"junk")  # reported and left out
    fitted = fit_references(klass(), [*references, tmp_path / "bad.png"], progress=False)
    assert_same_target(fitted, klass().fit([read_rgb(p) for p in references]))
    assert "skipped reference" in capsys.readouterr().err


@needs_ray
def test_distributed_fit_equals_fit(ray_cluster, archive, tmp_path):
    references = sorted((archive / "refs").iterdir()) + sorted((archive / "in").iterdir())[:5]
    (tmp_path / "bad.png").write_bytes(b"junk")  # reported and left out
    local = MacenkoNormalize().fit([read_rgb(p) for p in references])
    distributed = fit_references(MacenkoNormalize(), [*references, tmp_path / "bad.png"], engine="ray",
                                 num_workers=2, batch_size=2, progress=False)
    assert_same_target(distributed, local)


@needs_ray
def test_killed_worker_is_retried_without_loss_or_partial_files(ray_cluster, archive, fitted, tmp_path):
    pairs = pairs_into(archive, tmp_path / "out")
    dying = DieOnce(fitted, str(tmp_path / "died"))
    result = normalize_files(pairs, dying, engine="ray", num_workers=2, batch_size=4, progress=False)
    assert (tmp_path / "died").exists()  # a worker did die
    assert result.failed == [] and result.written + result.skipped == 24
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(d.name for _, d in pairs)
    for source, destination in pairs:
        np.testing.assert_array_equal(read_rgb(destination), expected(fitted, source))


@needs_ray
def test_ray_reports_bad_files(ray_cluster, fitted, tmp_path):
    write_image_atomic(synthetic_tissue(32, seed=1), tmp_path / "in" / "good.png")
    (tmp_path / "in" / "corrupt.png").write_bytes(b"junk")
    pairs = [(p, tmp_path / "out" / p.name) for p in sorted((tmp_path / "in").iterdir())]
    result = normalize_files(pairs, fitted, engine="ray", num_workers=1, progress=False)
    assert result.written == 1 and [Path(s).name for s, _ in result.failed] == ["corrupt.png"]


def descendants(pid: int) -> set[int]:
    """Process ids below ``pid``, from /proc (empty where there is no /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        try:
            with open(f"/proc/{entry}/stat") as handle:
                children.setdefault(int(handle.read().rsplit(")", 1)[1].split()[1]), []).append(int(entry))
        except (OSError, IndexError, ValueError):
            continue
    found, stack = set(), [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


@needs_ray
@pytest.mark.slow
def test_killed_job_then_rerun_finishes(archive, tmp_path):
    """The command line with its own local Ray, SIGKILLed part-way, then rerun with --resume (in process, to save time)."""
    out = tmp_path / "out"
    command = [sys.executable, "-m", "stain_transforms", "normalize", "--method", "vahadane", "--reference",
               str(archive / "refs"), "--engine", "ray", "--num-workers", "2", "--batch-size", "2",
               str(archive / "in"), str(out)]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(REPO)}
    job = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and job.poll() is None:
        if out.is_dir() and len([p for p in out.iterdir() if not p.name.startswith(".")]) >= 4:
            break
        time.sleep(0.05)
    below = descendants(job.pid)
    job.kill()
    job.wait()
    time.sleep(1)
    for pid in below:  # Ray's helper agents can outlive a SIGKILLed driver; they are ours
        try:
            os.kill(pid, 9)
        except OSError:
            pass
    before = {p.name for p in out.iterdir() if not p.name.startswith(".")} if out.is_dir() else set()
    local = [*command[:4], "--resume", *command[4:8], *command[14:]]  # without --engine ray ... --batch-size 2
    rerun = subprocess.run(local, env=env, capture_output=True, text=True, timeout=180, check=False)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"({len(before)} existed and were skipped)" in rerun.stdout
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in (archive / "in").iterdir())
    for path in out.iterdir():
        read_rgb(path)  # every file whole
