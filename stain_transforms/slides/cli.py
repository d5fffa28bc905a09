"""``stain-transforms normalize-slide``: normalize a whole slide into a new pyramidal tiled TIFF.

Example:
    >>> import argparse
    >>> parser = argparse.ArgumentParser(); commands = parser.add_subparsers()
    >>> _ = add_normalize_slide_parser(commands)
    >>> args = parser.parse_args(["normalize-slide", "a.svs", "out.tiff", "--method", "macenko", "--reference", "refs/"])
    >>> args.slide, args.output, args.method, args.reference, args.tile_size, args.compression
    ('a.svs', 'out.tiff', 'macenko', ['refs/'], 512, 'jpeg')
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from ..registry import FITTED, LEARNED, build_normalizer, methods
from .fit import fit_slide, sample_tiles
from .reader import open_slide
from .statistics import SlideStatistics
from .writer import COMPRESSIONS, normalize_slide


def run_normalize_slide(args: argparse.Namespace) -> int:
    """Run ``normalize-slide`` on parsed arguments; prints what was written and returns 0.

    Example:
        >>> import argparse, tempfile
        >>> from pathlib import Path
        >>> from stain_transforms.files import write_image_atomic
        >>> from stain_transforms.testing import synthetic_tissue
        >>> from stain_transforms.slides.testing import write_synthetic_slide
        >>> folder = Path(tempfile.mkdtemp())
        >>> slide = write_synthetic_slide(folder / "slide.tiff", width=512, height=512, stain_scale=1.3)
        >>> write_image_atomic(synthetic_tissue(128, seed=0), folder / "reference.png")
        >>> parser = argparse.ArgumentParser(); commands = parser.add_subparsers()
        >>> _ = add_normalize_slide_parser(commands)
        >>> args = parser.parse_args(["normalize-slide", str(slide), str(folder / "out.tiff"), "--method", "reinhard",
        ...                           "--reference", str(folder / "reference.png"), "--tile-size", "256", "--no-progress"])
        >>> run_normalize_slide(args)  # doctest: +ELLIPSIS
        wrote .../out.tiff: 512 x 512, 2 level(s), reinhard with the slide's statistics (... Mpx/s)
        0
    """
    slide = open_slide(args.slide, backend=args.backend)
    progress = not args.no_progress
    if args.reference_slide:
        if args.method not in methods(FITTED):
            raise ValueError(f"--reference-slide is for the fitted methods ({', '.join(methods(FITTED))})")
        from ..registry import method

        normalizer = method(args.method).transform_class()
        normalizer.fit(sample_tiles(args.reference_slide, args.fit_tiles, 512, 0), progress=progress)
        normalizer = normalizer.to(args.device)
    else:
        normalizer = build_normalizer(args.method, args.reference, args.weights, args.device)
    source: Any = None
    context = args.method in methods(FITTED) and not args.per_tile
    if context:
        if args.source_statistics:
            source = SlideStatistics.load(args.source_statistics)
        else:
            source = fit_slide(slide, normalizer, n_tiles=args.fit_tiles, level=args.level, progress=progress)
        if args.save_statistics:
            source.save(args.save_statistics)
    start = time.perf_counter()
    out = normalize_slide(
        slide, args.output, normalizer, source=source, level=args.level, tile_size=args.tile_size,
        compression=args.compression, quality=args.quality, overwrite=args.overwrite, device=args.device,
        progress=progress,
    )
    seconds = time.perf_counter() - start
    width, height = slide.level_dimensions[args.level]
    written = open_slide(out)
    how = "with the slide's statistics" if context else "per tile"
    print(
        f"wrote {out}: {written.dimensions[0]} x {written.dimensions[1]}, {written.level_count} level(s), "
        f"{args.method} {how} ({width * height / 1e6 / seconds:.1f} Mpx/s)"
    )
    return 0


def add_normalize_slide_parser(commands: Any) -> argparse.ArgumentParser:
    """Add ``normalize-slide`` to the ``stain-transforms`` subcommands; returns its parser.

    Example:
        >>> import argparse
        >>> parser = argparse.ArgumentParser(); commands = parser.add_subparsers()
        >>> add_normalize_slide_parser(commands).prog.endswith("normalize-slide")
        True
    """
    parser = commands.add_parser(
        "normalize-slide",
        help="normalize a whole-slide image into a new pyramidal tiled TIFF (needs the [slides] extra)",
        description="Normalize a whole slide tile by tile into a pyramidal tiled TIFF that tiffslide, OpenSlide and "
        "QuPath open. The fitted methods use the slide's own statistics for every tile (one colour map, no seams).",
    )
    parser.add_argument("slide", help="the slide (.svs, .tif/.tiff, .ndpi, ...)")
    parser.add_argument("output", help="the pyramidal .tiff to write")
    parser.add_argument("--method", required=True, choices=methods(FITTED) + methods(LEARNED))
    parser.add_argument("--reference", nargs="+", metavar="PATH", help="target-domain image(s) or folder(s) (fitted methods)")
    parser.add_argument("--reference-slide", metavar="SLIDE", help="fit the target on tissue tiles of this slide instead")
    parser.add_argument("--weights", metavar="NAME_OR_PATH", help="bundled name, local folder or Hub id (stainnet, staingan)")
    parser.add_argument("--level", type=int, default=0, help="slide level to normalize (default: %(default)s)")
    parser.add_argument("--tile-size", type=int, default=512, help="output tile side, a multiple of 16 (default: %(default)s)")
    parser.add_argument("--compression", choices=COMPRESSIONS, default="jpeg", help="default: %(default)s")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality (default: %(default)s)")
    parser.add_argument("--fit-tiles", type=int, default=64, help="tissue tiles the slide's statistics are measured on")
    parser.add_argument("--per-tile", action="store_true", help="estimate each tile's own statistics (seams; for comparison)")
    parser.add_argument("--source-statistics", metavar="FILE", help="the slide's statistics, saved by --save-statistics")
    parser.add_argument("--save-statistics", metavar="FILE", help="also write the slide's statistics (.safetensors)")
    parser.add_argument("--backend", choices=("auto", "tiffslide", "openslide"), default="auto", help="slide reader")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace the output file if it exists")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(run=run_normalize_slide)
    return parser
