"""Reading a labelled image collection, and splitting it for the study.

Three input layouts are accepted (``--data PATH``):

- a folder with ``labels.csv`` (as ``cervical_lbc_256``): columns ``file`` (relative to the folder),
  the target column (``--target``, default ``abnormal`` when present, else ``label``) and,
  optionally, ``split`` (``train`` / ``test``);
- a CSV file with the same columns, ``file`` relative to the CSV's folder;
- an ImageFolder: ``PATH/train/<class>/*.png`` and ``PATH/test/<class>/*.png``, or just
  ``PATH/<class>/*.png``.

Collections without a train/test split get a stratified random one (``test_fraction``).
"""

from __future__ import annotations

import csv
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from stain_transforms.files import IMAGE_SUFFIXES, read_rgb


@dataclass(frozen=True)
class Record:
    """One labelled image: its file, its class name, and its split (``train``, ``test`` or ``""``)."""

    path: Path
    label: str
    split: str = ""


def _from_csv(csv_path: Path, target: str | None) -> list[Record]:
    with open(csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise ValueError(f"{csv_path} has no rows")
    columns = rows[0].keys()
    if target is None:
        target = "abnormal" if "abnormal" in columns else "label"
    missing = {"file", target} - set(columns)
    if missing:
        raise ValueError(f"{csv_path} lacks column(s) {sorted(missing)}; it has {sorted(columns)}")
    root = csv_path.parent
    return [Record(root / row["file"], str(row[target]).strip(), (row.get("split") or "").strip()) for row in rows]


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _from_image_folder(root: Path) -> list[Record]:
    split_dirs = [root / name for name in ("train", "test") if (root / name).is_dir()]
    records = []
    for split_dir in split_dirs or [root]:
        split = split_dir.name if split_dirs else ""
        for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            records += [Record(path, class_dir.name, split) for path in _images_in(class_dir)]
    if not records:
        raise ValueError(f"no images found in {root}: expected {root}/<class>/*.png or {root}/train/<class>/*.png")
    return records


def read_records(data: str | Path, target: str | None = None) -> list[Record]:
    """All labelled images of ``data`` (a folder with ``labels.csv``, a CSV file, or an ImageFolder)."""
    data = Path(data)
    if data.is_file() and data.suffix.lower() == ".csv":
        records = _from_csv(data, target)
    elif (data / "labels.csv").is_file():
        records = _from_csv(data / "labels.csv", target)
    elif data.is_dir():
        records = _from_image_folder(data)
    else:
        raise ValueError(f"--data {data} is neither a folder nor a .csv file")
    absent = [r.path for r in records if not r.path.is_file()]
    if absent:
        raise ValueError(f"{len(absent)} listed image(s) do not exist, e.g. {absent[0]}")
    if len({r.label for r in records}) < 2:
        raise ValueError(f"{data} has a single class; a classifier needs at least two")
    return records


def stratified_split(records: list[Record], fraction: float, seed: int) -> tuple[list[Record], list[Record]]:
    """Split off about ``fraction`` of each class (at least one image per class): (rest, split_off)."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    by_class: dict[str, list[Record]] = defaultdict(list)
    for record in records:
        by_class[record.label].append(record)
    rng = random.Random(seed)
    rest, split_off = [], []
    for label in sorted(by_class):
        members = sorted(by_class[label], key=lambda r: str(r.path))
        rng.shuffle(members)
        count = min(len(members) - 1, max(1, round(fraction * len(members))))
        split_off += members[:count]
        rest += members[count:]
    return rest, split_off


@dataclass
class Splits:
    """The study's four sets of images (see the README): all at site A, as read from disk."""

    train: list[Record]  # the classifier's training set
    validation: list[Record]  # held out of the training split: checkpoint choice (site A, labelled)
    site_b_pool: list[Record]  # the same held-out images, to be shifted to site B: normalizer training, unlabelled
    test: list[Record]  # the test split, shifted to site B for the main evaluation
    classes: list[str]


def make_splits(records: list[Record], holdout: float, test_fraction: float, seed: int) -> Splits:
    """Train / held-out / test; the held-out part is both the validation set and the site-B pool."""
    train = [r for r in records if r.split == "train"]
    test = [r for r in records if r.split == "test"]
    if not train or not test:
        train, test = stratified_split(records, test_fraction, seed)
    train, held_out = stratified_split(train, holdout, seed + 1)
    classes = sorted({r.label for r in records})
    return Splits(train, held_out, held_out, test, classes)


def load_images(records: list[Record]) -> list[np.ndarray]:
    """The images of ``records`` as HWC uint8 RGB arrays, at their own resolution."""
    return [read_rgb(r.path) for r in records]


def to_tensor_stack(images: list[np.ndarray] | list[torch.Tensor], size: int) -> torch.Tensor:
    """Resize every image to ``size`` x ``size`` (antialiased) and stack them: (N, 3, size, size) uint8."""
    out = torch.empty(len(images), 3, size, size, dtype=torch.uint8)
    for i, image in enumerate(images):
        x = image if isinstance(image, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(image).copy()).permute(2, 0, 1)
        x = x[None].float()
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[i] = x[0].round().clamp(0, 255).to(torch.uint8)
    return out
