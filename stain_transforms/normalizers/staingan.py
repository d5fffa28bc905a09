"""StainGAN as a transform: a CycleGAN generator applied in overlapping, blended tiles."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from ..functional.guided import guided_filter
from ..functional.tissue import MIN_COLOUR_RANGE, colour_range, informative_images
from ..hub import resolve_pretrained
from ..models.hub_mixin import push_folder, save_model_transform, transform_settings
from ..models.staingan import StainGANGenerator
from ..transform import StainTransform


class StainGANNormalize(StainTransform):
    """Normalize stain with a trained StainGAN generator (Shaban et al., 2019).

    Images larger than ``tile_size`` are cut into tiles that overlap by at least ``overlap``
    pixels, each tile is translated on its own, and the results are blended with a raised-cosine
    window that fades each tile in and out across the overlap (weights normalised to sum to one).
    Memory is that of one tile per image, so a 2048x2048 image translates in the memory of a
    512x512 one. Instance normalisation makes each tile's output depend on that tile's content;
    the smooth blend keeps the differences from showing as seams.

    Images with less than ``min_tissue_fraction`` tissue, and single-colour images, are returned
    unchanged, as the fitted normalizers do: a GAN translates texture, and on a blank or flat
    input it invents colour (instance normalisation maps every flat input to the same output).
    Within a large image, tiles of a single colour are kept as they are for the same reason.

    A generator with a receptive field of many pixels can move, blur or invent edges. With
    ``guided_radius`` set, each translated tile is passed through a guided filter
    (:func:`~stain_transforms.functional.guided.guided_filter`) with the source tile as guide: the
    output becomes a local affine function of the source colours, fitted to the generator's output
    in windows of side ``2 * guided_radius + 1``, so it keeps the generator's colours and the
    source's structure. On the MITOS dev pairs it raised the compact StainGANs' SSIM against the
    source from 0.87-0.91 to 0.93-0.95 at the same PSNR against the target or better (``docs/fidelity.md``).
    Models saved by ``train-staingan`` with validation pairs, and the bundled StainGAN, record a setting
    that :meth:`from_pretrained` applies.

    Args:
        model: a :class:`~stain_transforms.models.StainGANGenerator`.
        tile_size: side of the square tiles (at least 16).
        overlap: minimum overlap between neighbouring tiles (at most ``tile_size // 2``).
        luminosity_threshold: pixels with lightness L*/100 at or above this are background.
        min_tissue_fraction: images with less tissue than this are returned unchanged.
        guided_radius: window half-side of the guided filter that puts the source's structure
            back (0, the default, turns it off).
        guided_eps: the guided filter's ridge, in squared [0, 1] units: colour variation below about
            ``sqrt(guided_eps)`` within a window counts as flat; smaller keeps finer source structure.

    Example:
        >>> from stain_transforms.models import StainGANGenerator
        >>> from stain_transforms.testing import synthetic_tissue
        >>> normalize = StainGANNormalize(StainGANGenerator(ngf=8, n_blocks=1), tile_size=64, overlap=16)
        >>> out = normalize(synthetic_tissue(seed=0))
        >>> out.shape, out.dtype
        ((128, 128, 3), dtype('uint8'))
    """

    def __init__(
        self,
        model: StainGANGenerator,
        tile_size: int = 512,
        overlap: int = 64,
        *,
        luminosity_threshold: float = 0.8,
        min_tissue_fraction: float = 0.01,
        guided_radius: int = 0,
        guided_eps: float = 1e-3,
    ) -> None:
        super().__init__()
        if not isinstance(model, StainGANGenerator):
            raise ValueError(f"model must be a stain_transforms.models.StainGANGenerator, got {type(model).__name__}")
        if tile_size < 16:
            raise ValueError(f"tile_size must be at least 16, got {tile_size}")
        if not 0 <= overlap <= tile_size // 2:
            raise ValueError(f"overlap must be between 0 and tile_size // 2 = {tile_size // 2}, got {overlap}")
        if not 0.0 < luminosity_threshold <= 1.0:
            raise ValueError(f"luminosity_threshold must be in (0, 1], got {luminosity_threshold}")
        if not 0.0 <= min_tissue_fraction <= 1.0:
            raise ValueError(f"min_tissue_fraction must be in [0, 1], got {min_tissue_fraction}")
        if isinstance(guided_radius, bool) or not isinstance(guided_radius, int) or guided_radius < 0:
            raise ValueError(f"guided_radius must be a non-negative integer (0: no guided filter), got {guided_radius!r}")
        if not (isinstance(guided_eps, (int, float)) and 0 < guided_eps < float("inf")):
            raise ValueError(f"guided_eps must be a positive number, got {guided_eps!r}")
        self.model = model.eval()
        self.tile_size = tile_size
        self.overlap = overlap
        self.luminosity_threshold = luminosity_threshold
        self.min_tissue_fraction = min_tissue_fraction
        self.guided_radius = guided_radius
        self.guided_eps = float(guided_eps)

    @property
    def config(self) -> dict[str, Any]:
        """The constructor arguments other than the model."""
        return {
            "tile_size": self.tile_size,
            "overlap": self.overlap,
            "luminosity_threshold": self.luminosity_threshold,
            "min_tissue_fraction": self.min_tissue_fraction,
            "guided_radius": self.guided_radius,
            "guided_eps": self.guided_eps,
        }

    # -- loading and saving ------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        *,
        tile_size: int | None = None,
        overlap: int | None = None,
        luminosity_threshold: float | None = None,
        min_tissue_fraction: float | None = None,
        guided_radius: int | None = None,
        guided_eps: float | None = None,
        map_location: str = "cpu",
        **hub_kwargs: Any,
    ) -> StainGANNormalize:
        """Load weights by registry name, local folder or Hub repo id (see :mod:`stain_transforms.hub`).

        The settings default to those :meth:`save_pretrained` recorded, else to the constructor's
        defaults; those given here override them. ``hub_kwargs`` (``revision``, ``cache_dir``,
        ``token``, ``local_files_only``, ``endpoint``, ...) go to :func:`~stain_transforms.hub.resolve_pretrained`.

        Example:
            >>> import tempfile
            >>> folder = Path(tempfile.mkdtemp())
            >>> saved = StainGANNormalize(StainGANGenerator(ngf=8, n_blocks=1), tile_size=64, overlap=16)
            >>> _ = saved.save_pretrained(folder)
            >>> loaded = StainGANNormalize.from_pretrained(folder, overlap=8)
            >>> loaded.tile_size, loaded.overlap
            (64, 8)
        """
        folder = resolve_pretrained(name_or_path, kind=StainGANGenerator.model_type, **hub_kwargs)
        given = {
            "tile_size": tile_size,
            "overlap": overlap,
            "luminosity_threshold": luminosity_threshold,
            "min_tissue_fraction": min_tissue_fraction,
            "guided_radius": guided_radius,
            "guided_eps": guided_eps,
        }
        saved = transform_settings(folder, cls.__name__)
        settings = {name: saved[name] for name in given if name in saved}  # as saved ...
        settings.update({name: value for name, value in given.items() if value is not None})  # ... unless given
        return cls(StainGANGenerator.from_pretrained(folder, map_location=map_location), **settings)

    @classmethod
    def from_cyclegan_checkpoint(cls, path: str | Path, **kwargs: Any) -> StainGANNormalize:
        """Wrap a pytorch-CycleGAN-and-pix2pix ``latest_net_G_A.pth`` file."""
        return cls(StainGANGenerator.from_cyclegan_checkpoint(path), **kwargs)

    def save_pretrained(self, save_directory: str | Path, **kwargs: Any) -> Any:
        """Write ``config.json`` (the generator's, and this transform's settings: ``tile_size``, ``overlap``,
        ...), ``model.safetensors`` and a ``README.md`` card (``model_card_kwargs=...``).

        Example:
            >>> import json, tempfile
            >>> folder = Path(tempfile.mkdtemp())
            >>> _ = StainGANNormalize(StainGANGenerator(ngf=8, n_blocks=1), tile_size=64, overlap=16).save_pretrained(folder)
            >>> settings = json.loads((folder / "config.json").read_text())["transform"]
            >>> settings["tile_size"], settings["overlap"]
            (64, 16)
        """
        return save_model_transform(self, save_directory, **kwargs)

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> Any:
        """Upload :meth:`save_pretrained`'s files to the Hub (see :func:`~stain_transforms.models.hub_mixin.push_folder`).

        Raises:
            ConnectionError: when the Hub (``endpoint``, default ``HF_ENDPOINT``) cannot be reached.

        Example:
            >>> normalize = StainGANNormalize(StainGANGenerator(ngf=8, n_blocks=1))
            >>> normalize.push_to_hub("me/staingan", endpoint="http://127.0.0.1:9")  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ...
            ConnectionError: cannot push to 'me/staingan': the Hugging Face Hub at http://127.0.0.1:9 is unreachable ...
        """
        return push_folder(self.save_pretrained, repo_id, **kwargs)

    # -- transforming ------------------------------------------------------------------------

    def informative(self, batch: torch.Tensor) -> torch.Tensor:
        """Boolean (B,): which images have enough tissue and more than one colour to be translated."""
        return informative_images(batch, self.luminosity_threshold, self.min_tissue_fraction)

    def apply_batch(self, batch: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
        usable = self.informative(batch)
        if usable.all():
            return self._tiled(batch)
        out = batch.clone()
        if usable.any():
            out[usable] = self._tiled(batch[usable])
        return out

    def _translate(self, tile: torch.Tensor) -> torch.Tensor:
        """The generator on a (B, 3, h, w) tile; single-colour tiles are returned as they are."""
        flat = colour_range(tile) <= MIN_COLOUR_RANGE
        if flat.all():
            return tile
        model = self.model
        param = next(model.parameters())
        if param.device != tile.device:
            model.to(tile.device)
        # A float batch that autograd tracks keeps its graph (gradients reach the input, and the weights).
        with torch.set_grad_enabled(torch.is_grad_enabled() and tile.requires_grad):
            out = model.translate(tile.to(param.dtype)).to(tile.dtype)
            if self.guided_radius:
                # Half precision cannot solve the filter's 3x3 systems; float32 is ample for it.
                work = torch.promote_types(tile.dtype, torch.float32)
                out = guided_filter(tile.to(work), out.to(work), self.guided_radius, self.guided_eps).clamp_(0, 1).to(tile.dtype)
        return torch.where(flat[:, None, None, None], tile, out)

    def _tiled(self, batch: torch.Tensor) -> torch.Tensor:
        height, width = batch.shape[-2:]
        if height <= self.tile_size and width <= self.tile_size:
            return self._translate(batch)
        tile_h, tile_w = min(self.tile_size, height), min(self.tile_size, width)
        out = torch.zeros_like(batch)
        total = torch.zeros(height, width, dtype=batch.dtype, device=batch.device)
        for top in tile_starts(height, self.tile_size, self.overlap):
            rows = ramp_window(tile_h, self.overlap, top > 0, top + tile_h < height, batch)
            for left in tile_starts(width, self.tile_size, self.overlap):
                cols = ramp_window(tile_w, self.overlap, left > 0, left + tile_w < width, batch)
                weight = rows[:, None] * cols[None, :]
                region = (..., slice(top, top + tile_h), slice(left, left + tile_w))
                out[region] += self._translate(batch[region]) * weight
                total[region[1:]] += weight
        return out / total


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``length`` with at least ``overlap`` in common.

    Tiles step by ``tile - overlap``; the last one is aligned with the end.

    Example:
        >>> tile_starts(1000, 512, 64)
        [0, 448, 488]
        >>> tile_starts(300, 512, 64)
        [0]
    """
    if length <= tile:
        return [0]
    step = tile - overlap
    count = math.ceil((length - tile) / step) + 1
    return [min(i * step, length - tile) for i in range(count)]


def ramp_window(size: int, overlap: int, fade_in: bool, fade_out: bool, like: torch.Tensor) -> torch.Tensor:
    """1D blending weights: a raised-cosine ramp over ``overlap`` pixels at a faded side, 1 elsewhere.

    Two neighbours overlapping by exactly ``overlap`` have ramps summing to 1 (sin^2 + cos^2); the
    weights are positive, so any overlap can be normalised by the sum.

    Example:
        >>> w = ramp_window(8, 4, True, False, torch.zeros(1))
        >>> [round(v, 3) for v in w.tolist()]
        [0.038, 0.309, 0.691, 0.962, 1.0, 1.0, 1.0, 1.0]
    """
    weight = torch.ones(size, dtype=like.dtype, device=like.device)
    if overlap == 0:
        return weight
    ramp = torch.sin((torch.arange(overlap, dtype=torch.float64) + 0.5) / overlap * (math.pi / 2)) ** 2
    ramp = ramp.to(weight)
    if fade_in:
        weight[:overlap] *= ramp
    if fade_out:
        weight[size - overlap :] *= ramp.flip(0)
    return weight
