"""What the albumentations and MONAI adapters share, free of either framework.

- :func:`core_transform`: the ready core transform an adapter wraps, from ``normalizer=`` (a fitted
  transform, the path of a file its ``save()`` wrote, or a :func:`transform_to_spec` description) or
  ``weights=`` (learned methods: a name or folder for ``from_pretrained``), checked once for all.
- :func:`transform_to_spec` / :func:`transform_from_spec`: the JSON description of a transform that
  a serialised pipeline embeds.
- :func:`hed_jitter_params`: one numpy draw of :class:`~stain_transforms.HEDJitter` parameters (the
  frameworks seed numpy generators), as ``apply_params`` takes them.
- :func:`method_docstring`: the docstrings of the adapters' per-method classes, from the registry's table.

Example:
    >>> import stain_transforms
    >>> from stain_transforms.testing import synthetic_tissue
    >>> fitted = stain_transforms.ReinhardNormalize().fit(synthetic_tissue(64, seed=0))
    >>> core_transform("MyAdapter", "reinhard", normalizer=fitted) is fitted
    True
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .registry import LEARNED, method, model_class, transform_class
from .transform import StainTransform


def require_library(library: str, extra: str, needed_by: str) -> None:
    """Import ``library``, or raise an ``ImportError`` that says which extra of stain-transforms installs it.

    An import error from inside an installed library (a broken dependency of it) is raised as it is.

    Example:
        >>> require_library("numpy", extra="test", needed_by="an example")
        >>> require_library("no_such_library", extra="all", needed_by="an example")
        Traceback (most recent call last):
        ...
        ImportError: an example needs no_such_library, which is not installed: pip install "stain-transforms[all]"
    """
    try:
        importlib.import_module(library)
    except ImportError as error:
        if (error.name or "").partition(".")[0] != library:
            raise
        raise ImportError(
            f'{needed_by} needs {library}, which is not installed: pip install "stain-transforms[{extra}]"',
            name=error.name,
        ) from error

# A normalizer passed as an object is embedded in a serialised pipeline only up to this many numbers;
# a larger one (a StainGAN generator) must be referenced by weights= or by a saved file's path.
MAX_EMBEDDED_NUMBERS = 100_000


def core_transform(owner: str, method_name: str, normalizer: Any = None, weights: Any = None) -> StainTransform:
    """The ready core transform of ``method_name`` that the adapter class ``owner`` wraps.

    Args:
        owner: the adapter's class name, for the error messages.
        method_name: the registry's method name (``"macenko"``).
        normalizer: the core transform, fitted; or the path of a file its ``save()`` wrote (a name or
            folder, for a learned method, goes to ``from_pretrained``); or a :func:`transform_to_spec` dict.
        weights: for a learned method instead of ``normalizer``: a name, folder or Hub id.

    Raises:
        ValueError: for a learned method without exactly one of ``normalizer`` and ``weights``, a
            transform of another class, or one that is not fitted.

    Example:
        >>> import stain_transforms
        >>> core_transform("MyAdapter", "macenko", normalizer=stain_transforms.MacenkoNormalize())
        Traceback (most recent call last):
        ...
        ValueError: the MacenkoNormalize is not fitted: call .fit(reference_images) first
    """
    row = method(method_name)
    klass = row.transform_class
    if row.kind == LEARNED and (normalizer is None) == (weights is None):
        raise ValueError(f"{owner} needs exactly one of normalizer= and weights=")
    if row.kind != LEARNED and weights is not None:
        raise ValueError(f"{owner} takes no weights=: a {klass.__name__} is fitted, not trained")
    given = normalizer if weights is None else str(weights)
    if isinstance(given, (str, Path)):
        given = load_transform(klass, given)
    elif isinstance(given, dict):
        given = transform_from_spec(given)
    if not isinstance(given, klass):
        got = "nothing" if given is None else f"a {type(given).__name__}"
        raise ValueError(f"{owner} needs normalizer=, a fitted {klass.__name__} or a saved file's path; got {got}")
    if not bool(getattr(given, "fitted", True)):
        raise ValueError(f"the {klass.__name__} is not fitted: call .fit(reference_images) first")
    return given


def load_transform(klass: type, reference: str | Path) -> StainTransform:
    """A ``klass`` from a file its ``save()`` wrote, or from weights (a name or folder) by ``from_pretrained``.

    Example:
        >>> import tempfile
        >>> import stain_transforms
        >>> from stain_transforms.testing import synthetic_tissue
        >>> fitted = stain_transforms.ReinhardNormalize().fit(synthetic_tissue(64, seed=0))
        >>> path = fitted.save(Path(tempfile.mkdtemp()) / "reinhard.safetensors")
        >>> torch.equal(load_transform(stain_transforms.ReinhardNormalize, path).target_mean, fitted.target_mean)
        True
    """
    if hasattr(klass, "load") and (Path(reference).is_file() or not hasattr(klass, "from_pretrained")):
        return klass.load(reference)
    return klass.from_pretrained(str(reference))


def _tensors_to_spec(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    return {
        name: {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape), "data": t.flatten().tolist()}
        for name, t in state.items()
    }


def _tensors_from_spec(tensors: dict[str, Any]) -> dict[str, torch.Tensor]:
    return {
        name: torch.tensor(t["data"], dtype=getattr(torch, t["dtype"])).reshape(t["shape"])
        for name, t in tensors.items()
    }


def transform_to_spec(transform: StainTransform, max_numbers: int = MAX_EMBEDDED_NUMBERS) -> dict[str, Any]:
    """A JSON-serialisable description of a transform: class name, settings and tensors.

    A model-based normalizer (one with a ``model`` made by huggingface_hub's mixin, as StainNet and
    StainGAN) is described by its own settings plus the model's class, constructor arguments and
    weights.

    Raises:
        ValueError: if the transform holds more than ``max_numbers`` numbers.

    Example:
        >>> import stain_transforms
        >>> from stain_transforms.testing import synthetic_tissue
        >>> fitted = stain_transforms.ReinhardNormalize().fit(synthetic_tissue(64, seed=0))
        >>> spec = transform_to_spec(fitted)
        >>> spec["class"], sorted(spec["state"])
        ('ReinhardNormalize', ['fitted', 'target_mean', 'target_std'])
        >>> torch.equal(transform_from_spec(spec).target_mean, fitted.target_mean)
        True
    """
    numbers = sum(t.numel() for t in transform.state_dict().values())
    if numbers > max_numbers:
        raise ValueError(
            f"{type(transform).__name__} has {numbers} parameters, too many to embed in a serialised pipeline; "
            "build the wrapper with weights=<name or folder>, or save it and pass its path as normalizer="
        )
    spec: dict[str, Any] = {"class": type(transform).__name__, "config": dict(getattr(transform, "config", {}))}
    model = getattr(transform, "model", None)
    if isinstance(model, torch.nn.Module):
        spec["model"] = {
            "class": type(model).__name__,
            "config": dict(getattr(model, "_hub_mixin_config", {})),
            "state": _tensors_to_spec(model.state_dict()),
        }
    else:
        spec["state"] = _tensors_to_spec(transform.state_dict())
    return spec


def transform_from_spec(spec: dict[str, Any]) -> StainTransform:
    """Rebuild a transform from :func:`transform_to_spec`'s description.

    Raises:
        ValueError: if ``spec`` is not such a description.

    Example:
        >>> import stain_transforms
        >>> from stain_transforms.testing import synthetic_tissue
        >>> fitted = stain_transforms.MacenkoNormalize().fit(synthetic_tissue(64, seed=0))
        >>> rebuilt = transform_from_spec(transform_to_spec(fitted))
        >>> type(rebuilt).__name__, torch.equal(rebuilt.target_stain_matrix, fitted.target_stain_matrix)
        ('MacenkoNormalize', True)
    """
    try:
        klass, config = transform_class(spec["class"]), spec["config"]
        if "model" in spec:
            model = model_class(spec["model"]["class"])(**spec["model"]["config"])
            model.load_state_dict(_tensors_from_spec(spec["model"]["state"]))
            return klass(model, **config)
        transform = klass(**config)
        transform.load_state_dict(_tensors_from_spec(spec["state"]))
        return transform
    except (KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"not a serialised stain_transforms transform ({type(error).__name__}: {error})") from error


def hed_jitter_params(factors: np.ndarray, shifts: np.ndarray) -> dict[str, torch.Tensor]:
    """One image's parameters for ``HEDJitter.apply_params``, from the (3,) draws of ``draw_with_numpy``.

    Example:
        >>> from stain_transforms import HEDJitter
        >>> jitter = HEDJitter.strong()
        >>> params = hed_jitter_params(**jitter.draw_with_numpy(np.random.RandomState(0)))
        >>> {name: tuple(value.shape) for name, value in params.items()}
        {'factors': (1, 3), 'shifts': (1, 3), 'apply': (1,)}
    """
    return {
        "factors": torch.as_tensor(factors, dtype=torch.float32)[None],
        "shifts": torch.as_tensor(shifts, dtype=torch.float32)[None],
        "apply": torch.ones(1, dtype=torch.bool),
    }


def method_docstring(template: str, method_name: str, **names: str) -> str:
    """An adapter class's docstring: ``template`` filled in from the registry's row of ``method_name``.

    The template may use ``{core}`` (the core class name), ``{summary}``, ``{takes}`` (what the
    constructor takes), ``{example}`` (an expression that makes a ready core transform) and ``names``.

    Example:
        >>> method_docstring("{name} wraps {core}: {example}", "vahadane", name="Wrapper")
        'Wrapper wraps VahadaneNormalize: stain_transforms.VahadaneNormalize().fit(synthetic_tissue(64, seed=0))'
    """
    row = method(method_name)
    core = row.class_name
    if row.kind == LEARNED:
        takes = f"``normalizer=``, a ``{core}``, or ``weights=``: a registered name, a folder or a Hub id"
    else:
        takes = f"``normalizer=``: a fitted ``{core}``, or the path of a file its ``save()`` wrote"
    return template.format(core=core, summary=row.summary, takes=takes, example=row.example, **names)
