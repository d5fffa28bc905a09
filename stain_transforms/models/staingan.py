"""The StainGAN generator: the CycleGAN ResNet generator (Zhu et al., 2017; Shaban et al., 2019).

The layer list reproduces ``ResnetGenerator`` of pytorch-CycleGAN-and-pix2pix with instance norm,
so the state-dict keys (``model.0...``, ``model.1...``, ``model.10.conv_block.1...``) are the ones
of its ``latest_net_G_A.pth`` files and those load directly (:meth:`StainGANGenerator.from_cyclegan_checkpoint`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ._card import STAINGAN_CARD
from .hub_mixin import HubModelMixin

PAPER_URL = "https://arxiv.org/abs/1804.01601"
REPO_URL = "https://github.com/stain-transforms/stain_transforms"


def _norm(channels: int) -> nn.InstanceNorm2d:
    # As CycleGAN: no affine parameters and no running statistics, hence no state-dict entries.
    return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)


class ResnetBlock(nn.Module):
    """``x + conv_block(x)`` with two reflect-padded 3x3 convolutions (CycleGAN's ``ResnetBlock``)."""

    def __init__(self, dim: int, use_dropout: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3), _norm(dim), nn.ReLU(True)]
        if use_dropout:
            layers.append(nn.Dropout(0.5))
        layers += [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3), _norm(dim)]
        self.conv_block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class StainGANGenerator(
    nn.Module,
    HubModelMixin,
    library_name="stain-transforms",
    tags=["histopathology", "stain-normalization", "staingan", "cyclegan"],
    repo_url=REPO_URL,
    paper_url=PAPER_URL,
    model_card_template=STAINGAN_CARD,
):
    """CycleGAN's ResNet generator; input and output in [-1, 1] (:meth:`translate` works in [0, 1]).

    Reflect pad 3 + 7x7 conv, two stride-2 downsamplings, ``n_blocks`` residual blocks, two
    transposed-conv upsamplings, reflect pad 3 + 7x7 conv, Tanh; instance norm and ReLU between.
    Height and width must be multiples of 4 for the output to have the input's size
    (:meth:`translate` pads for you).

    Args:
        input_nc: input channels.
        output_nc: output channels.
        ngf: filters of the first layer.
        n_blocks: residual blocks (9 in StainGAN; CycleGAN's "resnet_6blocks" has 6).
        use_dropout: dropout in the residual blocks (old CycleGAN default; shifts the keys).

    Shape:
        (B, input_nc, H, W) -> (B, output_nc, H, W), H and W multiples of 4.

    Example:
        >>> g = StainGANGenerator(ngf=8, n_blocks=2)
        >>> g(torch.zeros(1, 3, 16, 16)).shape
        torch.Size([1, 3, 16, 16])
        >>> sorted(g.state_dict())[:2]
        ['model.1.bias', 'model.1.weight']
    """

    model_type = "staingan"

    def __init__(
        self, input_nc: int = 3, output_nc: int = 3, ngf: int = 64, n_blocks: int = 9, use_dropout: bool = False
    ) -> None:
        super().__init__()
        if min(input_nc, output_nc, ngf) < 1 or n_blocks < 0:
            raise ValueError("input_nc, output_nc and ngf must be positive and n_blocks non-negative")
        self.input_nc, self.output_nc, self.ngf, self.n_blocks = input_nc, output_nc, ngf, n_blocks
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(input_nc, ngf, 7), _norm(ngf), nn.ReLU(True)]
        for i in range(2):
            c = ngf * 2**i
            layers += [nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), _norm(2 * c), nn.ReLU(True)]
        layers += [ResnetBlock(ngf * 4, use_dropout) for _ in range(n_blocks)]
        for i in range(2):
            c = ngf * 2 ** (2 - i)
            layers += [
                nn.ConvTranspose2d(c, c // 2, 3, stride=2, padding=1, output_padding=1),
                _norm(c // 2),
                nn.ReLU(True),
            ]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Translate a batch in [-1, 1] (CycleGAN's scale)."""
        return self.model(x)

    def translate(self, rgb: torch.Tensor) -> torch.Tensor:
        """Translate RGB in [0, 1] to RGB in [0, 1], for any height and width of at least 2.

        The image is padded (edge replication) to a multiple of 4 and at least 8 pixels, which
        the strided layers and reflect paddings need, and the result is cropped back.
        """
        height, width = rgb.shape[-2:]
        pad_h, pad_w = _padded_size(height) - height, _padded_size(width) - width
        x = (rgb - 0.5) / 0.5
        if pad_h or pad_w:
            x = nn.functional.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        out = self.model(x)[..., :height, :width]
        return (out * 0.5 + 0.5).clamp(0.0, 1.0)

    @classmethod
    def from_cyclegan_state_dict(cls, state: Mapping[str, torch.Tensor]) -> StainGANGenerator:
        """Build a generator from a pytorch-CycleGAN-and-pix2pix ``ResnetGenerator`` state dict.

        The architecture (channels, ``ngf``, ``n_blocks``, dropout) is read off the keys and shapes.
        A ``module.`` prefix (DataParallel) and stale instance-norm running statistics (written
        by old PyTorch versions, removed the same way by CycleGAN's own loader) are dropped.

        Raises:
            ValueError: if the keys are not those of a CycleGAN ResNet generator.
        """
        cleaned = {}
        for key, value in state.items():
            key = key.removeprefix("module.")
            if key.rsplit(".", 1)[-1] in ("running_mean", "running_var", "num_batches_tracked"):
                continue
            cleaned[key] = value
        if "model.1.weight" not in cleaned:
            raise ValueError(
                f"not a CycleGAN ResnetGenerator state dict: no 'model.1.weight' (first keys: {sorted(cleaned)[:4]})"
            )
        first = cleaned["model.1.weight"]
        blocks = sorted({int(m.group(1)) for k in cleaned if (m := re.match(r"model\.(\d+)\.conv_block\.", k))})
        use_dropout = any(".conv_block.6." in k for k in cleaned)
        last = max(int(k.split(".")[1]) for k in cleaned if not k.split(".")[2].startswith("conv_block"))
        model = cls(
            input_nc=first.shape[1],
            output_nc=cleaned[f"model.{last}.weight"].shape[0],
            ngf=first.shape[0],
            n_blocks=len(blocks),
            use_dropout=use_dropout,
        )
        try:
            model.load_state_dict(cleaned, strict=True)
        except RuntimeError as error:
            raise ValueError(f"state dict does not match a CycleGAN ResnetGenerator: {error}") from error
        return model.eval()

    @classmethod
    def from_cyclegan_checkpoint(cls, path: str | Path) -> StainGANGenerator:
        """Load a ``latest_net_G_A.pth`` (or ``*_net_G*.pth``) file saved by pytorch-CycleGAN-and-pix2pix.

        Example (not run: needs a checkpoint file):
            >>> g = StainGANGenerator.from_cyclegan_checkpoint("checkpoints/staingan/latest_net_G_A.pth")  # doctest: +SKIP
        """
        path = Path(path)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise ValueError(f"cannot read {path} as a PyTorch checkpoint ({error})") from error
        if not isinstance(state, Mapping):
            raise ValueError(f"{path} does not hold a state dict")
        return cls.from_cyclegan_state_dict(state)


def _padded_size(size: int) -> int:
    return max(8, -(-size // 4) * 4)


def init_cyclegan_weights(module: nn.Module, gain: float = 0.02) -> nn.Module:
    """CycleGAN's "normal" initialisation: conv weights ~ N(0, gain), biases 0; returns ``module``.

    Example:
        >>> g = init_cyclegan_weights(StainGANGenerator(ngf=8, n_blocks=1))
        >>> float(g.model[1].bias.detach().abs().max())
        0.0
    """
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(layer.weight, 0.0, gain)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        elif isinstance(layer, nn.BatchNorm2d) or (isinstance(layer, nn.InstanceNorm2d) and layer.affine):
            nn.init.normal_(layer.weight, 1.0, gain)
            nn.init.zeros_(layer.bias)
    return module


# torch.save of the generator, or of a transform holding it, loads with torch.load's default weights_only=True.
torch.serialization.add_safe_globals(
    [
        StainGANGenerator, ResnetBlock, nn.Sequential, nn.Conv2d, nn.ConvTranspose2d, nn.ReflectionPad2d,
        nn.InstanceNorm2d, nn.ReLU, nn.Tanh, nn.Dropout,
    ]
)
