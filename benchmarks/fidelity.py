"""The StainNet paper's Table 1 on the MITOS-ATYPIA-14 dev pairs (Aperio -> Hamamatsu), leave-one-slide-out.

The 80 registered pairs come from slides 03, 04, 05 and 07. Every learned or fitted row is scored
on each slide with a model trained or fitted on the *other three* slides only (leave-one-slide-out),
except where a row says otherwise:

- ``paired reference`` rows fit Reinhard/Macenko/Vahadane on each image's own registered target,
  the paper's protocol (it uses the answer as the reference; shown for comparison with the paper);
- ``our StainGAN`` was trained unpaired on all four slides (a CycleGAN run per fold is beyond this
  CPU), and the StainNet distilled from it inherits that; so did the CycleGAN that made
  ``cyclegan_fake_hamamatsu/`` and, presumably, the official checkpoint (trained on MITOS);
- ``shipped`` rows are the bundled weights, distilled from teacher outputs on all 80 sources: they
  saw the scored source images (never the registered targets, which only the metrics use).

The target is shifted by ``pairs.csv`` and a 16 px border is cropped before scoring. Slide 04 is
blurred on the Hamamatsu side, so the table is given for all 80 pairs, without slide 04 (60
pairs) and for slide 04 alone. Metrics (``stain_transforms.metrics``): SSIM and PSNR against the
target on RGB, SSIM against the source on min-max-stretched grayscale. img/s is the transform
alone on 256x256 uint8 images, one at a time (fits excluded, except for the paired-reference rows,
which must fit on every image), with the torch thread count given, each image's time the best of
three calls (the CPU is shared with other jobs; treat img/s as rough).

Run:

    python benchmarks/fidelity.py [--threads 1] [--out outputs/fidelity]

It prints the tables (Markdown) and writes them with a JSON of all figures and a PNG panel of
example outputs to ``--out`` (default ``outputs/fidelity``, git-ignored): MITOS-derived images
must not be committed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from stain_transforms import (
    MacenkoNormalize,
    ReinhardNormalize,
    StainGANNormalize,
    StainNetNormalize,
    VahadaneNormalize,
)
from stain_transforms.evaluation import read_shifts
from stain_transforms.files import list_images, read_rgb
from stain_transforms.hub import load_registry
from stain_transforms.metrics import Fidelity, crop_border, fidelity, mean_fidelity
from stain_transforms.models import StainNet
from stain_transforms.training import DistillConfig, distill, pairs_from_folders, pairs_from_teacher, split_names

REPO = Path(__file__).resolve().parents[1]
BORDER = 16
REPEATS = 3
BLURRED_SLIDE = "04"
OFFICIAL = "stainnet_official/checkpoints/aligned_histopathology_dataset/StainNet-Public_layer3_ch32.pth"
CLASSICAL = {"Reinhard": ReinhardNormalize, "Macenko": MacenkoNormalize, "Vahadane": VahadaneNormalize}
SHIPPED_STAINNET = "stainnet-mitos-aperio-to-hamamatsu"
SHIPPED_STAINGAN = "staingan-mitos-aperio-to-hamamatsu"
SHIPPED_STAINNET_FROM_CYCLEGAN = "stainnet-mitos-aperio-to-hamamatsu-from-cyclegan-outputs"

Transform = Callable[[np.ndarray], np.ndarray]


def default_data() -> Path:
    return Path(os.environ.get("STAIN_TRANSFORMS_DATA", REPO.parent / "shared" / "data"))


@dataclass
class Row:
    """One method: its output for every pair, the seconds spent transforming, and a note."""

    label: str
    note: str = ""
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    seconds: float = 0.0
    scores: dict[str, Fidelity] = field(default_factory=dict)

    def run(self, transform: Transform, images: dict[str, np.ndarray]) -> None:
        """Apply ``transform`` to each image, adding the outputs and the time taken.

        Each image's time is the best of up to ``REPEATS`` calls (calls under 0.5 s are repeated):
        the CPU is shared, and the minimum is the least disturbed by other jobs.
        """
        for name, image in images.items():
            best = float("inf")
            for _ in range(REPEATS):
                start = time.perf_counter()
                self.outputs[name] = transform(image)
                best = min(best, time.perf_counter() - start)
                if best > 0.5:
                    break
            self.seconds += best


class Data:
    """The dev pairs: sources, shifted targets, CycleGAN outputs, slides, folds."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.names = [p.name for p in list_images(root / "aperio")]
        shifts = read_shifts(root / "pairs.csv")
        self.shifts = shifts
        self.source = {n: read_rgb(root / "aperio" / n) for n in self.names}
        self.target_raw = {n: read_rgb(root / "hamamatsu" / n) for n in self.names}
        self.target = {n: np.roll(self.target_raw[n], shifts[n], axis=(0, 1)) for n in self.names}
        self.slide = {n: re.match(r"frame(\d+)", n).group(1) for n in self.names}
        self.slides = sorted(set(self.slide.values()))

    def fold(self, slide: str) -> tuple[list[str], list[str]]:
        """(training names, scored names) of the fold that holds out ``slide``."""
        return [n for n in self.names if self.slide[n] != slide], [n for n in self.names if self.slide[n] == slide]

    def groups(self, names: list[str] | None = None) -> dict[str, list[str]]:
        """``names`` (default: all) as the tables split them: all, without the blurred slide, that slide alone."""
        names = self.names if names is None else list(names)
        return {
            "all": names,
            f"without_{BLURRED_SLIDE}": [n for n in names if self.slide[n] != BLURRED_SLIDE],
            f"slide_{BLURRED_SLIDE}": [n for n in names if self.slide[n] == BLURRED_SLIDE],
        }

    def images(self, names: list[str]) -> dict[str, np.ndarray]:
        return {n: self.source[n] for n in names}


def open_pairs(data_dir: Path) -> Data | None:
    """The dev pairs of ``data_dir`` (the project's data folder), or None, with a message, when they are missing."""
    root = data_dir / "mitos_atypia14_pairs"
    if not root.is_dir():
        print(f"data not found at {root}; set STAIN_TRANSFORMS_DATA or pass --data", file=sys.stderr)
        return None
    return Data(root)


def score(row: Row, data: Data) -> None:
    """The paper's metrics of each of the row's outputs (target shifted, border cut)."""
    for name in row.outputs:
        row.scores[name] = fidelity(*(crop_border(x, BORDER) for x in (row.outputs[name], data.target[name], data.source[name])))


def summarise(row: Row, names: list[str]) -> dict[str, float]:
    mean = mean_fidelity([row.scores[n] for n in names])
    return {**mean.as_dict(), "img_per_s": len(row.outputs) / row.seconds if row.seconds else float("nan")}


# -- rows ---------------------------------------------------------------------------------------


def identity_row(data: Data) -> Row:
    return Row("no normalization (source)", outputs=dict(data.source))


def classical_paired_row(method: str, data: Data) -> Row:
    row = Row(f"{method}, paired target as reference", "paper protocol: fitted on each image's own target")
    for name in data.names:
        start = time.perf_counter()
        normalizer = CLASSICAL[method]().fit(data.target_raw[name])
        row.outputs[name] = normalizer(data.source[name])
        row.seconds += time.perf_counter() - start
    return row


def classical_loso_row(method: str, data: Data) -> Row:
    row = Row(f"{method}, fitted on other-slide targets", "LOSO: fitted on the 60 targets of the other slides")
    for slide in data.slides:
        train, test = data.fold(slide)
        normalizer = CLASSICAL[method]().fit([data.target_raw[n] for n in train], progress=False)
        row.run(normalizer, data.images(test))
    return row


def folder_row(label: str, folder: Path, data: Data, note: str) -> Row:
    row = Row(label, note)
    row.outputs = {n: read_rgb(folder / n) for n in data.names}
    return row


def model_row(label: str, transform: Transform, data: Data, note: str) -> Row:
    row = Row(label, note)
    row.run(transform, data.source)
    return row


def generator_alone(normalize: StainGANNormalize) -> StainGANNormalize:
    """The same StainGAN transform without its guided filter."""
    return StainGANNormalize(normalize.model, **{**normalize.config, "guided_radius": 0})


def stainnet_transform(model: StainNet) -> Transform:
    normalize = StainNetNormalize(model).compile()  # the lookup table, built before timing
    return normalize


def distilled_loso_row(label: str, teacher: str, data: Data, config: DistillConfig, note: str, generator=None) -> Row:
    """StainNet distilled per fold on the other slides' (source, teacher) pairs; inner 20% validation split."""
    row = Row(label, note)
    for slide in data.slides:
        train, test = data.fold(slide)
        if teacher == "cyclegan":
            pairs = pairs_from_folders(data.root / "aperio", data.root / "cyclegan_fake_hamamatsu", train)
        elif teacher == "registered":
            pairs = pairs_from_folders(data.root / "aperio", data.root / "hamamatsu", train, data.shifts, BORDER)
        elif teacher == "staingan":
            pairs = pairs_from_teacher(data.root / "aperio", generator, train, progress=False)
        else:
            raise ValueError(teacher)
        inner_train, inner_val = split_names(pairs.names, 0.2, seed=config.seed)
        result = distill(pairs.subset(inner_train), pairs.subset(inner_val), config)
        print(f"  {label}, fold {slide}: inner val PSNR vs teacher {result.best_psnr:.2f} dB in {result.seconds:.0f} s", flush=True)
        row.run(stainnet_transform(result.model), data.images(test))
    return row


# -- output -------------------------------------------------------------------------------------


def table(rows: list[Row], names: list[str], title: str) -> str:
    lines = [f"### {title} ({len(names)} pairs)", "", "| method | SSIM target | PSNR target (dB) | SSIM source | img/s | note |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        s = summarise(row, names)
        speed = f"{s['img_per_s']:.1f}" if np.isfinite(s["img_per_s"]) else "-"
        lines.append(f"| {row.label} | {s['ssim_target']:.3f} | {s['psnr_target']:.2f} | {s['ssim_source']:.3f} | {speed} | {row.note} |")
    return "\n".join(lines)


def panel(rows: list[Row], data: Data, names: list[str], path: Path) -> None:
    """One row per method (source and target first), one column per example pair."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [("source", data.source), ("target (shifted)", data.target)] + [(r.label, r.outputs) for r in rows[1:]]
    fig, axes = plt.subplots(len(methods), len(names), figsize=(1.5 * len(names) + 1.6, 1.5 * len(methods)), squeeze=False)
    for i, (label, images) in enumerate(methods):
        for j, name in enumerate(names):
            ax = axes[i, j]
            ax.imshow(crop_border(images[name], BORDER))
            ax.set_xticks([]), ax.set_yticks([])
            if i == 0:
                ax.set_title(f"slide {data.slide[name]}", fontsize=8)
            if j == 0:
                ax.set_ylabel(textwrap.fill(label, 22), fontsize=6.5, rotation=0, ha="right", va="center")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=default_data(), help="../shared/data (or $STAIN_TRANSFORMS_DATA)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=DistillConfig.steps, help="fast distillation steps per fold (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--staingan", default=SHIPPED_STAINGAN, help="our StainGAN: bundled name or folder (default: %(default)s)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["classical", "vahadane", "staingan", "distilled", "official", "shipped"],
                        help="leave out groups of rows")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "fidelity", help="folder for tables, JSON and the PNG panel")
    args = parser.parse_args(argv)

    data = open_pairs(args.data)
    if data is None:
        return 2
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    config = DistillConfig(steps=args.steps, seed=args.seed, progress=False)
    registry = load_registry()
    print(f"{len(data.names)} pairs, slides {', '.join(data.slides)}; torch threads {args.threads}; "
          f"load average {os.getloadavg()[0]:.1f} (shared CPU)", flush=True)

    rows = [identity_row(data)]
    if "classical" not in args.skip:
        for method in CLASSICAL:
            if method == "Vahadane" and "vahadane" in args.skip:
                continue
            print(f"{method} ...", flush=True)
            rows.append(classical_paired_row(method, data))
            rows.append(classical_loso_row(method, data))
    rows.append(folder_row("provided CycleGAN outputs (teacher)", data.root / "cyclegan_fake_hamamatsu", data,
                           "trained on MITOS by others (all slides); no timing"))
    generator = None
    if "staingan" not in args.skip:
        gan = StainGANNormalize.from_pretrained(args.staingan)
        generator = gan.model
        print("our StainGAN ...", flush=True)
        rows.append(model_row("our StainGAN", gan, data, "trained unpaired on all 4 slides (not LOSO); as loaded, with its guided filter"
                              if gan.guided_radius else "trained unpaired on all 4 slides (not LOSO)"))
        if gan.guided_radius:
            rows.append(model_row("our StainGAN, generator alone", generator_alone(gan), data, "the same, guided_radius=0"))
    if "distilled" not in args.skip:
        print("distilling StainNets per fold ...", flush=True)
        rows.append(distilled_loso_row("our StainNet from CycleGAN outputs", "cyclegan", data, config,
                                       "LOSO; teacher trained on all slides by others"))
        rows.append(distilled_loso_row("our StainNet from registered targets", "registered", data, config,
                                       "LOSO; paired supervision"))
        if generator is not None:
            rows.append(distilled_loso_row("our StainNet from our StainGAN", "staingan", data, config,
                                           "LOSO student; teacher saw all slides", generator=generator))
    if "official" not in args.skip and (args.data / OFFICIAL).is_file():
        official = StainNet.from_official_checkpoint(args.data / OFFICIAL)
        rows.append(model_row("official StainNet checkpoint", stainnet_transform(official), data,
                              "compatibility only; trained on MITOS by its authors"))
    if "shipped" not in args.skip:
        notes = {
            SHIPPED_STAINNET: "student and its StainGAN teacher saw all 80 sources (and, unpaired, the targets): not LOSO",
            SHIPPED_STAINNET_FROM_CYCLEGAN: "distilled on the CycleGAN outputs of all 80 sources: saw the scored sources, not their targets",
        }
        for name, note in notes.items():
            if name in registry:
                model = StainNet.from_pretrained(name)
                rows.append(model_row(f"shipped {name}", stainnet_transform(model), data, note))

    for row in rows:
        score(row, data)
    groups = data.groups()
    titles = ["All slides", f"Without the blurred slide {BLURRED_SLIDE}", f"Slide {BLURRED_SLIDE} alone (blurred target)"]
    text = "\n\n".join(table(rows, names, title) for names, title in zip(groups.values(), titles, strict=True))
    print()
    print(text)
    (args.out / "fidelity_table.md").write_text(text + "\n")
    figures = {
        row.label: {
            "note": row.note,
            **{group: summarise(row, names) for group, names in groups.items()},
            "per_slide": {s: mean_fidelity([row.scores[n] for n in data.names if data.slide[n] == s]).as_dict() for s in data.slides},
        }
        for row in rows
    }
    (args.out / "fidelity.json").write_text(json.dumps({"threads": args.threads, "rows": figures}, indent=2) + "\n")
    examples = [next(n for n in data.names if data.slide[n] == s) for s in data.slides]
    panel(rows, data, examples, args.out / "fidelity_panel.png")
    print(f"\nwrote {args.out / 'fidelity_table.md'}, {args.out / 'fidelity.json'} and {args.out / 'fidelity_panel.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
