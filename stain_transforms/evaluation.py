"""Scoring a folder of normalized images against sources and targets with the paper's metrics."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .files import list_images, read_rgb
from .metrics import Fidelity, crop_border, fidelity, mean_fidelity


def read_shifts(csv_path: str | Path) -> dict[str, tuple[int, int]]:
    """Per-file (dy, dx) registration shifts from a CSV with columns ``pair,shift_dy,shift_dx``.

    Raises:
        ValueError: if a column is missing.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "pairs.csv"
        >>> _ = path.write_text("pair,shift_dy,shift_dx,note\\nframe03_0.png,2,-1,x\\n")
        >>> read_shifts(path)
        {'frame03_0.png': (2, -1)}
    """
    with open(csv_path, newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {"pair", "shift_dy", "shift_dx"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{csv_path} lacks the column(s) {', '.join(sorted(missing))}")
        return {row["pair"]: (int(row["shift_dy"]), int(row["shift_dx"])) for row in reader}


@dataclass
class EvaluationResult:
    """Mean metrics over the matched files, and each file's own.

    Example:
        >>> result = EvaluationResult(Fidelity(0.7, 22.0, 0.95), {"a.png": Fidelity(0.7, 22.0, 0.95)})
        >>> result.as_dict()["n"], result.as_dict()["psnr_target"]
        (1, 22.0)
    """

    mean: Fidelity
    per_file: dict[str, Fidelity]

    def as_dict(self) -> dict:
        """``n``, the mean metrics, and ``per_file``: {file name: metrics}, as plain dicts."""
        return {"n": len(self.per_file), **self.mean.as_dict(), "per_file": {k: v.as_dict() for k, v in self.per_file.items()}}


def evaluate_folders(
    source: str | Path,
    target: str | Path,
    normalized: str | Path,
    shift_csv: str | Path | None = None,
    crop: int = 0,
    progress: bool = True,
) -> EvaluationResult:
    """Paper metrics averaged over files whose names appear in all three folders.

    The target is rolled by its registration shift (``np.roll(target, (dy, dx), axis=(0, 1))``) when
    ``shift_csv`` is given, and ``crop`` pixels are dropped on every side of all three images.

    Raises:
        ValueError: when the folders share no file names, or images of a pair differ in size.

    Example:
        >>> import tempfile
        >>> from .files import write_image_atomic
        >>> from .testing import synthetic_tissue
        >>> root = Path(tempfile.mkdtemp())
        >>> source, target = synthetic_tissue(64, seed=0), synthetic_tissue(64, seed=0, stain_scale=1.2)
        >>> for folder, image in [("src", source), ("tgt", target), ("out", source)]:  # "out": unnormalized
        ...     write_image_atomic(image, root / folder / "tile.png")
        >>> result = evaluate_folders(root / "src", root / "tgt", root / "out", progress=False)
        >>> len(result.per_file), result.mean.ssim_source, result.mean.psnr_target < 30
        (1, 1.0, True)
    """
    shifts = read_shifts(shift_csv) if shift_csv else {}
    names = sorted(
        {p.name for p in list_images(source)} & {p.name for p in list_images(target)} & {p.name for p in list_images(normalized)}
    )
    if not names:
        raise ValueError(f"{source}, {target} and {normalized} have no file names in common")
    per_file = {}
    for name in tqdm(names, desc="evaluate", disable=not progress):
        src, tgt, out = (read_rgb(Path(folder) / name) for folder in (source, target, normalized))
        if name in shifts:
            tgt = np.roll(tgt, shifts[name], axis=(0, 1))
        per_file[name] = fidelity(crop_border(out, crop), crop_border(tgt, crop), crop_border(src, crop))
    return EvaluationResult(mean_fidelity(list(per_file.values())), per_file)
