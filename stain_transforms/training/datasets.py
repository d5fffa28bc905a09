"""Datasets of image folders for the trainers: unpaired (CycleGAN) and paired by file name (distillation).

Images are read once and kept in memory as uint8 (the folders a stain model trains on are small).
Random crops and flips draw from torch's global random number generator, so ``torch.manual_seed``
makes an epoch reproducible and a saved RNG state resumes it exactly.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..evaluation import read_shifts
from ..files import list_images, read_rgb

__all__ = [
    "ImageCache",
    "PairedImageDataset",
    "UnpairedImageDataset",
    "group_of",
    "random_crop_flip",
    "read_shifts",
    "split_names",
    "to_tensor",
    "to_uint8",
]


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """HWC uint8 array -> CHW float32 tensor in [0, 1].

    Example:
        >>> to_tensor(np.full((2, 2, 3), 255, np.uint8)).shape
        torch.Size([3, 2, 2])
    """
    return torch.tensor(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)


def to_uint8(batch: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) or (3, H, W) float tensor in [0, 1] -> (B, H, W, 3) or (H, W, 3) uint8 array, rounded.

    Example:
        >>> to_uint8(torch.full((3, 1, 2), 0.5)).tolist()
        [[[128, 128, 128], [128, 128, 128]]]
    """
    out = batch.detach().float().clamp(0.0, 1.0).mul(255.0).round_().to(torch.uint8).cpu()
    return out.movedim(-3, -1).numpy()


def random_crop_flip(
    images: Sequence[np.ndarray], crop_size: int | None, flip: bool
) -> list[np.ndarray]:
    """Cut the same random ``crop_size`` square from each image and apply the same random flips.

    ``crop_size=None`` keeps the whole image. Draws from torch's global generator.

    Raises:
        ValueError: if an image is smaller than ``crop_size``.

    Example:
        >>> a = np.zeros((8, 6, 3), np.uint8)
        >>> [x.shape for x in random_crop_flip([a, a], 4, flip=True)]
        [(4, 4, 3), (4, 4, 3)]
    """
    height, width = images[0].shape[:2]
    out = list(images)
    if crop_size is not None:
        if crop_size > min(height, width):
            raise ValueError(f"crop size {crop_size} is larger than an image of {height}x{width} pixels")
        top = int(torch.randint(0, height - crop_size + 1, ()))
        left = int(torch.randint(0, width - crop_size + 1, ()))
        out = [x[top : top + crop_size, left : left + crop_size] for x in out]
    if flip:
        if bool(torch.rand(()) < 0.5):
            out = [x[:, ::-1] for x in out]
        if bool(torch.rand(()) < 0.5):
            out = [x[::-1] for x in out]
    return out


def group_of(name: str, pattern: str | None) -> str:
    """The group (e.g. slide) of a file name: the first match of regex ``pattern``'s group 1 (or whole match).

    Example:
        >>> group_of("frame03_00Aa_x40_r0_c0.png", r"frame(\\d+)")
        '03'
    """
    if pattern is None:
        return name
    match = re.search(pattern, name)
    if match is None:
        raise ValueError(f"file name {name!r} does not match the group pattern {pattern!r}")
    return match.group(1) if match.groups() else match.group(0)


def split_names(
    names: Sequence[str],
    val_fraction: float = 0.2,
    seed: int = 0,
    val_groups: Sequence[str] | None = None,
    group_pattern: str | None = None,
) -> tuple[list[str], list[str]]:
    """Split file names into (train, validation).

    With ``val_groups`` (and ``group_pattern`` naming the group in a file name, e.g. the slide),
    whole groups go to validation, so no slide is on both sides. Otherwise a seeded random
    ``val_fraction`` of the names (at least one, when ``val_fraction > 0``) is held out.

    Example:
        >>> split_names(["a1", "a2", "b1"], val_groups=["b"], group_pattern=r"^(\\w)")
        (['a1', 'a2'], ['b1'])
    """
    names = list(names)
    if val_groups is not None:
        wanted = set(val_groups)
        val = [n for n in names if group_of(n, group_pattern) in wanted]
        if not val:
            raise ValueError(f"no file belongs to the validation group(s) {sorted(wanted)}")
    elif val_fraction > 0:
        if not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        count = max(1, round(val_fraction * len(names)))
        order = np.random.default_rng(seed).permutation(len(names))
        val = sorted(names[i] for i in order[:count])
    else:
        val = []
    train = [n for n in names if n not in set(val)]
    if not train:
        raise ValueError("the validation split leaves no training images")
    return train, val


class ImageCache:
    """Images of one folder read once, by file name.

    Example:
        >>> import tempfile, PIL.Image
        >>> d = tempfile.mkdtemp()
        >>> PIL.Image.new("RGB", (4, 4), "red").save(Path(d, "a.png"))
        >>> ImageCache(d)[0][0, 0].tolist()
        [255, 0, 0]
    """

    def __init__(self, folder: str | Path, names: Sequence[str] | None = None) -> None:
        self.folder = Path(folder)
        available = {p.name: p for p in list_images(self.folder)}
        if names is None:
            names = sorted(available)
        missing = [n for n in names if n not in available]
        if missing:
            shown = ", ".join(missing[:3]) + (" ..." if len(missing) > 3 else "")
            raise ValueError(f"{len(missing)} file(s) missing from {self.folder}: {shown}")
        self.names = list(names)
        self._paths = [available[n] for n in self.names]
        self._images: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> np.ndarray:
        if index not in self._images:
            self._images[index] = read_rgb(self._paths[index])
        return self._images[index]


class UnpairedImageDataset(Dataset):
    """Two unpaired folders (domain A = source, domain B = target) for CycleGAN training.

    Item ``i`` is ``{"source": A[i % len(A)], "target": B[random]}``, each randomly cropped to
    ``crop_size`` and flipped independently; the length is that of the larger folder, as in CycleGAN.
    Tensors are CHW float32 in [0, 1].

    Example:
        >>> import tempfile, PIL.Image
        >>> d = tempfile.mkdtemp()
        >>> for sub in ("a", "b"):
        ...     _ = Path(d, sub).mkdir()
        ...     PIL.Image.new("RGB", (16, 16), "pink").save(Path(d, sub, "x.png"))
        >>> UnpairedImageDataset(Path(d, "a"), Path(d, "b"), crop_size=8)[0]["source"].shape
        torch.Size([3, 8, 8])
    """

    def __init__(
        self,
        source_dir: str | Path,
        target_dir: str | Path,
        crop_size: int | None = 256,
        flip: bool = True,
        source_names: Sequence[str] | None = None,
        target_names: Sequence[str] | None = None,
    ) -> None:
        self.source = ImageCache(source_dir, source_names)
        self.target = ImageCache(target_dir, target_names)
        self.crop_size, self.flip = crop_size, flip

    def __len__(self) -> int:
        return max(len(self.source), len(self.target))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        source = self.source[index % len(self.source)]
        target = self.target[int(torch.randint(0, len(self.target), ()))]
        (source,) = random_crop_flip([source], self.crop_size, self.flip)
        (target,) = random_crop_flip([target], self.crop_size, self.flip)
        return {"source": to_tensor(source), "target": to_tensor(target)}


class PairedImageDataset(Dataset):
    """Source images and their counterparts (teacher outputs or registered targets) matched by file name.

    Args:
        source_dir: the source images.
        paired_dir: images with the same file names (e.g. teacher outputs, registered targets).
        names: the file names to use (default: every image of ``source_dir``).
        crop_size: random square crops of this side (``None``: whole images); the same crop and
            flips are applied to both images of a pair.
        flip: random horizontal and vertical flips.
        shifts: file name -> ``(dy, dx)``, applied to the paired image with ``np.roll`` (registration).
        border: pixels cut from every side of both images before cropping (what a shift wrapped round).

    Items are ``(source, paired)`` CHW float32 tensors in [0, 1].

    Example:
        >>> import tempfile, PIL.Image
        >>> d = tempfile.mkdtemp()
        >>> for sub in ("src", "tgt"):
        ...     _ = Path(d, sub).mkdir()
        ...     PIL.Image.new("RGB", (16, 16), "pink").save(Path(d, sub, "x.png"))
        >>> source, target = PairedImageDataset(Path(d, "src"), Path(d, "tgt"), crop_size=8)[0]
        >>> source.shape, target.shape
        (torch.Size([3, 8, 8]), torch.Size([3, 8, 8]))
    """

    def __init__(
        self,
        source_dir: str | Path,
        paired_dir: str | Path,
        names: Sequence[str] | None = None,
        crop_size: int | None = 256,
        flip: bool = True,
        shifts: dict[str, tuple[int, int]] | None = None,
        border: int = 0,
    ) -> None:
        self.source = ImageCache(source_dir, names)
        self.paired = ImageCache(paired_dir, self.source.names)
        self.crop_size, self.flip, self.shifts, self.border = crop_size, flip, shifts or {}, border

    @property
    def names(self) -> list[str]:
        return self.source.names

    def pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The whole (source, paired) uint8 images of pair ``index``, shifted and border-cropped."""
        source, paired = self.source[index], self.paired[index]
        if source.shape != paired.shape:
            raise ValueError(f"{self.names[index]}: source {source.shape} and paired image {paired.shape} differ")
        shift = self.shifts.get(self.names[index])
        if shift is not None:
            paired = np.roll(paired, shift, axis=(0, 1))
        if self.border:
            b = self.border
            source, paired = source[b:-b, b:-b], paired[b:-b, b:-b]
        return source, paired

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        source, paired = random_crop_flip(self.pair(index), self.crop_size, self.flip)
        return to_tensor(source), to_tensor(paired)
