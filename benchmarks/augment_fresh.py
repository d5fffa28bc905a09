"""HEDJitter against the scikit-image HED recipe, each in a fresh process, as in a DataLoader worker.

``benchmarks/augment.py`` times every augmenter in one long-lived process, after many other calls
have grown its heap. A DataLoader worker is a fresh process: there glibc's malloc hands each large
buffer back to the system when it is freed, so the next call's buffers are new memory again and
cost a page fault per 4 KiB. This script runs each augmenter in its own fresh process, one 512x512
uint8 image per call, and reports the median time per call (after a few warm-up calls) and the page
faults per call. The two sides alternate, a fresh process each time, for ``--repeats`` rounds.

    /work/main/.venv-bench/bin/python benchmarks/augment_fresh.py [--threads 2] [--repeats 3]

The input is ``../shared/data/peer_samples/src_512.png`` when present, else a synthetic tile.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

WARMUP_CALLS, TIMED_CALLS = 5, 50
CONTENDERS = ("stain_transforms HEDJitter (Ruifrok)", "skimage (hed)")


def child(name: str, threads: int) -> dict[str, float]:
    """Time ``name`` in this (fresh) process."""
    import torch

    torch.set_num_threads(threads)
    from augment import load_image  # the same input as augment.py

    import stain_transforms

    image, _ = load_image()
    if name == CONTENDERS[0]:
        run = stain_transforms.HEDJitter.strong()
    else:
        from _peers import PEER_AUGMENTERS

        run = PEER_AUGMENTERS["hed"]["skimage"](seed=0).transform
    for _ in range(WARMUP_CALLS):
        run(image)
    times, faults_before = [], resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(TIMED_CALLS):
        start = time.perf_counter()
        run(image)
        times.append(time.perf_counter() - start)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before) / TIMED_CALLS
    return {"median_ms": 1e3 * statistics.median(times), "best_ms": 1e3 * min(times), "faults": faults}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads in each process")
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per augmenter (alternating)")
    parser.add_argument("--child", choices=CONTENDERS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.threads)))
        return

    runs: dict[str, list[dict[str, float]]] = {name: [] for name in CONTENDERS}
    for _ in range(args.repeats):
        for name in CONTENDERS:
            command = [sys.executable, __file__, "--child", name, "--threads", str(args.threads)]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            runs[name].append(json.loads(done.stdout.strip().splitlines()[-1]))

    print(
        f"one 512x512 uint8 image per call, {TIMED_CALLS} calls per fresh process, {args.repeats} processes each, "
        f"torch threads: {args.threads}"
    )
    print(f"{'augmenter':40s} {'median ms/call':>15s} {'best ms/call':>13s} {'page faults/call':>17s}")
    summary = {}
    for name, results in runs.items():
        summary[name] = {key: statistics.median(r[key] for r in results) for key in results[0]}
        row = summary[name]
        print(f"{name:40s} {row['median_ms']:15.2f} {row['best_ms']:13.2f} {row['faults']:17.0f}")
    ours, peer = (summary[name]["median_ms"] for name in CONTENDERS)
    print(f"\nHEDJitter vs the scikit-image recipe, median call in a fresh process: {peer / ours:.2f}x (target >= 3x)")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
