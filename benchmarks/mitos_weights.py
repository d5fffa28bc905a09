"""Make the bundled MITOS weights: how ``weights/stainnet-mitos-aperio-to-hamamatsu`` and friends were built.

Steps (each optional, in this order):

1. ``--staingan-run DIR``: bundle a StainGAN trained by ``stain-transforms train-staingan`` (or by
   ``benchmarks/train_your_own.py``, whose ``fold_all`` runs are the same trainer on all 80 dev
   pairs; the equivalent command is in its card) as ``staingan-mitos-aperio-to-hamamatsu``, with
   the guided-filter setting that ``--staingan-scores`` (the recipe's ``scores.json``) chose on
   all the pairs recorded as its default.
2. ``--stainnet TEACHER``: distil ``stainnet-mitos-aperio-to-hamamatsu`` with our fast recipe from
   all 80 dev pairs (Aperio -> Hamamatsu), the best-PSNR checkpoint on a seeded 20% validation
   split. ``TEACHER`` is ``staingan`` (a StainGAN applied to the Aperio images, without the guided
   filter: the paper's whole pipeline on our own weights; ``--teacher-run DIR`` names its run,
   default the bundled StainGAN), ``cyclegan`` (the provided CycleGAN outputs) or
   ``registered`` (the Hamamatsu targets shifted by ``pairs.csv``, 16 px border cut). The choice is
   made by leave-one-slide-out figures (``benchmarks/train_your_own.py``, ``benchmarks/fidelity.py``),
   never on the shipped model itself.
3. ``--alternative TEACHER``: the same, bundled as ``stainnet-mitos-aperio-to-hamamatsu-from-...``.

``--staingan-scores`` and ``--recipe-scores`` (the ``scores.json`` of ``benchmarks/train_your_own.py``
for the StainGAN's recipe and for the StainNet teacher's) and ``--fidelity-json`` (written by
``benchmarks/fidelity.py``) put the leave-one-slide-out figures of the recipes into the cards; the shipped model's own figures on the 80 pairs, and the official checkpoint's, are measured
here. The images themselves never leave ``../shared/data``.

    python benchmarks/mitos_weights.py --staingan-run outputs/train_your_own/RECIPE/fold_all \\
        --staingan-scores outputs/train_your_own/RECIPE/scores.json
    python benchmarks/mitos_weights.py --stainnet staingan --teacher-run outputs/train_your_own/TEACHER/fold_all \\
        --recipe-scores outputs/train_your_own/TEACHER/scores.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fidelity import OFFICIAL, Data, Row, generator_alone, model_row, score, stainnet_transform, summarise

from stain_transforms import StainGANNormalize
from stain_transforms.evaluation import read_shifts
from stain_transforms.hub import bundle_weights
from stain_transforms.models import StainGANGenerator, StainNet
from stain_transforms.training import DistillConfig, distill, pairs_from_folders, pairs_from_teacher, split_names
from stain_transforms.training.distill import save_student

REPO = Path(__file__).resolve().parents[1]
STAINNET = "stainnet-mitos-aperio-to-hamamatsu"
STAINGAN = "staingan-mitos-aperio-to-hamamatsu"
ALTERNATIVES = {
    "staingan": f"{STAINNET}-from-staingan",
    "cyclegan": f"{STAINNET}-from-cyclegan-outputs",
    "registered": f"{STAINNET}-from-registered-targets",
}
HUB_OWNER = "stain-transforms"  # where the weights are meant to be published; the bundled copy is what loads

SOURCE_DOMAIN = "Aperio ScanScope XT scans of H&E breast cancer slides (MITOS-ATYPIA-14, x40)"
TARGET_DOMAIN = "Hamamatsu NanoZoomer 2.0-HT scans of the same slides (MITOS-ATYPIA-14, x40)"
DATA = (
    "The 80 registered 256x256 patch pairs of the MITOS-ATYPIA-14 dev set used by this project "
    "(slides 03, 04, 05 and 07 of the x40 frames, 20 patches each; Aperio = source, Hamamatsu = target). "
    "Only the weights are distributed here, never the images."
)
TERMS = (
    "MITOS-ATYPIA-14 challenge data (https://mitos-atypia-14.grand-challenge.org): for research use; the data "
    "come with no licence to redistribute, and these weights are derived from them. Use them for research, "
    "cite the challenge, and check the terms yourself before any other use. Not for clinical use."
)
# The card's front matter and Licence section: the weights carry the data's terms.
LICENCE = {
    "license": "other",
    "license_name": "research-use-only",
    "license_link": "https://mitos-atypia-14.grand-challenge.org",
    "license_text": (
        "Research use only (`license: other`, `license_name: research-use-only`): these weights are derived from the "
        "MITOS-ATYPIA-14 challenge data (https://mitos-atypia-14.grand-challenge.org), which come for research use with "
        "no licence to redistribute, so the weights carry the same terms. Not for clinical or commercial use; check the "
        "challenge's terms before any other use. The stain_transforms code is Apache-2.0."
    ),
}
SHARED_CPU = (
    "Trained on a shared 2-core CPU (several jobs at once), so the wall times above are not a measure of speed."
)

# The train-staingan options that the bundled StainGAN's command spells out (the rest are the defaults).
STAINGAN_OPTIONS = (
    "generator", "ngf", "n_blocks", "ndf", "n_layers_d", "crop_size", "batch_size", "epochs", "epochs_decay",
    "steps_per_epoch", "lambda_identity", "lambda_structure", "pool_size", "seed",
)

FIDELITY_ROWS = {
    "cyclegan": "our StainNet from CycleGAN outputs",
    "registered": "our StainNet from registered targets",
    "staingan": "our StainNet from our StainGAN",
    "gan": "our StainGAN",
}


def _metric_rows(row: dict) -> list[str]:
    lines = ["| pairs | SSIM target | PSNR target (dB) | SSIM source |", "|---|---|---|---|"]
    for label, part in (("all 80", "all"), ("60 without blurred slide 04", "without_04"), ("slide 04 (blurred target)", "slide_04")):
        m = row[part]
        lines.append(f"| {label} | {m['ssim_target']:.3f} | {m['psnr_target']:.2f} | {m['ssim_source']:.3f} |")
    return lines


def fidelity_text(fidelity: dict | None, key: str, shipped: str | None = None) -> str:
    """The card's figures from ``benchmarks/fidelity.py``: the recipe leave-one-slide-out, then this model."""
    if not fidelity or FIDELITY_ROWS[key] not in fidelity["rows"]:
        return ""
    rows = fidelity["rows"]
    row = rows[FIDELITY_ROWS[key]]
    held_out = key != "gan"
    lines = [
        "### The paper's metrics on the dev pairs (`benchmarks/fidelity.py`)",
        "",
        ("Target shifted by pairs.csv, 16 px border cropped; SSIM/PSNR against the Hamamatsu target on RGB, "
         "SSIM against the Aperio source on stretched grayscale."),
        "",
        (f"**The same recipe, leave-one-slide-out** (row \"{FIDELITY_ROWS[key]}\": each slide scored by a StainNet "
         f"distilled on the other three slides only; {row['note']}):") if held_out else
        f"**This model** (row \"{FIDELITY_ROWS[key]}\"; {row['note']}):",
        "",
        *_metric_rows(row),
    ]
    if shipped and f"shipped {shipped}" in rows:
        mine = rows[f"shipped {shipped}"]
        lines += ["", f"**This model** ({mine['note']}):", "", *_metric_rows(mine)]
    official = rows.get("official StainNet checkpoint")
    if official and held_out:
        ours, theirs = row["all"], official["all"]
        verdict = "above" if ours["psnr_target"] > theirs["psnr_target"] else "below"
        lines += ["", (
            f"Held out by slide, this recipe scores {verdict} the official checkpoint in PSNR on all 80 pairs "
            f"({ours['psnr_target']:.2f} vs {theirs['psnr_target']:.2f} dB; SSIM target {ours['ssim_target']:.3f} vs "
            f"{theirs['ssim_target']:.3f}; SSIM source {ours['ssim_source']:.3f} vs {theirs['ssim_source']:.3f}). "
            "The official checkpoint was trained by its authors on MITOS data that may include these slides."
        )]
    if official:
        lines += ["", "**The official StainNet checkpoint** (aligned histopathology; trained on MITOS by its authors):", "",
                  *_metric_rows(official)]
    return "\n".join(lines)


def bundle(folder: Path, name: str, training_data: str, description: str) -> None:
    entry = bundle_weights(
        folder, name, repo_id=f"{HUB_OWNER}/{name}", source_domain="Aperio ScanScope XT (MITOS-ATYPIA-14)",
        target_domain="Hamamatsu NanoZoomer 2.0-HT (MITOS-ATYPIA-14)", training_data=training_data,
        description=description, destination=REPO / "weights",
    )
    print(f"bundled {entry.name} ({entry.kind}, sha256 {entry.sha256[:12]}...) into {REPO / 'weights' / name}")


def shipped_guided_setting(recipe: dict | None) -> dict[str, float]:
    """``StainGANNormalize``'s guided filter arguments that the recipe's scoring chose on all the pairs ({} if none)."""
    return (recipe or {}).get("guided_settings", {}).get("shipped", {})


def staingan_measured_text(normalize: StainGANNormalize, root: Path) -> str:
    """The bundled StainGAN's own figures on the 80 dev pairs, without and with its guided filter."""
    data = Data(root)
    lines = []
    for label, transform in (("without the guided filter (`guided_radius=0`)", generator_alone(normalize)),
                             ("as loaded (its defaults)", normalize)):
        row = Row(label, outputs={n: transform(data.source[n]) for n in data.names})
        score(row, data)
        lines += [f"**This model {label}** on the 80 dev pairs (unpaired, it saw them all):", "",
                  *_metric_rows({g: summarise(row, names) for g, names in data.groups().items()}), ""]
    return "\n".join(lines).strip()


def ship_staingan(run: Path, data: Path, fidelity: dict | None, recipe: dict | None) -> None:
    log = json.loads((run / "training_log.json").read_text())
    normalize = StainGANNormalize(StainGANGenerator.from_pretrained(run), **shipped_guided_setting(recipe))
    radius, eps = normalize.guided_radius, normalize.guided_eps
    # The training card's own Evaluation section, up to the next heading.
    card_metrics = (run / "README.md").read_text().split("## Evaluation", 1)[1].split("\n## ", 1)[0].strip()
    if recipe:  # the run scored a few training pairs for its curves; the recipe's table scores all 80
        card_metrics = "\n\n".join(p for p in card_metrics.split("\n\n") if not p.startswith("On the registered validation pairs"))
    else:
        card_metrics = card_metrics.replace(
            "On the registered validation pairs:",
            "On the 80 registered pairs it was trained on (unpaired; border 16 px, target shifted):",
        )
    config = log["config"]
    command = "stain-transforms train-staingan --source mitos_atypia14_pairs/aperio --target mitos_atypia14_pairs/hamamatsu --out RUN " + " ".join(
        f"--{key.replace('_', '-')} {config[key]}" for key in STAINGAN_OPTIONS
    ) + " --threads 1"
    metrics = "\n\n".join(filter(None, [
        card_metrics,
        f"Command: `{command}` (plus `--resume` to continue an interrupted run).",
        "A compact generator (CPU-sized); the original StainGAN has ngf 64 and 9 residual blocks. "
        f"Trained in {log['seconds'] / 60:.1f} min on this project's 2-core CPU. " + SHARED_CPU,
        (f"`StainGANNormalize.from_pretrained` applies it with a guided filter (`guided_radius={radius}`, "
         f"`guided_eps={eps:g}`): each translation is redrawn as a local affine function of the source's colours, "
         "which puts the source's structure back. The setting is the one `stain_transforms.training.guided.choose_guided` "
         "picks on all 80 pairs (the best PSNR among six settings keeping SSIM source >= 0.93; the table below gives it "
         "chosen per held-out slide instead); pass `guided_radius=0` for the generator alone. The recipe was chosen "
         "among those of `benchmarks/train_your_own.py` by its fully held-out *model + guided filter* row (the best "
         "PSNR keeping SSIM source >= 0.93), never by this model's own figures. "
         "Distil StainNets from the generator alone (as `stain-transforms distill --teacher` does): StainNets distilled "
         "from the filtered outputs scored 0.02-0.12 dB lower in a quick check.") if radius else "",
        staingan_measured_text(normalize, data),
        recipe_text(recipe) if recipe else fidelity_text(fidelity, "gan"),
    ]))
    with tempfile.TemporaryDirectory() as tmp:
        normalize.save_pretrained(tmp, model_card_kwargs={
            "title": "MITOS-ATYPIA-14 Aperio to Hamamatsu (compact, trained by stain_transforms)",
            "source_domain": SOURCE_DOMAIN, "target_domain": TARGET_DOMAIN,
            "training_data": DATA + " Trained unpaired: the trainer draws source and target patches independently.",
            "data_terms": TERMS, "metrics": metrics, "load_name": STAINGAN, **LICENCE,
        })
        bundle(Path(tmp), STAINGAN, "MITOS-ATYPIA-14 dev pairs, 80 patches per scanner, used unpaired (research use, no redistribution licence)",
               f"Compact StainGAN (ngf {config['ngf']}, {config['n_blocks']} blocks) trained unpaired by stain_transforms")


def ship_stainnet(name: str, teacher: str, data: Path, fidelity: dict | None, recipe: dict | None, seed: int,
                  teacher_run: Path | None = None) -> None:
    if teacher == "cyclegan":
        pairs = pairs_from_folders(data / "aperio", data / "cyclegan_fake_hamamatsu")
        described = "teacher: the provided CycleGAN outputs (`cyclegan_fake_hamamatsu/`, a ResNet-6 CycleGAN trained unpaired on MITOS by others)"
        option = "--teacher-outputs mitos_atypia14_pairs/cyclegan_fake_hamamatsu"
    elif teacher == "registered":
        pairs = pairs_from_folders(data / "aperio", data / "hamamatsu", shifts=read_shifts(data / "pairs.csv"), border=16)
        described = "teacher: the registered Hamamatsu targets, shifted by pairs.csv, 16 px border cut (paired supervision)"
        option = "--targets mitos_atypia14_pairs/hamamatsu --shift-csv mitos_atypia14_pairs/pairs.csv --border 16"
    else:
        gan = StainGANGenerator.from_pretrained(teacher_run or STAINGAN)
        pairs = pairs_from_teacher(data / "aperio", gan, progress=False)
        if teacher_run:
            trained_by = f"`benchmarks/train_your_own.py --recipe {recipe['name']}`" if recipe else f"a run in {teacher_run.name}"
            described = (f"teacher: a StainGAN trained unpaired on the same 80 pairs by {trained_by} (not bundled; "
                         f"`{STAINGAN}` is another recipe's), its generator alone applied to the Aperio patches (the paper's pipeline)")
            option = "--teacher STAINGAN_RUN"
        else:
            described = (f"teacher: our StainGAN `{STAINGAN}` (trained unpaired on the same 80 pairs by stain_transforms), "
                         "its generator alone applied to the Aperio patches (the paper's pipeline)")
            option = f"--teacher {STAINGAN}"
    train, val = split_names(pairs.names, 0.2, seed=seed)
    config = DistillConfig(seed=seed, progress=False)
    result = distill(pairs.subset(train), pairs.subset(val), config)
    print(f"{name}: validation PSNR vs teacher {result.best_psnr:.2f} dB in {result.seconds:.0f} s")
    command = f"stain-transforms distill --source mitos_atypia14_pairs/aperio {option} --out OUT --seed {seed} --threads 1"
    extra = "\n\n".join(filter(None, [
        ("The validation split is a seeded random 20% of the 80 pairs (all slides), so the figures above are "
        f"not held-out slides; see the leave-one-slide-out figures below. Command: `{command}`. {SHARED_CPU}"),
        (f"Training time on this project's 2-core CPU, 1 torch thread: {recipe['minutes']['all']:.1f} min for the StainGAN "
         f"teacher, {result.seconds:.0f} s for this StainNet. The recipe was chosen among those of "
         "`benchmarks/train_your_own.py` by its fully held-out StainNet row (docs/fidelity.md, \"Train your own\"), "
         "never by this model's own figures.") if recipe else "",
        recipe_text(recipe) if recipe else fidelity_text(fidelity, teacher, name),
        measured_text(result.model, data) if recipe else "",
    ]))
    short = {"cyclegan": "CycleGAN outputs", "registered": "registered targets", "staingan": "our StainGAN"}[teacher]
    with tempfile.TemporaryDirectory() as tmp:
        save_student(result, tmp, card={
            "title": f"MITOS-ATYPIA-14 Aperio to Hamamatsu (from {short})",
            "source_domain": SOURCE_DOMAIN, "target_domain": TARGET_DOMAIN,
            "training_data": f"{DATA} {len(train)} patches for training, {len(val)} for the best-PSNR checkpoint; {described}.",
            "data_terms": TERMS, "metrics": extra, "load_name": name, **LICENCE,
        })
        bundle(Path(tmp), name, f"MITOS-ATYPIA-14 dev pairs, 80 patches, teacher: {short} (research use, no redistribution licence)",
               f"StainNet distilled by stain_transforms from {short} on the MITOS-ATYPIA-14 dev pairs")


def recipe_text(recipe: dict) -> str:
    """The leave-one-slide-out table of a ``benchmarks/train_your_own.py`` recipe (its ``scores.json``)."""
    lines = [
        f"### Leave-one-slide-out on the dev pairs (`benchmarks/train_your_own.py --recipe {recipe['name']}`)",
        "",
        "Target shifted by pairs.csv, 16 px border cropped. The rows:",
        "",
        "- *model, LOSO*: each slide scored by a StainGAN trained unpaired on the other three slides;",
        ("- *+ guided filter*: the same StainGAN's outputs through the guided filter, its setting chosen per scored "
         "slide on the other slides' pairs (best PSNR keeping SSIM source >= 0.93);"),
        ("- *StainNet distilled from it, LOSO*: by a StainNet distilled from that StainGAN's outputs on those three "
        "slides. Neither saw the scored slide: what to expect on a new slide;"),
        ("- *model trained on all slides*: the StainGAN trained on all four, as the bundled ones were (unpaired, it saw "
        "the scored images, as the provided CycleGAN did);"),
        ("- *StainNet distilled from the all-slides model, LOSO*: its students per held-out slide, as the CycleGAN's "
        "students are scored in `benchmarks/fidelity.py`;"),
        "- *... on all 80*: the bundled StainNet's recipe (it saw the scored sources).",
        "",
        "| model | pairs | SSIM target | PSNR target (dB) | SSIM source |",
        "|---|---|---|---|---|",
    ]
    for label, groups in recipe["rows"].items():
        for group, m in groups.items():
            if group != "per_slide_psnr":
                model = label.split(": ", 1)[-1]
                lines.append(f"| {model} | {group.replace('_', ' ')} | {m['ssim_target']:.3f} | {m['psnr_target']:.2f} | {m['ssim_source']:.3f} |")
    minutes = ", ".join(f"{fold} {m:.1f}" for fold, m in recipe["minutes"].items())
    lines += ["", f"StainGAN training time per fold, minutes on a 2-core CPU with 1 torch thread: {minutes}. {SHARED_CPU}"]
    return "\n".join(lines)


def measured_text(model: StainNet, root: Path) -> str:
    """This model's figures on the 80 dev pairs, beside the official checkpoint's (when it is on disk)."""
    data = Data(root)
    mine = model_row("this model", stainnet_transform(model), data, "")
    score(mine, data)
    lines = ["**This model** on the 80 dev pairs (it saw their sources; its teacher saw, unpaired, their targets):", "",
             *_metric_rows({g: summarise(mine, names) for g, names in data.groups().items()})]
    official_path = root.parent / OFFICIAL
    if official_path.is_file():
        official = model_row("official", stainnet_transform(StainNet.from_official_checkpoint(official_path)), data, "")
        score(official, data)
        lines += ["", "**The official StainNet checkpoint** (aligned histopathology; trained on MITOS by its authors):", "",
                  *_metric_rows({g: summarise(official, names) for g, names in data.groups().items()})]
    return "\n".join(lines)


def read_recipe(scores: Path | None) -> dict | None:
    """A ``scores.json`` of ``benchmarks/train_your_own.py``, with the recipe's name (its folder's)."""
    return {**json.loads(scores.read_text()), "name": scores.parent.name} if scores else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = Path(os.environ.get("STAIN_TRANSFORMS_DATA", REPO.parent / "shared" / "data")) / "mitos_atypia14_pairs"
    parser.add_argument("--data", type=Path, default=default)
    parser.add_argument("--staingan-run", type=Path, help="output folder of `stain-transforms train-staingan` to bundle")
    parser.add_argument("--staingan-scores", type=Path, help="scores.json of the bundled StainGAN's recipe (benchmarks/train_your_own.py)")
    parser.add_argument("--teacher-run", type=Path, help="with --stainnet staingan: the StainGAN run to distil from (default: the bundled one)")
    parser.add_argument("--stainnet", choices=tuple(ALTERNATIVES), help=f"distil and bundle {STAINNET} from this teacher")
    parser.add_argument("--alternative", choices=tuple(ALTERNATIVES), nargs="*", default=[],
                        help=f"distil and bundle {STAINNET}-from-TEACHER from these teachers")
    parser.add_argument("--recipe-scores", type=Path, help="scores.json of benchmarks/train_your_own.py, quoted in the cards")
    parser.add_argument("--fidelity-json", type=Path, help="fidelity.json of benchmarks/fidelity.py, quoted in the cards")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    fidelity = json.loads(args.fidelity_json.read_text()) if args.fidelity_json else None
    recipe, staingan_recipe = read_recipe(args.recipe_scores), read_recipe(args.staingan_scores)
    if args.staingan_run:
        ship_staingan(args.staingan_run, args.data, fidelity, staingan_recipe)
    if args.stainnet:
        ship_stainnet(STAINNET, args.stainnet, args.data, fidelity, recipe if args.stainnet == "staingan" else None, args.seed,
                      args.teacher_run)
    for teacher in args.alternative:
        ship_stainnet(ALTERNATIVES[teacher], teacher, args.data, fidelity, recipe if teacher == "staingan" else None, args.seed,
                      args.teacher_run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
