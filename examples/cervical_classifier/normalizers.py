"""The stain normalizers of the study, all from ``stain_transforms``: Macenko, StainGAN and StainNet.

Each one maps site-B images back to site A's colours, and each learns only from images that are
*not* in the test set:

- Macenko is fitted on the classifier's training images (site A) with ``MacenkoNormalize.fit``.
- StainGAN is trained by the library's CycleGAN trainer
  (:func:`stain_transforms.training.staingan.train_staingan`), unpaired, with the site-B pool
  (held-out training images shifted to site B) as the source domain and the classifier's training
  images (site A) as the target domain.
- StainNet is distilled from that StainGAN (:func:`stain_transforms.training.distill`) on the
  site-B pool, as in the StainNet paper: the teacher's outputs are the targets.

The trained models are then applied as the library's transforms, ``StainGANNormalize`` and
``StainNetNormalize`` (loaded with ``from_pretrained(folder)`` when reused).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from stain_transforms import MacenkoNormalize, StainGANNormalize, StainNetNormalize
from stain_transforms.files import write_image_atomic
from stain_transforms.models import StainGANGenerator, StainNet
from stain_transforms.training import DistillConfig, distill, pairs_from_teacher
from stain_transforms.training.staingan import StainGANConfig, train_staingan

NORMALIZERS = ("macenko", "staingan", "stainnet")
Normalizer = Callable[[torch.Tensor], torch.Tensor]  # (B, 3, H, W) float in [0, 1] -> same


@dataclass
class NormalizerSettings:
    """Sizes and budgets of the StainGAN and StainNet training (defaults: StainGAN's and StainNet's papers)."""

    gan_ngf: int = 64
    gan_blocks: int = 9
    gan_ndf: int = 64
    gan_layers_d: int = 3
    gan_crop: int = 256
    gan_batch: int = 1
    gan_epochs: int = 100
    gan_epochs_decay: int = 100
    gan_steps_per_epoch: int | None = None
    gan_lr: float = 2e-4
    gan_max_minutes: float | None = None
    stainnet_recipe: str = "fast"
    stainnet_steps: int = 1500
    stainnet_epochs: int = 300
    seed: int = 0


def write_folder(images: list[np.ndarray], names: list[str], folder: Path) -> Path:
    """Write HWC uint8 images as PNG files (lossless, so the trainers see exactly these pixels)."""
    folder.mkdir(parents=True, exist_ok=True)
    for image, name in zip(images, names):
        write_image_atomic(image, folder / f"{Path(name).stem}.png", overwrite=True)
    return folder


def fit_macenko(site_a_images: torch.Tensor) -> MacenkoNormalize:
    """Macenko fitted on many site-A images (median of their stain matrices and maximum concentrations)."""
    return MacenkoNormalize().fit(site_a_images, progress=False)


def train_staingan_b_to_a(
    site_b_dir: Path, site_a_dir: Path, out_dir: Path, settings: NormalizerSettings, resume: bool = False
) -> StainGANGenerator:
    """Train a StainGAN from site B (source) to site A (target) with the library's trainer.

    ``resume`` continues an interrupted training from its last epoch checkpoint in ``out_dir``.
    """
    s = settings
    config = StainGANConfig(
        ngf=s.gan_ngf, n_blocks=s.gan_blocks, ndf=s.gan_ndf, n_layers_d=s.gan_layers_d, crop_size=s.gan_crop,
        batch_size=s.gan_batch, epochs=s.gan_epochs, epochs_decay=s.gan_epochs_decay,
        steps_per_epoch=s.gan_steps_per_epoch, lr=s.gan_lr, seed=s.seed,
        max_seconds=None if s.gan_max_minutes is None else 60.0 * s.gan_max_minutes,
    )
    card = {
        "title": "StainGAN for the cervical classifier example (synthetic site B to site A)",
        "source_domain": "site B: cervical LBC images re-stained and re-scanned by examples/cervical_classifier/site_shift.py",
        "target_domain": "site A: the original cervical LBC images",
        "training_data": "Liquid based cytology pap smear images (Mendeley Data, CC BY 4.0), training split only",
        "data_terms": "CC BY 4.0",
    }
    return train_staingan(site_b_dir, site_a_dir, out_dir, config, resume=resume, card=card).generator.eval()


def distill_stainnet(site_b_dir: Path, teacher: StainGANGenerator, out_dir: Path, settings: NormalizerSettings) -> StainNet:
    """Distil a StainNet from the StainGAN's outputs on the site-B pool (a fifth held out for validation)."""
    pairs = pairs_from_teacher(site_b_dir, teacher, progress=False)
    names = list(pairs.names)
    rng = np.random.default_rng(settings.seed)
    rng.shuffle(names)
    n_val = max(1, len(names) // 5) if len(names) > 1 else 0
    val = pairs.subset(sorted(names[:n_val])) if n_val else None
    train = pairs.subset(sorted(names[n_val:]))
    config = DistillConfig(
        recipe=settings.stainnet_recipe, steps=settings.stainnet_steps, epochs=settings.stainnet_epochs,
        crop_size=min(256, *(min(s.shape[:2]) for s in pairs.sources)), seed=settings.seed,
        val_every_steps=max(1, min(100, settings.stainnet_steps)),
    )
    card = {"title": "StainNet distilled from the cervical example's StainGAN (site B to site A)"}
    return distill(train, val, config, out_dir=out_dir, card=card).model.eval()


def load_or_train(
    names: list[str],
    site_a_dir: Path,
    site_b_dir: Path,
    site_a_images: torch.Tensor,
    out_dir: Path,
    settings: NormalizerSettings,
    resume: bool,
    staingan_weights: str | None = None,
    stainnet_weights: str | None = None,
) -> dict[str, Normalizer]:
    """The requested normalizers as functions on [0, 1] batches, trained (or reused) under ``out_dir``."""
    unknown = set(names) - set(NORMALIZERS)
    if unknown:
        raise ValueError(f"unknown normalizer(s) {sorted(unknown)}; choose from {NORMALIZERS}")
    out_dir.mkdir(parents=True, exist_ok=True)
    out: dict[str, Normalizer] = {}
    if "macenko" in names:
        path = out_dir / "macenko.safetensors"
        if resume and path.is_file():
            macenko = MacenkoNormalize.load(path)
        else:
            macenko = fit_macenko(site_a_images)
            macenko.save(path)
        out["macenko"] = macenko
    generator = None
    if "staingan" in names or ("stainnet" in names and stainnet_weights is None):
        gan_dir = Path(staingan_weights) if staingan_weights else out_dir / "staingan"
        if staingan_weights or (resume and (gan_dir / "model.safetensors").is_file()):
            print(f"using the StainGAN in {gan_dir}")
            staingan = StainGANNormalize.from_pretrained(gan_dir)
        else:
            staingan = StainGANNormalize(train_staingan_b_to_a(site_b_dir, site_a_dir, gan_dir, settings, resume))
        generator = staingan.model
        if "staingan" in names:
            out["staingan"] = staingan
    if "stainnet" in names:
        net_dir = Path(stainnet_weights) if stainnet_weights else out_dir / "stainnet"
        if stainnet_weights or (resume and (net_dir / "model.safetensors").is_file()):
            print(f"using the StainNet in {net_dir}")
            stainnet = StainNetNormalize.from_pretrained(net_dir)
        else:
            stainnet = StainNetNormalize(distill_stainnet(site_b_dir, generator, net_dir, settings))
        out["stainnet"] = stainnet
    (out_dir / "normalizer_settings.json").write_text(json.dumps(asdict(settings), indent=2))
    return out


@torch.no_grad()
def apply_normalizer(normalizer: Normalizer, images: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """Normalize a uint8 (N, 3, H, W) stack in batches; returns uint8."""
    out = torch.empty_like(images)
    for i in range(0, len(images), batch_size):
        x = images[i : i + batch_size].float() / 255.0
        out[i : i + batch_size] = (normalizer(x).clamp(0, 1) * 255.0).round().to(torch.uint8)
    return out
