"""Train a StainGAN: CycleGAN (Zhu et al., 2017) between two unpaired folders of stain domains.

Two generators (source -> target and back) and two
:class:`~stain_transforms.models.PatchGANDiscriminator` are trained with CycleGAN's objective:
least-squares GAN losses, cycle-consistency L1 (``lambda_cycle``), identity L1
(``lambda_identity * lambda_cycle``), Adam, a learning rate that is constant for ``epochs`` and
then decays linearly to zero over ``epochs_decay``, and a pool of past fakes for the
discriminators. Everything is a field of :class:`StainGANConfig`.

Two things keep the tissue's structure, which a CycleGAN is free to change:

- ``lambda_structure`` adds :func:`~stain_transforms.training.losses.structure_loss` between each
  real image and its translation (local luma correlation: colour may change, shapes may not);
- ``generator="pixel"`` trains a StainNet (1x1 convolutions) as the generator: a per-pixel
  colour map, which cannot move, add or blur anything by construction. Trained this way against
  the discriminators, it is a StainNet learned from unpaired images with no teacher at all.

The output folder holds the source -> target generator in ``save_pretrained`` form (config.json,
model.safetensors, README.md model card), the inverse generator in ``inverse/``, per-epoch sample
grids in ``samples/``, the resumable checkpoint ``checkpoints/latest.pt``, ``training_log.json``, and
``curves.png``: the losses and, with validation pairs, PSNR and SSIM per epoch.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageDraw
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..metrics import Fidelity
from ..models import PatchGANDiscriminator, StainGANGenerator, StainNet, init_cyclegan_weights
from ..models.hub_mixin import add_transform_settings
from .checkpoints import atomic_save, load_checkpoint, rng_state, set_rng_state
from .curves import write_curves
from .datasets import UnpairedImageDataset, to_tensor, to_uint8
from .distill import PairSet, default_device, score_outputs
from .guided import GUIDED_SETTINGS, STRUCTURE_FLOOR, choose_guided, guided_outputs
from .losses import structure_loss

CHECKPOINT = "checkpoints/latest.pt"
# Fields that fix the networks' shapes: a checkpoint cannot resume under other values.
ARCHITECTURE_FIELDS = ("generator", "ngf", "n_blocks", "pixel_channels", "ndf", "n_layers_d")
GENERATORS = ("resnet", "pixel")
LOSS_KEYS = ("G", "cyc", "idt", "str", "D_t", "D_s")


@dataclass
class StainGANConfig:
    """Settings of :func:`train_staingan`; the defaults are CycleGAN's (and StainGAN's ResNet-9 generator).

    Args:
        generator: ``"resnet"``, CycleGAN's ResNet generator (StainGAN), or ``"pixel"``, a StainNet
            (three 1x1 convolutions) that can only map colours.
        ngf: ResNet generator filters of the first layer (64; 16 or 32 make a compact CPU-sized model).
        n_blocks: ResNet generator residual blocks (9 in StainGAN; fewer for a compact model).
        pixel_channels: hidden width of the ``"pixel"`` generator (32, as StainNet).
        ndf: discriminator filters of the first layer.
        n_layers_d: discriminator stride-2 layers (3 gives 70x70 patches).
        epochs: epochs at the initial learning rate.
        epochs_decay: further epochs over which the learning rate decays linearly to zero.
        steps_per_epoch: iterations per epoch (default: one pass over the larger folder).
        batch_size: images per iteration (1 in CycleGAN; larger on a GPU).
        crop_size: side of the random square crops (a multiple of 4).
        flip: random horizontal and vertical flips.
        lr: Adam learning rate of generators and discriminators.
        beta1: Adam beta1.
        beta2: Adam beta2.
        lambda_cycle: weight of the cycle-consistency L1 losses.
        lambda_identity: identity L1 weight, as a fraction of ``lambda_cycle`` (0 disables it).
        lambda_structure: weight of the structure term between each real image and its translation
            (0, CycleGAN's objective, disables it).
        pool_size: past fakes kept for the discriminators (0 disables the pool).
        seed: seeds initialisation, data order, crops and the pool.
        device: torch device (default: CUDA when available, else CPU).
        amp: float16 mixed precision (default: on for CUDA, off on CPU).
        num_workers: DataLoader worker processes.
        n_samples: images per domain in each epoch's sample grid.
        val_every: score the validation pairs (when given) every this many epochs, for the curves.
        max_seconds: stop at the end of the first epoch past this wall time (checkpoint kept, resumable).
        progress: show a tqdm bar with the losses.
    """

    generator: str = "resnet"
    ngf: int = 64
    n_blocks: int = 9
    pixel_channels: int = 32
    ndf: int = 64
    n_layers_d: int = 3
    epochs: int = 100
    epochs_decay: int = 100
    steps_per_epoch: int | None = None
    batch_size: int = 1
    crop_size: int = 256
    flip: bool = True
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    lambda_cycle: float = 10.0
    lambda_identity: float = 0.5
    lambda_structure: float = 0.0
    pool_size: int = 50
    seed: int = 0
    device: str | None = None
    amp: bool | None = None
    num_workers: int = 0
    n_samples: int = 4
    val_every: int = 1
    max_seconds: float | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.generator not in GENERATORS:
            raise ValueError(f"generator must be one of {GENERATORS}, got {self.generator!r}")
        for name in ("ngf", "pixel_channels", "ndf", "n_layers_d", "batch_size", "crop_size", "val_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.epochs < 0 or self.epochs_decay < 0 or self.epochs + self.epochs_decay < 1:
            raise ValueError("epochs and epochs_decay must be non-negative, with at least one epoch in all")
        if self.crop_size % 4:
            raise ValueError(f"crop_size must be a multiple of 4 (the generator downsamples twice), got {self.crop_size}")
        smallest = 3 * 2**self.n_layers_d  # the discriminator's last normalised layer needs 2x2 pixels
        if self.crop_size < smallest:
            raise ValueError(
                f"crop_size {self.crop_size} is too small for a discriminator with {self.n_layers_d} stride-2 layers; "
                f"use at least {smallest} (or fewer n_layers_d)"
            )
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be at least 1, got {self.steps_per_epoch}")
        if min(self.pool_size, self.lambda_cycle, self.lambda_identity, self.lambda_structure) < 0:
            raise ValueError("pool_size, lambda_cycle, lambda_identity and lambda_structure must be non-negative")

    @property
    def total_epochs(self) -> int:
        return self.epochs + self.epochs_decay

    def lr_factor(self, epoch: int) -> float:
        """Learning-rate multiplier during 0-based ``epoch``: 1, then linearly down to 0 (CycleGAN's "linear" policy).

        Example:
            >>> c = StainGANConfig(epochs=2, epochs_decay=2)
            >>> [round(c.lr_factor(e), 2) for e in range(4)]
            [1.0, 1.0, 0.67, 0.33]
        """
        return 1.0 - max(0, epoch + 1 - self.epochs) / (self.epochs_decay + 1)


class ImagePool:
    """CycleGAN's history of generated images (Shrivastava et al., 2017).

    Until full, every fake is stored and returned. Then, with probability 1/2, a fake is swapped for a
    random stored one (which is returned), else returned as is; the discriminator thus also sees
    older fakes. Draws from torch's global generator.

    Example:
        >>> pool = ImagePool(2)
        >>> pool.query(torch.zeros(3, 3, 4, 4)).shape
        torch.Size([3, 3, 4, 4])
        >>> len(pool.images)
        2
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.images: list[torch.Tensor] = []

    def query(self, images: torch.Tensor) -> torch.Tensor:
        if self.size == 0:
            return images
        out = []
        for image in images.detach():
            if len(self.images) < self.size:
                self.images.append(image.clone())
                out.append(image)
            elif bool(torch.rand(()) < 0.5):
                index = int(torch.randint(0, self.size, ()))
                out.append(self.images[index].clone())
                self.images[index] = image.clone()
            else:
                out.append(image)
        return torch.stack(out)

    def state(self) -> list[torch.Tensor]:
        return [image.cpu() for image in self.images]

    def load(self, images: list[torch.Tensor], device: torch.device) -> None:
        self.images = [image.to(device) for image in images]


@dataclass
class StainGANResult:
    """What :func:`train_staingan` returns."""

    generator: nn.Module
    inverse: nn.Module
    out_dir: Path
    epochs_done: int
    seconds: float
    history: list[dict[str, float]]
    val_metrics: Fidelity | None = None
    config: dict[str, Any] = field(default_factory=dict)
    # The guided filter (radius, eps) chosen on the validation pairs, and its scores there (ResNet generators).
    guided_setting: tuple[int, float] | None = None
    guided_metrics: Fidelity | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "out_dir": str(self.out_dir),
            "epochs_done": self.epochs_done,
            "seconds": self.seconds,
            "final_losses": self.history[-1] if self.history else None,
            "val_metrics_vs_target": self.val_metrics.as_dict() if self.val_metrics else None,
            "guided_filter": None if self.guided_setting is None else {
                "radius": self.guided_setting[0], "eps": self.guided_setting[1], "val_metrics_vs_target": self.guided_metrics.as_dict()},
            "config": self.config,
        }


def _set_requires_grad(modules: list[nn.Module], flag: bool) -> None:
    for module in modules:
        for parameter in module.parameters():
            parameter.requires_grad_(flag)


def _centre_crop(image: np.ndarray, size: int) -> np.ndarray:
    height, width = image.shape[:2]
    top, left = max(0, (height - size) // 2), max(0, (width - size) // 2)
    return image[top : top + size, left : left + size]


# The rows of a sample grid, for each direction: the real images, their translation, the cycle back.
SOURCE_ROW_LABELS = ("source (real)", "source -> target", "-> back to source")
TARGET_ROW_LABELS = ("target (real)", "target -> source", "-> back to target")
LABEL_WIDTH = 120


def label_rows(grid: np.ndarray, labels: Sequence[str], width: int = LABEL_WIDTH) -> np.ndarray:
    """``grid`` (HWC uint8, ``len(labels)`` rows of equal height) with a white column of row labels on its left.

    Example:
        >>> out = label_rows(np.zeros((40, 30, 3), np.uint8), ["source (real)", "source -> target"])
        >>> out.shape, out[0, 0].tolist(), out[0, -1].tolist()
        ((40, 150, 3), [255, 255, 255], [0, 0, 0])
    """
    if len(labels) == 0 or grid.shape[0] % len(labels):
        raise ValueError(f"a grid of height {grid.shape[0]} does not split into {len(labels)} labelled rows")
    canvas = PIL.Image.new("RGB", (width + grid.shape[1], grid.shape[0]), "white")
    canvas.paste(PIL.Image.fromarray(grid), (width, 0))
    draw = PIL.ImageDraw.Draw(canvas)
    height = grid.shape[0] // len(labels)
    for row, label in enumerate(labels):
        draw.text((4, row * height + max(0, height // 2 - 6)), label, fill=(0, 0, 0))
    return np.asarray(canvas)


class PixelGenerator(nn.Module):
    """A StainNet on CycleGAN's [-1, 1] scale, so that the trainer can use it as a generator.

    Example:
        >>> g = PixelGenerator(StainNet())
        >>> x = torch.rand(1, 3, 4, 4)
        >>> torch.equal(g.translate(x), g.stainnet(x)), g(x * 2 - 1).shape
        (True, torch.Size([1, 3, 4, 4]))
    """

    def __init__(self, stainnet: StainNet) -> None:
        super().__init__()
        self.stainnet = stainnet

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stainnet.forward_raw(x)

    def translate(self, rgb: torch.Tensor) -> torch.Tensor:
        return self.stainnet(rgb)


def make_generator(config: StainGANConfig) -> nn.Module:
    """A freshly initialised generator of ``config.generator``'s kind (on the [-1, 1] scale).

    Example:
        >>> type(make_generator(StainGANConfig(generator="pixel"))).__name__
        'PixelGenerator'
    """
    if config.generator == "pixel":
        # PyTorch's default initialisation: CycleGAN's N(0, 0.02) would start a 1x1 network at a constant image.
        return PixelGenerator(StainNet(n_channel=config.pixel_channels))
    return init_cyclegan_weights(StainGANGenerator(ngf=config.ngf, n_blocks=config.n_blocks))


def exported(generator: nn.Module) -> nn.Module:
    """The model a user loads: the StainNet inside a :class:`PixelGenerator`, else the generator itself.

    Example:
        >>> type(exported(PixelGenerator(StainNet()))).__name__
        'StainNet'
    """
    return generator.stainnet if isinstance(generator, PixelGenerator) else generator


class _Trainer:
    """The networks, optimisers and state of one CycleGAN run."""

    def __init__(self, config: StainGANConfig, device: torch.device) -> None:
        self.config, self.device = config, device
        c = config
        self.generator = make_generator(c).to(device)
        self.inverse = make_generator(c).to(device)
        # disc_target judges target-domain images (real vs generator's fakes), disc_source the reverse.
        self.disc_target = init_cyclegan_weights(PatchGANDiscriminator(ndf=c.ndf, n_layers=c.n_layers_d)).to(device)
        self.disc_source = init_cyclegan_weights(PatchGANDiscriminator(ndf=c.ndf, n_layers=c.n_layers_d)).to(device)
        betas = (c.beta1, c.beta2)
        generators = list(self.generator.parameters()) + list(self.inverse.parameters())
        discriminators = list(self.disc_target.parameters()) + list(self.disc_source.parameters())
        self.opt_g = torch.optim.Adam(generators, lr=c.lr, betas=betas)
        self.opt_d = torch.optim.Adam(discriminators, lr=c.lr, betas=betas)
        self.schedules = [torch.optim.lr_scheduler.LambdaLR(o, c.lr_factor) for o in (self.opt_g, self.opt_d)]
        self.pool_fake_target, self.pool_fake_source = ImagePool(c.pool_size), ImagePool(c.pool_size)
        self.amp = (device.type == "cuda") if c.amp is None else c.amp
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp)

    def modules(self) -> dict[str, nn.Module]:
        return {"generator": self.generator, "inverse": self.inverse, "disc_target": self.disc_target, "disc_source": self.disc_source}

    def state(self, epoch: int, history: list[dict[str, float]]) -> dict[str, Any]:
        return {
            "epoch": epoch,
            "config": asdict(self.config),
            "models": {name: m.state_dict() for name, m in self.modules().items()},
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "schedules": [s.state_dict() for s in self.schedules],
            "scaler": self.scaler.state_dict(),
            "pools": [self.pool_fake_target.state(), self.pool_fake_source.state()],
            "rng": rng_state(),
            "history": history,
        }

    def load(self, state: dict[str, Any]) -> tuple[int, list[dict[str, float]]]:
        for name, module in self.modules().items():
            module.load_state_dict(state["models"][name])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        for schedule, saved in zip(self.schedules, state["schedules"]):
            schedule.load_state_dict(saved)
        self.scaler.load_state_dict(state["scaler"])
        self.pool_fake_target.load(state["pools"][0], self.device)
        self.pool_fake_source.load(state["pools"][1], self.device)
        set_rng_state(state["rng"])
        return state["epoch"], state["history"]

    def step(self, real_source: torch.Tensor, real_target: torch.Tensor) -> dict[str, float]:
        """One CycleGAN iteration on batches in [-1, 1]: generators first, then discriminators."""
        c = self.config
        autocast = torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp)
        discriminators = [self.disc_target, self.disc_source]

        _set_requires_grad(discriminators, False)
        with autocast:
            fake_target = self.generator(real_source)
            cycled_source = self.inverse(fake_target)
            fake_source = self.inverse(real_target)
            cycled_target = self.generator(fake_source)
            pred_target, pred_source = self.disc_target(fake_target), self.disc_source(fake_source)
            gan = F.mse_loss(pred_target, torch.ones_like(pred_target)) + F.mse_loss(pred_source, torch.ones_like(pred_source))
            cycle = c.lambda_cycle * (F.l1_loss(cycled_source, real_source) + F.l1_loss(cycled_target, real_target))
            identity = torch.zeros((), device=self.device)
            if c.lambda_identity > 0:
                # A target-domain image fed to the source->target generator should come out unchanged.
                weight = c.lambda_cycle * c.lambda_identity
                identity = weight * (
                    F.l1_loss(self.generator(real_target), real_target) + F.l1_loss(self.inverse(real_source), real_source)
                )
            structure = torch.zeros((), device=self.device)
            if c.lambda_structure > 0:
                structure = c.lambda_structure * (
                    structure_loss(real_source, fake_target) + structure_loss(real_target, fake_source)
                )
            loss_g = gan + cycle + identity + structure
        self.opt_g.zero_grad(set_to_none=True)
        self.scaler.scale(loss_g).backward()
        self.scaler.step(self.opt_g)

        _set_requires_grad(discriminators, True)
        with autocast:
            loss_d_target = self._discriminator_loss(self.disc_target, real_target, self.pool_fake_target.query(fake_target))
            loss_d_source = self._discriminator_loss(self.disc_source, real_source, self.pool_fake_source.query(fake_source))
        self.opt_d.zero_grad(set_to_none=True)
        self.scaler.scale(loss_d_target + loss_d_source).backward()
        self.scaler.step(self.opt_d)
        self.scaler.update()
        return {
            "G": gan.item(),
            "cyc": cycle.item(),
            "idt": identity.item(),
            "str": structure.item(),
            "D_t": loss_d_target.item(),
            "D_s": loss_d_source.item(),
        }

    @staticmethod
    def _discriminator_loss(disc: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        pred_real, pred_fake = disc(real), disc(fake.detach())
        return 0.5 * (F.mse_loss(pred_real, torch.ones_like(pred_real)) + F.mse_loss(pred_fake, torch.zeros_like(pred_fake)))

    @torch.no_grad()
    def sample_grid(self, sources: list[np.ndarray], targets: list[np.ndarray], path: Path) -> None:
        """Rows: source, translated, cycled back; then target, translated back, cycled; each row labelled."""
        rows, labels = [], []
        directions = (
            (sources, self.generator, self.inverse, SOURCE_ROW_LABELS),
            (targets, self.inverse, self.generator, TARGET_ROW_LABELS),
        )
        for images, forward, backward, names in directions:
            if not images:
                continue
            real = torch.stack([to_tensor(i) for i in images]).to(self.device)
            fake = forward.translate(real)
            rows += [real, fake, backward.translate(fake)]
            labels += names
        grid = torch.cat([torch.cat(list(row), dim=2) for row in rows], dim=1)  # rows of side-by-side images
        path.parent.mkdir(parents=True, exist_ok=True)
        PIL.Image.fromarray(label_rows(to_uint8(grid), labels)).save(path)


@torch.no_grad()
def translate_pairs(generator: nn.Module, sources: list[np.ndarray], device: torch.device | str = "cpu") -> list[np.ndarray]:
    """The generator's uint8 output for each HWC uint8 image (whole images, no tiling).

    ``generator`` is a :class:`~stain_transforms.models.StainGANGenerator`, a :class:`PixelGenerator`
    or any module mapping RGB in [0, 1] to RGB in [0, 1] (a StainNet).

    Example:
        >>> translate_pairs(StainGANGenerator(ngf=4, n_blocks=1), [np.zeros((8, 8, 3), np.uint8)])[0].shape
        (8, 8, 3)
    """
    generator.eval()
    translate = getattr(generator, "translate", generator)
    return [to_uint8(translate(to_tensor(s)[None].to(device))[0]) for s in sources]


def validation_scores(generator: nn.Module, validation: PairSet, device: torch.device | str = "cpu") -> Fidelity:
    """The paper's metrics of ``generator`` on registered (source, target) pairs.

    Example:
        >>> from stain_transforms.testing import synthetic_tissue
        >>> image = synthetic_tissue(32)
        >>> scores = validation_scores(nn.Identity(), PairSet(["a"], [image], [image // 2]))
        >>> round(scores.ssim_source, 3), scores.psnr_target < 20
        (1.0, True)
    """
    return score_outputs(translate_pairs(generator, validation.sources, device), validation)


def _recipe_text(config: StainGANConfig, device: torch.device, seconds: float, epochs_done: int, steps: int) -> str:
    c = config
    if c.generator == "pixel":
        generator = f"generator a StainNet (3 layers of 1x1 convolutions, {c.pixel_channels} channels)"
    else:
        generator = f"generator ngf {c.ngf}, {c.n_blocks} residual blocks"
    return (
        f"Trained with `stain_transforms.training.staingan` (`stain-transforms train-staingan`): CycleGAN objective, "
        f"LSGAN adversarial loss, cycle L1 (lambda {c.lambda_cycle:g}), identity L1 ({c.lambda_identity:g} x lambda), "
        f"structure term {c.lambda_structure:g}, "
        f"Adam lr {c.lr:g}, betas ({c.beta1:g}, {c.beta2:g}), {c.epochs} epochs constant + {c.epochs_decay} linear decay "
        f"({epochs_done} done) of {steps} iterations, batch {c.batch_size}, random {c.crop_size} px crops"
        f"{' and flips' if c.flip else ''}, image pool {c.pool_size}; {generator}; "
        f"discriminator ndf {c.ndf}, {c.n_layers_d} layers; seed {c.seed}; {device.type}"
        f"{' with AMP' if c.amp or (c.amp is None and device.type == 'cuda') else ''}; {seconds / 60:.1f} min wall time."
    )


def train_staingan(
    source_dir: str | Path,
    target_dir: str | Path,
    out_dir: str | Path,
    config: StainGANConfig | None = None,
    resume: bool = False,
    validation: PairSet | None = None,
    card: dict[str, Any] | None = None,
    source_names: list[str] | None = None,
    target_names: list[str] | None = None,
) -> StainGANResult:
    """Train a StainGAN (CycleGAN) from unpaired source and target folders.

    Args:
        source_dir: images of the source stain domain (the one to normalize).
        target_dir: images of the target stain domain.
        out_dir: where the model, checkpoints, samples and log go.
        config: the training settings (default: CycleGAN's).
        resume: continue from ``out_dir/checkpoints/latest.pt`` when it exists (the settings that
            fix the architecture must match; the schedule, RNG, optimisers and pools are restored).
        validation: optional registered (source, target) pairs, scored with the paper's metrics at the end;
            a ResNet generator's guided filter setting is chosen on them (:mod:`~stain_transforms.training.guided`)
            and recorded, so that ``StainGANNormalize.from_pretrained(out_dir)`` applies it.
        card: extra model-card fields (``title``, ``source_domain``, ``target_domain``,
            ``training_data``, ``data_terms``, ``load_name``, ``metrics``).
        source_names: use only these file names of ``source_dir`` (default: all).
        target_names: use only these file names of ``target_dir`` (default: all).

    Raises:
        ValueError: for bad settings, empty folders, images smaller than the crop, or a checkpoint
            that does not match the architecture.

    Example:
        >>> import tempfile, PIL.Image
        >>> from stain_transforms.testing import synthetic_tissue
        >>> d = Path(tempfile.mkdtemp())
        >>> for sub, scale in (("he_a", 1.0), ("he_b", 1.4)):
        ...     _ = (d / sub).mkdir()
        ...     PIL.Image.fromarray(synthetic_tissue(32, stain_scale=scale)).save(d / sub / "x.png")
        >>> config = StainGANConfig(ngf=4, n_blocks=1, ndf=4, epochs=1, epochs_decay=0, crop_size=24, progress=False)
        >>> result = train_staingan(d / "he_a", d / "he_b", d / "run", config)
        >>> sorted(p.name for p in (d / "run").iterdir())
        ['README.md', 'checkpoints', 'config.json', 'curves.png', 'inverse', 'model.safetensors', 'samples', 'training_log.json']
    """
    config = config or StainGANConfig()
    out_dir = Path(out_dir)
    device = default_device(config.device)
    checkpoint_path = out_dir / CHECKPOINT
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    random.seed(config.seed)

    dataset = UnpairedImageDataset(source_dir, target_dir, config.crop_size, config.flip, source_names, target_names)
    loader = DataLoader(
        dataset, batch_size=config.batch_size, shuffle=True, drop_last=len(dataset) >= config.batch_size,
        num_workers=config.num_workers, pin_memory=device.type == "cuda",
    )
    steps = config.steps_per_epoch or len(loader)
    trainer = _Trainer(config, device)
    start_epoch, history = 0, []
    if resume and checkpoint_path.is_file():
        state = load_checkpoint(checkpoint_path)  # on the CPU: RNG states must stay there; load_state_dict moves weights
        saved = state["config"]
        defaults = asdict(StainGANConfig())  # checkpoints older than a field hold its default
        saved = {k: saved.get(k, defaults[k]) for k in ARCHITECTURE_FIELDS}
        mismatch = [f"{k}: {saved[k]} != {getattr(config, k)}" for k in ARCHITECTURE_FIELDS if saved[k] != getattr(config, k)]
        if mismatch:
            raise ValueError(f"{checkpoint_path} was trained with another architecture ({'; '.join(mismatch)})")
        start_epoch, history = trainer.load(state)

    n_samples = min(config.n_samples, len(dataset.source), len(dataset.target))
    samples_source = [_centre_crop(dataset.source[i], config.crop_size) for i in range(n_samples)]
    samples_target = [_centre_crop(dataset.target[i], config.crop_size) for i in range(n_samples)]
    start = time.perf_counter()
    elapsed_before = history[-1]["seconds"] if history else 0.0
    bar = tqdm(
        total=config.total_epochs * steps, initial=start_epoch * steps, desc="train StainGAN",
        disable=not config.progress, unit="it", dynamic_ncols=True,
    )
    epochs_done = start_epoch
    for epoch in range(start_epoch, config.total_epochs):
        trainer.generator.train(), trainer.inverse.train()
        sums: dict[str, float] = {}
        done = 0
        while done < steps:
            for batch in loader:
                losses = trainer.step(batch["source"].to(device) * 2 - 1, batch["target"].to(device) * 2 - 1)
                for key, value in losses.items():
                    sums[key] = sums.get(key, 0.0) + value
                done += 1
                bar.update(1)
                bar.set_postfix({k: f"{v / done:.3f}" for k, v in sums.items()}, refresh=False)
                if done == steps:
                    break
        lr = trainer.opt_g.param_groups[0]["lr"]  # the rate this epoch ran at
        for schedule in trainer.schedules:
            schedule.step()
        seconds = elapsed_before + time.perf_counter() - start
        record = {"epoch": epoch + 1, "seconds": seconds, "lr": lr, **{k: v / steps for k, v in sums.items()}}
        if validation is not None and len(validation) and ((epoch + 1) % config.val_every == 0 or epoch + 1 == config.total_epochs):
            scores = validation_scores(trainer.generator, validation, device)
            record.update(val_psnr=scores.psnr_target, val_ssim_target=scores.ssim_target, val_ssim_source=scores.ssim_source)
        history.append(record)
        write_curves(history, out_dir / "curves.png", "epoch", "StainGAN training", loss_keys=LOSS_KEYS)
        trainer.sample_grid(samples_source, samples_target, out_dir / "samples" / f"epoch_{epoch + 1:03d}.png")
        atomic_save(trainer.state(epoch + 1, history), checkpoint_path)
        epochs_done = epoch + 1
        if config.max_seconds is not None and time.perf_counter() - start > config.max_seconds:
            break
    bar.close()

    seconds = history[-1]["seconds"] if history else 0.0
    generator, inverse = exported(trainer.generator).eval(), exported(trainer.inverse).eval()
    result = StainGANResult(generator, inverse, out_dir, epochs_done, seconds, history, None, asdict(config))
    if validation is not None and len(validation):
        # The final scores, and (ResNet generators) the guided filter's choice, from one translation of the pairs.
        last = history[-1] if history else {}
        last_scored = "val_psnr" in last and last["epoch"] == epochs_done  # then the model is the one scored
        wants_guided = isinstance(generator, StainGANGenerator)
        outputs = translate_pairs(generator, validation.sources, device) if wants_guided or not last_scored else None
        if last_scored:
            result.val_metrics = Fidelity(last["val_ssim_target"], last["val_psnr"], last["val_ssim_source"])
        else:
            result.val_metrics = score_outputs(outputs, validation)
        if wants_guided:
            result.guided_setting, result.guided_metrics = _choose_guided_filter(outputs, validation)
    _save_generators(result, config, device, steps, card)
    return result


def _choose_guided_filter(outputs: list[np.ndarray], validation: PairSet) -> tuple[tuple[int, float], Fidelity]:
    """The guided filter setting for ``StainGANNormalize`` chosen on the validation pairs (the generator's
    ``outputs`` of their sources), with its scores there."""
    scores = {s: score_outputs(guided_outputs(validation.sources, outputs, *s), validation) for s in GUIDED_SETTINGS}
    setting = choose_guided(scores)
    return setting, scores[setting]


def _save_generators(result: StainGANResult, config: StainGANConfig, device: torch.device, steps: int, card: dict[str, Any] | None) -> None:
    fields = dict(card or {})
    text = [_recipe_text(config, device, result.seconds, result.epochs_done, steps)]
    if result.history:
        last = result.history[-1]
        text.append("Mean losses of the last epoch: " + ", ".join(f"{k} {last[k]:.3f}" for k in LOSS_KEYS if k in last) + ".")
    if result.val_metrics is not None:
        m = result.val_metrics
        text.append(
            "On the registered validation pairs: "
            f"SSIM target {m.ssim_target:.3f}, PSNR target {m.psnr_target:.2f} dB, SSIM source {m.ssim_source:.3f}."
        )
    if result.guided_setting is not None:
        (radius, eps), m = result.guided_setting, result.guided_metrics
        text.append(
            f"`StainGANNormalize.from_pretrained` applies it with a guided filter (radius {radius}, eps {eps:g}) that redraws "
            "each translation with the source's structure, chosen on the validation pairs (the best PSNR among the "
            f"settings keeping SSIM source >= {STRUCTURE_FLOOR}); there: SSIM target {m.ssim_target:.3f}, "
            f"PSNR target {m.psnr_target:.2f} dB, SSIM source {m.ssim_source:.3f}. `guided_radius=0` turns it off."
        )
    if fields.get("metrics"):
        text.append(fields["metrics"])
    fields["metrics"] = "\n\n".join(text)
    result.generator.cpu().save_pretrained(result.out_dir, model_card_kwargs=fields)
    if result.guided_setting is not None:
        radius, eps = result.guided_setting
        add_transform_settings(result.out_dir, "StainGANNormalize", {"guided_radius": radius, "guided_eps": eps})
    inverse_fields = dict(fields, source_domain=fields.get("target_domain"), target_domain=fields.get("source_domain"))
    inverse_fields.pop("load_name", None)
    result.inverse.cpu().save_pretrained(result.out_dir / "inverse", model_card_kwargs=inverse_fields)
    (result.out_dir / "training_log.json").write_text(json.dumps(result.summary(), indent=2, default=str) + "\n")
    result.generator.to(device), result.inverse.to(device)


__all__ = [
    "ImagePool",
    "PixelGenerator",
    "StainGANConfig",
    "StainGANResult",
    "label_rows",
    "make_generator",
    "train_staingan",
    "translate_pairs",
    "validation_scores",
]
