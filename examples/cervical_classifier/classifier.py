"""The classifier side of the study: ResNet, the E1/E2/E3 augmentations, training and metrics.

As in section 4 of the StainNet paper (Kang et al., 2021): a torchvision ResNet50 trained with
Adam (learning rate 2e-4), batch 64 and cross-entropy for 60 epochs, the learning rate divided by
10 at epochs 40 and 50, keeping the checkpoint with the best F1 score. Every number is a setting.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import nn
from torchvision.transforms import v2
from tqdm.auto import tqdm

from stain_transforms import HEDJitter

ARCHITECTURES = ("resnet18", "resnet34", "resnet50")
EXPERIMENTS = {
    "E1": "original: no augmentation",
    "E2": "BR: brightness and contrast in [0.75, 1.25] and rotation, each with p = 0.25",
    "E3": "BRH: BR plus HED jitter of factors in [0.75, 1.25], p = 0.25",
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class PretrainedWeightsError(RuntimeError):
    """ImageNet weights could not be obtained; the message says why and what to do."""


@dataclass
class TrainSettings:
    """Everything that defines one training run (defaults: the paper's)."""

    arch: str = "resnet50"
    epochs: int = 60
    batch_size: int = 64
    lr: float = 2e-4
    milestones: list[int] = field(default_factory=lambda: [40, 50])
    lr_gamma: float = 0.1
    pretrained: str | None = None
    seed: int = 0
    threads: int | None = None


def build_model(arch: str, num_classes: int, pretrained: str | None = None) -> nn.Module:
    """A torchvision ResNet with a ``num_classes`` head.

    ``pretrained`` is ``None`` (random initialisation), a local ``.pth``/``.safetensors`` file of
    ImageNet weights (a torchvision state dict; its 1000-class head is dropped), or ``"imagenet"``
    to let torchvision download them, which raises :class:`PretrainedWeightsError` with a plain
    message when there is no internet.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"--arch must be one of {ARCHITECTURES}, got {arch!r}")
    model = getattr(torchvision.models, arch)(weights=None)
    if pretrained is not None:
        model.load_state_dict(_imagenet_state_dict(arch, pretrained))
    model.fc = nn.Linear(model.fc.in_features, num_classes)
    return model


def _imagenet_state_dict(arch: str, pretrained: str) -> dict[str, torch.Tensor]:
    if pretrained == "imagenet":
        weights = torchvision.models.get_model_weights(arch).DEFAULT
        try:
            return weights.get_state_dict(progress=True)
        except Exception as error:  # urllib/OSError/SSL: any failure to fetch is the same for the user
            raise PretrainedWeightsError(
                f"could not download the ImageNet weights of {arch} from {weights.url} ({type(error).__name__}: "
                f"{error}). Without internet, download that file elsewhere and pass --pretrained PATH/TO/FILE.pth, "
                "or leave out --pretrained to train from random initialisation."
            ) from error
    path = Path(pretrained)
    if not path.is_file():
        raise PretrainedWeightsError(
            f"--pretrained {pretrained}: no such file. Give a local torchvision {arch} state dict "
            f"(e.g. the file at {torchvision.models.get_model_weights(arch).DEFAULT.url}), or 'imagenet' to download it."
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise PretrainedWeightsError(f"--pretrained {path}: cannot read it as a state dict ({error})") from error
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    reference = getattr(torchvision.models, arch)(weights=None).state_dict()
    body = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing = [k for k in reference if not k.startswith("fc.") and k not in body]
    if missing:
        raise PretrainedWeightsError(f"--pretrained {path} is not a {arch} state dict (missing e.g. {missing[0]})")
    # Keep the file's head if it fits, else the fresh one (replaced by a num_classes head anyway).
    return {**{k: reference[k] for k in reference if k.startswith("fc.")}, **body}


class RandomRotate90:
    """Rotate a CHW image by 90, 180 or 270 degrees (chosen at random) with probability ``p``.

    Right angles keep the whole field of view and add no black corners, which suits cytology.
    """

    def __init__(self, p: float) -> None:
        self.p = p

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if torch.rand(()) >= self.p:
            return image
        return torch.rot90(image, int(torch.randint(1, 4, ())), dims=(-2, -1))


def augmentation(experiment: str, p: float = 0.25) -> v2.Transform | None:
    """The training-time colour/geometry augmentation of ``experiment`` (uint8 CHW in, uint8 CHW out).

    E1: none. E2 (BR): brightness and contrast factors in [0.75, 1.25] and a right-angle rotation,
    each applied with probability ``p``. E3 (BRH): BR, then the library's
    :class:`stain_transforms.HEDJitter` with the paper's BRH range (factors in [0.75, 1.25], no
    shift), also with probability ``p``.
    """
    if experiment not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {experiment!r}; choose from {sorted(EXPERIMENTS)}")
    if experiment == "E1":
        return None
    steps: list = [
        v2.RandomApply([v2.ColorJitter(brightness=0.25)], p=p),
        v2.RandomApply([v2.ColorJitter(contrast=0.25)], p=p),
        RandomRotate90(p),
    ]
    if experiment == "E3":
        steps.append(HEDJitter.brh(p=p))
    return v2.Compose(steps)


class ImageTensorDataset(torch.utils.data.Dataset):
    """(image, label) pairs from an in-memory (N, 3, H, W) uint8 stack, augmented per sample."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: v2.Transform | None = None) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[index]
        if self.transform is not None:
            image = self.transform(image)
        return image, self.labels[index]


def to_model_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) to the float, ImageNet-standardised input of a torchvision ResNet."""
    x = images.float() / 255.0
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def classification_metrics(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> dict[str, float]:
    """Recall, precision, accuracy and F1 (as the paper's Table 3).

    Binary tasks score the positive class (index 1, e.g. ``abnormal``); more classes are
    macro-averaged. A class never predicted has precision 0 (and F1 0), not NaN.

    Example:
        >>> m = classification_metrics(np.array([1, 1, 0, 0]), np.array([1, 0, 1, 0]), 2)
        >>> [m[k] for k in ("recall", "precision", "accuracy", "f1")]
        [0.5, 0.5, 0.5, 0.5]
    """
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    classes = [1] if num_classes == 2 else list(range(num_classes))
    recalls, precisions, f1s = [], [], []
    for c in classes:
        tp = float(np.sum((predictions == c) & (labels == c)))
        fp = float(np.sum((predictions == c) & (labels != c)))
        fn = float(np.sum((predictions != c) & (labels == c)))
        recall = tp / (tp + fn) if tp + fn else 0.0
        precision = tp / (tp + fp) if tp + fp else 0.0
        recalls.append(recall)
        precisions.append(precision)
        f1s.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    return {
        "recall": float(np.mean(recalls)),
        "precision": float(np.mean(precisions)),
        "accuracy": float(np.mean(labels == predictions)) if len(labels) else 0.0,
        "f1": float(np.mean(f1s)),
    }


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 64) -> np.ndarray:
    """Predicted class indices of a uint8 (N, 3, H, W) stack."""
    model.eval()
    out = [model(to_model_input(images[i : i + batch_size])).argmax(1) for i in range(0, len(images), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.int64)


def train_classifier(
    experiment: str,
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    val_images: torch.Tensor,
    val_labels: torch.Tensor,
    num_classes: int,
    settings: TrainSettings,
    out_dir: Path,
) -> nn.Module:
    """Train one experiment; keep the checkpoint with the best validation F1 (``out_dir/best.pt``).

    Returns the model with the best checkpoint's weights. ``out_dir/history.json`` logs every epoch.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    model = build_model(settings.arch, num_classes, settings.pretrained)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, settings.milestones, gamma=settings.lr_gamma)
    dataset = ImageTensorDataset(train_images, train_labels, augmentation(experiment))
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=settings.batch_size, shuffle=True, generator=torch.Generator().manual_seed(settings.seed)
    )
    loss_fn = nn.CrossEntropyLoss()
    best_f1, history = -math.inf, []
    for epoch in range(1, settings.epochs + 1):
        model.train()
        total, seen = 0.0, 0
        for images, labels in tqdm(loader, desc=f"{experiment} epoch {epoch}/{settings.epochs}", leave=False):
            loss = loss_fn(model(to_model_input(images)), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss) * len(labels)
            seen += len(labels)
        scheduler.step()
        metrics = classification_metrics(val_labels.numpy(), predict(model, val_images), num_classes)
        improved = metrics["f1"] > best_f1
        if improved:
            best_f1 = metrics["f1"]
            torch.save(model.state_dict(), out_dir / "best.pt")
        history.append({"epoch": epoch, "train_loss": total / max(seen, 1), **{f"val_{k}": v for k, v in metrics.items()}})
        tqdm.write(
            f"{experiment} epoch {epoch}: loss {total / max(seen, 1):.4f}, validation F1 {metrics['f1']:.3f}"
            f" accuracy {metrics['accuracy']:.3f}{' (best so far, saved)' if improved else ''}"
        )
    (out_dir / "history.json").write_text(json.dumps({"settings": asdict(settings), "epochs": history}, indent=2))
    model.load_state_dict(torch.load(out_dir / "best.pt", weights_only=True))
    return model
