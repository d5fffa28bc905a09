"""Stain augmentation throughput: HEDJitter against peer libraries, side by side in one run.

At 512x512, for one image per call and for a batch of 16 (one call for us; a loop over the images
for peers that take one image at a time), it prints images per second (of the fastest of several
calls) and the ratio of our HEDJitter to each peer. Peers that are not installed are skipped with a
message. ``--threads 1`` compares like with like against the single-threaded numpy peers, and avoids
the cost of thread barriers on a machine that other jobs share.

Peers (from ``benchmarks/_peers.py``): the scikit-image HED recipe of Tellez et al. (``rgb2hed`` ->
scale and shift -> ``hed2rgb``), albumentations ``HEStain``, the Macenko augmentors of torch-staintools,
tiatoolbox, torchstain and staintools. A peer's batch figure uses its own batched call where it has
one, else a loop over the images.

Run (the peers live in their own virtualenv):

    /work/main/.venv-bench/bin/python benchmarks/augment.py [--threads N] [--device cuda]

The input is ``../shared/data/peer_samples/src_512.png`` when present, else a synthetic tile.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

import stain_transforms
from stain_transforms.testing import synthetic_tissue

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO.parent / "shared" / "data" / "peer_samples" / "src_512.png"
SIZE, BATCH = 512, 16
MIN_CALLS, MIN_SECONDS, MAX_SECONDS = 5, 1.0, 20.0

# The peers compared, as (method, peer) keys of benchmarks/_peers.py's PEER_AUGMENTERS.
PEERS = [
    ("hed", "skimage"),  # the scikit-image HED recipe of Tellez et al.
    ("preset", "albumentations"),  # albumentations HEStain, random preset
    ("macenko", "albumentations"),  # albumentations HEStain, Macenko estimate
    ("macenko", "torch-staintools"),
    ("macenko", "tiatoolbox"),
    ("macenko", "torchstain-numpy"),
    ("macenko", "torchstain-torch"),
    ("macenko", "staintools"),
]


# -- timing -------------------------------------------------------------------------------------


def rate(run: Callable[[], object], images_per_call: int, sync: Callable[[], None]) -> float:
    """Images per second of the fastest call, after a warm-up call.

    The best of several calls (at least MIN_CALLS and MIN_SECONDS, at most MAX_SECONDS), as
    ``timeit`` recommends: other jobs sharing the machine only ever make a call slower.
    """
    run()
    sync()
    best, calls, begin = float("inf"), 0, time.perf_counter()
    while calls < MIN_CALLS or time.perf_counter() - begin < MIN_SECONDS:
        start = time.perf_counter()
        run()
        sync()
        best = min(best, time.perf_counter() - start)
        calls += 1
        if time.perf_counter() - begin > MAX_SECONDS:
            break
    return images_per_call / best


def load_image() -> tuple[np.ndarray, str]:
    if SAMPLE.is_file():
        from stain_transforms.files import read_rgb

        image = read_rgb(SAMPLE)[:SIZE, :SIZE]
        if image.shape[:2] == (SIZE, SIZE):
            return np.array(image), str(SAMPLE.relative_to(REPO.parent))  # a writable copy: some peers write
    return synthetic_tissue(SIZE, seed=0), "synthetic tile"


def main() -> None:
    parser = argparse.ArgumentParser(description="HEDJitter throughput against peer stain augmenters")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu", help="device for our batched call (peers run as they do)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    image, source = load_image()
    stack = np.stack([np.roll(image, 17 * i, axis=1) for i in range(BATCH)])  # distinct tiles, same content
    # Our batch starts from the same (B, H, W, 3) uint8 array as the peers' on the CPU; on another
    # device, from a (B, 3, H, W) uint8 tensor already there (the recommended training pattern).
    batch = stack if device.type == "cpu" else torch.from_numpy(stack).permute(0, 3, 1, 2).contiguous().to(device)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"input: {source}, {SIZE}x{SIZE} uint8; batch of {BATCH}; torch threads: {torch.get_num_threads()}; "
        f"load average: {load:.1f}; device for our batch: {device}"
    )

    ours = {
        "stain_transforms HEDJitter (Ruifrok)": stain_transforms.HEDJitter.strong(),
        "stain_transforms HEDJitter (Macenko basis)": stain_transforms.HEDJitter.strong(basis="macenko"),
    }
    results: dict[str, tuple[float, float]] = {}
    for name, jitter in ours.items():
        single = rate(lambda j=jitter: j(image), 1, lambda: None)
        batched = rate(lambda j=jitter: j(batch), BATCH, sync)
        results[name] = (single, batched)

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _peers import PEER_AUGMENTERS  # imports each peer lazily, and says which are missing

    for method, peer in PEERS:
        name = f"{peer} ({method})"
        op = PEER_AUGMENTERS[method][peer](seed=0)
        if op is None:
            print(f"skipped {name}: not installed in this environment")
            continue
        batched = op.transform_batch or (lambda batch, op=op: [op.transform(x) for x in batch])
        try:
            single = rate(lambda op=op: op.transform(image), 1, lambda: None)
            looped = rate(lambda batched=batched: batched(stack), BATCH, lambda: None)
        except Exception as error:  # noqa: BLE001 - a peer failing on this input is reported, not fatal
            print(f"skipped {name}: failed ({type(error).__name__}: {error})")
            continue
        results[name] = (single, looped)

    reference = results["stain_transforms HEDJitter (Ruifrok)"]
    print(
        f"\n{'augmenter':45s} {'1 image img/s':>14s} {'batch 16 img/s':>15s} {'ours/peer 1':>12s} {'ours/peer 16':>13s}"
    )
    for name, (single, batched) in results.items():
        print(
            f"{name:45s} {single:14.1f} {batched:15.1f} {reference[0] / single:11.2f}x {reference[1] / batched:12.2f}x"
        )
    peers = {name: r for name, r in results.items() if not name.startswith("stain_transforms")}
    if peers:
        fastest_single = max(peers.items(), key=lambda item: item[1][0])
        fastest_batch = max(peers.items(), key=lambda item: item[1][1])
        print(
            f"\nHEDJitter vs the fastest peer: {reference[0] / fastest_single[1][0]:.2f}x on one image "
            f"({fastest_single[0]}), {reference[1] / fastest_batch[1][1]:.2f}x on a batch of {BATCH} "
            f"({fastest_batch[0]}); target >= 3x"
        )


if __name__ == "__main__":
    main()
