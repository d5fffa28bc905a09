"""The recommended training pattern: decode uint8 tiles on CPU workers, colour-process on the device.

Stain normalization and augmentation are cheap per pixel but costly in Python per image. So the
DataLoader workers only decode and crop (uint8, the smallest thing to move), and the batch goes to
the device, where one batched call normalizes every tile (each with its own statistics) and jitters
every tile (each with its own random draw):

    loader workers:  read file -> uint8 (3, H, W) tensor
    device:          batch.to(device) -> float in [0, 1] -> normalize -> HEDJitter -> model

Run it as is, with synthetic H&E tiles and a small CNN, on CUDA if there is one, else on the CPU:

    python examples/dataloader_gpu.py
    python examples/dataloader_gpu.py --data path/to/tiles --method vahadane --device cuda --steps 50

``--data`` is a folder of image files (tiles at least ``--size`` pixels square); the first
``--references`` of them are also the references the normalizer is fitted on.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

import stain_transforms
from stain_transforms.files import list_images, read_rgb
from stain_transforms.testing import synthetic_tissue

METHODS = {"reinhard": "ReinhardNormalize", "macenko": "MacenkoNormalize", "vahadane": "VahadaneNormalize"}
MODELS = {"stainnet": "StainNetNormalize", "staingan": "StainGANNormalize"}  # need --weights


class Tiles(Dataset):
    """uint8 (3, size, size) tiles with a dummy label; all the work a CPU worker has to do."""

    def __init__(self, folder: str | None, size: int, count: int) -> None:
        self.files = list_images(folder) if folder else None
        self.size, self.count = size, count
        self.crop = v2.RandomCrop(size, pad_if_needed=True, fill=255)

    def __len__(self) -> int:
        return len(self.files) if self.files else self.count

    def image(self, index: int) -> torch.Tensor:
        if self.files is None:  # synthetic tissue, darker or lighter by tile
            hwc = synthetic_tissue(self.size, seed=index, stain_scale=0.7 + 0.6 * (index % 5) / 4)
        else:
            hwc = read_rgb(self.files[index])
        return self.crop(torch.tensor(hwc).permute(2, 0, 1))  # a copy: decoded arrays may be read-only

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.image(index), index % 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="folder of image tiles (default: synthetic tiles)")
    parser.add_argument("--method", choices=sorted(METHODS) + sorted(MODELS), default="macenko")
    parser.add_argument("--weights", help="for stainnet / staingan: a registered name, a folder or a Hub repo id")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--references", type=int, default=4)
    parser.add_argument("--threads", type=int, help="torch threads of the main process (default: torch's choice)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        # On a CPU shared with the loader workers (or other jobs), one thread avoids waiting at
        # every operation's barrier; the colour work is vectorised within the thread either way.
        torch.set_num_threads(args.threads)

    dataset = Tiles(args.data, args.size, count=args.batch_size * args.steps)
    loader = DataLoader(
        dataset,
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=args.workers,
        pin_memory=device.type == "cuda",
        persistent_workers=args.workers > 0,
        drop_last=True,
    )

    if args.method in MODELS:
        if not args.weights:
            parser.error(f"--method {args.method} needs --weights (see stain_transforms.list_weights())")
        normalizer = getattr(stain_transforms, MODELS[args.method]).from_pretrained(args.weights).to(device)
    else:
        # Fit once on a few references (the more, the more robust: their statistics are pooled),
        # then move the fitted state to the device like any module.
        references = torch.stack([dataset.image(i) for i in range(min(args.references, len(dataset)))])
        normalizer = getattr(stain_transforms, METHODS[args.method])().fit(references).to(device)
    colour = v2.Compose([normalizer, stain_transforms.HEDJitter.light(p=0.5)])

    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 2),
    ).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    seen, colour_seconds, start = 0, 0.0, time.perf_counter()
    for step, (images, labels) in enumerate(loader):
        images = images.to(device, non_blocking=True).float() / 255  # float in [0, 1]: no uint8 rounding
        labels = labels.to(device, non_blocking=True)
        tick = time.perf_counter()
        images = colour(images)  # one batched call for the whole batch, on the device
        if device.type == "cuda":
            torch.cuda.synchronize()
        colour_seconds += time.perf_counter() - tick
        loss = nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        seen += images.shape[0]
        print(f"step {step}: loss {loss.item():.3f}")
    total = time.perf_counter() - start
    print(
        f"{seen} tiles of {args.size}x{args.size} on {device}: normalize + jitter {seen / colour_seconds:.0f} img/s, "
        f"whole loop {seen / total:.0f} img/s ({Path(args.data).name if args.data else 'synthetic tiles'})"
    )


if __name__ == "__main__":
    main()
