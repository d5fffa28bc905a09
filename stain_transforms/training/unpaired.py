"""A StainNet from unpaired images, with no teacher: match the target domain's colour distribution.

StainNet maps each pixel's colour on its own, so all it can learn from two unpaired folders is a
map ``G`` under which the colours of the source images are distributed as those of the target
images. This trainer learns that map directly:

- **distribution term**: the sliced Wasserstein distance between ``G(source colours)`` and target
  colours (project both onto random directions of RGB, sort, compare the sorted values; squared
  error, averaged over directions). It is zero exactly when the two distributions agree on every
  direction, that is when they are equal;
- **cycle term** (``lambda_cycle``): a second StainNet ``F`` maps target to source colours the
  same way, and ``F(G(s))`` must give ``s`` back and ``G(F(t))`` give ``t``. Among the many maps
  that match two distributions (any shuffle of equally common colours does), this keeps the
  invertible, colour-ordering ones: a pale pink stays the palest pink, not a dark purple.

Both networks see colours, never images: every step draws ``pixel_batch`` pixels of each folder
(distinct colours counted once and drawn in proportion to their counts), so training takes
seconds and cannot alter structure, by construction. Compare with distillation
(:mod:`~stain_transforms.training.distill`), which needs a teacher's outputs for each source image.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..metrics import Fidelity
from ..models import StainNet
from .distill import PairSet, default_device, validation_fidelity
from .schedules import warmup_cosine


@dataclass
class UnpairedStainNetConfig:
    """Settings of :func:`train_stainnet_unpaired`.

    Args:
        steps: Adam steps (a 5% linear warm-up, then cosine decay to zero).
        pixel_batch: pixels drawn from each domain per step.
        projections: random directions of the sliced Wasserstein distance per step.
        lr: peak Adam learning rate.
        lambda_cycle: weight of the cycle-consistency L1 term.
        n_layer: StainNet layers.
        n_channel: StainNet hidden width.
        seed: seeds the initialisation and the draws.
        device: torch device (default: CUDA when available, else CPU).
        val_every: score the validation pairs (when given) every this many steps, for the curves.
        progress: show a tqdm bar.

    Example:
        >>> UnpairedStainNetConfig().steps
        2000
    """

    steps: int = 2000
    pixel_batch: int = 4096
    projections: int = 32
    lr: float = 0.005
    lambda_cycle: float = 1.0
    n_layer: int = 3
    n_channel: int = 32
    seed: int = 0
    device: str | None = None
    val_every: int = 200
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("steps", "pixel_batch", "projections", "n_layer", "n_channel", "val_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.lambda_cycle < 0:
            raise ValueError("lr must be positive and lambda_cycle non-negative")


class ColourSampler:
    """Draws pixels of a set of images: distinct colours counted once, drawn in proportion to their counts.

    Example:
        >>> image = np.zeros((2, 2, 3), np.uint8); image[0, 0] = 255
        >>> sampler = ColourSampler([image])
        >>> sampler.colours.tolist(), sampler.counts.tolist()
        ([[0, 0, 0], [255, 255, 255]], [3, 1])
        >>> sampler.draw(5, torch.Generator().manual_seed(0)).shape
        torch.Size([5, 3])
    """

    def __init__(self, images: Sequence[np.ndarray], device: torch.device | str = "cpu") -> None:
        if not images:
            raise ValueError("no images to draw colours from")
        for image in images:
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise ValueError(f"images must be HWC uint8 RGB, got {image.dtype} of shape {image.shape}")
        packed = np.concatenate([(i.reshape(-1, 3).astype(np.int64) * (65536, 256, 1)).sum(1) for i in images])
        unique, counts = np.unique(packed, return_counts=True)
        colours = np.stack([unique >> 16, (unique >> 8) & 255, unique & 255], 1).astype(np.uint8)
        self.colours = torch.from_numpy(colours)
        self.counts = torch.from_numpy(counts)
        self._scaled = (self.colours.to(device, torch.float32) / 255.0) * 2 - 1  # StainNet's [-1, 1] scale
        self._cumulative = self.counts.to(device, torch.float64).cumsum(0)

    def draw(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` colours on StainNet's [-1, 1] scale, (n, 3)."""
        u = torch.rand(n, generator=generator, dtype=torch.float64).to(self._cumulative.device) * self._cumulative[-1]
        index = torch.searchsorted(self._cumulative, u, right=True).clamp_(max=len(self.counts) - 1)
        return self._scaled[index]


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """Mean over ``directions`` (K, C) of the squared 1-D Wasserstein distance of the projected samples.

    ``a`` and ``b`` are (N, C) samples of equal size; each 1-D distance compares sorted projections.

    Example:
        >>> x = torch.randn(1000, 3)
        >>> d = torch.nn.functional.normalize(torch.randn(8, 3), dim=1)
        >>> float(sliced_wasserstein(x, x[torch.randperm(1000)], d))
        0.0
        >>> round(float(sliced_wasserstein(x, x + torch.tensor([1.0, 0, 0]), torch.eye(3))), 4)  # shift 1 on one of 3 axes
        0.3333
    """
    if a.shape != b.shape:
        raise ValueError(f"sliced_wasserstein needs samples of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    # (K, N): each direction's projections contiguous, which torch sorts far faster than columns.
    projected_a = torch.sort(directions @ a.T, dim=1).values
    projected_b = torch.sort(directions @ b.T, dim=1).values
    return ((projected_a - projected_b) ** 2).mean()


def _pixels(net: StainNet, colours: torch.Tensor) -> torch.Tensor:
    # (N, 3) colours on the [-1, 1] scale through the bare network, as a (1, 3, N, 1) image.
    return net.forward_raw(colours.T[None, :, :, None])[0, :, :, 0].T


@dataclass
class UnpairedStainNetResult:
    """What :func:`train_stainnet_unpaired` returns: the source -> target StainNet and its inverse.

    Example:
        >>> result = UnpairedStainNetResult(StainNet(), StainNet(), seconds=1.0, history=[])
        >>> result.summary()["seconds"], result.summary()["val_metrics_vs_target"]
        (1.0, None)
    """

    model: StainNet
    inverse: StainNet
    seconds: float
    history: list[dict[str, float]]
    val_metrics: Fidelity | None = None
    config: dict[str, Any] = field(default_factory=dict)
    out_dir: Path | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "seconds": self.seconds,
            "val_metrics_vs_target": self.val_metrics.as_dict() if self.val_metrics else None,
            "config": self.config,
            "history": self.history,
            "out_dir": str(self.out_dir) if self.out_dir else None,
        }


def train_stainnet_unpaired(
    sources: Sequence[np.ndarray],
    targets: Sequence[np.ndarray],
    config: UnpairedStainNetConfig | None = None,
    validation: PairSet | None = None,
    out_dir: str | Path | None = None,
    card: dict[str, Any] | None = None,
) -> UnpairedStainNetResult:
    """Train a StainNet that maps the colours of ``sources`` onto those of ``targets`` (unpaired, HWC uint8).

    Args:
        sources: images of the source stain domain (any sizes; only their pixels' colours are used).
        targets: images of the target domain, not registered to the sources.
        config: the settings (see :class:`UnpairedStainNetConfig`).
        validation: optional registered (source, target) pairs, scored every ``val_every`` steps
            for the curves and at the end; nothing is chosen on them (the last model is returned).
        out_dir: if given, the model is written there with ``save_pretrained``, the inverse to
            ``inverse/``, the history to ``training_log.json`` and the curves to ``curves.png``.
        card: extra model-card fields (``title``, ``source_domain``, ``target_domain``,
            ``training_data``, ``data_terms``, ``load_name``).

    Example:
        >>> from stain_transforms.testing import synthetic_tissue
        >>> pale = [synthetic_tissue(48, seed=i, stain_scale=0.7) for i in range(4)]
        >>> dark = [synthetic_tissue(48, seed=10 + i, stain_scale=1.4) for i in range(4)]
        >>> result = train_stainnet_unpaired(pale, dark, UnpairedStainNetConfig(steps=150, progress=False))
        >>> before = float(np.mean([p.mean() for p in pale]))
        >>> after = float(result.model(torch.from_numpy(pale[0]).permute(2, 0, 1)[None] / 255.0).detach().mean() * 255)
        >>> after < before - 5      # darker, as the target domain is
        True
    """
    config = config or UnpairedStainNetConfig()
    device = default_device(config.device)
    torch.manual_seed(config.seed)
    draws = torch.Generator().manual_seed(config.seed)
    source_pool, target_pool = ColourSampler(sources, device), ColourSampler(targets, device)
    model = StainNet(config.n_layer, config.n_channel).to(device)
    inverse = StainNet(config.n_layer, config.n_channel).to(device)
    parameters = list(model.parameters()) + list(inverse.parameters())
    optimizer = torch.optim.Adam(parameters, lr=config.lr)
    schedule = warmup_cosine(optimizer, config.steps)
    history: list[dict[str, float]] = []
    start = time.perf_counter()
    bar = tqdm(range(1, config.steps + 1), desc="StainNet (unpaired)", disable=not config.progress, unit="step")
    running: dict[str, float] = {}
    for step in bar:
        s, t = source_pool.draw(config.pixel_batch, draws), target_pool.draw(config.pixel_batch, draws)
        directions = torch.nn.functional.normalize(torch.randn(config.projections, 3, generator=draws), dim=1).to(device)
        fake_t, fake_s = _pixels(model, s), _pixels(inverse, t)
        distribution = sliced_wasserstein(fake_t, t, directions) + sliced_wasserstein(fake_s, s, directions)
        cycle = (_pixels(inverse, fake_t) - s).abs().mean() + (_pixels(model, fake_s) - t).abs().mean()
        loss = distribution + config.lambda_cycle * cycle
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        for key, value in (("swd", distribution.item()), ("cyc", cycle.item())):
            running[key] = value if key not in running else 0.95 * running[key] + 0.05 * value
        if step % config.val_every == 0 or step == config.steps:
            record = {"step": step, "seconds": time.perf_counter() - start, **running}
            if validation is not None and len(validation):
                scores = validation_fidelity(model, validation, device)
                record.update(val_psnr=scores.psnr_target, val_ssim_target=scores.ssim_target, val_ssim_source=scores.ssim_source)
                model.train()
            history.append(record)
            bar.set_postfix({k: f"{v:.4f}" for k, v in running.items()}, refresh=False)
    model.eval()
    inverse.eval()
    last = history[-1]  # the last step is always scored: these are the returned model's figures
    val_metrics = Fidelity(last["val_ssim_target"], last["val_psnr"], last["val_ssim_source"]) if "val_psnr" in last else None
    result = UnpairedStainNetResult(model, inverse, time.perf_counter() - start, history, val_metrics, asdict(config))
    if out_dir is not None:
        result.out_dir = _save(result, Path(out_dir), card)
    return result


def _save(result: UnpairedStainNetResult, out_dir: Path, card: dict[str, Any] | None) -> Path:
    from .curves import write_curves

    c = result.config
    fields = dict(card or {})
    text = (
        f"Trained with `stain_transforms.training.unpaired` (`stain-transforms train-stainnet-unpaired`), no teacher: "
        f"sliced Wasserstein distance between the translated source colours and the target colours "
        f"({c['projections']} random directions per step) plus cycle L1 ({c['lambda_cycle']:g}) through an inverse StainNet; "
        f"Adam, lr {c['lr']:g} with warm-up and cosine decay, {c['steps']} steps of {c['pixel_batch']} pixels per domain; seed {c['seed']}; "
        f"{result.seconds:.0f} s."
    )
    if result.val_metrics is not None:
        m = result.val_metrics
        text += (
            f"\n\nOn the registered validation pairs: SSIM target {m.ssim_target:.3f}, PSNR target {m.psnr_target:.2f} dB, "
            f"SSIM source {m.ssim_source:.3f}."
        )
    if fields.get("metrics"):
        text += "\n\n" + fields["metrics"]
    fields["metrics"] = text
    result.model.cpu().save_pretrained(out_dir, model_card_kwargs=fields)
    inverse_fields = dict(fields, source_domain=fields.get("target_domain"), target_domain=fields.get("source_domain"))
    inverse_fields.pop("load_name", None)
    result.inverse.cpu().save_pretrained(out_dir / "inverse", model_card_kwargs=inverse_fields)
    (out_dir / "training_log.json").write_text(json.dumps(result.summary() | {"out_dir": str(out_dir)}, indent=2) + "\n")
    write_curves(result.history, out_dir / "curves.png", "step", "StainNet (unpaired)", loss_keys=("swd", "cyc"))
    return out_dir


__all__ = [
    "ColourSampler",
    "UnpairedStainNetConfig",
    "UnpairedStainNetResult",
    "sliced_wasserstein",
    "train_stainnet_unpaired",
]
