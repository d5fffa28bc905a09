"""The 70x70 PatchGAN discriminator of CycleGAN / pix2pix, for training StainGAN."""

from __future__ import annotations

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn


class PatchGANDiscriminator(nn.Module, PyTorchModelHubMixin, library_name="stain-transforms", tags=["staingan"]):
    """CycleGAN's ``NLayerDiscriminator`` with instance norm: one real/fake logit per image patch.

    4x4 convolutions: ``n_layers`` stride-2 layers (the first without norm), one stride-1 layer,
    and a 1-channel output layer; LeakyReLU(0.2) between. With ``n_layers=3`` each output
    sees a 70x70 patch. The state-dict keys (``model.0...``) match CycleGAN's ``net_D`` files.

    Args:
        input_nc: input channels.
        ndf: filters of the first layer.
        n_layers: stride-2 layers.

    Shape:
        (B, input_nc, H, W) -> (B, 1, H', W'), H' = H / 2**n_layers - 2.

    Example:
        >>> d = PatchGANDiscriminator(ndf=8)
        >>> d(torch.zeros(2, 3, 64, 64)).shape
        torch.Size([2, 1, 6, 6])
    """

    def __init__(self, input_nc: int = 3, ndf: int = 64, n_layers: int = 3) -> None:
        super().__init__()
        if min(input_nc, ndf, n_layers) < 1:
            raise ValueError("input_nc, ndf and n_layers must be positive")
        layers: list[nn.Module] = [nn.Conv2d(input_nc, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [
                nn.Conv2d(ndf * prev, ndf * mult, 4, stride=stride, padding=1),
                nn.InstanceNorm2d(ndf * mult, affine=False, track_running_stats=False),
                nn.LeakyReLU(0.2, True),
            ]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Patch logits for a batch in [-1, 1]."""
        return self.model(x)
