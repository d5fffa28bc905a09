"""Stain augmentation throughput: HEDJitter against peer libraries, side by side in one run.

At 512x512, for one image per call and for a batch of 16 (one call for us; a loop over the images
for peers that take one image at a time), it prints images per second (of the fastest of several
calls) and the ratio of our HEDJitter to each peer. Peers that are not installed are skipped with a
message. ``--threads 1`` compares like with like, core for core, against the single-threaded numpy
peers; without it torch uses every core, as a user's process does by default.

Peers (from ``benchmarks/_peers.py``): the scikit-image HED recipe of Tellez et al. (``rgb2hed`` ->
scale and shift -> ``hed2rgb``), albumentations ``HEStain``, the Macenko augmentors of torch-staintools,
tiatoolbox, torchstain and staintools. A peer's batch figure uses its own batched call where it has
one, else a loop over the images.

Run (the peers live in their own virtualenv):

    /work/main/.venv-bench/bin/python benchmarks/augment.py [--threads N] [--rounds 3] [--device cuda]

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
HEAD_TO_HEAD_ROUNDS = 10
THREADS: int | None = None  # --threads; re-applied before every timing, as some peers change it (staintools)

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
    pin_threads()
    run()
    sync()
    best, calls, begin = float("inf"), 0, time.perf_counter()
    while calls < MIN_CALLS or time.perf_counter() - begin < MIN_SECONDS:
        pin_threads()
        start = time.perf_counter()
        run()
        sync()
        best = min(best, time.perf_counter() - start)
        calls += 1
        if time.perf_counter() - begin > MAX_SECONDS:
            break
    return images_per_call / best


def pin_threads() -> None:
    if THREADS:
        torch.set_num_threads(THREADS)


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
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds; the best round counts")
    parser.add_argument("--peers", nargs="+", help="time only these peers (e.g. skimage, to compare checkouts)")
    args = parser.parse_args()
    global THREADS
    THREADS = args.threads
    pin_threads()
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
    # name -> (one-image call, batch call, sync after a batch call)
    contenders: dict[str, tuple[Callable[[], object], Callable[[], object], Callable[[], None]]] = {}
    for name, jitter in ours.items():
        contenders[name] = (lambda j=jitter: j(image), lambda j=jitter: j(batch), sync)

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _peers import PEER_AUGMENTERS  # imports each peer lazily, and says which are missing

    for method, peer in PEERS:
        if args.peers is not None and peer not in args.peers:
            continue
        op = PEER_AUGMENTERS[method][peer](seed=0)
        if op is None:
            print(f"skipped {peer} ({method}): not installed in this environment")
            continue
        batched = op.transform_batch or (lambda batch, op=op: [op.transform(x) for x in batch])
        contenders[f"{peer} ({method})"] = (lambda op=op: op.transform(image), lambda b=batched: b(stack), lambda: None)

    # Interleaved rounds, best round per contender: whoever runs first in a fresh process pays for
    # its cold heap (page faults), and a change of machine load hits every contender alike.
    results: dict[str, tuple[float, float]] = {}
    for _ in range(args.rounds):
        for name, (one, many, sync_many) in list(contenders.items()):
            try:
                rates = (rate(one, 1, lambda: None), rate(many, BATCH, sync_many))
            except Exception as error:  # noqa: BLE001 - a peer failing on this input is reported, not fatal
                print(f"skipped {name}: failed ({type(error).__name__}: {error})")
                del contenders[name]
                continue
            previous = results.get(name, (0.0, 0.0))
            results[name] = (max(previous[0], rates[0]), max(previous[1], rates[1]))

    ours_name = "stain_transforms HEDJitter (Ruifrok)"
    reference = results[ours_name]
    print(
        f"\n{'augmenter':45s} {'1 image img/s':>14s} {'batch 16 img/s':>15s} {'ours/peer 1':>12s} {'ours/peer 16':>13s}"
    )
    for name, (single, batched) in results.items():
        print(
            f"{name:45s} {single:14.1f} {batched:15.1f} {reference[0] / single:11.2f}x {reference[1] / batched:12.2f}x"
        )
    peers = {name: r for name, r in results.items() if not name.startswith("stain_transforms")}
    if not peers:
        return
    # Head to head with the fastest peer, alternating calls, so that a change of machine load during
    # the run cannot favour either side.
    print(f"\nHEDJitter vs the fastest peer, alternating calls (best of {HEAD_TO_HEAD_ROUNDS} each), target >= 3x:")
    for mode, count in ((0, 1), (1, BATCH)):
        peer = max(peers, key=lambda name: peers[name][mode])
        ours_rate, peer_rate = head_to_head(contenders[ours_name][mode], contenders[peer][mode], sync)
        label = "one image" if count == 1 else f"batch of {count}"
        print(
            f"  {label:12s}: {count * ours_rate:7.1f} img/s vs {count * peer_rate:6.1f} img/s ({peer}): "
            f"{ours_rate / peer_rate:.2f}x"
        )


def head_to_head(
    ours: Callable[[], object], peer: Callable[[], object], sync: Callable[[], None]
) -> tuple[float, float]:
    """Calls per second of the fastest call of each, timing them in alternation."""
    best = [float("inf"), float("inf")]
    for _ in range(HEAD_TO_HEAD_ROUNDS):
        for side, (run, after) in enumerate(((ours, sync), (peer, lambda: None))):
            pin_threads()
            start = time.perf_counter()
            run()
            after()
            best[side] = min(best[side], time.perf_counter() - start)
    return 1.0 / best[0], 1.0 / best[1]


if __name__ == "__main__":
    main()
