"""The ``train-staingan``, ``train-stainnet-unpaired`` and ``distill`` subcommands of ``stain-transforms``.

``stain_transforms.cli`` calls :func:`add_train_staingan_parser`, :func:`add_train_stainnet_unpaired_parser`
and :func:`add_distill_parser` on its subparsers; each sets ``run`` to a function of the parsed
arguments that returns the exit status.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from ..files import list_images
from ..registry import FITTED, build_normalizer, methods
from .staingan import LOSS_KEYS
from .unpaired import UnpairedStainNetConfig

CLASSICAL_TEACHERS = methods(FITTED)
UNPAIRED = UnpairedStainNetConfig()  # the defaults of train-stainnet-unpaired


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument("--device", help="torch device, e.g. cuda or cpu (default: cuda when available)")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--json", action="store_true", help="print the result summary as JSON")
    card = parser.add_argument_group("model card")
    card.add_argument("--source-domain", metavar="TEXT", help="the stain domain the model maps from, e.g. 'H&E, Aperio AT2, hospital A'")
    card.add_argument("--target-domain", metavar="TEXT", help="the stain domain it maps to")
    card.add_argument("--title", metavar="TEXT", help="a title for the model card")


def _card(args: argparse.Namespace) -> dict[str, str]:
    """The model-card fields given on the command line."""
    fields = {"source_domain": args.source_domain, "target_domain": args.target_domain, "title": args.title}
    return {key: value for key, value in fields.items() if value}


def _check_out(out: str, overwrite: bool, resume: bool | None = None) -> None:
    """Refuse to replace a finished model (or, for a trainer that resumes, a checkpoint) in ``out``."""
    folder = Path(out)
    if overwrite or not folder.exists():
        return
    if not folder.is_dir():
        raise ValueError(f"--out {folder} exists and is not a folder")
    model = [name for name in ("model.safetensors", "config.json") if (folder / name).exists()]
    checkpoint = folder / "checkpoints" / "latest.pt"
    resumable = resume is not None
    if resume:
        return  # train-staingan --resume continues from the checkpoint and saves the model again
    hint = "pass --resume to continue its training or --overwrite to replace it" if resumable else "pass --overwrite to replace it"
    if model:
        raise ValueError(f"--out {folder} already holds a model ({folder / model[0]}); {hint}, or choose another --out")
    if resumable and checkpoint.is_file():
        raise ValueError(f"--out {folder} holds a training checkpoint ({checkpoint}); {hint}, or choose another --out")


def _print_curves(out: Path) -> None:
    if (out / "curves.png").is_file():  # not drawn without matplotlib (the trainer warned)
        print(f"curves: {out / 'curves.png'}")


def _set_threads(args: argparse.Namespace) -> None:
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)


# -- train-staingan ---------------------------------------------------------------------------


def add_train_staingan_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``train-staingan`` (CycleGAN on two unpaired folders) to ``subparsers``.

    Example:
        >>> parser = argparse.ArgumentParser()
        >>> p = add_train_staingan_parser(parser.add_subparsers())
        >>> parser.parse_args(["train-staingan", "--source", "a", "--target", "b", "--out", "c"]).ngf
        64
    """
    p = subparsers.add_parser(
        "train-staingan",
        help="train a StainGAN (CycleGAN) on two unpaired folders",
        description="Train a StainGAN (CycleGAN) from unpaired source- and target-domain images. "
        "The defaults are CycleGAN's; --ngf 16 --n-blocks 3 --crop-size 128 makes a CPU-sized model.",
    )
    p.add_argument("--source", required=True, help="folder of source-domain images (the ones to normalize)")
    p.add_argument("--target", required=True, help="folder of target-domain images")
    p.add_argument("--out", required=True, help="output folder: model, inverse/, samples/, checkpoints/")
    arch = p.add_argument_group("architecture")
    arch.add_argument(
        "--generator", choices=("resnet", "pixel"), default="resnet",
        help="resnet: CycleGAN's ResNet generator (StainGAN); pixel: a StainNet (1x1 convolutions), which cannot "
        "alter structure and is saved as a StainNet (default: %(default)s)",
    )
    arch.add_argument("--pixel-channels", type=int, default=32, help="hidden width of the pixel generator (default: %(default)s)")
    arch.add_argument("--ngf", type=int, default=64, help="generator filters (default: %(default)s)")
    arch.add_argument("--n-blocks", type=int, default=9, help="generator residual blocks (default: %(default)s)")
    arch.add_argument("--ndf", type=int, default=64, help="discriminator filters (default: %(default)s)")
    arch.add_argument("--n-layers-d", type=int, default=3, help="discriminator stride-2 layers (default: %(default)s)")
    opt = p.add_argument_group("optimisation")
    opt.add_argument("--epochs", type=int, default=100, help="epochs at the initial learning rate (default: %(default)s)")
    opt.add_argument("--epochs-decay", type=int, default=100, help="epochs of linear decay to 0 (default: %(default)s)")
    opt.add_argument("--steps-per-epoch", type=int, help="iterations per epoch (default: one pass over the larger folder)")
    opt.add_argument("--batch-size", type=int, default=1, help="default: %(default)s")
    opt.add_argument("--crop-size", type=int, default=256, help="random crop side, a multiple of 4 (default: %(default)s)")
    opt.add_argument("--no-flip", action="store_true", help="no random flips")
    opt.add_argument("--lr", type=float, default=2e-4, help="Adam learning rate (default: %(default)s)")
    opt.add_argument("--beta1", type=float, default=0.5, help="default: %(default)s")
    opt.add_argument("--beta2", type=float, default=0.999, help="default: %(default)s")
    opt.add_argument("--lambda-cycle", type=float, default=10.0, help="cycle loss weight (default: %(default)s)")
    opt.add_argument("--lambda-identity", type=float, default=0.5, help="identity weight x lambda-cycle (default: %(default)s)")
    opt.add_argument(
        "--lambda-structure", type=float, default=0.0,
        help="weight of the structure term (local luma correlation of each image and its translation); "
        "5 keeps the tissue's structure (default: %(default)s, CycleGAN's objective)",
    )
    opt.add_argument("--pool-size", type=int, default=50, help="image pool of past fakes (default: %(default)s)")
    opt.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None, help="mixed precision (default: on CUDA)")
    opt.add_argument("--num-workers", type=int, default=0, help="DataLoader workers (default: %(default)s)")
    opt.add_argument("--max-minutes", type=float, help="stop after the epoch that passes this wall time (resumable)")
    p.add_argument("--samples", type=int, default=4, help="images per domain in the per-epoch sample grid (default: %(default)s)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/latest.pt if present")
    p.add_argument("--overwrite", action="store_true", help="replace a model or checkpoint already in --out")
    _add_validation(p, "epochs", 1)
    _add_common(p)
    p.set_defaults(run=run_train_staingan)
    return p


def _add_validation(parser: argparse.ArgumentParser, unit: str, every: int) -> None:
    """The options of the GAN-style trainers' optional paired validation, scored for ``curves.png``."""
    val = parser.add_argument_group("optional paired validation (registered targets of some source images)")
    val.add_argument("--val-source", help="folder of source images with registered targets")
    val.add_argument("--val-target", help="folder of their registered targets (same file names)")
    val.add_argument("--shift-csv", help="CSV with pair,shift_dy,shift_dx rolled into the targets")
    val.add_argument("--border", type=int, default=0, help="pixels cut from every side when scoring (default: %(default)s)")
    val.add_argument("--val-every", type=int, default=every, help=f"score them every this many {unit}, for curves.png (default: %(default)s)")


def _validation_pairs(args: argparse.Namespace) -> Any:
    """The registered pairs of ``--val-source``/``--val-target`` (shifted, border cut), or None."""
    from .datasets import read_shifts
    from .distill import pairs_from_folders

    if bool(args.val_source) != bool(args.val_target):
        raise ValueError("--val-source and --val-target go together")
    if not args.val_source:
        return None
    shifts = read_shifts(args.shift_csv) if args.shift_csv else None
    return pairs_from_folders(args.val_source, args.val_target, shifts=shifts, border=args.border)


def run_train_staingan(args: argparse.Namespace) -> int:
    from .staingan import StainGANConfig, train_staingan

    _check_out(args.out, args.overwrite, resume=args.resume)
    _set_threads(args)
    config = StainGANConfig(
        generator=args.generator, pixel_channels=args.pixel_channels, lambda_structure=args.lambda_structure,
        val_every=args.val_every, ngf=args.ngf, n_blocks=args.n_blocks, ndf=args.ndf, n_layers_d=args.n_layers_d,
        epochs=args.epochs, epochs_decay=args.epochs_decay, steps_per_epoch=args.steps_per_epoch,
        batch_size=args.batch_size, crop_size=args.crop_size, flip=not args.no_flip, lr=args.lr,
        beta1=args.beta1, beta2=args.beta2, lambda_cycle=args.lambda_cycle, lambda_identity=args.lambda_identity,
        pool_size=args.pool_size, seed=args.seed, device=args.device, amp=args.amp, num_workers=args.num_workers,
        n_samples=args.samples, max_seconds=None if args.max_minutes is None else 60 * args.max_minutes,
        progress=not args.no_progress,
    )
    result = train_staingan(
        args.source, args.target, args.out, config, resume=args.resume, validation=_validation_pairs(args),
        card=_card(args) or None,
    )
    summary = result.summary()
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
        return 0
    kind = "StainNet (pixel generator)" if config.generator == "pixel" else "StainGAN"
    print(f"{kind} (source -> target) saved to {result.out_dir}; the inverse generator to {result.out_dir / 'inverse'}")
    print(f"epochs: {result.epochs_done} of {config.total_epochs}, {result.seconds / 60:.1f} min; samples in {result.out_dir / 'samples'}")
    _print_curves(result.out_dir)
    if result.history:
        last = result.history[-1]
        print("last epoch's mean losses: " + ", ".join(f"{k} {last[k]:.3f}" for k in LOSS_KEYS if k in last))
    if result.val_metrics is not None:
        m = result.val_metrics
        print(f"validation: SSIM target {m.ssim_target:.4f}, PSNR target {m.psnr_target:.2f} dB, SSIM source {m.ssim_source:.4f}")
    if result.guided_setting is not None:
        (radius, eps), m = result.guided_setting, result.guided_metrics
        print(f"with the guided filter chosen on them (radius {radius}, eps {eps:g}; StainGANNormalize.from_pretrained "
              f"applies it): SSIM target {m.ssim_target:.4f}, PSNR target {m.psnr_target:.2f} dB, SSIM source {m.ssim_source:.4f}")
    return 0


# -- train-stainnet-unpaired ------------------------------------------------------------------


def add_train_stainnet_unpaired_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``train-stainnet-unpaired`` (a StainNet from two unpaired folders, no teacher) to ``subparsers``.

    Example:
        >>> parser = argparse.ArgumentParser()
        >>> p = add_train_stainnet_unpaired_parser(parser.add_subparsers())
        >>> parser.parse_args(["train-stainnet-unpaired", "--source", "a", "--target", "b", "--out", "c"]).steps
        2000
    """
    p = subparsers.add_parser(
        "train-stainnet-unpaired",
        help="train a StainNet on two unpaired folders, with no teacher (colour-distribution matching)",
        description="Train a StainNet that maps the colour distribution of the source folder onto that of the "
        "target folder (sliced Wasserstein distance plus a cycle term through an inverse StainNet). No teacher, "
        "no registered pairs; about a minute on one CPU thread.",
    )
    p.add_argument("--source", required=True, help="folder of source-domain images (the ones to normalize)")
    p.add_argument("--target", required=True, help="folder of target-domain images (not registered to the sources)")
    p.add_argument("--out", required=True, help="output folder: the model, inverse/, curves.png, training_log.json")
    p.add_argument("--overwrite", action="store_true", help="replace a model already in --out")
    opt = p.add_argument_group("optimisation")
    opt.add_argument("--steps", type=int, default=UNPAIRED.steps, help="default: %(default)s")
    opt.add_argument("--pixel-batch", type=int, default=UNPAIRED.pixel_batch, help="pixels drawn from each folder per step (default: %(default)s)")
    opt.add_argument("--projections", type=int, default=UNPAIRED.projections, help="random directions per step (default: %(default)s)")
    opt.add_argument("--lr", type=float, default=UNPAIRED.lr, help="peak Adam learning rate (default: %(default)s)")
    opt.add_argument("--lambda-cycle", type=float, default=UNPAIRED.lambda_cycle, help="cycle term weight (default: %(default)s)")
    opt.add_argument("--n-layer", type=int, default=UNPAIRED.n_layer, help="StainNet layers (default: %(default)s)")
    opt.add_argument("--n-channel", type=int, default=UNPAIRED.n_channel, help="StainNet width (default: %(default)s)")
    _add_validation(p, "steps", UNPAIRED.val_every)
    _add_common(p)
    p.set_defaults(run=run_train_stainnet_unpaired)
    return p


def run_train_stainnet_unpaired(args: argparse.Namespace) -> int:
    from ..files import read_rgb
    from .unpaired import train_stainnet_unpaired

    _check_out(args.out, args.overwrite)
    _set_threads(args)
    config = UnpairedStainNetConfig(
        steps=args.steps, pixel_batch=args.pixel_batch, projections=args.projections, lr=args.lr,
        lambda_cycle=args.lambda_cycle, n_layer=args.n_layer, n_channel=args.n_channel, seed=args.seed,
        device=args.device, val_every=args.val_every, progress=not args.no_progress,
    )
    images = {flag: [read_rgb(p) for p in list_images(folder)] for flag, folder in (("--source", args.source), ("--target", args.target))}
    card = {
        "training_data": f"{len(images['--source'])} source images from {args.source} and {len(images['--target'])} "
        f"unpaired target images from {args.target}.",
        **_card(args),
    }
    result = train_stainnet_unpaired(images["--source"], images["--target"], config, _validation_pairs(args), args.out, card)
    if args.json:
        print(json.dumps(result.summary(), indent=2, default=str))
        return 0
    print(f"StainNet saved to {result.out_dir} ({result.seconds:.1f} s); the inverse to {Path(args.out) / 'inverse'}")
    _print_curves(Path(args.out))
    if result.val_metrics is not None:
        m = result.val_metrics
        print(f"validation: SSIM target {m.ssim_target:.4f}, PSNR target {m.psnr_target:.2f} dB, SSIM source {m.ssim_source:.4f}")
    return 0


# -- distill ----------------------------------------------------------------------------------


def load_teacher(spec: str, references: list[str] | None = None, device: str | torch.device = "cpu") -> Any:
    """A teacher from a command-line name or path.

    - ``reinhard``, ``macenko``, ``vahadane``: the classical normalizer fitted on ``references``;
    - a ``.safetensors`` file written by a normalizer's ``save``;
    - a ``.pth`` CycleGAN generator checkpoint (``latest_net_G_A.pth``) or official StainNet checkpoint;
    - a ``save_pretrained`` folder, a bundled weights name, or a Hub id of a StainGAN or StainNet
      (a StainGAN comes wrapped in ``StainGANNormalize``, which tiles large images).

    Example:
        >>> type(load_teacher("staingan-mitos-aperio-to-hamamatsu")).__name__
        'StainGANNormalize'
    """
    from ..models import StainGANGenerator, StainNet
    from ..normalizers import StainGANNormalize, StainNormalizer

    if spec in CLASSICAL_TEACHERS:
        return build_normalizer(spec, references, None, str(device))
    path = Path(spec)
    if path.is_file() and path.suffix == ".safetensors":
        return StainNormalizer.load(path).to(device)
    if path.is_file() and path.suffix in (".pth", ".pt"):
        try:
            model = StainGANGenerator.from_cyclegan_checkpoint(path)
        except ValueError:
            model = StainNet.from_official_checkpoint(path)
    else:
        from ..hub import load_model

        model = load_model(spec)
    if isinstance(model, StainGANGenerator):
        # As users apply it: large images in blended tiles, blank images passed through.
        return StainGANNormalize(model).to(device)
    return model.to(device)


def add_distill_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``distill`` (train a StainNet from a teacher) to ``subparsers``.

    Example:
        >>> parser = argparse.ArgumentParser()
        >>> p = add_distill_parser(parser.add_subparsers())
        >>> parser.parse_args(["distill", "--source", "a", "--targets", "b", "--out", "c"]).recipe
        'fast'
    """
    p = subparsers.add_parser(
        "distill",
        help="distil a StainNet from a teacher (StainGAN, normalizer, teacher outputs or registered targets)",
        description="Train a StainNet on (source, teacher) pairs, keeping the checkpoint with the best "
        "validation PSNR. The default 'fast' recipe samples colour pairs (seconds on a CPU); "
        "'--recipe paper' is the paper's SGD recipe on image crops.",
    )
    p.add_argument("--source", required=True, help="folder of source-domain images")
    p.add_argument(
        "--teacher", metavar="NAME_OR_PATH",
        help="applied to the sources on the fly: reinhard/macenko/vahadane (with --reference), a saved normalizer "
        "(.safetensors), a StainGAN or StainNet folder, .pth checkpoint, bundled name or Hub id",
    )
    p.add_argument("--teacher-outputs", metavar="DIR", help="folder of the teacher's outputs, same file names as --source")
    p.add_argument(
        "--targets", metavar="DIR",
        help="folder of registered target images, same file names (paired supervision); may be combined with "
        "--teacher-outputs, which gives each source image both as targets",
    )
    p.add_argument("--reference", nargs="+", metavar="PATH", help="target-domain images or folders to fit a classical --teacher on")
    p.add_argument("--shift-csv", help="with --targets: CSV with pair,shift_dy,shift_dx rolled into the targets")
    p.add_argument("--border", type=int, default=0, help="pixels cut from every side of both images (default: %(default)s)")
    p.add_argument(
        "--out", required=True,
        help="output folder: the model (save_pretrained: config.json, model.safetensors, README.md), curves.png, checkpoints/",
    )
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/latest.pt if present")
    p.add_argument("--overwrite", action="store_true", help="replace a model or checkpoint already in --out")
    p.add_argument("--recipe", choices=("fast", "paper"), default="fast", help="default: %(default)s")
    p.add_argument("--n-layer", type=int, default=3, help="StainNet layers (default: %(default)s)")
    p.add_argument("--n-channel", type=int, default=32, help="StainNet width (default: %(default)s)")
    split = p.add_argument_group("validation split (for the best-PSNR checkpoint)")
    split.add_argument("--val-fraction", type=float, default=0.2, help="random fraction held out (default: %(default)s)")
    split.add_argument("--val-groups", nargs="+", metavar="GROUP", help="hold out these groups (e.g. slides) instead")
    split.add_argument("--group-pattern", help=r"regex whose group 1 is a file's group, e.g. 'frame(\d+)'")
    split.add_argument(
        "--val-ssim", action=argparse.BooleanOptionalAction, default=None,
        help="score both SSIMs at every validation, not only PSNR (default: while the validation images total at most 4 Mpx)",
    )
    paper = p.add_argument_group("paper recipe")
    paper.add_argument("--epochs", type=int, default=300, help="default: %(default)s")
    paper.add_argument("--batch-size", type=int, default=10, help="default: %(default)s")
    paper.add_argument("--lr", type=float, default=0.01, help="SGD learning rate (default: %(default)s)")
    paper.add_argument("--crop-size", type=int, default=256, help="default: %(default)s")
    fast = p.add_argument_group("fast recipe")
    fast.add_argument("--steps", type=int, default=1500, help="default: %(default)s")
    fast.add_argument("--pixel-batch", type=int, default=8192, help="colour pairs per step (default: %(default)s)")
    fast.add_argument("--fast-lr", type=float, default=0.01, help="peak Adam learning rate (default: %(default)s)")
    p.add_argument("--max-seconds", type=float, help="stop training after this wall time (best checkpoint kept; resumable)")
    _add_common(p)
    p.set_defaults(run=run_distill)
    return p


def run_distill(args: argparse.Namespace) -> int:
    from .datasets import read_shifts, split_names
    from .distill import DistillConfig, PairSet, default_device, distill, pairs_from_folders, pairs_from_teacher

    _check_out(args.out, args.overwrite, resume=args.resume)
    _set_threads(args)
    if bool(args.teacher) == bool(args.teacher_outputs or args.targets):
        raise ValueError("give either --teacher, or --teacher-outputs and/or --targets")
    if args.shift_csv and not args.targets:
        raise ValueError("--shift-csv applies to --targets only")
    config = DistillConfig(
        recipe=args.recipe, n_layer=args.n_layer, n_channel=args.n_channel, seed=args.seed, device=args.device,
        max_seconds=args.max_seconds, progress=not args.no_progress, val_ssim=args.val_ssim, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, crop_size=args.crop_size, steps=args.steps, pixel_batch=args.pixel_batch,
        fast_lr=args.fast_lr,
    )
    device = default_device(args.device)
    names = [p.name for p in list_images(args.source)]
    train_names, val_names = split_names(names, args.val_fraction, args.seed, args.val_groups, args.group_pattern)
    parts: dict[str, PairSet] = {}
    if args.teacher:
        teacher = load_teacher(args.teacher, args.reference, device)
        parts["teacher"] = pairs_from_teacher(args.source, teacher, names, args.border, device, progress=not args.no_progress)
        described = [f"teacher {args.teacher} applied to the sources"]
    else:
        described = []
        if args.teacher_outputs:
            parts["teacher-outputs"] = pairs_from_folders(args.source, args.teacher_outputs, names, border=args.border)
            described.append(f"teacher outputs in {args.teacher_outputs}")
        if args.targets:
            shifts = read_shifts(args.shift_csv) if args.shift_csv else None
            parts["targets"] = pairs_from_folders(args.source, args.targets, names, shifts, args.border)
            described.append(f"registered targets in {args.targets}")
    # Split by source image, so that an image's pairs (one per kind of supervision) stay on one side.
    train = PairSet.concat(parts, train_names)
    val = PairSet.concat(parts, val_names) if val_names else None
    card = {"training_data": f"{len(train_names)} source images from {args.source}; {' and '.join(described)}.", **_card(args)}
    result = distill(train, val, config, args.out, card, resume=args.resume)
    if args.json:
        print(json.dumps(result.summary(), indent=2, default=str))
        return 0
    print(f"StainNet saved to {result.out_dir} ({args.recipe} recipe, {result.seconds:.1f} s)")
    if result.curves is not None:
        print(f"validation curves: {result.curves}")
    if result.val_metrics is not None:
        m = result.val_metrics
        print(
            f"validation ({len(val_names)} images, against the teacher): PSNR {m.psnr_target:.2f} dB, "
            f"SSIM target {m.ssim_target:.4f}, SSIM source {m.ssim_source:.4f}"
        )
    else:
        print(f"no validation split; PSNR against the teacher on the training images: {result.best_psnr:.2f} dB")
    return 0
