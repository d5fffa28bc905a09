"""Make the bundled MITOS weights: how ``weights/stainnet-mitos-aperio-to-hamamatsu`` and friends were built.

Steps (each optional, in this order):

1. ``--staingan-run DIR``: bundle a StainGAN trained by ``stain-transforms train-staingan`` (the
   command is in its card) as ``staingan-mitos-aperio-to-hamamatsu``, with the full model card.
2. ``--stainnet TEACHER``: distil ``stainnet-mitos-aperio-to-hamamatsu`` with our fast recipe from
   all 80 dev pairs (Aperio -> Hamamatsu), the best-PSNR checkpoint on a seeded 20% validation
   split. ``TEACHER`` is ``cyclegan`` (the provided CycleGAN outputs) or ``registered`` (the
   Hamamatsu targets shifted by ``pairs.csv``, 16 px border cut): the choice is made by the
   leave-one-slide-out figures of ``benchmarks/fidelity.py``, never on the shipped model itself.
3. ``--from-staingan``: distil ``stainnet-mitos-aperio-to-hamamatsu-from-staingan`` from the
   bundled StainGAN applied to the 80 Aperio images: the paper's whole pipeline on our own weights.

``--fidelity-json`` (written by ``benchmarks/fidelity.py``) puts the leave-one-slide-out figures
of each recipe into the cards. The images themselves never leave ``../shared/data``.

    python benchmarks/mitos_weights.py --staingan-run /tmp/staingan --stainnet registered --from-staingan \\
        --fidelity-json outputs/fidelity/fidelity.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

from stain_transforms.evaluation import read_shifts
from stain_transforms.hub import bundle_weights
from stain_transforms.models import StainGANGenerator
from stain_transforms.training import DistillConfig, distill, pairs_from_folders, pairs_from_teacher, split_names
from stain_transforms.training.distill import save_student

REPO = Path(__file__).resolve().parents[1]
STAINNET = "stainnet-mitos-aperio-to-hamamatsu"
STAINGAN = "staingan-mitos-aperio-to-hamamatsu"
STAINNET_FROM_GAN = "stainnet-mitos-aperio-to-hamamatsu-from-staingan"
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
SHARED_CPU = (
    "Trained on a shared 2-core CPU (several jobs at once), so the wall times above are not a measure of speed."
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


def ship_staingan(run: Path, fidelity: dict | None) -> None:
    log = json.loads((run / "training_log.json").read_text())
    generator = StainGANGenerator.from_pretrained(run)
    card_metrics = (run / "README.md").read_text().split("## Evaluation", 1)[1].split("## Use", 1)[0].strip()
    card_metrics = card_metrics.replace(
        "On the registered validation pairs:",
        "On the 80 registered pairs it was trained on (unpaired; border 16 px, target shifted):",
    )
    config = log["config"]
    command = (
        "stain-transforms train-staingan --source mitos_atypia14_pairs/aperio --target mitos_atypia14_pairs/hamamatsu "
        f"--out RUN --ngf {config['ngf']} --n-blocks {config['n_blocks']} --ndf {config['ndf']} --crop-size {config['crop_size']} "
        f"--epochs {config['epochs']} --epochs-decay {config['epochs_decay']} --steps-per-epoch {config['steps_per_epoch']} "
        f"--seed {config['seed']} --threads 1"
    )
    metrics = "\n\n".join(filter(None, [
        card_metrics,
        f"Command: `{command}` (plus `--resume` to continue an interrupted run).",
        "A compact generator (CPU-sized); the original StainGAN has ngf 64 and 9 residual blocks. " + SHARED_CPU,
        fidelity_text(fidelity, "gan"),
    ]))
    with tempfile.TemporaryDirectory() as tmp:
        generator.save_pretrained(tmp, model_card_kwargs={
            "title": "MITOS-ATYPIA-14 Aperio to Hamamatsu (compact, trained by stain_transforms)",
            "source_domain": SOURCE_DOMAIN, "target_domain": TARGET_DOMAIN,
            "training_data": DATA + " Trained unpaired: the trainer draws source and target patches independently.",
            "data_terms": TERMS, "metrics": metrics, "load_name": STAINGAN,
        })
        bundle(Path(tmp), STAINGAN, "MITOS-ATYPIA-14 dev pairs, 80 patches per scanner, used unpaired (research use, no redistribution licence)",
               f"Compact StainGAN (ngf {config['ngf']}, {config['n_blocks']} blocks) trained unpaired by stain_transforms")


def ship_stainnet(name: str, teacher: str, data: Path, fidelity: dict | None, seed: int) -> None:
    if teacher == "cyclegan":
        pairs = pairs_from_folders(data / "aperio", data / "cyclegan_fake_hamamatsu")
        described = "teacher: the provided CycleGAN outputs (`cyclegan_fake_hamamatsu/`, a ResNet-6 CycleGAN trained unpaired on MITOS by others)"
        option = "--teacher-outputs mitos_atypia14_pairs/cyclegan_fake_hamamatsu"
    elif teacher == "registered":
        pairs = pairs_from_folders(data / "aperio", data / "hamamatsu", shifts=read_shifts(data / "pairs.csv"), border=16)
        described = "teacher: the registered Hamamatsu targets, shifted by pairs.csv, 16 px border cut (paired supervision)"
        option = "--targets mitos_atypia14_pairs/hamamatsu --shift-csv mitos_atypia14_pairs/pairs.csv --border 16"
    else:
        gan = StainGANGenerator.from_pretrained(STAINGAN)
        pairs = pairs_from_teacher(data / "aperio", gan, progress=False)
        described = f"teacher: our StainGAN `{STAINGAN}` applied to the Aperio patches (the paper's pipeline)"
        option = f"--teacher {STAINGAN}"
    train, val = split_names(pairs.names, 0.2, seed=seed)
    config = DistillConfig(seed=seed, progress=False)
    result = distill(pairs.subset(train), pairs.subset(val), config)
    print(f"{name}: validation PSNR vs teacher {result.best_psnr:.2f} dB in {result.seconds:.0f} s")
    command = f"stain-transforms distill --source mitos_atypia14_pairs/aperio {option} --out OUT --seed {seed} --threads 1"
    extra = "\n\n".join(filter(None, [
        ("The validation split is a seeded random 20% of the 80 pairs (all slides), so the figures above are "
        f"not held-out slides; see the leave-one-slide-out figures below. Command: `{command}`. {SHARED_CPU}"),
        fidelity_text(fidelity, teacher, name),
    ]))
    with tempfile.TemporaryDirectory() as tmp:
        save_student(result, tmp, card={
            "title": f"MITOS-ATYPIA-14 Aperio to Hamamatsu ({'from our StainGAN' if teacher == 'staingan' else teacher + ' teacher'})",
            "source_domain": SOURCE_DOMAIN, "target_domain": TARGET_DOMAIN,
            "training_data": f"{DATA} {len(train)} patches for training, {len(val)} for the best-PSNR checkpoint; {described}.",
            "data_terms": TERMS, "metrics": extra, "load_name": name,
        })
        short = "CycleGAN outputs" if teacher == "cyclegan" else "registered targets" if teacher == "registered" else "our StainGAN"
        bundle(Path(tmp), name, f"MITOS-ATYPIA-14 dev pairs, 80 patches, teacher: {short} (research use, no redistribution licence)",
               f"StainNet distilled by stain_transforms from {short} on the MITOS-ATYPIA-14 dev pairs")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = Path(os.environ.get("STAIN_TRANSFORMS_DATA", REPO.parent / "shared" / "data")) / "mitos_atypia14_pairs"
    parser.add_argument("--data", type=Path, default=default)
    parser.add_argument("--staingan-run", type=Path, help="output folder of `stain-transforms train-staingan` to bundle")
    parser.add_argument("--stainnet", choices=("cyclegan", "registered"), help="distil and bundle the StainNet from this teacher")
    parser.add_argument("--from-staingan", action="store_true", help="distil and bundle a StainNet from the bundled StainGAN")
    parser.add_argument("--fidelity-json", type=Path, help="fidelity.json of benchmarks/fidelity.py, quoted in the cards")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    fidelity = json.loads(args.fidelity_json.read_text()) if args.fidelity_json else None
    if args.staingan_run:
        ship_staingan(args.staingan_run, fidelity)
    if args.stainnet:
        ship_stainnet(STAINNET, args.stainnet, args.data, fidelity, args.seed)
    if args.from_staingan:
        ship_stainnet(STAINNET_FROM_GAN, "staingan", args.data, fidelity, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
