"""StainNet distillation: the paper's recipe against our fast colour-pair recipe, side by side in one run.

Both recipes distil the same teacher (by default the CycleGAN outputs of the MITOS-ATYPIA-14 dev
pairs, ``cyclegan_fake_hamamatsu/``) on the same training slides, and keep the checkpoint with the
best PSNR against the teacher on the same held-out validation slide. The script prints each
recipe's best validation PSNR, the wall time the fast recipe needed to come within 0.1 dB of the
paper recipe's best, and the speed-up, and writes both validation curves (PSNR against wall time)
into one PNG, plus the raw histories as JSON.

The paper recipe is run as published (SGD lr 0.01, batch 10, L1, cosine annealing over 300 epochs,
random 256 crops, validation every 5 epochs) unless ``--paper-epochs`` or ``--paper-max-minutes``
shorten it; the printout says so when they did.

Run:

    python benchmarks/distill.py [--threads 1] [--out outputs/distill]

The data are read from ``../shared/data/mitos_atypia14_pairs`` (or ``$STAIN_TRANSFORMS_DATA``);
nothing derived from them is written except the curves and figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from stain_transforms.training import DistillConfig, distill, pairs_from_folders, split_names

REPO = Path(__file__).resolve().parents[1]


def default_data() -> Path:
    root = Path(os.environ.get("STAIN_TRANSFORMS_DATA", REPO.parent / "shared" / "data"))
    return root / "mitos_atypia14_pairs"


def time_to_reach(history: list[dict], level: float) -> float | None:
    """Seconds of the first validation at or above ``level`` (None if never)."""
    return next((h["seconds"] for h in history if h["val_psnr"] >= level), None)


def plot(results: dict, level: float, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, result in results.items():
        seconds = [h["seconds"] for h in result.history]
        ax.plot(seconds, [h["val_psnr"] for h in result.history], marker="." if len(seconds) < 80 else None, label=label)
    ax.axhline(level, color="grey", linestyle="--", linewidth=1, label="paper recipe best - 0.1 dB")
    ax.set_xscale("log")
    ax.set_xlabel("wall time (s, log scale)")
    ax.set_ylabel("validation PSNR vs teacher (dB)")
    low = min(h["val_psnr"] for r in results.values() for h in r.history)
    ax.set_ylim(max(low, level - 4), None)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=default_data(), help="the mitos_atypia14_pairs folder")
    parser.add_argument("--teacher", default="cyclegan_fake_hamamatsu", help="teacher-output subfolder of --data")
    parser.add_argument("--val-slide", default="07", help="slide held out for validation (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads for both recipes (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fast-steps", type=int, default=DistillConfig.steps, help="fast recipe steps (default: %(default)s)")
    parser.add_argument("--paper-epochs", type=int, default=300, help="paper recipe epochs (default: 300, the paper's)")
    parser.add_argument("--paper-max-minutes", type=float, help="cut the paper recipe short after this wall time")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "distill", help="folder for the PNG and JSON")
    args = parser.parse_args(argv)

    if not args.data.is_dir():
        print(f"data not found at {args.data}; set STAIN_TRANSFORMS_DATA or pass --data", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    pairs = pairs_from_folders(args.data / "aperio", args.data / args.teacher)
    train, val = split_names(pairs.names, val_groups=[args.val_slide], group_pattern=r"frame(\d+)")
    train_pairs, val_pairs = pairs.subset(train), pairs.subset(val)
    print(f"teacher: {args.teacher}; {len(train)} training images, {len(val)} validation images (slide {args.val_slide})")
    print(f"torch threads: {args.threads}; load average at start: {os.getloadavg()[0]:.1f} (the CPU is shared)")

    results, loads = {}, {}
    configs = {
        "fast (ours)": DistillConfig(recipe="fast", steps=args.fast_steps, seed=args.seed),
        "paper": DistillConfig(
            recipe="paper", epochs=args.paper_epochs, seed=args.seed,
            max_seconds=None if args.paper_max_minutes is None else 60 * args.paper_max_minutes,
        ),
    }
    for label, config in configs.items():
        before = os.getloadavg()[0]
        start = time.perf_counter()
        results[label] = distill(train_pairs, val_pairs, config)
        loads[label] = (before, os.getloadavg()[0])
        print(f"{label}: best validation PSNR {results[label].best_psnr:.3f} dB, {time.perf_counter() - start:.1f} s")

    fast, paper = results["fast (ours)"], results["paper"]
    paper_epochs_run = paper.history[-1]["epoch"] if paper.history else 0
    complete = paper_epochs_run == 300
    level = paper.best_psnr - 0.1
    reach = time_to_reach(fast.history, level)
    paper_reach = time_to_reach(paper.history, paper.best_psnr)
    print()
    print("| recipe | best val PSNR (dB) | at | wall time (s) | time to paper best - 0.1 dB (s) |")
    print("|---|---|---|---|---|")
    print(f"| paper ({paper_epochs_run} of 300 epochs) | {paper.best_psnr:.3f} | epoch {paper.best_at} | {paper.seconds:.0f} | "
          f"{time_to_reach(paper.history, level) or float('nan'):.0f} |")
    print(f"| fast ({fast.history[-1]['step']} steps) | {fast.best_psnr:.3f} | step {fast.best_at} | {fast.seconds:.0f} | "
          f"{reach if reach is not None else float('nan'):.1f} |")
    print()
    if reach is not None:
        print(f"fast recipe within 0.1 dB of the paper recipe's best after {reach:.1f} s "
              f"(paper recipe: its best after {paper_reach:.0f} s; ratio {paper_reach / reach:.0f}x)")
    else:
        print("fast recipe did NOT come within 0.1 dB of the paper recipe's best")
    print(f"fast - paper best PSNR: {fast.best_psnr - paper.best_psnr:+.3f} dB")
    if not complete:
        print(f"NOTE: the paper recipe ran {paper_epochs_run} of its 300 epochs (shortened by the options given)")
    print("load average before/after each run: " + ", ".join(f"{k}: {a:.1f}/{b:.1f}" for k, (a, b) in loads.items()))

    title = (f"StainNet distillation, teacher {args.teacher}, val slide {args.val_slide}, {args.threads} thread(s)"
             + ("" if complete else f"\npaper recipe shortened to {paper_epochs_run} epochs"))
    plot({f"paper recipe (best {paper.best_psnr:.2f} dB)": paper, f"fast recipe (best {fast.best_psnr:.2f} dB)": fast},
         level, args.out / "distill_curves.png", title)
    summary = {label: r.summary() for label, r in results.items()}
    summary["_meta"] = {"teacher": args.teacher, "val_slide": args.val_slide, "threads": args.threads,
                        "fast_seconds_to_paper_best_minus_0.1dB": reach, "paper_epochs_run": paper_epochs_run,
                        "load_average_before_after": loads}
    (args.out / "distill_benchmark.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(f"wrote {args.out / 'distill_curves.png'} and {args.out / 'distill_benchmark.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
