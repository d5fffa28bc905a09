"""Train your own: the StainGAN trainer and the teacher-free StainNet trainer, leave-one-slide-out on MITOS.

A user who has images of two scanners and no registered pairs runs ``train-staingan`` (a
CycleGAN), then ``distill`` (a StainNet on the teacher's outputs), or trains a StainNet directly as a
CycleGAN generator (``--generator pixel``: no teacher at all). This script does that for each
recipe in :data:`RECIPES` on the MITOS dev pairs:

- **train** (``--train``): for each fold (a held-out slide, or ``all``), train unpaired on the other
  slides' Aperio and Hamamatsu patches (``all``: on every slide, as the provided CycleGAN was), then
  save the model's outputs on all 80 sources to ``FOLD/outputs.npz``. Each fold is a separate,
  resumable run (``--folds``), so that folds can run side by side, on a GPU for instance;
- **score** (``--score``): with the paper's metrics (target shifted by ``pairs.csv``, 16 px border),
  the model of each fold on its held-out slide (LOSO) and the ``all`` model on all 80 (unpaired, so
  it saw the scored images, as the provided CycleGAN did). For ResNet teachers, also StainNets
  distilled (fast recipe) from the teacher's outputs on training images only: from each fold's
  teacher (LOSO all through), from the ``all`` teacher per held-out slide (as the CycleGAN's students
  are scored in ``benchmarks/fidelity.py``), and from the ``all`` teacher on all 80 sources (what
  ``benchmarks/mitos_weights.py`` ships). For ResNet teachers, also the teacher with the guided
  filter (``StainGANNormalize(guided_radius=..., guided_eps=...)``), its setting chosen per held-out
  slide on the *other* slides' pairs by ``stain_transforms.training.guided.choose_guided`` (the rule
  that chose the recipe, and that ``train-staingan`` applies to its validation pairs: best PSNR
  while SSIM source stays >= 0.93). Tables go to ``OUT/RECIPE/table.md`` and
  ``OUT/RECIPE/scores.json``; ``--summary FILE`` gathers every scored recipe into one table.

During training the registered pairs of the *training* slides are scored every few epochs for the
curves (``curves.png``); nothing is chosen on them, and the held-out slide is never looked at.

    python benchmarks/train_your_own.py --recipe pixel-swd --train --score [--folds 03 04 05 07 all]
    python benchmarks/train_your_own.py --summary docs/results/train_your_own.md
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fidelity import BLURRED_SLIDE, BORDER, Data, Row, default_data, open_pairs, score, summarise

from stain_transforms.metrics import mean_fidelity
from stain_transforms.training import DistillConfig, StainGANConfig, distill, split_names, train_staingan
from stain_transforms.training.distill import PairSet
from stain_transforms.training.guided import GUIDED_SETTINGS, choose_guided, guided_outputs
from stain_transforms.training.staingan import translate_pairs
from stain_transforms.training.unpaired import UnpairedStainNetConfig, train_stainnet_unpaired

REPO = Path(__file__).resolve().parents[1]
FOLDS = ("03", "04", "05", "07", "all")
# Settings that every recipe shares: a small discriminator and crops, CPU-sized.
COMMON = dict(ndf=32, n_layers_d=3, crop_size=96, batch_size=2, lambda_identity=0.5, pool_size=50, val_every=5)
RECIPES: dict[str, dict] = {
    # CycleGAN's own objective with a compact ResNet generator (the bundled StainGAN's kind).
    "resnet-compact": dict(COMMON, generator="resnet", ngf=16, n_blocks=3, epochs=10, epochs_decay=10, steps_per_epoch=50),
    # The same with the structure term.
    "resnet-compact-structure": dict(
        COMMON, generator="resnet", ngf=16, n_blocks=3, epochs=10, epochs_decay=10, steps_per_epoch=50, lambda_structure=5.0
    ),
    "resnet-compact-structure15": dict(
        COMMON, generator="resnet", ngf=16, n_blocks=3, epochs=10, epochs_decay=10, steps_per_epoch=50, lambda_structure=15.0
    ),
    # The same, another seed: how much of a difference between recipes is the GAN's run-to-run noise.
    "resnet-compact-structure15-seed1": dict(
        COMMON, generator="resnet", ngf=16, n_blocks=3, epochs=10, epochs_decay=10, steps_per_epoch=50, lambda_structure=15.0, seed=1
    ),
    # A wider generator (ngf 32): more capacity for the colours, at about twice the time.
    "resnet-ngf32-structure15": dict(
        COMMON, generator="resnet", ngf=32, n_blocks=3, epochs=10, epochs_decay=10, steps_per_epoch=50, lambda_structure=15.0
    ),
    "resnet-compact-structure20": dict(
        COMMON, generator="resnet", ngf=16, n_blocks=3, epochs=10, epochs_decay=10, steps_per_epoch=50, lambda_structure=20.0
    ),
    "resnet-compact-structure20-long": dict(
        COMMON, generator="resnet", ngf=16, n_blocks=3, epochs=20, epochs_decay=20, steps_per_epoch=50, lambda_structure=20.0
    ),
    "resnet-compact-structure10-long": dict(
        COMMON, generator="resnet", ngf=16, n_blocks=3, epochs=20, epochs_decay=20, steps_per_epoch=50, lambda_structure=10.0
    ),
    # A StainNet trained as CycleGAN generator against the discriminators: teacher-free.
    "pixel-gan": dict(COMMON, generator="pixel", epochs=10, epochs_decay=10, steps_per_epoch=50),
}
# Teacher-free StainNets trained by colour-distribution matching (stain_transforms.training.unpaired).
UNPAIRED: dict[str, dict] = {
    "pixel-swd": dict(),
    "pixel-swd-nocycle": dict(lambda_cycle=0.0),
    "pixel-swd-cycle5": dict(lambda_cycle=5.0),
}
MONITOR_PAIRS = 12  # registered training-slide pairs scored for the curves


def fold_names(data: Data, fold: str) -> list[str]:
    """The names a fold trains on: every slide but ``fold`` (all of them for ``"all"``)."""
    return list(data.names) if fold == "all" else data.fold(fold)[0]


def monitor_pairs(data: Data, names: list[str]) -> PairSet:
    chosen = names[:: max(1, len(names) // MONITOR_PAIRS)][:MONITOR_PAIRS]
    crop = slice(BORDER, -BORDER)
    return PairSet(chosen, [data.source[n][crop, crop] for n in chosen], [data.target[n][crop, crop] for n in chosen])


def train_fold(data: Data, recipe: str, fold: str, out: Path, device: str | None) -> None:
    run_dir = out / recipe / f"fold_{fold}"
    if (run_dir / "outputs.npz").is_file():
        print(f"{recipe} fold {fold}: done already ({run_dir})", flush=True)
        return
    names = fold_names(data, fold)
    start = time.perf_counter()
    if recipe in UNPAIRED:
        config = UnpairedStainNetConfig(**UNPAIRED[recipe], device=device, progress=sys.stderr.isatty())
        result = train_stainnet_unpaired(
            [data.source[n] for n in names], [data.target_raw[n] for n in names], config, monitor_pairs(data, names), run_dir
        )
        model, done = result.model, f"{config.steps} steps"
    else:
        config = StainGANConfig(**RECIPES[recipe], device=device, progress=sys.stderr.isatty())
        result = train_staingan(
            data.root / "aperio", data.root / "hamamatsu", run_dir, config, resume=True,
            validation=monitor_pairs(data, names), source_names=names, target_names=names,
        )
        model, done = result.generator, f"{result.epochs_done} epochs"
    outputs = translate_pairs(model, [data.source[n] for n in data.names], next(model.parameters()).device)
    np.savez_compressed(run_dir / "outputs.npz", names=np.array(data.names), outputs=np.stack(outputs))
    print(f"{recipe} fold {fold}: {done} in {result.seconds / 60:.1f} min "
          f"(this call {(time.perf_counter() - start) / 60:.1f} min)", flush=True)


def load_outputs(out: Path, recipe: str, fold: str) -> dict[str, np.ndarray] | None:
    path = out / recipe / f"fold_{fold}" / "outputs.npz"
    if not path.is_file():
        return None
    saved = np.load(path)
    return dict(zip(saved["names"].tolist(), saved["outputs"]))


def training_minutes(out: Path, recipe: str, fold: str) -> float:
    log = out / recipe / f"fold_{fold}" / "training_log.json"
    return json.loads(log.read_text())["seconds"] / 60 if log.is_file() else float("nan")


def distilled_row(label: str, data: Data, folds: list[tuple[list[str], list[str], dict]], seed: int) -> Row:
    """StainNets distilled (fast recipe), one per (training names, scored names, teacher outputs) fold."""
    row = Row(label, "fast recipe, teacher outputs on the training names only")
    for train, test, teacher in folds:
        pairs = PairSet(train, [data.source[n] for n in train], [teacher[n] for n in train])
        fit, val = split_names(train, 0.2, seed=seed)
        result = distill(pairs.subset(fit), pairs.subset(val), DistillConfig(seed=seed, progress=False))
        row.outputs.update(zip(test, translate_pairs(result.model, [data.source[n] for n in test])))
    return row


def guided_settings(data: Data, outputs: dict[str, np.ndarray]) -> dict[tuple[int, float], Row]:
    """The teacher's outputs through the guided filter at each of ``GUIDED_SETTINGS``, scored."""
    names = list(outputs)
    rows = {}
    for radius, eps in GUIDED_SETTINGS:
        redrawn = guided_outputs([data.source[n] for n in names], [outputs[n] for n in names], radius, eps)
        rows[radius, eps] = Row(f"guided {radius}/{eps:g}", outputs=dict(zip(names, redrawn)))
        score(rows[radius, eps], data)
    return rows


def chosen_on(rows: dict[tuple[int, float], Row], names: list[str]) -> tuple[int, float]:
    """The setting that :func:`~stain_transforms.training.guided.choose_guided` picks on ``names``."""
    return choose_guided({setting: mean_fidelity([row.scores[n] for n in names]) for setting, row in rows.items()})


def guided_row(label: str, data: Data, per_slide_rows: dict[str, dict[tuple[int, float], Row]]) -> tuple[Row, dict[str, str]]:
    """Each slide's outputs at the setting chosen on the other slides' pairs (``per_slide_rows``: the model that scores it)."""
    row, chosen = Row(label, "guided filter setting chosen on the other slides' pairs"), {}
    for slide, rows in per_slide_rows.items():
        train, test = data.fold(slide)
        setting = chosen_on(rows, train)
        chosen[slide] = f"{setting[0]}/{setting[1]:g}"
        row.outputs.update({n: rows[setting].outputs[n] for n in test})
        row.scores.update({n: rows[setting].scores[n] for n in test})
    row.note += " (" + ", ".join(f"{s}: radius/eps {c}" for s, c in chosen.items()) + ")"
    return row, chosen


def score_recipe(data: Data, recipe: str, out: Path, seed: int) -> str:
    """The recipe's rows: the model LOSO and trained on all slides, and (ResNet teachers) StainNets distilled from each."""
    per_fold = {fold: load_outputs(out, recipe, fold) for fold in FOLDS}
    is_teacher = RECIPES.get(recipe, {}).get("generator") == "resnet"
    rows, guided_choices = [], {}
    loso = [s for s in data.slides if per_fold.get(s) is not None]
    if loso:
        teacher = Row(f"{recipe}: model, LOSO", f"folds {', '.join(loso)}")
        for slide in loso:
            teacher.outputs.update({n: per_fold[slide][n] for n in data.fold(slide)[1]})
        rows.append(teacher)
        if is_teacher:
            row, guided_choices["loso"] = guided_row(f"{recipe}: model + guided filter, LOSO", data, {
                slide: guided_settings(data, per_fold[slide]) for slide in loso})
            rows.append(row)
            folds = [(*data.fold(slide), per_fold[slide]) for slide in loso]
            rows.append(distilled_row(f"{recipe}: StainNet distilled from it, LOSO", data, folds, seed))
    if per_fold.get("all") is not None:
        everywhere = per_fold["all"]
        rows.append(Row(f"{recipe}: model trained on all slides", "unpaired; saw the scored images", outputs=everywhere))
        if is_teacher:
            settings = guided_settings(data, everywhere)
            row, guided_choices["all_slides_model"] = guided_row(
                f"{recipe}: all-slides model + guided filter", data, {slide: settings for slide in data.slides})
            rows.append(row)
            # What a shipped model carries: the setting chosen on all the pairs, as StainGANNormalize's arguments.
            radius, eps = chosen_on(settings, data.names)
            guided_choices["shipped"] = {"guided_radius": radius, "guided_eps": eps}
            # As the provided CycleGAN's students are scored: the teacher saw every slide (unpaired), the student did not.
            folds = [(*data.fold(slide), everywhere) for slide in data.slides]
            rows.append(distilled_row(f"{recipe}: StainNet distilled from the all-slides model, LOSO", data, folds, seed))
            # What benchmarks/mitos_weights.py ships: distilled on all 80 sources (it saw the scored sources).
            rows.append(distilled_row(f"{recipe}: StainNet distilled from the all-slides model on all 80", data,
                                      [(data.names, data.names, everywhere)], seed))
    lines = ["| rows | pairs | SSIM target | PSNR target (dB) | SSIM source |", "|---|---|---|---|---|"]
    figures = {}
    for row in rows:
        if not row.scores:  # the guided rows come scored
            score(row, data)
        names = list(row.outputs)
        figures[row.label] = {}
        for group, members in data.groups(names).items():
            if not members:
                continue
            s = summarise(row, members)
            figures[row.label][group] = s
            lines.append(f"| {row.label} | {group.replace('_', ' ')} ({len(members)}) | {s['ssim_target']:.3f} | {s['psnr_target']:.2f} | {s['ssim_source']:.3f} |")
        figures[row.label]["per_slide_psnr"] = {
            s: summarise(row, [n for n in names if data.slide[n] == s])["psnr_target"]
            for s in data.slides if any(data.slide[n] == s for n in names)
        }
    minutes = {fold: training_minutes(out, recipe, fold) for fold in FOLDS if per_fold.get(fold) is not None}
    lines.append("")
    lines.append("Training time per fold (min): " + ", ".join(f"{f} {m:.1f}" for f, m in minutes.items()))
    if guided_choices:
        lines.append("Guided filter settings (radius/eps) chosen: " + json.dumps(guided_choices))
    text = "\n".join(lines)
    (out / recipe / "table.md").write_text(text + "\n")
    (out / recipe / "scores.json").write_text(json.dumps({"recipe": RECIPES.get(recipe) or UNPAIRED[recipe], "rows": figures, "minutes": minutes,
                                                          "guided_settings": guided_choices}, indent=2) + "\n")
    return text


def summary_table(out: Path) -> str:
    """Every scored recipe's rows in one table (all 80 pairs, and without the blurred slide), with training times."""
    without = f"without_{BLURRED_SLIDE}"
    lines = [
        (f"*Written by `python benchmarks/train_your_own.py --summary` on {time.strftime('%Y-%m-%d')}; every model trained "
         f"on a shared 2-core x86-64 CPU, 1 torch thread (torch {torch.__version__.split('+')[0]}), seed 0 unless the "
         "recipe's name says otherwise. Paper's metrics, target shifted by pairs.csv, 16 px border. LOSO: each slide scored "
         "by a model that never saw it. The last column is the model's (StainGAN's) training time; distilling a StainNet "
         "from it adds about 20 s.*"),
        "",
        "| recipe | model | SSIM target | PSNR target (dB) | SSIM source | without slide 04: SSIM target | PSNR (dB) | SSIM source | training (min per fold) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for recipe in [*RECIPES, *UNPAIRED]:
        path = out / recipe / "scores.json"
        if not path.is_file():
            continue
        scores = json.loads(path.read_text())
        minutes = [m for m in scores["minutes"].values() if not math.isnan(m)]  # NaN: no log
        spent = "?" if not minutes else f"{min(minutes):.1f}" + (f"-{max(minutes):.1f}" if max(minutes) > min(minutes) else "")
        for label, groups in scores["rows"].items():
            a, w = groups["all"], groups.get(without, groups["all"])
            model = label.split(": ", 1)[1]
            lines.append(
                f"| {recipe} | {model} | {a['ssim_target']:.3f} | {a['psnr_target']:.2f} | {a['ssim_source']:.3f} "
                f"| {w['ssim_target']:.3f} | {w['psnr_target']:.2f} | {w['ssim_source']:.3f} | {spent} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=default_data())
    parser.add_argument("--recipe", choices=[*RECIPES, *UNPAIRED], help="the recipe to train or score")
    parser.add_argument("--folds", nargs="*", default=list(FOLDS), choices=list(FOLDS))
    parser.add_argument("--train", action="store_true", help="train the folds (resumes unfinished ones)")
    parser.add_argument("--score", action="store_true", help="score the folds that are done")
    parser.add_argument("--summary", type=Path, help="write every scored recipe's rows to this markdown file")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "train_your_own")
    parser.add_argument("--device", help="torch device (default: CUDA when available)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if (args.train or args.score) and not args.recipe:
        parser.error("--train and --score need --recipe")
    if args.summary:
        args.summary.write_text(summary_table(args.out) + "\n")
        print(args.summary.read_text())
    if not (args.train or args.score):
        return 0
    data = open_pairs(args.data)
    if data is None:
        return 2
    torch.set_num_threads(args.threads)
    if args.train:
        for fold in args.folds:
            train_fold(data, args.recipe, fold, args.out, args.device)
    if args.score:
        print(score_recipe(data, args.recipe, args.out, args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
