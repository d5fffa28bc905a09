"""StainNet (Kang et al., 2021): a per-pixel colour map made of 1x1 convolutions.

The network sees one RGB value at a time, so it is a function from colour to colour: for uint8
images it is exactly a 256^3 lookup table, and it can be exported as a ``.cube`` 3D LUT for image
tools (:meth:`StainNet.export_cube`).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ._card import STAINNET_CARD
from .hub_mixin import HubModelMixin

PAPER_URL = "https://doi.org/10.3389/fmed.2021.746307"
REPO_URL = "https://github.com/stain-transforms/stain_transforms"


class StainNet(
    nn.Module,
    HubModelMixin,
    library_name="stain-transforms",
    tags=["histopathology", "stain-normalization", "stainnet"],
    repo_url=REPO_URL,
    paper_url=PAPER_URL,
    model_card_template=STAINNET_CARD,
):
    """StainNet: ``n_layer`` 1x1 convolutions (3 -> n_channel -> ... -> 3) with ReLU between them.

    :meth:`forward` takes RGB in [0, 1] and returns RGB in [0, 1]: the network itself works on
    ``(rgb - 0.5) / 0.5`` and its output is mapped back with ``* 0.5 + 0.5`` and clamped, as in the
    official implementation. :meth:`forward_raw` is the bare network on that [-1, 1] scale, for
    training. ``self.net`` is the ``nn.Sequential`` of layers.

    Args:
        n_layer: number of 1x1 convolutions (at least 1).
        n_channel: width of the hidden layers.

    Shape:
        (B, 3, H, W) -> (B, 3, H, W).

    Example:
        >>> model = StainNet()
        >>> model(torch.full((1, 3, 4, 4), 0.5)).shape
        torch.Size([1, 3, 4, 4])
        >>> sum(p.numel() for p in model.parameters())
        1283
    """

    model_type = "stainnet"

    def __init__(self, n_layer: int = 3, n_channel: int = 32) -> None:
        super().__init__()
        if n_layer < 1 or n_channel < 1:
            raise ValueError(f"n_layer and n_channel must be positive, got {n_layer} and {n_channel}")
        self.n_layer = n_layer
        self.n_channel = n_channel
        widths = [3] + [n_channel] * (n_layer - 1) + [3]
        layers: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(itertools.pairwise(widths)):
            if i > 0:
                layers.append(nn.ReLU())
            layers.append(nn.Conv2d(c_in, c_out, kernel_size=1, bias=True))
        self.net = nn.Sequential(*layers)

    def forward_raw(self, x: torch.Tensor) -> torch.Tensor:
        """The bare network on the normalised scale: ``(rgb - 0.5) / 0.5`` in, unclamped out."""
        return self.net(x)

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        """Map RGB in [0, 1] to RGB in [0, 1]."""
        return (self.net((rgb - 0.5) / 0.5) * 0.5 + 0.5).clamp(0.0, 1.0)

    def forward_pixels(self, rgb: torch.Tensor) -> torch.Tensor:
        """The same map on channel-last colours (..., 3) in [0, 1], as matrix products.

        Equal to :meth:`forward` up to float rounding; faster for long lists of colours.

        Example:
            >>> model = StainNet()
            >>> x = torch.rand(2, 3, 5, 5)
            >>> y = model.forward_pixels(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            >>> torch.allclose(y, model(x), atol=1e-6)
            True
        """
        h = (rgb - 0.5) / 0.5
        for layer in self.net:
            if isinstance(layer, nn.Conv2d):
                h = torch.addmm(layer.bias, h.reshape(-1, h.shape[-1]), layer.weight.flatten(1).t()).reshape(
                    *h.shape[:-1], -1
                )
            else:
                h = layer(h)
        return (h * 0.5 + 0.5).clamp(0.0, 1.0)

    # -- the official checkpoints ------------------------------------------------------------

    @classmethod
    def from_official_checkpoint(cls, path: str | Path) -> StainNet:
        """Load a checkpoint of the official StainNet code (github.com/khtao/StainNet).

        Those files are ``torch.save``'d state dicts of ``StainNet.rgb_trans``, an ``nn.Sequential``
        of 1x1 convolutions and ReLUs: keys ``rgb_trans.{0,2,4}.{weight,bias}`` for the 3-layer,
        32-channel model. They are renamed to ``net.{0,2,4}.*``; ``n_layer`` and ``n_channel`` are
        read off the tensor shapes; a ``module.`` prefix (DataParallel) is dropped. The official
        preprocessing, ``(rgb / 255 - 0.5) / 0.5`` in and ``* 0.5 + 0.5`` out, is what
        :meth:`forward` does, so results match the official network.

        The official checkpoints carry no licence: load them for comparison, don't redistribute.

        Raises:
            ValueError: if the file is not such a state dict.
        """
        path = Path(path)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise ValueError(f"cannot read {path} as a PyTorch checkpoint ({error})") from error
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise ValueError(f"{path} does not hold a state dict")
        renamed = {}
        for key, value in state.items():
            key = key.removeprefix("module.")
            if not key.startswith("rgb_trans."):
                raise ValueError(f"{path}: unexpected key {key!r}; official StainNet keys start with 'rgb_trans.'")
            renamed["net." + key.removeprefix("rgb_trans.")] = value
        weights = [renamed[k] for k in sorted(renamed, key=lambda k: int(k.split(".")[1])) if k.endswith("weight")]
        if not weights or any(w.ndim != 4 or w.shape[-2:] != (1, 1) for w in weights):
            raise ValueError(f"{path}: expected 1x1 convolution weights under rgb_trans.*")
        n_channel = weights[0].shape[0] if len(weights) > 1 else 32
        model = cls(n_layer=len(weights), n_channel=n_channel)
        model.load_state_dict(renamed, strict=True)
        return model.eval()

    # -- exporting ---------------------------------------------------------------------------

    @torch.no_grad()
    def export_cube(self, path: str | Path, size: int = 33, title: str = "StainNet") -> Path:
        """Write the colour map as an Adobe/Resolve ``.cube`` 3D LUT of ``size``^3 entries.

        The file lists output RGB in [0, 1] for every grid input, red varying fastest, then green,
        then blue, as the Adobe Cube LUT specification requires. Image tools interpolate between
        grid points (trilinear or tetrahedral); 33 points per axis is the usual resolution.

        Example:
            >>> import tempfile, os
            >>> with tempfile.TemporaryDirectory() as d:
            ...     p = StainNet().export_cube(os.path.join(d, "net.cube"), size=5)
            ...     open(p).read().count("\\n")
            129
        """
        if not 2 <= size <= 256:
            raise ValueError(f"size must be between 2 and 256, got {size}")
        grid = torch.linspace(0.0, 1.0, size, dtype=torch.float64)
        blue, green, red = torch.meshgrid(grid, grid, grid, indexing="ij")  # red varies fastest
        rgb = torch.stack([red, green, blue], dim=-1).reshape(-1, 3)
        param = next(self.parameters())
        out = self.forward_pixels(rgb.to(param)).double().cpu().numpy()
        path = Path(path)
        lines = [f'TITLE "{title}"', f"LUT_3D_SIZE {size}", "DOMAIN_MIN 0.0 0.0 0.0", "DOMAIN_MAX 1.0 1.0 1.0"]
        lines += [" ".join(f"{v:.6f}" for v in row) for row in np.asarray(out)]
        path.write_text("\n".join(lines) + "\n")
        return path


# torch.save of the model, or of a transform holding it, loads with torch.load's default weights_only=True.
torch.serialization.add_safe_globals([StainNet, nn.Sequential, nn.Conv2d, nn.ReLU])
