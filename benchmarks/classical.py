"""Reinhard, Macenko and Vahadane throughput: stain_transforms against its peers, side by side in one run.

At 512x512, on one image per call and on a batch of 16, fit excluded, it prints images per second
for this library and every peer that is installed, and our/peer ratios. Macenko and Vahadane
re-estimate the source stain matrix of every image, in every library.

Peers (see benchmarks/PEERS.md; install them into a separate venv with
``pip install -r benchmarks/requirements-peers.txt`` plus ``pip install -e . --no-deps``):
torchstain (numpy and torch), torch-staintools, stainx, staintools with spams-bin, tiatoolbox,
MONAI ``NormalizeHEStains``. A peer that is not installed is skipped with a message.

Measurement: the candidates of one method run in interleaved rounds, so a noisy machine slows
them alike; each gets the best round (images per second over at least ``--seconds``).

    python benchmarks/classical.py [--threads 2] [--rounds 3] [--seconds 1.0] [--methods reinhard macenko vahadane]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _peers import PEER_NORMALIZERS

import stain_transforms as st
from stain_transforms.testing import synthetic_tissue

DATA = Path(os.environ.get("STAIN_TRANSFORMS_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
SIZE, BATCH = 512, 16
OURS = "stain_transforms"
# Measured when this script was written: one 512x512 call takes minutes (PEERS.md); timing it stalls the run.
TOO_SLOW = {("vahadane", "torch-staintools"): "one 512x512 transform ran > 7 min on this CPU"}


def load_images() -> tuple[np.ndarray, np.ndarray, str]:
    """Source and reference: the torchstain samples (where peers were measured), else synthetic tissue."""
    samples = DATA / "peer_samples"
    if (samples / "src_512.png").is_file():
        from PIL import Image

        read = lambda name: np.asarray(Image.open(samples / name).convert("RGB"))
        return read("src_512.png"), read("ref_512.png"), "peer_samples/src_512.png, ref_512.png"
    return synthetic_tissue(SIZE, seed=1, stain_scale=1.3), synthetic_tissue(SIZE, seed=0), "synthetic tissue (no ../shared/data)"


def images_per_second(run: Callable[[], object], images_per_call: int, seconds: float, threads: int) -> float:
    torch.set_num_threads(threads)  # some peers (staintools) reset it when they are imported or called
    run()  # warm-up
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds or calls < 2:
        run()
        calls += 1
    return calls * images_per_call / elapsed


def candidates(
    method: str, source: np.ndarray, reference: np.ndarray, include_slow: bool, only: list[str] | None = None
) -> dict[str, tuple[Callable, Callable]]:
    """name -> (single-image call, batch-of-16 call); peers restricted to ``only`` when given."""
    batch_hwc = np.stack([source] * BATCH)
    ours = {"reinhard": st.ReinhardNormalize, "macenko": st.MacenkoNormalize, "vahadane": st.VahadaneNormalize}[method]()
    ours.fit(reference)
    batch_tensor = torch.from_numpy(batch_hwc).permute(0, 3, 1, 2).contiguous()
    found = {OURS: (lambda: ours(source), lambda: ours(batch_tensor))}
    for peer, factory in PEER_NORMALIZERS[method].items():
        if only is not None and peer not in only:
            continue
        if (method, peer) in TOO_SLOW and not include_slow:
            print(f"[{method}] skipping {peer}: {TOO_SLOW[method, peer]} (--include-slow times it)", file=sys.stderr)
            continue
        try:
            op = factory(reference)
        except Exception as error:  # a peer that breaks on its own sample is reported, not fatal
            print(f"[{method}] skipping {peer}: {type(error).__name__}: {error}", file=sys.stderr)
            continue
        if op is None:
            continue
        batched = (lambda op=op: op.transform_batch(batch_hwc)) if op.transform_batch else (lambda op=op: [op.transform(im) for im in batch_hwc])
        found[peer] = (lambda op=op: op.transform(source), batched)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--methods", nargs="+", default=["reinhard", "macenko", "vahadane"])
    parser.add_argument("--include-slow", action="store_true", help="also time peers known to take minutes per image")
    parser.add_argument("--peers", nargs="+", help="time only these peers (e.g. the fastest ones, to compare checkouts)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    source, reference, origin = load_images()
    print(f"# classical normalizers, {SIZE}x{SIZE} uint8, {args.threads} threads, fit excluded; input: {origin}")
    print(f"# torch {torch.__version__}, stain_transforms {st.__version__}, {time.strftime('%Y-%m-%d %H:%M')}")
    print(f"| method | library | img/s single | img/s batch {BATCH} | ours/peer single | ours/peer batch |")
    print("|---|---|---:|---:|---:|---:|")
    for method in args.methods:
        calls = candidates(method, source, reference, args.include_slow, args.peers)
        best = {name: [0.0, 0.0] for name in calls}
        for _ in range(args.rounds):
            for name, (single, batch) in calls.items():
                best[name][0] = max(best[name][0], images_per_second(single, 1, args.seconds, args.threads))
                best[name][1] = max(best[name][1], images_per_second(batch, BATCH, args.seconds, args.threads))
        ours_single, ours_batch = best[OURS]
        for name, (single_rate, batch_rate) in best.items():
            ratio = "" if name == OURS else f"{ours_single / single_rate:.1f}x | {ours_batch / batch_rate:.1f}x"
            print(f"| {method} | {name} | {single_rate:.1f} | {batch_rate:.1f} | {ratio or ' | '} |")
        peers = {k: v for k, v in best.items() if k != OURS}
        if peers:
            fastest = max(peers, key=lambda k: peers[k][0])
            print(f"| {method} | **fastest peer: {fastest}** | | | **{ours_single / peers[fastest][0]:.1f}x** | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
