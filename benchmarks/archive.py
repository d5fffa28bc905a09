"""Normalizing an archive, and exported StainNet: the figures of docs/archive.md.

    python benchmarks/archive.py [--tiles 2000] [--size 256] [--method macenko] [--skip-faults] [--skip-export]

1. Throughput on 2,000 synthetic 256x256 PNG tiles (100 tiles of ``synthetic_tissue``, each in 20
   distinct rolled/rotated variants), read, normalized and written as PNG: in process (torch on 1 and
   on 2 threads) and on a local Ray cluster with 1 and 2 actors (Ray's start excluded, its actors' start
   included); the scaling ratio, and the overhead per tile of Ray over in process.
2. Faults, on Ray with 2 actors: one actor SIGKILLed when a quarter of the tiles are written; and the
   whole command line job (``stain-transforms normalize --engine ray``) SIGKILLed half-way, then rerun
   with ``--resume``. Counted: files lost, files left partial (undecodable) or temporary, and images
   normalized twice (every normalization is logged with a checksum of its input image).
3. StainNet exported to ONNX and TorchScript against eager PyTorch: largest difference, and speed on
   the CPU (onnxruntime at 1 and 2 threads), with the library's uint8 lookup table for reference.

Results print as markdown. The machine may be shared: rerun on a quiet one for final figures.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import torch

from stain_transforms import MacenkoNormalize, ReinhardNormalize, StainNetNormalize, VahadaneNormalize
from stain_transforms.archive import fit_references, normalize_files
from stain_transforms.files import read_rgb, write_image_atomic
from stain_transforms.testing import synthetic_tissue

METHODS = {"macenko": MacenkoNormalize, "reinhard": ReinhardNormalize, "vahadane": VahadaneNormalize}
PRETRAINED = "stainnet-mitos-aperio-to-hamamatsu"


def make_archive(root: Path, tiles: int, size: int) -> tuple[Path, Path]:
    bases = [synthetic_tissue(size, seed=s, stain_scale=1.25) for s in range(100)]
    for i in range(tiles):
        k = i // len(bases)
        tile = np.rot90(np.roll(bases[i % len(bases)], 7 * k, axis=1), k % 4)
        write_image_atomic(np.ascontiguousarray(tile), root / "in" / f"{i:05d}.png")
    for i in range(8):
        write_image_atomic(synthetic_tissue(size, seed=1000 + i), root / "refs" / f"{i}.png")
    return root / "in", root / "refs"


class Logged(torch.nn.Module):
    """A normalizer that logs a checksum of every image it normalizes (one line each, appended)."""

    def __init__(self, inner: torch.nn.Module, log: str) -> None:
        super().__init__()
        self.inner, self.log = inner, log

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        out = self.inner(batch)
        lines = "".join(f"{zlib.crc32(image.contiguous().numpy().tobytes())}\n" for image in batch.cpu())
        with open(self.log, "a") as handle:
            handle.write(lines)
        return out


def outputs(folder: Path) -> tuple[list[Path], list[Path]]:
    """(finished outputs, temporary files) in ``folder``."""
    if not folder.is_dir():
        return [], []
    files = list(folder.iterdir())
    return [p for p in files if not p.name.startswith(".")], [p for p in files if p.name.startswith(".")]


def undecodable(files: list[Path]) -> int:
    bad = 0
    for path in files:
        try:
            read_rgb(path)
        except ValueError:
            bad += 1
    return bad


def descendants(pid: int) -> set[int]:
    """Process ids below ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    parent = int(handle.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
    found, stack = set(), [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def throughput(pairs_of, normalizer, tiles: int) -> list[tuple[str, float]]:
    import ray

    rows = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        result = normalize_files(pairs_of(f"local{threads}"), normalizer, batch_size=16, progress=False)
        assert result.written == tiles and result.ok
        rows.append((f"in process, torch {threads} thread(s)", result.seconds))
    torch.set_num_threads(1)
    start = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    print(f"(ray.init with 2 CPUs: {time.perf_counter() - start:.1f} s, not counted below)", flush=True)
    for workers in (1, 2):
        result = normalize_files(pairs_of(f"ray{workers}"), normalizer, engine="ray", num_workers=workers,
                                 batch_size=16, progress=False)
        assert result.written == tiles and result.ok, result
        rows.append((f"Ray Data, {workers} actor(s)", result.seconds))
    small = normalize_files(pairs_of("ray_small")[:32], normalizer, engine="ray", num_workers=2, batch_size=16,
                            progress=False)
    rows.append(("Ray Data, 2 actors, 32 tiles (fixed start-up cost)", small.seconds))
    return rows


def kill_a_worker(pairs, normalizer, log: Path, tiles: int) -> dict[str, float]:
    out = pairs[0][1].parent
    logged = Logged(normalizer, str(log))
    killed: list[int] = []

    def killer() -> None:
        while len(outputs(out)[0]) < tiles // 4:
            time.sleep(0.02)
        actors = [p for p in descendants(os.getpid()) if "MapWorker(MapBatches(NormalizeBatch" in cmdline(p)]
        if actors:
            os.kill(actors[0], signal.SIGKILL)
            killed.append(actors[0])

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    result = normalize_files(pairs, logged, engine="ray", num_workers=2, batch_size=16, progress=False)
    thread.join(timeout=1)
    done, temporary = outputs(out)
    counts = np.unique(np.loadtxt(log, dtype=np.int64), return_counts=True)[1]
    return {
        "actors killed": len(killed),
        "files lost": tiles - len(done),
        "partial (undecodable) files": undecodable(done),
        "temporary files left": len(temporary),
        "images normalized twice": int((counts > 1).sum()),
        "retried batch: already written, skipped": result.skipped,
        "seconds": round(result.seconds, 1),
    }


def kill_the_job(input_dir: Path, refs: Path, out: Path, method: str, tiles: int) -> dict[str, float]:
    command = [sys.executable, "-m", "stain_transforms", "normalize", "--method", method, "--reference", str(refs),
               "--engine", "ray", "--num-workers", "2", str(input_dir), str(out)]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    job = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while job.poll() is None and len(outputs(out)[0]) < tiles // 2:
        time.sleep(0.05)
    below = descendants(job.pid)
    job.send_signal(signal.SIGKILL)
    job.wait()
    time.sleep(5)
    survivors = [p for p in below if os.path.exists(f"/proc/{p}") and cmdline(p)]
    for pid in survivors:
        print(f"  still alive after the kill: {pid} {cmdline(pid)[:100]}", flush=True)
    for pid in survivors:  # ours: started by the job we started
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    done_before, temporary_before = outputs(out)
    start = time.perf_counter()
    rerun = subprocess.run([*command[:4], "--resume", *command[4:]], env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    match = re.search(r"normalized (\d+) of (\d+) image\(s\).*\((\d+) existed", rerun.stdout)
    written, skipped = (int(match[1]), int(match[3])) if match else (-1, -1)
    done, temporary = outputs(out)
    return {
        "files done when killed": len(done_before),
        "temporary files left by the kill": len(temporary_before),
        "Ray processes still alive 5 s after the kill": len(survivors),
        "rerun exit status": rerun.returncode,
        "rerun: written / skipped": f"{written} / {skipped}",
        "files lost": tiles - len(done),
        "partial (undecodable) files": undecodable(done),
        "temporary files left": len(temporary),
        "files done twice": written + skipped - tiles if match else -1,
        "rerun seconds (incl. Ray start, fit)": round(seconds, 1),
    }


def export_figures(root: Path, size: int) -> list[tuple[str, str, str]]:
    import onnxruntime

    from stain_transforms.export import export_onnx, export_torchscript, run_onnx

    normalize = StainNetNormalize.from_pretrained(PRETRAINED, backend="conv")
    batch = torch.stack([torch.from_numpy(synthetic_tissue(size, seed=s)).permute(2, 0, 1) for s in range(16)])
    unit = batch.float() / 255.0
    onnx_path = export_onnx(normalize, root / "stainnet.onnx")
    script = torch.jit.load(str(export_torchscript(normalize, root / "stainnet.pt")))
    torch.set_num_threads(1)
    with torch.no_grad():
        eager = normalize.model(unit)

    def timed(function, repeats: int = 5) -> float:
        function()
        start = time.perf_counter()
        for _ in range(repeats):
            function()
        return (time.perf_counter() - start) / repeats / len(unit) * 1000  # ms per tile

    rows = []
    with torch.no_grad():
        rows.append(("PyTorch eager (model(x), conv2d)", "0 (reference)", f"{timed(lambda: normalize.model(unit)):.2f}"))
        library = normalize(unit)
        rows.append(("stain_transforms conv backend (pixel matmuls)", f"{(library - eager).abs().max():.1e}",
                     f"{timed(lambda: normalize(unit)):.2f}"))
        ts = script(unit)
        rows.append(("TorchScript", f"{(ts - eager).abs().max():.1e}", f"{timed(lambda: script(unit)):.2f}"))
    for threads in (1, 2):
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        session = onnxruntime.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        array = unit.numpy()
        result = session.run(None, {"rgb": array})[0]
        rows.append((f"ONNX Runtime {onnxruntime.__version__}, {threads} thread(s)",
                     f"{np.abs(result - eager.numpy()).max():.1e}",
                     f"{timed(lambda s=session, a=array: s.run(None, {'rgb': a})):.2f}"))
    lut = StainNetNormalize.from_pretrained(PRETRAINED).compile()
    rounded = np.abs(np.rint(run_onnx(onnx_path, unit) * 255) - lut(batch).numpy()).max()
    rows.append(("stain_transforms lookup table (uint8 in and out)", f"{rounded:.0f} level (ONNX rounded vs table)",
                 f"{timed(lambda: lut(batch)):.2f}"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiles", type=int, default=2000)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--method", choices=sorted(METHODS), default="macenko")
    parser.add_argument("--skip-faults", action="store_true")
    parser.add_argument("--skip-export", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        start = time.perf_counter()
        input_dir, refs = make_archive(root, args.tiles, args.size)
        print(f"made {args.tiles} tiles of {args.size}x{args.size} in {time.perf_counter() - start:.0f} s; "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}", flush=True)
        normalizer = fit_references(METHODS[args.method](), [refs], progress=False)
        sources = sorted(input_dir.iterdir())

        def pairs_of(name: str) -> list[tuple[Path, Path]]:
            return [(p, root / name / p.name) for p in sources]

        if not args.skip_throughput:
            rows = throughput(pairs_of, normalizer, args.tiles)
            local = rows[0][1]
            print(f"\n### Throughput: {args.tiles} tiles {args.size}x{args.size}, {args.method}, PNG in and out\n")
            print("| engine | seconds | tiles/s | vs in process (1 thread) |\n|---|---|---|---|")
            for name, seconds in rows:
                count = 32 if "32 tiles" in name else args.tiles
                print(f"| {name} | {seconds:.1f} | {count / seconds:.0f} | {local / seconds * count / args.tiles:.2f}x |")
            ray1, ray2 = rows[2][1], rows[3][1]
            print(f"\nscaling 1 -> 2 actors: {ray1 / ray2:.2f}x; Ray overhead per tile (1 actor vs in process, "
                  f"1 thread): {(ray1 - local) / args.tiles * 1000:.1f} ms", flush=True)
        if not args.skip_faults:
            import ray

            if not ray.is_initialized():
                ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
            figures = kill_a_worker(pairs_of("killed_worker"), normalizer, root / "log.txt", args.tiles)
            print("\n### A Ray actor SIGKILLed at 25%\n\n| | |\n|---|---|")
            for key, value in figures.items():
                print(f"| {key} | {value} |")
            ray.shutdown()
            figures = kill_the_job(input_dir, refs, root / "killed_job", args.method, args.tiles)
            print("\n### The job SIGKILLed at 50%, then rerun with --resume\n\n| | |\n|---|---|")
            for key, value in figures.items():
                print(f"| {key} | {value} |", flush=True)
        if not args.skip_export:
            rows = export_figures(root, args.size)
            print(f"\n### StainNet exported, 16 tiles {args.size}x{args.size}, float32\n")
            print("| runtime | max abs difference to eager | ms per tile |\n|---|---|---|")
            for row in rows:
                print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
