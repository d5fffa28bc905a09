"""Rerun the StainNet paper's cervical cytology study: does normalization or augmentation rescue a classifier?

A ResNet is trained on site A's images (E1: no augmentation, E2: BR, E3: BRH) and tested on site B's:
as they are, and normalized back to site A by Macenko, StainGAN and StainNet. See README.md.

    python examples/cervical_classifier/study.py --data ../shared/data/cervical_lbc_256 --out runs/paper

Every step writes under ``--out``; ``--resume`` reuses the steps a previous run finished there.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from stain_transforms.files import write_image_atomic

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the sibling modules, also when imported from elsewhere

from classifier import (
    ARCHITECTURES,
    EXPERIMENTS,
    PretrainedWeightsError,
    TrainSettings,
    build_model,
    classification_metrics,
    predict,
    train_classifier,
)
from data import load_images, make_splits, read_records, to_tensor_stack
from normalizers import NORMALIZERS, NormalizerSettings, apply_normalizer, load_or_train, write_folder
from report import bar_chart, markdown_table, write_csv
from site_shift import SiteShift

TEST_SET_NAMES = {"macenko": "site B + Macenko", "staingan": "site B + StainGAN", "stainnet": "site B + StainNet"}


def default_data() -> Path:
    """``$STAIN_TRANSFORMS_DATA/cervical_lbc_256``, else ``../shared/data/cervical_lbc_256`` next to the repository."""
    root = os.environ.get("STAIN_TRANSFORMS_DATA", str(HERE.parents[1].parent / "shared" / "data"))
    return Path(root) / "cervical_lbc_256"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--data", default=str(default_data()), help="folder with labels.csv, a CSV file, or an ImageFolder")
    g.add_argument("--target", default=None, help="label column of a CSV (default: 'abnormal' if present, else 'label')")
    g.add_argument("--positive", default=None, help="the positive class of a binary task (default: '1' if present, else the second class in sorted order)")
    g.add_argument("--holdout", type=float, default=0.25, help="fraction of the training split held out: validation (site A) and, shifted, the site-B pool the normalizers learn from")
    g.add_argument("--test-fraction", type=float, default=0.3, help="test fraction for data without a train/test split")
    g.add_argument("--size", type=int, default=224, help="side of the classifier's input (images are resized)")
    g = p.add_argument_group("classifier (defaults: the paper's)")
    g.add_argument("--arch", choices=ARCHITECTURES, default="resnet50")
    g.add_argument("--pretrained", default=None, help="local ImageNet weights file (torchvision state dict), or 'imagenet' to download")
    g.add_argument("--epochs", type=int, default=60)
    g.add_argument("--batch-size", type=int, default=64)
    g.add_argument("--lr", type=float, default=2e-4)
    g.add_argument("--milestones", type=int, nargs="*", default=[40, 50], help="epochs at which the learning rate is multiplied by --lr-gamma")
    g.add_argument("--lr-gamma", type=float, default=0.1)
    g.add_argument("--experiments", nargs="+", choices=sorted(EXPERIMENTS), default=sorted(EXPERIMENTS))
    g.add_argument("--aug-p", type=float, default=0.25, help="probability of each augmentation step (E2, E3)")
    g = p.add_argument_group("normalizers (defaults: the StainGAN and StainNet papers')")
    g.add_argument("--normalizers", nargs="*", choices=NORMALIZERS, default=list(NORMALIZERS))
    g.add_argument("--staingan-weights", default=None, help="use this trained StainGAN (site B to A) folder instead of training one")
    g.add_argument("--stainnet-weights", default=None, help="use this StainNet folder instead of distilling one")
    d = NormalizerSettings()
    g.add_argument("--gan-ngf", type=int, default=d.gan_ngf)
    g.add_argument("--gan-blocks", type=int, default=d.gan_blocks)
    g.add_argument("--gan-ndf", type=int, default=d.gan_ndf)
    g.add_argument("--gan-layers-d", type=int, default=d.gan_layers_d)
    g.add_argument("--gan-crop", type=int, default=d.gan_crop, help="crop side (clipped to --size)")
    g.add_argument("--gan-batch", type=int, default=d.gan_batch)
    g.add_argument("--gan-epochs", type=int, default=d.gan_epochs)
    g.add_argument("--gan-epochs-decay", type=int, default=d.gan_epochs_decay)
    g.add_argument("--gan-steps-per-epoch", type=int, default=d.gan_steps_per_epoch)
    g.add_argument("--gan-lr", type=float, default=d.gan_lr)
    g.add_argument("--gan-max-minutes", type=float, default=d.gan_max_minutes, help="stop StainGAN training after the epoch that passes this")
    g.add_argument("--stainnet-recipe", choices=("fast", "paper"), default=d.stainnet_recipe)
    g.add_argument("--stainnet-steps", type=int, default=d.stainnet_steps, help="fast recipe: Adam steps")
    g.add_argument("--stainnet-epochs", type=int, default=d.stainnet_epochs, help="paper recipe: epochs")
    g = p.add_argument_group("run")
    g.add_argument("--out", default=str(HERE / "runs" / "study"), help="folder for everything the run makes")
    g.add_argument("--results", default=None, help="folder for table.md, table.csv and bar_chart.png (default: --out)")
    g.add_argument("--resume", action="store_true", help="reuse the normalizers and classifiers already finished in --out")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return p.parse_args(argv)


def class_order(classes: list[str], positive: str | None) -> list[str]:
    """Classes with the positive one at index 1 for a binary task (the metrics score index 1)."""
    if len(classes) != 2:
        return classes
    positive = positive if positive is not None else ("1" if "1" in classes else classes[1])
    if positive not in classes:
        raise ValueError(f"--positive {positive!r} is not one of the classes {classes}")
    return [c for c in classes if c != positive] + [positive]


def shifted(images: list[np.ndarray], shift: SiteShift, batch_size: int = 16) -> list[np.ndarray]:
    """Site B's version of each image, at the image's own resolution (batched where sizes agree)."""
    out: list[np.ndarray] = []
    start = 0
    while start < len(images):
        stop = start + 1
        while stop < len(images) and stop - start < batch_size and images[stop].shape == images[start].shape:
            stop += 1
        x = torch.from_numpy(np.stack(images[start:stop])).permute(0, 3, 1, 2).float() / 255.0
        out += list((shift(x) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())
        start = stop
    return out


def preview(test_sets: dict[str, torch.Tensor], path: Path, count: int = 6) -> None:
    """A grid of the first test images under every condition (rows), for a look at the colours."""
    rows = [torch.cat(list(images[:count]), dim=2) for images in test_sets.values()]
    grid = torch.cat(rows, dim=1).permute(1, 2, 0).numpy()
    write_image_atomic(np.ascontiguousarray(grid), path, overwrite=True)
    path.with_suffix(".txt").write_text("rows: " + ", ".join(test_sets) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_dir = Path(args.results) if args.results else out
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = TrainSettings(
        arch=args.arch, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, milestones=args.milestones,
        lr_gamma=args.lr_gamma, pretrained=args.pretrained, seed=args.seed, threads=args.threads,
    )
    if args.pretrained:
        # Check the weights first, so a missing file or failed download costs seconds, not an hour.
        try:
            build_model(args.arch, 2, args.pretrained)
        except PretrainedWeightsError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2

    records = read_records(args.data, args.target)
    splits = make_splits(records, args.holdout, args.test_fraction, args.seed)
    classes = class_order(splits.classes, args.positive)
    index = {c: i for i, c in enumerate(classes)}
    print(
        f"data: {args.data}: classes {classes}"
        + (f" (positive: {classes[1]!r})" if len(classes) == 2 else "")
        + f"; {len(splits.train)} training, {len(splits.validation)} held out (validation at site A, site-B pool),"
        f" {len(splits.test)} test images"
    )

    def labels(recs: list) -> torch.Tensor:
        return torch.tensor([index[r.label] for r in recs])

    shift = SiteShift()
    (out / "site_shift.json").write_text(json.dumps(shift.config, indent=2))
    train_native, held_native, test_native = (load_images(r) for r in (splits.train, splits.validation, splits.test))
    size = args.size
    train_a = to_tensor_stack(train_native, size)
    val_a = to_tensor_stack(held_native, size)
    pool_b = to_tensor_stack(shifted(held_native, shift), size)
    test_sets = {"site A": to_tensor_stack(test_native, size), "site B": to_tensor_stack(shifted(test_native, shift), size)}
    del train_native, held_native, test_native
    print(f"site B made for {len(pool_b)} held-out and {len(splits.test)} test images ({time.perf_counter() - started:.0f} s)")

    # The normalizers learn from the classifier's training images (site A) and the site-B pool only.
    def names(recs: list) -> list[str]:
        return [f"{i:05d}_{r.path.stem}" for i, r in enumerate(recs)]

    def to_hwc(stack: torch.Tensor) -> list[np.ndarray]:
        return [x.permute(1, 2, 0).numpy() for x in stack]

    site_a_dir = write_folder(to_hwc(train_a), names(splits.train), out / "images" / "site_a_train")
    site_b_dir = write_folder(to_hwc(pool_b), names(splits.validation), out / "images" / "site_b_pool")
    norm_settings = NormalizerSettings(
        gan_ngf=args.gan_ngf, gan_blocks=args.gan_blocks, gan_ndf=args.gan_ndf, gan_layers_d=args.gan_layers_d,
        gan_crop=min(args.gan_crop, size - size % 4), gan_batch=args.gan_batch, gan_epochs=args.gan_epochs,
        gan_epochs_decay=args.gan_epochs_decay, gan_steps_per_epoch=args.gan_steps_per_epoch, gan_lr=args.gan_lr,
        gan_max_minutes=args.gan_max_minutes, stainnet_recipe=args.stainnet_recipe,
        stainnet_steps=args.stainnet_steps, stainnet_epochs=args.stainnet_epochs, seed=args.seed,
    )
    normalizers = load_or_train(
        args.normalizers, site_a_dir, site_b_dir, train_a, out / "normalizers", norm_settings, args.resume,
        args.staingan_weights, args.stainnet_weights,
    )
    for name, normalizer in normalizers.items():
        test_sets[TEST_SET_NAMES[name]] = apply_normalizer(normalizer, test_sets["site B"])
    preview(test_sets, out / "preview_test_sets.png")
    print(f"test sets ready: {', '.join(test_sets)} ({time.perf_counter() - started:.0f} s)")

    rows = []
    test_labels = labels(splits.test).numpy()
    for experiment in args.experiments:
        exp_dir = out / experiment
        model = build_model(args.arch, len(classes))
        if args.resume and (exp_dir / "best.pt").is_file() and (exp_dir / "history.json").is_file():
            print(f"{experiment}: using the checkpoint in {exp_dir}")
            model.load_state_dict(torch.load(exp_dir / "best.pt", weights_only=True))
        else:
            model = train_classifier(
                experiment, train_a, labels(splits.train), val_a, labels(splits.validation), len(classes),
                settings, exp_dir,
            )
        for test_set, images in test_sets.items():
            metrics = classification_metrics(test_labels, predict(model, images), len(classes))
            rows.append({"experiment": experiment, "augmentation": EXPERIMENTS[experiment].split(":")[0],
                         "test_set": test_set, "n_images": len(images), **metrics})
            print(f"{experiment} on {test_set}: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
        (out / "results.json").write_text(json.dumps(rows, indent=2))

    minutes = (time.perf_counter() - started) / 60
    summary = (
        f"{args.arch}, {args.epochs} epochs (lr x{args.lr_gamma:g} at {args.milestones}), batch {args.batch_size}, "
        f"Adam {args.lr:g}, input {size} px, {'ImageNet-initialised' if args.pretrained else 'random initialisation'}; "
        f"{len(splits.train)} training / {len(splits.validation)} validation / {len(splits.test)} test images; "
        f"{minutes:.0f} min on {torch.get_num_threads()} CPU thread(s)"
    )
    results_dir.mkdir(parents=True, exist_ok=True)
    write_csv(rows, results_dir / "table.csv")
    table = markdown_table(rows)
    (results_dir / "table.md").write_text(f"<!-- {summary} -->\n\n{table}\n")
    bar_chart(rows, results_dir / "bar_chart.png", f"Trained at site A, tested at site B: {summary.split(';')[0]}")
    (out / "run.json").write_text(json.dumps({"args": vars(args), "summary": summary}, indent=2))
    print(f"\n{table}\n\n{summary}\nwrote {results_dir / 'table.md'}, {results_dir / 'table.csv'}, {results_dir / 'bar_chart.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
