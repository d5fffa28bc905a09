"""StainNet throughput at 512x512: eager convolution, the matmul form, the lookup table, and a memory copy.

Side by side in one run, for one image per call and for a batch of 16, it prints images per second:

- ``memcpy``: copying the uint8 image (the physical floor: read 768 KiB, write 768 KiB per image);
- ``LUT numpy HWC`` / ``LUT tensor CHW``: ``StainNetNormalize`` on uint8 input (the exact 256^3 table);
- ``conv NCHW`` / ``conv channels_last``: the network's forward on a float32 batch (conversion excluded);
- ``matmul form``: the same network as matrix products over pixels (``StainNet.forward_pixels``);
- ``transform conv uint8``: ``StainNetNormalize(backend="conv")`` end to end on uint8 HWC input;

and the ratios of the LUT to the others. It also times building the table. With ``--device cuda``
it adds the network on the GPU, batched, bf16, channels_last.

Input: real tissue from ``../shared/data/camelyon17_tiles`` when present (else synthetic tissue).
Weights: the official aligned-histopathology checkpoint when present (else a seeded init); speed
does not depend on the values.

    python benchmarks/stainnet.py [--threads N] [--device cuda] [--seconds 1.0]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from stain_transforms import StainNetNormalize
from stain_transforms.models import StainNet
from stain_transforms.testing import synthetic_tissue

DATA = Path(os.environ.get("STAIN_TRANSFORMS_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
SIZE = 512
BATCH = 16


def load_images() -> tuple[np.ndarray, str]:
    tiles = sorted((DATA / "camelyon17_tiles").glob("*.png"))
    if tiles:
        from PIL import Image

        images = [np.asarray(Image.open(p).convert("RGB"))[:SIZE, :SIZE] for p in tiles[:BATCH]]
        while len(images) < BATCH:
            images.append(images[len(images) % len(tiles)])
        return np.stack(images), f"camelyon17_tiles ({len(tiles)} real tiles)"
    return np.stack([synthetic_tissue(SIZE, seed=s) for s in range(BATCH)]), "synthetic tissue"


def load_model() -> tuple[StainNet, str]:
    checkpoints = sorted((DATA / "stainnet_official" / "checkpoints" / "aligned_histopathology_dataset").glob("*.pth"))
    if checkpoints:
        return StainNet.from_official_checkpoint(checkpoints[0]), "official aligned-histopathology checkpoint"
    torch.manual_seed(0)
    return StainNet().eval(), "seeded initialisation"


def rate(
    fn: Callable[[], object], images_per_call: int, seconds: float, sync: Callable[[], None] = lambda: None
) -> tuple[float, float]:
    """Images per second from the median and from the fastest of repeated calls (after a warm-up call).

    On a shared machine the median includes time lost to other processes; the fastest call shows
    what the code does when it has a core.
    """
    fn()
    sync()
    times = []
    deadline = time.perf_counter() + seconds
    while len(times) < 5 or (time.perf_counter() < deadline and len(times) < 2000):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return images_per_call / statistics.median(times), images_per_call / min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    parser.add_argument("--device", default="cpu", help="add a GPU row for this device, e.g. cuda")
    parser.add_argument("--seconds", type=float, default=1.0, help="time budget per measurement")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    images, source = load_images()
    model, weights = load_model()
    fast = StainNetNormalize(model, backend="lut")
    start = time.perf_counter()
    fast.compile()
    build = time.perf_counter() - start
    conv_transform = StainNetNormalize(model, backend="conv")

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"StainNet throughput, {SIZE}x{SIZE} RGB; input: {source}; weights: {weights}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {os.cpu_count()} CPU(s), load average {load:.1f}")
    print(f"lookup table build: {build:.2f} s (256^3 colours through the network, one thread)\n")

    one_hwc, batch_hwc = images[0], images
    one_chw = torch.from_numpy(one_hwc).permute(2, 0, 1).contiguous()
    batch_chw = torch.from_numpy(batch_hwc).permute(0, 3, 1, 2).contiguous()
    one_float = one_chw[None].float() / 255
    batch_float = batch_chw.float() / 255
    pixels_one = one_float.permute(0, 2, 3, 1).contiguous()
    pixels_batch = batch_float.permute(0, 2, 3, 1).contiguous()

    rows: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {}
    with torch.no_grad():
        measure = {
            "memcpy (uint8 HWC)": (lambda: one_hwc.copy(), lambda: batch_hwc.copy()),
            "LUT numpy HWC uint8": (lambda: fast(one_hwc), lambda: fast(batch_hwc)),
            "LUT tensor CHW uint8": (lambda: fast(one_chw), lambda: fast(batch_chw)),
            "conv NCHW float32": (lambda: model(one_float), lambda: model(batch_float)),
            "conv channels_last float32": (
                lambda: model(one_float.contiguous(memory_format=torch.channels_last)),
                lambda: model(batch_float.contiguous(memory_format=torch.channels_last)),
            ),
            "matmul form float32": (lambda: model.forward_pixels(pixels_one), lambda: model.forward_pixels(pixels_batch)),
            "transform conv uint8 HWC": (lambda: conv_transform(one_hwc), lambda: conv_transform(batch_hwc)),
        }
        for name, (single, batched) in measure.items():
            rows[name] = (rate(single, 1, args.seconds), rate(batched, BATCH, args.seconds))
            print(f"  measured {name}", file=sys.stderr)

        if args.device != "cpu":
            device = torch.device(args.device)
            gpu_model = StainNet(model.n_layer, model.n_channel)
            gpu_model.load_state_dict(model.state_dict())
            gpu_model = gpu_model.to(device, torch.bfloat16).to(memory_format=torch.channels_last).eval()
            sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
            for gpu_batch in (16, 256):
                x = torch.rand(gpu_batch, 3, SIZE, SIZE, device=device, dtype=torch.bfloat16)
                x = x.contiguous(memory_format=torch.channels_last)
                none = (float("nan"), float("nan"))
                rows[f"{device.type} bf16 channels_last, batch {gpu_batch}"] = (none, rate(lambda: gpu_model(x), gpu_batch, args.seconds, sync))

    def cell(pair: tuple[float, float]) -> str:
        return f"{'-':>22s}" if pair[0] != pair[0] else f"{pair[0]:>10,.0f} / {pair[1]:>9,.0f}"

    print(f"images per second, median / fastest call")
    print(f"{'method':40s} {'1 image':>22s} {'batch of 16':>22s}")
    for name, (single, batched) in rows.items():
        print(f"{name:40s} {cell(single)} {cell(batched)}")
    lut = rows["LUT numpy HWC uint8"]
    print("\nratios, medians (LUT numpy HWC / other, same call shape):")
    for name, (single, batched) in rows.items():
        if name.startswith("LUT numpy") or single[0] != single[0]:
            continue
        print(f"  LUT / {name:36s} 1 image {lut[0][0] / single[0]:8.2f}x   batch {lut[1][0] / batched[0]:8.2f}x")
    target = 250
    verdict = "meets" if lut[0][0] >= target else "misses"
    print(f"\nLUT single-image rate {lut[0][0]:,.0f} img/s (median) {verdict} the {target} img/s target on this machine.")


if __name__ == "__main__":
    main()
