"""Command line: ``stain-transforms {demo,normalize,evaluate,weights,...}`` (also ``python -m stain_transforms``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .files import write_image_atomic  # noqa: F401 - the doctests use it
from .registry import FITTED, LEARNED, build_normalizer, methods

# The --method choices, from the registry's table (build_normalizer lives there too; importable from here as before).
CLASSICAL_METHODS = methods(FITTED)
LEARNED_METHODS = methods(LEARNED)


def _plan_outputs(
    input_path: Path | str, output_path: Path | str, recursive: bool = False, format: str | None = None
) -> list[tuple[Path, Path]]:
    # The (input, output) pairs of `normalize`; the rules live in stain_transforms.folders.plan_outputs.
    from .folders import plan_outputs

    return plan_outputs(input_path, output_path, recursive=recursive, format=format)


def _split_input_output(args: argparse.Namespace) -> tuple[Path, Path]:
    # `--reference A B INPUT OUTPUT`: argparse gives all four to --reference, so take the last two back.
    paths, references = list(args.paths), list(args.reference or [])
    while len(paths) < 2 and references:
        paths.insert(0, references.pop())
    if len(paths) != 2:
        raise ValueError("normalize takes exactly two paths: INPUT and OUTPUT")
    args.reference = references
    args.paths = paths  # as typed: a trailing "/" makes the output a folder
    return Path(paths[0]), Path(paths[1])


def run_normalize(args: argparse.Namespace) -> int:
    """``stain-transforms normalize``: returns 0, or 1 when some images failed (they are listed and skipped).

    Example:
        >>> import tempfile
        >>> from .testing import synthetic_tissue
        >>> root = Path(tempfile.mkdtemp())
        >>> for name, seed in [("refs/r.png", 0), ("in/a.png", 1), ("in/b.png", 2)]:
        ...     write_image_atomic(synthetic_tissue(64, seed=seed), root / name)
        >>> args = build_parser().parse_args(
        ...     ["normalize", "--method", "reinhard", "--reference", str(root / "refs"), str(root / "in"), str(root / "out")]
        ... )
        >>> run_normalize(args)  # doctest: +ELLIPSIS
        normalized 2 of 2 image(s) with reinhard into .../out
        0
    """
    from .folders import check_existing, ignored_options, normalize_pairs

    input_path, output_path = _split_input_output(args)
    pairs = _plan_outputs(input_path, args.paths[1], recursive=args.recursive, format=args.format)
    outputs = [destination for _, destination in pairs]
    for message in ignored_options(
        args.method, args.reference, args.weights, jpeg_quality=args.jpeg_quality, outputs=outputs, cli=True
    ):
        print(f"warning: {message}", file=sys.stderr)
    if getattr(args, "engine", "local") == "ray" or getattr(args, "resume", False):  # stain_transforms.archive
        from .archive import run_archive

        return run_archive(args, pairs, output_path)
    check_existing(pairs, args.overwrite)
    normalizer = build_normalizer(args.method, args.reference, args.weights, args.device)
    result = normalize_pairs(normalizer, pairs, device=args.device, overwrite=args.overwrite, jpeg_quality=args.jpeg_quality)
    print(f"normalized {len(result.written)} of {len(pairs)} image(s) with {args.method} into {output_path}")
    if result.failures:
        print(f"{len(result.failures)} image(s) failed:", *result.failures, sep="\n  ", file=sys.stderr)
        return 1
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    """``stain-transforms evaluate``: prints the paper's mean metrics (or JSON) and returns 0.

    Example:
        >>> import tempfile
        >>> from .testing import synthetic_tissue
        >>> root = Path(tempfile.mkdtemp())
        >>> for folder, stain_scale in [("src", 1.0), ("tgt", 1.2), ("out", 1.1)]:
        ...     write_image_atomic(synthetic_tissue(64, seed=0, stain_scale=stain_scale), root / folder / "a.png")
        >>> folders = ["--source", str(root / "src"), "--target", str(root / "tgt"), "--normalized", str(root / "out")]
        >>> run_evaluate(build_parser().parse_args(["evaluate", *folders, "--json"]))  # doctest: +ELLIPSIS
        {
          "n": 1,
          "ssim_target": 0.9...,
          "psnr_target": ...,
          "ssim_source": 0.9...
        }
        0
    """
    from .evaluation import evaluate_folders

    result = evaluate_folders(args.source, args.target, args.normalized, args.shift_csv, args.crop, progress=not args.json)
    if args.json:
        print(json.dumps(result.as_dict() if args.per_file else {k: v for k, v in result.as_dict().items() if k != "per_file"}, indent=2))
    else:
        mean = result.mean
        print(f"images: {len(result.per_file)}")
        print(f"SSIM target: {mean.ssim_target:.4f}\nPSNR target: {mean.psnr_target:.2f} dB\nSSIM source: {mean.ssim_source:.4f}")
    return 0


def run_weights(args: argparse.Namespace) -> int:
    """``stain-transforms weights``: a summary of each registered model (``--json``: the entries with their cards).

    Example:
        >>> import contextlib, io
        >>> from .hub import list_weights
        >>> with contextlib.redirect_stdout(io.StringIO()) as printed:
        ...     status = run_weights(build_parser().parse_args(["weights"]))
        >>> status, all(entry["name"] in printed.getvalue() for entry in list_weights())
        (0, True)
    """
    from .hub import list_weights

    entries = list_weights()
    if args.json:
        print(json.dumps(entries, indent=2))
        return 0
    if not entries:
        print("no registered weights")
    for entry in entries:
        where = "bundled" if entry["bundled"] else "downloaded from the Hub on first use"
        print(f"{entry['name']} ({entry['kind']}, {where})")
        if entry.get("description"):
            print(f"  {entry['description']}")
        print(f"  source domain: {entry['source_domain']}\n  target domain: {entry['target_domain']}")
        print(f"  training data: {entry['training_data']}\n  Hub: {entry['repo_id']}\n")
    if entries:
        print("The full model cards: stain-transforms weights --json")
    return 0


def run_demo(args: argparse.Namespace) -> int:
    """``stain-transforms demo``: writes the before/after PNG of :func:`stain_transforms.demo.run_demo`; returns 0.

    Example:
        >>> args = build_parser().parse_args(["demo"])
        >>> args.run is run_demo, args.out
        (True, 'stain_transforms_demo.png')
    """
    from .demo import run_demo as demo

    path = demo(args.out, overwrite=args.overwrite)
    print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``stain-transforms`` argument parser; each subcommand sets ``run``, a function of the parsed arguments.

    Example:
        >>> args = build_parser().parse_args(["normalize", "--method", "stainnet", "--weights", "w", "in", "out"])
        >>> args.method, args.weights, args.paths, args.device
        ('stainnet', 'w', ['in', 'out'], 'cpu')
    """
    parser = argparse.ArgumentParser(prog="stain-transforms", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="normalize built-in images with every method and write a before/after PNG")
    demo.add_argument("--out", default="stain_transforms_demo.png", help="PNG to write (default: %(default)s)")
    demo.add_argument("--overwrite", action="store_true", help="replace the PNG if it exists")
    demo.set_defaults(run=run_demo)

    normalize = commands.add_parser("normalize", help="normalize an image or a folder of images")
    normalize.add_argument("--method", required=True, choices=CLASSICAL_METHODS + LEARNED_METHODS)
    normalize.add_argument("--reference", nargs="+", metavar="PATH", help="target-domain image(s) or folder(s) to fit on (classical methods)")
    normalize.add_argument("--weights", metavar="NAME_OR_PATH", help="bundled name, local folder or Hub id (stainnet, staingan)")
    normalize.add_argument("--device", default="cpu", help="torch device, e.g. cuda (default: %(default)s)")
    normalize.add_argument("--overwrite", action="store_true", help="replace existing output files")
    normalize.add_argument(
        "--recursive", action="store_true",
        help="also normalize the images in the input folder's subfolders, keeping the subfolders (e.g. classes) in the output",
    )
    normalize.add_argument("--format", choices=("png", "jpg", "jpeg", "tif", "tiff", "bmp", "webp"), help="output format (default: each input's own)")
    normalize.add_argument("--jpeg-quality", type=int, metavar="1-100", help="quality of JPEG and WebP outputs (default: 95)")
    normalize.add_argument("paths", nargs="*", metavar="INPUT OUTPUT", help="image file or folder, then the output file or folder (names are kept)")
    normalize.set_defaults(run=run_normalize)
    from .archive import add_engine_arguments  # --engine ray, --resume: normalizing an archive

    add_engine_arguments(normalize)

    evaluate = commands.add_parser("evaluate", help="the StainNet paper's SSIM/PSNR metrics over matching file names")
    evaluate.add_argument("--source", required=True, help="folder of original (unnormalized) images")
    evaluate.add_argument("--target", required=True, help="folder of registered target-domain images")
    evaluate.add_argument("--normalized", required=True, help="folder of normalized images")
    evaluate.add_argument("--shift-csv", help="CSV with pair,shift_dy,shift_dx; the target is np.roll-ed by it")
    evaluate.add_argument("--crop", type=int, default=0, help="pixels dropped on every side before scoring")
    evaluate.add_argument("--json", action="store_true", help="print JSON")
    evaluate.add_argument("--per-file", action="store_true", help="with --json, include every file's metrics")
    evaluate.set_defaults(run=run_evaluate)

    weights = commands.add_parser("weights", help="list the registered pretrained weights (--json: with their model cards)")
    weights.add_argument("--json", action="store_true", help="print the registry entries as JSON")
    weights.set_defaults(run=run_weights)

    try:
        from .training.cli import add_distill_parser, add_train_staingan_parser, add_train_stainnet_unpaired_parser
    except ImportError:  # the trainer is part of the package; this only guards partial installs
        pass
    else:
        add_train_staingan_parser(commands)
        add_train_stainnet_unpaired_parser(commands)
        add_distill_parser(commands)
    from .slides.cli import add_normalize_slide_parser  # reads slides only when run (the [slides] extra)

    add_normalize_slide_parser(commands)
    from .export import add_export_parser

    add_export_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line on ``argv`` (default: ``sys.argv[1:]``); returns the exit status.

    Errors a user can fix (bad paths, missing options, existing outputs) print one ``error:`` line
    and return 2, instead of a traceback.

    Example:
        >>> import contextlib, io
        >>> with contextlib.redirect_stderr(io.StringIO()) as err:
        ...     status = main(["normalize", "--method", "macenko", "missing_input", "out"])
        >>> status, err.getvalue().strip()
        (2, 'error: input missing_input does not exist')
    """
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, OSError) as error:  # OSError: files that exist or don't, permissions, no network
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
