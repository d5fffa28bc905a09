"""Fit-then-transform normalizers whose fitted state is a set of registered buffers."""

from __future__ import annotations

import copy
import json
from collections.abc import Sized
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..conversion import iter_batches
from ..functional.tissue import informative_images
from ..models._card import FITTED_CARD
from ..models.hub_mixin import HubModelMixin
from ..registry import FITTED, METHODS, register, transform_class
from ..transform import StainTransform

# Fitting on more images than this shows a progress bar.
PROGRESS_MIN_ITEMS = 8


class StainNormalizer(
    HubModelMixin,  # first: its __init_subclass__ takes the card keywords below, then calls v2.Transform's
    StainTransform,
    library_name="stain-transforms",
    tags=["histopathology", "stain-normalization"],
    repo_url="https://github.com/stain-transforms/stain_transforms",
    model_card_template=FITTED_CARD,
):
    """Base class: ``fit(reference images)`` then ``forward(images)``.

    Subclasses describe an image by per-image statistics (:meth:`image_statistics`, e.g. Lab
    mean/std or a stain matrix). Fitting computes them on every reference image with enough tissue
    and pools them with the element-wise **median** over images, which ignores a minority of odd
    references (a tile of fat, a pen mark) where a mean would not. One reference image is the
    special case of a pool of one. The pooled values live in buffers named ``target_<statistic>``.

    Images with less than ``min_tissue_fraction`` tissue, and single-colour images (white, black,
    flat), are returned unchanged: there is no stain to normalize, and estimating one would invent
    colour. :meth:`informative` says which images of a batch are normalized.

    Args:
        luminosity_threshold: pixels with lightness L*/100 at or above this are background.
        min_tissue_fraction: the minimum fraction of tissue pixels for an image to be normalized.

    Example:
        A normalizer that matches each image's mean colour to the references': declare the
        statistics, register their ``target_`` buffers, and write two methods.

        >>> class MeanColour(StainNormalizer):
        ...     statistics = ("mean",)
        ...     def __init__(self, **kwargs):
        ...         super().__init__(**kwargs)
        ...         self.register_buffer("target_mean", torch.zeros(3, dtype=torch.float64))
        ...     def image_statistics(self, batch):
        ...         return {"mean": batch.mean(dim=(2, 3))}
        ...     def normalize(self, batch):
        ...         shift = self.target_mean.to(batch) - batch.mean(dim=(2, 3))
        ...         return (batch + shift[:, :, None, None]).clamp(0, 1)
        >>> from stain_transforms.testing import synthetic_tissue
        >>> normalizer = MeanColour().fit([synthetic_tissue(64, seed=s) for s in range(3)])
        >>> out = normalizer(synthetic_tissue(64, seed=5, stain_scale=1.5))
        >>> out.shape, out.dtype
        ((64, 64, 3), dtype('uint8'))
        >>> white = np.full((64, 64, 3), 255, np.uint8)
        >>> bool((normalizer(white) == white).all())  # no tissue: returned unchanged
        True
    """

    statistics: tuple[str, ...] = ()

    def __init__(self, *, luminosity_threshold: float = 0.8, min_tissue_fraction: float = 0.01) -> None:
        super().__init__()
        if not 0.0 < luminosity_threshold <= 1.0:
            raise ValueError(f"luminosity_threshold must be in (0, 1], got {luminosity_threshold}")
        if not 0.0 <= min_tissue_fraction <= 1.0:
            raise ValueError(f"min_tissue_fraction must be in [0, 1], got {min_tissue_fraction}")
        self.luminosity_threshold = luminosity_threshold
        self.min_tissue_fraction = min_tissue_fraction
        self.register_buffer("fitted", torch.tensor(False))

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        register(cls)  # so that StainNormalizer.load reads the files of every normalizer, a user's own too
        # The registry's fitted methods are Hub "models" of their method's kind (config.json's model_type).
        row = next((row for row in METHODS.values() if row.class_name == cls.__name__ and row.kind == FITTED), None)
        cls.model_type = row.name if row is not None else ""

    # -- what subclasses provide -------------------------------------------------------------

    @property
    def config(self) -> dict[str, Any]:
        """The constructor arguments, JSON-serialisable, so ``type(self)(**self.config)`` rebuilds it.

        Example:
            >>> from stain_transforms import ReinhardNormalize
            >>> ReinhardNormalize(min_tissue_fraction=0.05).config
            {'luminosity_threshold': 0.8, 'min_tissue_fraction': 0.05}
        """
        return {"luminosity_threshold": self.luminosity_threshold, "min_tissue_fraction": self.min_tissue_fraction}

    def image_statistics(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-image statistics of a batch of informative images: name -> (B, ...) tensor.

        Example:
            >>> from stain_transforms import ReinhardNormalize
            >>> stats = ReinhardNormalize().image_statistics(torch.rand(2, 3, 8, 8))
            >>> {name: tuple(value.shape) for name, value in stats.items()}
            {'mean': (2, 3), 'std': (2, 3)}
        """
        raise NotImplementedError

    def normalize(self, batch: torch.Tensor) -> torch.Tensor:
        """Map a batch of informative images onto the fitted target.

        Unlike calling the transform, this skips input conversion and the tissue check: ``batch``
        is a (B, 3, H, W) float tensor in [0, 1] and every image is mapped.

        Example:
            >>> from stain_transforms import ReinhardNormalize
            >>> from stain_transforms.testing import synthetic_tissue
            >>> normalizer = ReinhardNormalize().fit(synthetic_tissue(64, seed=0))
            >>> normalizer.normalize(torch.rand(2, 3, 8, 8)).shape
            torch.Size([2, 3, 8, 8])
        """
        raise NotImplementedError

    def pool(self, name: str, values: torch.Tensor) -> torch.Tensor:
        """Combine one statistic over the reference images (N, ...) into the target (...).

        The default is the element-wise median; a subclass may override it per statistic.

        Example:
            >>> from stain_transforms import ReinhardNormalize
            >>> ReinhardNormalize().pool("mean", torch.tensor([[50.0], [52.0], [90.0]]))  # the outlier is ignored
            tensor([52.])
        """
        return values.quantile(0.5, dim=0) if values.shape[0] > 1 else values[0]

    # -- fitting -----------------------------------------------------------------------------

    def fit(self, images: Any, progress: bool | None = None) -> StainNormalizer:
        """Fit the target statistics on one or many reference images; returns ``self``.

        Args:
            images: one image (numpy HWC, tensor CHW/BCHW, PIL), a list of them, or any iterable
                of them, e.g. a DataLoader yielding batches or ``(image, label)`` pairs.
            progress: show a tqdm bar; by default shown for iterables of more than 8 items or of
                unknown length.

        Raises:
            ValueError: when no reference image has enough tissue to estimate statistics from.

        Example:
            >>> from torch.utils.data import DataLoader, TensorDataset
            >>> from stain_transforms import ReinhardNormalize
            >>> from stain_transforms.testing import synthetic_tissue
            >>> tiles = [synthetic_tissue(64, seed=s) for s in range(4)]
            >>> one = ReinhardNormalize().fit(tiles[0])  # one reference image
            >>> many = ReinhardNormalize().fit(tiles)  # many: per-image statistics, pooled by the median
            >>> batches = torch.stack([torch.from_numpy(t).permute(2, 0, 1) for t in tiles])
            >>> loader = DataLoader(TensorDataset(batches, torch.zeros(4)), batch_size=2)  # (image, label) batches
            >>> torch.allclose(ReinhardNormalize().fit(loader).target_mean, many.target_mean)
            True
        """
        for name, value in self.pooled_statistics(images, progress, desc=f"fit {type(self).__name__}").items():
            buffer = getattr(self, f"target_{name}")
            buffer.copy_(value.to(buffer))
        self.fitted.fill_(True)
        return self

    def pooled_statistics(self, images: Any, progress: bool | None = None, desc: str = "statistics") -> dict[str, torch.Tensor]:
        """The statistics of ``images`` pooled as :meth:`fit` pools them: name -> float64 CPU tensor.

        :meth:`fit` makes them the target; :meth:`with_source` takes them as the source, e.g. the
        statistics of tiles sampled from one whole slide (:func:`stain_transforms.slides.fit_slide`).
        Takes what :meth:`fit` takes; images without enough tissue are skipped.

        Raises:
            ValueError: when no image has enough tissue to estimate statistics from.

        Example:
            >>> from stain_transforms import ReinhardNormalize
            >>> from stain_transforms.testing import synthetic_tissue
            >>> tiles = [synthetic_tissue(64, seed=s) for s in range(3)]
            >>> pooled = ReinhardNormalize().pooled_statistics(tiles)
            >>> torch.equal(pooled["mean"], ReinhardNormalize().fit(tiles).target_mean)
            True
        """
        single = isinstance(images, (np.ndarray, torch.Tensor, PIL.Image.Image))
        if progress is None:
            progress = not single and (not isinstance(images, Sized) or len(images) > PROGRESS_MIN_ITEMS)
        collected: dict[str, list[torch.Tensor]] = {name: [] for name in self.statistics}
        seen = 0
        total = len(images) if isinstance(images, Sized) and not single else None  # a list, a DataLoader: its length
        for batch in tqdm(iter_batches(images), desc=desc, disable=not progress, unit="batch", total=total):
            seen += batch.shape[0]
            usable = batch[self.informative(batch)]
            if usable.shape[0] == 0:
                continue
            for name, value in self.image_statistics(usable).items():
                collected[name].append(value.detach().to("cpu", torch.float64))
        if not collected[self.statistics[0]]:
            raise ValueError(
                f"none of the {seen} reference image(s) has enough tissue (at least {self.min_tissue_fraction:.0%} "
                "of pixels below the luminosity threshold, and more than one colour); pick references with tissue"
            )
        return {name: self.pool(name, torch.cat(values)) for name, values in collected.items()}

    def target_statistics(self) -> dict[str, torch.Tensor]:
        """The fitted target statistics, by name (copies).

        Raises:
            RuntimeError: if the normalizer is not fitted.

        Example:
            >>> from stain_transforms import ReinhardNormalize
            >>> from stain_transforms.testing import synthetic_tissue
            >>> stats = ReinhardNormalize().fit(synthetic_tissue(64, seed=0)).target_statistics()
            >>> sorted(stats), tuple(stats["mean"].shape)
            (['mean', 'std'], (3,))
        """
        self._require_fitted()
        return {name: getattr(self, f"target_{name}").clone() for name in self.statistics}

    def _require_fitted(self) -> None:
        if not bool(self.fitted):
            raise RuntimeError(f"{type(self).__name__} is not fitted: call .fit(reference_images) first")

    # -- transforming ------------------------------------------------------------------------

    def informative(self, batch: torch.Tensor) -> torch.Tensor:
        """Boolean (B,): which images have enough tissue and more than one colour to be normalized.

        Judged on a regular grid of a few thousand pixels per image (:func:`~stain_transforms.functional.tissue.informative_images`).

        Example:
            >>> from stain_transforms import ReinhardNormalize
            >>> from stain_transforms.testing import synthetic_tissue
            >>> tissue = torch.from_numpy(synthetic_tissue(64, seed=0)).permute(2, 0, 1) / 255.0
            >>> batch = torch.stack([tissue, torch.ones(3, 64, 64), torch.zeros(3, 64, 64)])  # tissue, white, black
            >>> ReinhardNormalize().informative(batch).tolist()
            [True, False, False]
        """
        return informative_images(batch, self.luminosity_threshold, self.min_tissue_fraction)

    def apply_batch(self, batch: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
        self._require_fitted()
        if self.source is not None:
            return self.normalize_with(batch, self._source_on(batch))
        usable = self.informative(batch)
        if usable.all():
            return self.normalize(batch)
        out = batch.clone()
        if usable.any():
            out[usable] = self.normalize(batch[usable])
        return out

    # -- given source statistics (slide context) -----------------------------------------------

    def normalize_with(self, batch: torch.Tensor, source: dict[str, torch.Tensor]) -> torch.Tensor:
        """Map a (B, 3, H, W) batch onto the target using the given ``source`` statistics instead of each image's own.

        ``source`` holds the names of :attr:`statistics`, each shaped as one image's statistic (one
        map for the whole batch) or with a leading batch dimension. Every image is mapped, with or
        without tissue, so that tiles of one slide get the same colour map.

        Example:
            >>> from stain_transforms import MacenkoNormalize
            >>> from stain_transforms.testing import synthetic_tissue
            >>> normalizer = MacenkoNormalize().fit(synthetic_tissue(64, seed=0))
            >>> batch = torch.from_numpy(synthetic_tissue(64, seed=1)).permute(2, 0, 1)[None] / 255.0
            >>> own = normalizer.image_statistics(batch)  # the image's own statistics: as normalize()
            >>> torch.allclose(normalizer.normalize_with(batch, own), normalizer.normalize(batch))
            True
        """
        raise NotImplementedError(f"{type(self).__name__} does not take given source statistics")

    #: The source statistics of :meth:`with_source`, or ``None``: each image's own are estimated.
    source: dict[str, torch.Tensor] | None = None

    def with_source(self, source: Any) -> StainNormalizer:
        """A copy of this fitted normalizer that maps every image with the given source statistics.

        Use it for tiles of one whole slide: with the slide's statistics
        (:func:`stain_transforms.slides.fit_slide`) every tile gets the same colour map, so there
        are no seams between tiles and no tile-to-tile colour noise from per-tile estimates. Every
        image is mapped, also those with little tissue. The copy is the same class, so it goes
        wherever this normalizer goes (torchvision, the albumentations and MONAI wrappers, any
        device: the statistics follow the batch's device). ``with_source(None)`` turns it off.

        Args:
            source: a :class:`~stain_transforms.normalizers.context.SlideStatistics`, or a mapping
                of :attr:`statistics` names to tensors, e.g. :meth:`pooled_statistics`' result.

        Raises:
            ValueError: if a statistic is missing or has the wrong shape.

        Example:
            >>> from stain_transforms import ReinhardNormalize
            >>> from stain_transforms.testing import synthetic_tissue
            >>> normalizer = ReinhardNormalize().fit(synthetic_tissue(64, seed=0))
            >>> tiles = [synthetic_tissue(64, seed=s, stain_scale=1.3) for s in (1, 2, 3)]
            >>> slide_context = normalizer.with_source(normalizer.pooled_statistics(tiles))
            >>> slide_context(tiles[0]).shape, normalizer.source is None
            ((64, 64, 3), True)
        """
        clone = copy.deepcopy(self)
        clone._source_cache = {}
        if source is None:
            clone.source = None
            return clone
        values = getattr(source, "statistics", source)
        checked: dict[str, torch.Tensor] = {}
        for name in self.statistics:
            if name not in values:
                raise ValueError(
                    f"{type(self).__name__} needs source statistics {', '.join(self.statistics)}; {name!r} is missing"
                )
            value = torch.as_tensor(values[name]).detach().to("cpu", torch.float64)
            expected = tuple(getattr(self, f"target_{name}").shape)
            if tuple(value.shape) != expected:
                raise ValueError(f"source statistic {name!r} has shape {tuple(value.shape)}, expected {expected}")
            checked[name] = value
        clone.source = checked
        return clone

    def _source_on(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        """:attr:`source` on ``batch``'s device, cached per device."""
        cache = self.__dict__.setdefault("_source_cache", {})
        if batch.device not in cache:
            cache[batch.device] = {name: value.to(batch.device) for name, value in self.source.items()}
        return cache[batch.device]

    # -- persistence -------------------------------------------------------------------------
    # save()/load(): one .safetensors file. save_pretrained()/from_pretrained()/push_to_hub() (from
    # HubModelMixin): a Hub-style folder (config.json, model.safetensors, README.md), resolved by
    # folder or Hub repo id as the models' weights are (stain_transforms.hub).

    def _pretrained_config(self) -> dict[str, Any]:
        return dict(self.config)  # the settings now, not those the object was made with

    def generate_model_card(self, *args: Any, **kwargs: Any) -> Any:
        """The ``README.md`` card of :meth:`save_pretrained`: what was fitted, and ``kwargs`` (``model_card_kwargs``).

        Fields: ``title``, ``target_domain``, ``training_data`` (the references), ``load_name``, and the
        licence (``license``, ``license_name``, ``license_link``; see
        :meth:`~stain_transforms.models.hub_mixin.HubModelMixin.generate_model_card`).

        Example:
            >>> from stain_transforms import ReinhardNormalize
            >>> card = ReinhardNormalize().generate_model_card(target_domain="site B", license="cc0-1.0")
            >>> card.data.license, "site B" in card.text, "`target_mean`" in card.text
            ('cc0-1.0', True, True)
        """
        fields = {
            "transform_name": type(self).__name__,
            "method_title": (self.model_type or type(self).__name__).capitalize(),
            "statistics": ", ".join(f"`target_{name}`" for name in self.statistics) or "none",
            **kwargs,
        }
        return super().generate_model_card(*args, **fields)

    def save(self, path: str | Path) -> Path:
        """Write the fitted state to a ``.safetensors`` file, with the settings as JSON metadata; returns the path.

        Example:
            >>> import tempfile
            >>> from stain_transforms import MacenkoNormalize
            >>> from stain_transforms.testing import synthetic_tissue
            >>> fitted = MacenkoNormalize(alpha=2.0).fit(synthetic_tissue(64, seed=0))
            >>> path = fitted.save(Path(tempfile.mkdtemp()) / "macenko.safetensors")
            >>> loaded = StainNormalizer.load(path)  # the base class reads any saved normalizer
            >>> type(loaded).__name__, loaded.alpha, torch.equal(loaded.target_stain_matrix, fitted.target_stain_matrix)
            ('MacenkoNormalize', 2.0, True)
        """
        path = Path(path)
        tensors = {name: value.detach().cpu().contiguous() for name, value in self.state_dict().items()}
        metadata = {"class": type(self).__name__, "config": json.dumps(self.config), "format": "stain_transforms"}
        save_file(tensors, str(path), metadata=metadata)
        return path

    @classmethod
    def load(cls, path: str | Path) -> StainNormalizer:
        """Read a normalizer written by :meth:`save`. ``StainNormalizer.load`` picks the saved class.

        Raises:
            FileNotFoundError: if there is no file at ``path``.
            ValueError: if the file is not a normalizer written by :meth:`save`, or holds another
                class than the one ``load`` was called on.

        Example:
            >>> import tempfile
            >>> from stain_transforms import MacenkoNormalize, ReinhardNormalize
            >>> from stain_transforms.testing import synthetic_tissue
            >>> fitted = ReinhardNormalize().fit(synthetic_tissue(64, seed=0))
            >>> path = fitted.save(Path(tempfile.mkdtemp()) / "reinhard.safetensors")
            >>> ReinhardNormalize.load(path).fitted.item()
            True
            >>> MacenkoNormalize.load(path)  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ...
            ValueError: ... holds a ReinhardNormalize, not a MacenkoNormalize
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no saved normalizer at {path}")
        try:
            tensors = load_file(str(path))
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
        except (SafetensorError, OSError, ValueError) as error:
            raise ValueError(f"{path} is not a readable safetensors file ({error})") from error
        name = metadata.get("class")
        klass = _normalizer_class(name) if metadata.get("format") == "stain_transforms" else None
        if klass is None:
            raise ValueError(f"{path} was not written by a stain_transforms normalizer's save()")
        if not issubclass(klass, cls):
            raise ValueError(f"{path} holds a {name}, not a {cls.__name__}")
        normalizer = klass(**json.loads(metadata["config"]))
        normalizer.load_state_dict(tensors)
        return normalizer


def _normalizer_class(name: Any) -> type[StainNormalizer] | None:
    """The normalizer class called ``name`` (a saved file's ``class``), or ``None``."""
    try:
        klass = transform_class(str(name))
    except ValueError:
        return None
    return klass if isinstance(klass, type) and issubclass(klass, StainNormalizer) else None
