"""Random stain augmentation with explicit, per-sample, replayable parameters."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from ._kernels.levels import levels_to_unit
from .functional.jitter import RUIFROK_STAINS, SHIFT_RAMP, stain_jitter
from .functional.macenko import macenko_stain_matrix
from .functional.vahadane import vahadane_stain_matrix
from .transform import StainTransform

BASES = ("ruifrok", "macenko", "vahadane")
# A HEDJitter saved with torch.save holds its generator: allowed under torch.load's default weights_only=True.
torch.serialization.add_safe_globals([torch.Generator])


def _per_channel(value: float | Sequence[float], name: str, upper: float | None = None) -> tuple[float, float, float]:
    values = (float(value),) * 3 if isinstance(value, (int, float)) else tuple(float(v) for v in value)
    if len(values) != 3:
        raise ValueError(f"{name} must be a number or 3 numbers (haematoxylin, eosin, DAB), got {value!r}")
    for v in values:
        if not np.isfinite(v) or v < 0 or (upper is not None and v >= upper):
            bound = f" and below {upper}" if upper is not None else ""
            raise ValueError(f"{name} must be finite, >= 0{bound}, got {value!r}")
    return values  # type: ignore[return-value]


def _check_batch_size(params: dict[str, torch.Tensor], batch_size: int) -> None:
    drawn = params["factors"].shape[0]
    if drawn not in (1, batch_size):
        raise ValueError(f"parameters were drawn for {drawn} images, but the batch has {batch_size}")


def _select(params: dict[str, torch.Tensor], index: int) -> dict[str, torch.Tensor]:
    """The parameters of image ``index`` (parameters drawn for one image apply to all)."""
    return {name: value if value.shape[0] == 1 else value[index : index + 1] for name, value in params.items()}


@functools.lru_cache(maxsize=64)
def _draw_ranges(
    alpha: tuple[float, ...], beta: tuple[float, ...], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower ends and widths of the uniform ranges of (factors, shifts): [1 - alpha, 1 + alpha], [-beta, beta].

    Cached, as building two small tensors per call would take longer than the draw itself.
    """
    lows = torch.tensor([1.0 - a for a in alpha] + [-b for b in beta], device=device)
    widths = torch.tensor([2.0 * a for a in alpha] + [2.0 * b for b in beta], device=device)
    return lows, widths


def _batch_size(x: Any) -> int:
    if isinstance(x, (np.ndarray, torch.Tensor)) and x.ndim == 4:
        return int(x.shape[0])
    return 1


class HEDJitter(StainTransform):
    """Random stain augmentation of Tellez et al. (2018) in HED (or a per-image Macenko/Vahadane) space.

    Each image ``b`` gets its own draw: every stain ``c`` (haematoxylin, eosin, DAB) has its
    concentration multiplied by ``factors[b, c] ~ U(1 - alpha, 1 + alpha)`` and shifted by
    ``shifts[b, c] ~ U(-beta, beta)`` (scikit-image HED units), with probability ``p`` per image.
    The shift is only applied where there is stain, so white background stays white, and a negative
    shift never removes more stain than there is; see :mod:`stain_transforms.functional.jitter`.

    A (B, 3, H, W) batch gets B independent draws in one vectorised pass. Draws come from
    ``generator`` if given, else from torch's global RNG (so ``torch.manual_seed`` reproduces them).
    :meth:`generate_parameters` makes a draw, :attr:`last_params` holds the last one used, and
    :meth:`apply_params` replays one.

    Presets (classmethods :meth:`light`, :meth:`strong`, :meth:`brh`, or :meth:`from_preset`):

    - ``"light"``: alpha = beta = 0.05, "HED-light" of Tellez et al. (2019), *Quantifying the effects
      of data augmentation and stain color normalization in convolutional neural networks for
      computational pathology*, Medical Image Analysis 58; also the sigma = 0.05 of Tellez et al. (2018),
      *Whole-slide mitosis detection in H&E breast histology using PHH3 as a reference*, IEEE TMI 37(9).
    - ``"strong"``: alpha = beta = 0.2, "HED-strong" of Tellez et al. (2019).
    - ``"brh"``: alpha = 0.25, beta = 0: factors in [0.75, 1.25], the HED part of the "BRH"
      augmentation of the StainNet paper (Kang et al., 2021, *StainNet: a fast and robust stain
      normalization network*, Frontiers in Medicine 8).

    Args:
        alpha: half-width of the factor range; one number or one per stain (H, E, D), in [0, 1).
        beta: half-width of the shift range, in scikit-image HED units; one number or one per stain.
        p: probability of augmenting each image.
        basis: ``"ruifrok"`` (the fixed H, E, DAB matrix of Ruifrok & Johnston, as Tellez et al.),
            ``"macenko"`` or ``"vahadane"`` (the H and E vectors estimated on each image, as peer
            libraries' stain augmenters do; the DAB entries of the parameters are then unused, and
            images with too little tissue to estimate from use the Ruifrok H and E vectors).
        generator: an optional ``torch.Generator`` for the draws. In DataLoader workers it is
            re-seeded once per worker from the worker's seed, so that workers do not repeat each other.
        shift_ramp: the optical densities (of a pixel's most absorbed channel) between which the shift
            fades in, from none to full. The default suits bright-field H&E scans, whose glass is
            near white; raise it for images with a tinted background (e.g. some cytology scans).

    Note:
        Tellez et al.'s own implementation applies its ranges in a differently offset HED space; here,
        like most re-implementations, they apply to ``skimage.color.rgb2hed`` values, so the presets
        reproduce the papers' settings in spirit, not bit for bit.

    Shape:
        Any image the package accepts: (3, H, W) or (B, 3, H, W) tensors, (H, W, 3) or (B, H, W, 3)
        arrays, PIL; returned in the same type, shape and dtype.

    Example:
        >>> from stain_transforms.testing import synthetic_tissue
        >>> jitter = HEDJitter.strong(p=1.0, generator=torch.Generator().manual_seed(0))
        >>> batch = torch.stack([torch.from_numpy(synthetic_tissue(64, seed=s)).permute(2, 0, 1) for s in range(4)])
        >>> out = jitter(batch)
        >>> out.shape, out.dtype, jitter.last_params["factors"].shape
        (torch.Size([4, 3, 64, 64]), torch.uint8, torch.Size([4, 3]))
        >>> torch.equal(jitter.apply_params(batch, jitter.last_params), out)
        True
    """

    accepts_uint8 = True  # stain_jitter converts uint8 block by block

    PRESETS: ClassVar[dict[str, dict[str, float]]] = {
        "light": {"alpha": 0.05, "beta": 0.05},
        "strong": {"alpha": 0.2, "beta": 0.2},
        "brh": {"alpha": 0.25, "beta": 0.0},
    }

    def __init__(
        self,
        alpha: float | Sequence[float] = 0.05,
        beta: float | Sequence[float] = 0.05,
        p: float = 1.0,
        basis: str = "ruifrok",
        generator: torch.Generator | None = None,
        shift_ramp: tuple[float, float] = SHIFT_RAMP,
    ) -> None:
        super().__init__()
        self.alpha = _per_channel(alpha, "alpha", upper=1.0)
        self.beta = _per_channel(beta, "beta")
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        if basis not in BASES:
            raise ValueError(f"basis must be one of {BASES}, got {basis!r}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        low, high = (float(v) for v in shift_ramp)
        if not 0.0 <= low < high:
            raise ValueError(f"shift_ramp must be (low, high) optical densities with 0 <= low < high, got {shift_ramp}")
        self.p = float(p)
        self.basis = basis
        self.shift_ramp = (low, high)
        self.generator = generator
        self.last_params: dict[str, torch.Tensor] | None = None
        self._worker_seed: int | None = None

    # -- presets ---------------------------------------------------------------------------------

    @classmethod
    def from_preset(cls, name: str, **kwargs: Any) -> HEDJitter:
        """A jitter with the ranges of preset ``name`` (see the class docstring); kwargs override.

        Example:
            >>> HEDJitter.from_preset("brh", p=0.25)
            HEDJitter(alpha=(0.25, 0.25, 0.25), beta=(0.0, 0.0, 0.0), p=0.25, basis=ruifrok, shift_ramp=(0.05, 0.25))
        """
        if name not in cls.PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(cls.PRESETS)}")
        return cls(**{**cls.PRESETS[name], **kwargs})

    @classmethod
    def light(cls, **kwargs: Any) -> HEDJitter:
        """Tellez et al. (2019) "HED-light": alpha = beta = 0.05.

        Example:
            >>> HEDJitter.light().alpha
            (0.05, 0.05, 0.05)
        """
        return cls.from_preset("light", **kwargs)

    @classmethod
    def strong(cls, **kwargs: Any) -> HEDJitter:
        """Tellez et al. (2019) "HED-strong": alpha = beta = 0.2.

        Example:
            >>> HEDJitter.strong(basis="macenko").beta
            (0.2, 0.2, 0.2)
        """
        return cls.from_preset("strong", **kwargs)

    @classmethod
    def brh(cls, **kwargs: Any) -> HEDJitter:
        """The StainNet paper's BRH HED jitter: factors in [0.75, 1.25], no shift.

        Example:
            >>> HEDJitter.brh(p=0.25).p
            0.25
        """
        return cls.from_preset("brh", **kwargs)

    @property
    def config(self) -> dict[str, Any]:
        """The constructor arguments (without the generator), JSON-serialisable.

        Example:
            >>> HEDJitter(**HEDJitter.light().config).beta
            (0.05, 0.05, 0.05)
        """
        return {
            "alpha": list(self.alpha),
            "beta": list(self.beta),
            "p": self.p,
            "basis": self.basis,
            "shift_ramp": list(self.shift_ramp),
        }

    # -- parameters ------------------------------------------------------------------------------

    def _generator(self) -> torch.Generator | None:
        if self.generator is None:
            return None
        info = torch.utils.data.get_worker_info()
        if info is not None and self._worker_seed != info.seed:
            # A DataLoader worker holds a copy of the generator in the parent's state; without this,
            # every worker (and every epoch) would replay the same draws.
            self.generator.manual_seed((self.generator.initial_seed() + info.seed) % 2**63)
            self._worker_seed = info.seed
        return self.generator

    def generate_parameters(
        self, batch_size: int, device: torch.device | str | None = None, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """Draw parameters for ``batch_size`` images.

        Returns ``{"factors": (B, 3), "shifts": (B, 3), "apply": (B,) bool}`` (float32), on ``device``.
        ``generator`` overrides the transform's own for this draw (e.g. one seeded per sample index).

        Example:
            >>> params = HEDJitter(alpha=0.1, beta=0.0).generate_parameters(2)
            >>> params["factors"].shape, bool(params["shifts"].abs().max() == 0)
            (torch.Size([2, 3]), True)
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        generator = generator if generator is not None else self._generator()
        draw_device = generator.device if generator is not None else torch.device("cpu")
        lows, widths = _draw_ranges(self.alpha, self.beta, draw_device)
        # Each image's three factors, then its three shifts, then whether it is jittered. All are
        # always drawn, so that the RNG advances the same way whatever p is. The generator is passed
        # only when there is one: an explicit generator=None breaks torch.compile with dynamic shapes.
        source = {"generator": generator} if generator is not None else {}
        draws = torch.rand(batch_size, 6, device=draw_device, **source)
        factors, shifts = torch.addcmul(lows, draws, widths).split(3, dim=1)
        apply = torch.rand(batch_size, device=draw_device, **source) < self.p
        params = {"factors": factors, "shifts": shifts, "apply": apply}
        return {name: value.to(device) for name, value in params.items()} if device is not None else params

    def draw_with_numpy(self, rng: np.random.RandomState | np.random.Generator) -> dict[str, np.ndarray]:
        """One image's factors and shifts, (3,) each, drawn from a numpy generator (albumentations', MONAI's).

        The same ranges as :meth:`generate_parameters`; the adapters draw here so that their
        frameworks' seeding reproduces them.

        Example:
            >>> draw = HEDJitter(alpha=0.2, beta=0.1).draw_with_numpy(np.random.default_rng(0))
            >>> factors, shifts = draw["factors"], draw["shifts"]
            >>> factors.shape, bool((abs(factors - 1) <= 0.2).all()), bool((abs(shifts) <= 0.1).all())
            ((3,), True, True)
        """
        unit = rng.uniform(-1.0, 1.0, size=(2, 3))
        return {"factors": 1.0 + np.asarray(self.alpha) * unit[0], "shifts": np.asarray(self.beta) * unit[1]}

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        batch_size = _batch_size(flat_inputs[0]) if flat_inputs else 1
        self.last_params = self.generate_parameters(batch_size)
        return self.last_params

    # -- applying --------------------------------------------------------------------------------

    def apply_params(self, inputs: Any, params: dict[str, torch.Tensor]) -> Any:
        """Apply given parameters (e.g. :attr:`last_params`) to ``inputs``, as a call would.

        Parameters drawn for one image apply to every image of a batch.

        Example:
            >>> jitter = HEDJitter()
            >>> identity = {"factors": torch.ones(1, 3), "shifts": torch.zeros(1, 3), "apply": torch.tensor([True])}
            >>> image = torch.full((3, 4, 4), 120, dtype=torch.uint8)
            >>> torch.equal(jitter.apply_params(image, identity), image)
            True
        """
        return self.transform_sample(inputs, params)

    def image_params(self, params: dict[str, Any], index: int, batch_size: int) -> dict[str, Any]:
        _check_batch_size(params, batch_size)
        return _select(params, index)

    def _stains(self, batch: torch.Tensor) -> torch.Tensor:
        """The per-image (B, 3, k) basis to jitter in."""
        if self.basis != "ruifrok" and batch.dtype == torch.uint8:
            batch = levels_to_unit(batch)
        if self.basis == "macenko":
            return macenko_stain_matrix(batch)
        if self.basis == "vahadane":
            return vahadane_stain_matrix(batch)
        return RUIFROK_STAINS

    def apply_batch(self, batch: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
        factors, shifts, apply = (params[name].to(batch.device) for name in ("factors", "shifts", "apply"))
        if factors.shape[0] != batch.shape[0]:
            _check_batch_size(params, batch.shape[0])
            factors, shifts, apply = (t.expand(batch.shape[0], *t.shape[1:]) for t in (factors, shifts, apply))
        if not bool(apply.any()):
            return batch
        every_image = bool(apply.all())
        chosen = batch
        if not every_image:  # boolean indexing copies, so it is skipped when every image is jittered
            chosen, factors, shifts = batch[apply], factors[apply], shifts[apply]
        stains = self._stains(chosen)
        k = stains.shape[-1]
        jittered = stain_jitter(chosen, stains, factors[:, :k], shifts[:, :k], self.shift_ramp)
        if every_image:
            return jittered
        out = batch.clone()
        out[apply] = jittered
        return out
