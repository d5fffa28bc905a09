"""Which supervision makes the best StainNet for slides it has never seen? Leave-one-slide-out on MITOS.

``benchmarks/fidelity.py`` scores one StainNet recipe (the provided CycleGAN outputs as teacher).
This script compares several, each distilled with the fast recipe on the other three slides and
scored on the held-out one, with the per-slide PSNR that shows where a per-pixel colour map cannot
follow a slide:

- ``cyclegan``: the provided CycleGAN outputs (``cyclegan_fake_hamamatsu/``), the paper's teacher;
- ``registered``: the real Hamamatsu scans, shifted by ``pairs.csv`` (paired supervision);
- ``cyclegan+registered``: both, as two pairs per patch;
- ``registered+reverse``: the real Hamamatsu scans paired with the reverse CycleGAN's Aperio-like
  rendering of them (``cyclegan_fake_aperio/``), which is aligned by construction, plus the registered pairs;
- ``cyclegan+registered, 8 channels``: the same with a narrower (smoother) network;
- ``cyclegan+registered, OD x0.8/x1.2``: the same plus two copies of every training source with its
  optical density scaled by 0.8 and by 1.2 (paler and darker staining), each paired with the
  unchanged target: does robustness to stain intensity help on an unseen slide?

It first prints how much stain each slide's patches hold on either scanner, and the ratio of the
two, which shows how differently each slide maps from one scanner to the other.

For reference it also scores the CycleGAN outputs themselves and the official checkpoint (both
trained on MITOS by others, on all slides). Each fold keeps its best checkpoint on a 20% split of
its training patches (split by patch, so that no patch is on both sides).

    python benchmarks/distill_recipes.py [--threads 1] [--steps 1500]

About 2-3 minutes per recipe on one CPU thread.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fidelity import (
    BORDER,
    OFFICIAL,
    Data,
    Row,
    default_data,
    folder_row,
    open_pairs,
    score,
    stainnet_transform,
    summarise,
)

from stain_transforms.models import StainNet
from stain_transforms.training import DistillConfig, distill, pairs_from_folders, split_names
from stain_transforms.training.distill import PairSet

# recipe -> (supervision sources, StainNet width, optical-density scales of the augmented source copies)
RECIPES = {
    "cyclegan": (("cyclegan",), 32, ()),
    "registered": (("registered",), 32, ()),
    "cyclegan+registered": (("cyclegan", "registered"), 32, ()),
    "registered+reverse": (("registered", "reverse"), 32, ()),
    "cyclegan+registered, 8 channels": (("cyclegan", "registered"), 8, ()),
    "cyclegan+registered, OD x0.8/x1.2": (("cyclegan", "registered"), 32, (0.8, 1.2)),
}


def supervision(kind: str, data: Data, names: list[str]) -> PairSet:
    root = data.root
    if kind == "cyclegan":
        return pairs_from_folders(root / "aperio", root / "cyclegan_fake_hamamatsu", names)
    if kind == "registered":
        return pairs_from_folders(root / "aperio", root / "hamamatsu", names, data.shifts, BORDER)
    if kind == "reverse":
        return pairs_from_folders(root / "cyclegan_fake_aperio", root / "hamamatsu", names)
    raise ValueError(kind)


# Optical density (length of the RGB OD vector) above which a pixel counts as tissue rather than glass.
TISSUE_OD = 0.2


def optical_density(image: np.ndarray) -> np.ndarray:
    """Per-channel optical density -log(I) of an RGB uint8 image, with level 0 taken as 1 so that it stays finite."""
    return -np.log(np.maximum(image, 1) / 255.0)


def stain_amount(image: np.ndarray) -> float:
    """How much stain a patch holds: the 75th percentile of the OD vector's length over its tissue pixels."""
    length = np.linalg.norm(optical_density(image), axis=-1)
    tissue = length[length > TISSUE_OD]
    return float(np.percentile(tissue, 75)) if tissue.size else float("nan")


def stain_amount_table(data: Data) -> str:
    """Per slide: the stain amount of the Aperio source and the Hamamatsu target, and their ratio.

    A per-pixel colour map learnt on some slides can only fit a new slide whose ratio is like theirs.
    """
    lines = ["| slide | stain amount, Aperio | stain amount, Hamamatsu | ratio Hamamatsu / Aperio |", "|---|---|---|---|"]
    for slide in data.slides:
        names = data.fold(slide)[1]
        source = np.array([stain_amount(data.source[n]) for n in names])
        target = np.array([stain_amount(data.target[n]) for n in names])
        ratio = target / source
        lines.append(
            f"| {slide} | {np.nanmean(source):.2f} ± {np.nanstd(source):.2f} | {np.nanmean(target):.2f} ± {np.nanstd(target):.2f}"
            f" | {np.nanmean(ratio):.2f} ± {np.nanstd(ratio):.2f} |"
        )
    return "\n".join(lines)


def od_scaled(image: np.ndarray, scale: float) -> np.ndarray:
    """An RGB uint8 image with every optical density multiplied by ``scale`` (Beer-Lambert: stain amount)."""
    return np.clip(np.round(255.0 * np.exp(-scale * optical_density(image))), 0, 255).astype(np.uint8)


def with_scaled_copies(pairs: PairSet, scales: tuple[float, ...]) -> PairSet:
    """``pairs`` plus, for each scale, a copy whose sources are OD-scaled and whose targets are unchanged."""
    if not scales:
        return pairs
    copies = {f"x{s}": PairSet(pairs.names, [od_scaled(image, s) for image in pairs.sources], pairs.teachers) for s in scales}
    return PairSet.concat({"original": pairs, **copies})


def recipe_row(label: str, data: Data, steps: int, seed: int) -> Row:
    kinds, width, od_scales = RECIPES[label]
    row = Row(label)
    for slide in data.slides:
        train, test = data.fold(slide)
        parts = {kind: supervision(kind, data, train) for kind in kinds}
        fit, val = split_names(train, 0.2, seed=seed)  # by patch: a patch's pairs stay on one side
        config = DistillConfig(steps=steps, seed=seed, n_channel=width, progress=False)
        result = distill(
            with_scaled_copies(PairSet.concat(parts, fit), od_scales),
            PairSet.concat(parts, val),
            config,
        )
        row.run(stainnet_transform(result.model), data.images(test))
    return row


def line(row: Row, data: Data) -> str:
    overall = summarise(row, data.names)
    per_slide = [summarise(row, data.fold(slide)[1])["psnr_target"] for slide in data.slides]
    cells = [f"{overall['ssim_target']:.3f}", f"{overall['psnr_target']:.2f}", f"{overall['ssim_source']:.3f}"]
    return f"| {row.label} | " + " | ".join(cells + [f"{p:.2f}" for p in per_slide]) + " |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=default_data())
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=DistillConfig.steps)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--recipes", nargs="*", default=list(RECIPES), choices=list(RECIPES))
    args = parser.parse_args(argv)
    data = open_pairs(args.data)
    if data is None:
        return 2
    torch.set_num_threads(args.threads)
    print("Stain amount per slide (75th percentile of the optical density over tissue pixels; mean ± sd over patches):")
    print(stain_amount_table(data) + "\n", flush=True)
    header = "| StainNet supervision (LOSO) | SSIM target | PSNR target (dB) | SSIM source | " + " | ".join(
        f"PSNR slide {s}" for s in data.slides) + " |"
    print(header)
    print("|---" * (4 + len(data.slides)) + "|", flush=True)
    references = [folder_row("CycleGAN outputs (teacher; trained on all slides)", data.root / "cyclegan_fake_hamamatsu", data, "")]
    official = args.data / OFFICIAL
    if official.is_file():
        references.append(Row("official checkpoint (trained on MITOS by its authors)"))
        references[-1].run(stainnet_transform(StainNet.from_official_checkpoint(official)), data.source)
    for row in references:
        score(row, data)
        print(line(row, data), flush=True)
    for label in args.recipes:
        row = recipe_row(label, data, args.steps, args.seed)
        score(row, data)
        print(line(row, data), flush=True)
    return 0


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    raise SystemExit(main())
