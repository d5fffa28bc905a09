"""Distil a StainNet from a teacher: the second step of the StainNet paper's pipeline.

The teacher's output for every source image is computed (or read) once, as a uint8 image, exactly
as the paper trained on saved StainGAN outputs. Three kinds of teacher give the same
(source image, teacher image) pairs:

- a model or normalizer applied to the sources (:func:`pairs_from_teacher`): a StainGAN
  generator, any fitted ``stain_transforms`` normalizer, any callable on (B, 3, H, W) in [0, 1];
- a folder of teacher outputs with the sources' file names (:func:`pairs_from_folders`);
- registered target images, optionally shifted into register, for paired supervision
  (:func:`pairs_from_folders` with ``shifts`` and ``border``).

Two recipes train the student on the pairs, both with the L1 loss on the network's [-1, 1]
scale and keeping the checkpoint with the best validation PSNR:

- ``"paper"``: the paper's recipe as published: SGD at lr 0.01, batch 10, random 256-pixel crops,
  cosine annealing over 300 epochs, validation every 5 epochs.
- ``"fast"`` (default): StainNet maps each pixel on its own, so the image-level L1 loss is exactly
  an average over (source colour, teacher colour) pairs weighted by how often each occurs. The
  pairs are counted once (``np.unique``), and Adam trains on large random samples of them, drawn
  in proportion to their counts. No convolution over images, no crops: seconds instead of minutes.

Each validation records the PSNR and (see ``DistillConfig.val_ssim``) both SSIMs against the teacher.
With an ``out_dir``, every validation also writes the resumable checkpoint ``checkpoints/latest.pt``
(``distill(..., resume=True)`` continues from it exactly), and the end of training draws the history
into ``curves.png``.
"""

from __future__ import annotations

import copy
import json
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..files import list_images, read_rgb
from ..metrics import Fidelity, fidelity, mean_fidelity, psnr_target
from ..models import StainNet
from .checkpoints import atomic_save, load_checkpoint, rng_state, set_rng_state
from .datasets import PairedImageDataset, random_crop_flip, to_tensor, to_uint8
from .schedules import warmup_cosine

RECIPES = ("fast", "paper")
CHECKPOINT = Path("checkpoints") / "latest.pt"
# What a resumed run must share with its checkpoint: the network, and the recipe with its schedule.
RESUME_FIELDS = {
    "fast": ("recipe", "n_layer", "n_channel", "steps", "pixel_batch", "fast_lr"),
    "paper": ("recipe", "n_layer", "n_channel", "epochs", "batch_size", "lr", "crop_size"),
}
# ``val_ssim=None``: both SSIMs at every validation while the validation images have at most this
# many pixels (on a CPU, a validation with SSIM takes about three times as long as one with PSNR only).
AUTO_SSIM_PIXELS = 2**22


@dataclass
class DistillConfig:
    """Settings of :func:`distill`. The paper's values are the defaults of the ``"paper"`` fields.

    Args:
        recipe: ``"fast"`` (colour-pair sampling with Adam) or ``"paper"`` (SGD on image crops).
        n_layer: StainNet layers.
        n_channel: StainNet hidden width.
        seed: seeds the initialisation, the sampling and the crops.
        device: torch device (default: CUDA when available, else CPU).
        max_seconds: stop training after this much wall time in this call (the best checkpoint so far
            is kept; ``resume=True`` continues the run).
        progress: show a tqdm bar.
        val_ssim: score SSIM target and SSIM source at every validation, as well as PSNR (the
            best checkpoint is still chosen by PSNR). ``None``: only while the validation images
            have at most ``AUTO_SSIM_PIXELS`` pixels (about 64 tiles of 256x256).
        epochs: paper recipe: epochs of cosine annealing.
        batch_size: paper recipe: images per batch.
        lr: paper recipe: SGD learning rate.
        crop_size: paper recipe: random crop side (clipped to the smallest image).
        val_every_epochs: paper recipe: validate every this many epochs (and after the last).
        steps: fast recipe: Adam steps (a 5% linear warm-up, then cosine decay to zero).
        pixel_batch: fast recipe: (source, teacher) colour pairs per step.
        fast_lr: fast recipe: peak Adam learning rate.
        val_every_steps: fast recipe: validate every this many steps (and after the last).

    Example:
        >>> DistillConfig(recipe="paper").batch_size, DistillConfig().pixel_batch
        (10, 8192)
    """

    recipe: str = "fast"
    n_layer: int = 3
    n_channel: int = 32
    seed: int = 0
    device: str | None = None
    max_seconds: float | None = None
    progress: bool = True
    val_ssim: bool | None = None
    # The paper's recipe.
    epochs: int = 300
    batch_size: int = 10
    lr: float = 0.01
    crop_size: int = 256
    val_every_epochs: int = 5
    # The fast recipe.
    steps: int = 1500
    pixel_batch: int = 8192
    fast_lr: float = 0.01
    val_every_steps: int = 100

    def __post_init__(self) -> None:
        if self.recipe not in RECIPES:
            raise ValueError(f"recipe must be one of {RECIPES}, got {self.recipe!r}")
        for name in ("epochs", "batch_size", "crop_size", "val_every_epochs", "steps", "pixel_batch", "val_every_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.fast_lr <= 0:
            raise ValueError("learning rates must be positive")


# -- the (source, teacher) pairs ------------------------------------------------------------


@dataclass
class PairSet:
    """Source images and the teacher's output for each, HWC uint8, with their file names.

    Example:
        >>> img = np.zeros((4, 4, 3), np.uint8)
        >>> PairSet(["a", "b"], [img, img], [img, img]).subset(["b"]).names
        ['b']
    """

    names: list[str]
    sources: list[np.ndarray]
    teachers: list[np.ndarray]

    def __post_init__(self) -> None:
        if not (len(self.names) == len(self.sources) == len(self.teachers)):
            raise ValueError("names, sources and teachers must have the same length")
        for name, s, t in zip(self.names, self.sources, self.teachers):
            if s.shape != t.shape:
                raise ValueError(f"{name}: source {s.shape} and teacher output {t.shape} differ in shape")

    def __len__(self) -> int:
        return len(self.names)

    @classmethod
    def concat(cls, parts: dict[str, PairSet], names: Sequence[str] | None = None) -> PairSet:
        """Several PairSets as one, each pair named ``"<part>/<name>"``: e.g. teacher outputs plus registered targets.

        ``names``: take only the pairs of these source file names from every part, so that a split by
        source image keeps all of an image's pairs on one side.

        Example:
            >>> img = np.zeros((4, 4, 3), np.uint8)
            >>> two = PairSet(["a", "b"], [img, img], [img, img])
            >>> PairSet.concat({"outputs": two, "targets": two}, names=["b"]).names
            ['outputs/b', 'targets/b']
        """
        all_names, sources, teachers = [], [], []
        for part, pairs in parts.items():
            if names is not None:
                pairs = pairs.subset(names)
            all_names += [f"{part}/{name}" for name in pairs.names]
            sources += pairs.sources
            teachers += pairs.teachers
        return cls(all_names, sources, teachers)

    def subset(self, names: Sequence[str]) -> PairSet:
        """The pairs of the given file names, in that order."""
        index = {n: i for i, n in enumerate(self.names)}
        unknown = [n for n in names if n not in index]
        if unknown:
            raise ValueError(f"unknown file name(s): {unknown[:3]}")
        return PairSet(list(names), [self.sources[index[n]] for n in names], [self.teachers[index[n]] for n in names])


def pairs_from_folders(
    source_dir: str | Path,
    paired_dir: str | Path,
    names: Sequence[str] | None = None,
    shifts: dict[str, tuple[int, int]] | None = None,
    border: int = 0,
) -> PairSet:
    """Pairs from a folder of sources and a folder of teacher outputs or registered targets, by file name.

    Args:
        source_dir: the source images.
        paired_dir: images with the same file names.
        names: the file names to use (default: every image of ``source_dir``).
        shifts: file name -> ``(dy, dx)`` rolled into the paired image (registration, e.g. ``pairs.csv``).
        border: pixels cut from every side of both images (what the shifts wrapped round).

    Example:
        >>> import tempfile, PIL.Image
        >>> d = Path(tempfile.mkdtemp())
        >>> for sub in ("src", "out"):
        ...     _ = (d / sub).mkdir()
        ...     PIL.Image.new("RGB", (16, 16), "pink").save(d / sub / "x.png")
        >>> pairs = pairs_from_folders(d / "src", d / "out", border=2)
        >>> pairs.names, pairs.sources[0].shape
        (['x.png'], (12, 12, 3))
    """
    dataset = PairedImageDataset(source_dir, paired_dir, names, crop_size=None, flip=False, shifts=shifts, border=border)
    sources, teachers = zip(*(dataset.pair(i) for i in range(len(dataset))))
    return PairSet(dataset.names, list(sources), list(teachers))


Teacher = Callable[[torch.Tensor], torch.Tensor]


def teacher_function(teacher: Any) -> Teacher:
    """A function (1, 3, H, W) float in [0, 1] -> same, from a model, a normalizer or a callable.

    A ``StainGANGenerator`` is applied with its ``translate`` (any image size); a fitted
    ``stain_transforms`` normalizer or transform, a ``StainNet`` or any other callable that maps
    [0, 1] batches to [0, 1] batches is called as is.

    Example:
        >>> from stain_transforms.models import StainGANGenerator
        >>> g = StainGANGenerator(ngf=4, n_blocks=1)
        >>> teacher_function(g) == g.translate
        True
    """
    translate = getattr(teacher, "translate", None)
    if callable(translate):
        return translate
    if callable(teacher):
        return teacher
    raise ValueError(f"a teacher must be a model, a normalizer or a callable, got {type(teacher).__name__}")


@torch.no_grad()
def pairs_from_teacher(
    source_dir: str | Path,
    teacher: Any,
    names: Sequence[str] | None = None,
    border: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> PairSet:
    """Pairs made by applying ``teacher`` (see :func:`teacher_function`) to each whole source image.

    The teacher sees whole images (as the paper's StainGAN did); its outputs are rounded to uint8,
    as saved outputs would be, and then ``border`` pixels are cut from every side.

    Example:
        >>> import tempfile, PIL.Image
        >>> d = Path(tempfile.mkdtemp())
        >>> PIL.Image.new("RGB", (8, 8), (200, 100, 150)).save(d / "x.png")
        >>> pairs = pairs_from_teacher(d, lambda x: 1 - x, progress=False)
        >>> pairs.teachers[0][0, 0].tolist()
        [55, 155, 105]
    """
    apply = teacher_function(teacher)
    if isinstance(teacher, nn.Module):
        teacher.eval()
    available = {p.name: p for p in list_images(source_dir)}
    names = sorted(available) if names is None else list(names)
    sources, teachers = [], []
    for name in tqdm(names, desc="teacher", disable=not progress, unit="image"):
        if name not in available:
            raise ValueError(f"{name} is not in {source_dir}")
        source = read_rgb(available[name])
        output = to_uint8(apply(to_tensor(source)[None].to(device))[0])
        if output.shape != source.shape:
            raise ValueError(f"the teacher changed the shape of {name}: {source.shape} -> {output.shape}")
        if border:
            source, output = source[border:-border, border:-border], output[border:-border, border:-border]
        sources.append(source)
        teachers.append(output)
    return PairSet(names, sources, teachers)


def colour_pairs(pairs: PairSet) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The distinct (source colour, teacher colour) pairs of all pixels, and how many pixels have each.

    Returns ``(source, teacher, counts)``: (U, 3) uint8, (U, 3) uint8 and (U,) int64 tensors. The
    L1 loss of a per-pixel model over all images is the count-weighted mean over these pairs.

    Example:
        >>> img = np.zeros((2, 2, 3), np.uint8); img[0, 0] = 9
        >>> s, t, c = colour_pairs(PairSet(["a"], [img], [img]))
        >>> s.tolist(), c.tolist()
        ([[0, 0, 0], [9, 9, 9]], [3, 1])
    """

    def pack(image: np.ndarray) -> np.ndarray:
        rgb = image.reshape(-1, 3).astype(np.int64)
        return (rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]

    keys = np.concatenate([(pack(s) << 24) | pack(t) for s, t in zip(pairs.sources, pairs.teachers)])
    unique, counts = np.unique(keys, return_counts=True)

    def unpack(packed: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.stack([(packed >> 16) & 255, (packed >> 8) & 255, packed & 255], 1).astype(np.uint8))

    return unpack(unique >> 24), unpack(unique & 0xFFFFFF), torch.from_numpy(counts)


# -- validation -----------------------------------------------------------------------------


@torch.no_grad()
def student_outputs(model: StainNet, sources: Sequence[np.ndarray], device: str | torch.device = "cpu") -> list[np.ndarray]:
    """The model's uint8 output for each HWC uint8 source image.

    Example:
        >>> student_outputs(StainNet(), [np.zeros((4, 4, 3), np.uint8)])[0].shape
        (4, 4, 3)
    """
    model.eval()
    return [to_uint8(model(to_tensor(s)[None].to(device))[0]) for s in sources]


def validation_psnr(model: StainNet, pairs: PairSet, device: str | torch.device = "cpu") -> float:
    """Mean PSNR (dB, over images) of the model's uint8 outputs against the teacher's.

    Example:
        >>> img = np.full((4, 4, 3), 128, np.uint8)
        >>> validation_psnr(StainNet(), PairSet(["a"], [img], [img])) > 0
        True
    """
    outputs = student_outputs(model, pairs.sources, device)
    return float(np.mean([psnr_target(o, t) for o, t in zip(outputs, pairs.teachers)]))


def validation_fidelity(model: StainNet, pairs: PairSet, device: str | torch.device = "cpu") -> Fidelity:
    """The paper's three metrics of the model's outputs, with the teacher's outputs as targets.

    Example:
        >>> from stain_transforms.testing import synthetic_tissue
        >>> img = synthetic_tissue(32)
        >>> sorted(validation_fidelity(StainNet(), PairSet(["a"], [img], [img])).as_dict())
        ['psnr_target', 'ssim_source', 'ssim_target']
    """
    return score_outputs(student_outputs(model, pairs.sources, device), pairs)


def score_outputs(outputs: Sequence[np.ndarray], pairs: PairSet) -> Fidelity:
    """The paper's three metrics, averaged, of one output per pair of ``pairs`` (teachers as targets).

    Example:
        >>> from stain_transforms.testing import synthetic_tissue
        >>> img = synthetic_tissue(32)
        >>> round(score_outputs([img], PairSet(["a"], [img], [255 - img])).ssim_source, 3)
        1.0
    """
    return mean_fidelity([fidelity(o, t, s) for o, t, s in zip(outputs, pairs.teachers, pairs.sources, strict=True)])


# -- training -------------------------------------------------------------------------------


@dataclass
class DistillResult:
    """What :func:`distill` returns: the best student and how it got there.

    ``history`` holds one entry per validation: ``seconds`` of training so far (including the
    colour counting of the fast recipe, and the time of earlier runs when resumed), ``epoch`` or
    ``step``, ``val_psnr``, ``val_ssim_target`` and ``val_ssim_source`` (when scored, see
    ``DistillConfig.val_ssim``) and ``loss``. ``curves`` is the PNG of that history, when written.
    """

    model: StainNet
    recipe: str
    best_psnr: float
    best_at: int
    seconds: float
    history: list[dict[str, float]]
    train_names: list[str]
    val_names: list[str]
    val_metrics: Fidelity | None = None
    out_dir: Path | None = None
    config: dict[str, Any] = field(default_factory=dict)
    curves: Path | None = None

    def summary(self) -> dict[str, Any]:
        """A JSON-serialisable summary (no model)."""
        unit = "step" if self.recipe == "fast" else "epoch"
        return {
            "recipe": self.recipe,
            "best_val_psnr": self.best_psnr,
            f"best_{unit}": self.best_at,
            "seconds": self.seconds,
            "n_train": len(self.train_names),
            "n_val": len(self.val_names),
            "val_metrics_vs_teacher": self.val_metrics.as_dict() if self.val_metrics else None,
            "out_dir": str(self.out_dir) if self.out_dir else None,
            "curves": str(self.curves) if self.curves else None,
            "config": self.config,
            "history": self.history,
        }


def _l1_raw(model: StainNet, source: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    # The paper's loss: L1 between the bare network and the teacher, both on the [-1, 1] scale.
    return (model.forward_raw(source * 2.0 - 1.0) - (teacher * 2.0 - 1.0)).abs()


# Redraw curves.png at a checkpoint only this long after the last drawing (a drawing takes ~0.2 s).
CURVES_EVERY_SECONDS = 30.0


class _Tracker:
    """Validates, keeps the best model by validation PSNR and the history, and writes the checkpoint."""

    def __init__(self, model: StainNet, val: PairSet | None, train: PairSet, config: DistillConfig,
                 device: torch.device, out_dir: Path | None):
        self.model, self.config, self.device = model, config, device
        # Without a validation split the training pairs stand in (the best is then the last, in effect).
        self.pairs = val if val is not None and len(val) else train
        pixels = sum(s.shape[0] * s.shape[1] for s in self.pairs.sources)
        self.ssim = config.val_ssim if config.val_ssim is not None else pixels <= AUTO_SSIM_PIXELS
        self.best_psnr, self.best_at, self.best_state = -math.inf, 0, copy.deepcopy(model.state_dict())
        self.history: list[dict[str, float]] = []
        self.names = {"train": list(train.names), "val": list(val.names) if val is not None else []}
        self.checkpoint = out_dir / CHECKPOINT if out_dir is not None else None
        self.curves_path = out_dir / "curves.png" if out_dir is not None else None
        self.start = self.plotted = time.perf_counter()  # of this call
        self.seconds_before = 0.0  # of the runs this one resumes
        self.saved: dict[str, Any] | None = None

    def seconds(self) -> float:
        return self.seconds_before + time.perf_counter() - self.start

    def out_of_time(self) -> bool:
        return self.config.max_seconds is not None and time.perf_counter() - self.start > self.config.max_seconds

    def resume(self) -> None:
        """Load the checkpoint, if there is one, into the model and the tracker (the optimiser's part is kept for later)."""
        if self.checkpoint is None or not self.checkpoint.is_file():
            return
        # On the CPU: the random-number-generator states must stay there; load_state_dict moves the rest.
        saved = load_checkpoint(self.checkpoint, "cpu")
        fields = RESUME_FIELDS[self.config.recipe]
        mismatch = [f"{k}: {saved['config'].get(k)!r} != {getattr(self.config, k)!r}"
                    for k in fields if saved["config"].get(k) != getattr(self.config, k)]
        if mismatch:
            raise ValueError(f"{self.checkpoint} was trained with other settings ({'; '.join(mismatch)}); "
                             "resume with the same ones, or start afresh")
        if saved["names"] != self.names:
            warnings.warn(f"{self.checkpoint} was trained on other images: the resumed run continues on these", stacklevel=3)
        self.model.load_state_dict(saved["model"])
        self.best_psnr, self.best_at, self.best_state = saved["best_psnr"], saved["best_at"], saved["best_state"]
        self.history, self.seconds_before = saved["history"], saved["seconds"]
        self.saved = saved

    def restore(self, optimizer: torch.optim.Optimizer, schedule: Any) -> tuple[int, float | None]:
        """The epoch or step to start at and the last loss; from the checkpoint (with the optimiser and RNGs) if resuming."""
        if self.saved is None:
            return 1, None
        optimizer.load_state_dict(self.saved["optimizer"])
        schedule.load_state_dict(self.saved["schedule"])
        set_rng_state(self.saved["rng"])
        return self.saved["at"] + 1, self.saved["loss"]

    def __call__(self, at: int, unit: str, loss: float, optimizer: torch.optim.Optimizer, schedule: Any) -> float:
        entry: dict[str, float] = {"seconds": 0.0, unit: at}
        if self.ssim:
            scores = validation_fidelity(self.model, self.pairs, self.device)
            entry.update(val_psnr=scores.psnr_target, val_ssim_target=scores.ssim_target, val_ssim_source=scores.ssim_source)
        else:
            entry["val_psnr"] = validation_psnr(self.model, self.pairs, self.device)
        self.model.train()
        entry["loss"] = loss
        entry["seconds"] = self.seconds()
        self.history.append(entry)
        if entry["val_psnr"] > self.best_psnr:
            self.best_psnr, self.best_at = entry["val_psnr"], at
            self.best_state = copy.deepcopy(self.model.state_dict())
        if self.checkpoint is not None:
            atomic_save({
                "config": asdict(self.config), "names": self.names, "at": at, "loss": loss, "seconds": entry["seconds"],
                "model": self.model.state_dict(), "best_state": self.best_state, "best_psnr": self.best_psnr,
                "best_at": self.best_at, "history": self.history, "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(), "rng": rng_state(),
            }, self.checkpoint)
            if time.perf_counter() - self.plotted > CURVES_EVERY_SECONDS:
                self.plot()
        return entry["val_psnr"]

    def plot(self) -> Path | None:
        """Draw the history into ``curves.png`` (skipped, with a warning, without matplotlib)."""
        if self.curves_path is None:
            return None
        from .curves import write_curves

        self.plotted = time.perf_counter()
        unit = "step" if self.config.recipe == "fast" else "epoch"
        return write_curves(self.history, self.curves_path, unit, f"StainNet distillation ({self.config.recipe} recipe)")


class _CropPairs(Dataset):
    def __init__(self, pairs: PairSet, crop_size: int) -> None:
        self.pairs, self.crop_size = pairs, crop_size

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        # The paper crops only (no flips: a per-pixel model cannot tell).
        source, teacher = random_crop_flip([self.pairs.sources[index], self.pairs.teachers[index]], self.crop_size, False)
        return to_tensor(source), to_tensor(teacher)


def _train_paper(model: StainNet, train: PairSet, tracker: _Tracker, config: DistillConfig, device: torch.device) -> None:
    crop = min(config.crop_size, *(min(s.shape[:2]) for s in train.sources))
    loader = DataLoader(_CropPairs(train, crop), batch_size=config.batch_size, shuffle=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, config.epochs)
    first, _ = tracker.restore(optimizer, schedule)
    bar = tqdm(range(first, config.epochs + 1), desc="distil (paper recipe)", disable=not config.progress, unit="epoch",
               initial=first - 1, total=config.epochs)
    for epoch in bar:
        losses = []
        for source, teacher in loader:
            # Channels-last memory turns the 1x1 convolutions into plain matrix products (faster on CPUs).
            source, teacher = (x.to(device, memory_format=torch.channels_last) for x in (source, teacher))
            loss = _l1_raw(model, source, teacher).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        schedule.step()
        out_of_time = tracker.out_of_time()
        if epoch % config.val_every_epochs == 0 or epoch == config.epochs or out_of_time:
            psnr = tracker(epoch, "epoch", float(np.mean(losses)), optimizer, schedule)
            bar.set_postfix(loss=f"{np.mean(losses):.4f}", val_psnr=f"{psnr:.2f}", best=f"{tracker.best_psnr:.2f}")
        if out_of_time:
            break


def _train_fast(model: StainNet, train: PairSet, tracker: _Tracker, config: DistillConfig, device: torch.device) -> None:
    source_u8, teacher_u8, counts = colour_pairs(train)
    source = source_u8.to(device, torch.float32) / 255.0
    teacher = teacher_u8.to(device, torch.float32) / 255.0
    weights = counts.to(device, torch.float64)
    cumulative = weights.cumsum(0)
    # Few distinct pairs (e.g. a classical teacher on flat images): the exact full loss every step.
    full_batch = len(counts) <= config.pixel_batch
    optimizer = torch.optim.Adam(model.parameters(), lr=config.fast_lr)
    schedule = warmup_cosine(optimizer, config.steps)
    first, running = tracker.restore(optimizer, schedule)

    def as_image(colours: torch.Tensor) -> torch.Tensor:
        # (N, 3) -> a (1, 3, N, 1) channels-last view: the 1x1 convolutions run as matrix products.
        return colours.reshape(1, -1, 1, 3).permute(0, 3, 1, 2)

    bar = tqdm(range(first, config.steps + 1), desc="distil (fast recipe)", disable=not config.progress, unit="step",
               initial=first - 1, total=config.steps)
    for step in bar:
        if full_batch:
            per_pair = _l1_raw(model, as_image(source), as_image(teacher)).mean(dim=1).flatten()
            loss = (per_pair * weights.to(per_pair)).sum() / weights.sum().to(per_pair)
        else:
            draw = torch.rand(config.pixel_batch, device=device, dtype=torch.float64) * cumulative[-1]
            index = torch.searchsorted(cumulative, draw, right=True).clamp_(max=len(counts) - 1)
            loss = _l1_raw(model, as_image(source[index]), as_image(teacher[index])).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
        out_of_time = tracker.out_of_time()
        if step % config.val_every_steps == 0 or step == config.steps or out_of_time:
            psnr = tracker(step, "step", running, optimizer, schedule)
            bar.set_postfix(loss=f"{running:.4f}", val_psnr=f"{psnr:.2f}", best=f"{tracker.best_psnr:.2f}")
        if out_of_time:
            break


def default_device(device: str | torch.device | None = None) -> torch.device:
    """``device``, or CUDA when available, else CPU.

    Example:
        >>> default_device("cpu")
        device(type='cpu')
    """
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def distill(
    train: PairSet,
    val: PairSet | None = None,
    config: DistillConfig | None = None,
    out_dir: str | Path | None = None,
    card: dict[str, Any] | None = None,
    resume: bool = False,
) -> DistillResult:
    """Train a StainNet on (source, teacher) pairs and return the checkpoint with the best validation PSNR.

    Args:
        train: training pairs (see :func:`pairs_from_folders`, :func:`pairs_from_teacher`).
        val: validation pairs for the best-PSNR checkpoint; without them the training pairs are scored.
        config: the recipe and its settings (default: the fast recipe).
        out_dir: if given, the best model is written there with ``save_pretrained`` (config.json,
            model.safetensors, README.md model card) plus ``distill_history.json``, the validation
            curves ``curves.png``, and, at every validation, the resumable ``checkpoints/latest.pt``.
        card: extra model-card fields (``title``, ``source_domain``, ``target_domain``,
            ``training_data``, ``data_terms``, ``load_name``); the metrics are filled in.
        resume: continue from ``out_dir/checkpoints/latest.pt`` if it exists (after an interruption
            or ``max_seconds``): the result is that of an uninterrupted run. The checkpoint's network
            and recipe settings (``RESUME_FIELDS``) must equal ``config``'s.

    Raises:
        ValueError: without training pairs, with ``resume`` but no ``out_dir``, or if the checkpoint
            was trained with other settings.

    Example:
        >>> from stain_transforms.testing import synthetic_tissue
        >>> src = [synthetic_tissue(32, seed=i) for i in range(3)]
        >>> pairs = PairSet(["a", "b", "c"], src, [255 - s for s in src])
        >>> result = distill(pairs.subset(["a", "b"]), pairs.subset(["c"]),
        ...                  DistillConfig(steps=60, val_every_steps=30, progress=False))
        >>> result.best_psnr > 20, sorted(result.history[-1])
        (True, ['loss', 'seconds', 'step', 'val_psnr', 'val_ssim_source', 'val_ssim_target'])
    """
    config = config or DistillConfig()
    if len(train) == 0:
        raise ValueError("no training pairs")
    if resume and out_dir is None:
        raise ValueError("resume=True needs the out_dir of the run to continue")
    out_dir = Path(out_dir) if out_dir is not None else None
    device = default_device(config.device)
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    model = StainNet(config.n_layer, config.n_channel).to(device)
    tracker = _Tracker(model, val, train, config, device, out_dir)
    if resume:
        tracker.resume()
    model.train()
    if config.recipe == "paper":
        _train_paper(model, train, tracker, config, device)
    else:
        _train_fast(model, train, tracker, config, device)
    seconds = tracker.seconds()
    model.load_state_dict(tracker.best_state)
    model.eval()
    val_metrics = validation_fidelity(model, val, device) if val is not None and len(val) else None
    result = DistillResult(
        model=model,
        recipe=config.recipe,
        best_psnr=tracker.best_psnr,
        best_at=tracker.best_at,
        seconds=seconds,
        history=tracker.history,
        train_names=list(train.names),
        val_names=list(val.names) if val is not None else [],
        val_metrics=val_metrics,
        config=asdict(config),
    )
    if out_dir is not None:
        result.curves = tracker.plot()
        result.out_dir = save_student(result, out_dir, card)
    return result


def _metrics_text(result: DistillResult) -> str:
    unit = "step" if result.recipe == "fast" else "epoch"
    lines = [
        (f"Distilled with the `{result.recipe}` recipe of `stain_transforms.training.distill` in "
        f"{result.seconds:.0f} s; best checkpoint at {unit} {result.best_at}."),
        "",
    ]
    if result.val_metrics is not None:
        m = result.val_metrics
        lines += [
            f"On the {len(result.val_names)} validation image(s), against the teacher's outputs:",
            "",
            "| PSNR (dB) | SSIM target | SSIM source |",
            "|---|---|---|",
            f"| {m.psnr_target:.2f} | {m.ssim_target:.3f} | {m.ssim_source:.3f} |",
        ]
    else:
        lines.append(f"No validation split; PSNR against the teacher on the training images: {result.best_psnr:.2f} dB.")
    return "\n".join(lines)


def save_student(result: DistillResult, out_dir: str | Path, card: dict[str, Any] | None = None) -> Path:
    """Write ``result.model`` with ``save_pretrained`` and a model card, plus ``distill_history.json``."""
    out_dir = Path(out_dir)
    fields = dict(card or {})
    extra = fields.pop("metrics", None)
    fields["metrics"] = _metrics_text(result) + (f"\n\n{extra}" if extra else "")
    result.model.save_pretrained(out_dir, model_card_kwargs=fields)
    (out_dir / "distill_history.json").write_text(json.dumps(result.summary(), indent=2) + "\n")
    return out_dir
