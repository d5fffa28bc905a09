"""The package's methods in one table: method name -> transform class, model kind -> model class.

Every lookup by name goes through here: the command line's ``--method``, the albumentations and MONAI
adapters, :meth:`StainNormalizer.load <stain_transforms.StainNormalizer.load>` (the class a file was
saved from), serialised pipelines, and the kind of model a weights folder holds. The tables name
classes by import path, and a class is imported when it is first asked for: so this module imports
nothing of the package at its top, any module may use it without an import cycle, and
``import stain_transforms`` does not import the optional libraries.

Example:
    >>> method("macenko").transform_class.__name__
    'MacenkoNormalize'
    >>> methods("learned"), model_class("stainnet").__name__
    (('stainnet', 'staingan'), 'StainNet')
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# The kinds of method: fitted on reference images, a model loaded from weights, an augmentation.
FITTED, LEARNED, AUGMENT = "fitted", "learned", "augment"


def _load(path: str) -> Any:
    """The object at ``"module:name"``, importing the module."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class Method:
    """One method: its name, its core transform, and what the adapters' documentation says of it.

    Attributes:
        name: the method's name on the command line (``--method``).
        transform: ``"module:Class"`` of its core transform.
        kind: ``"fitted"`` (fitted on reference images), ``"learned"`` (a model loaded from weights
            of the model kind ``name``) or ``"augment"``.
        summary: one line describing the method.
        example: a Python expression that makes a ready transform, given ``import stain_transforms``
            and ``from stain_transforms.testing import synthetic_tissue``.

    Example:
        >>> row = method("reinhard")
        >>> row.kind, row.class_name
        ('fitted', 'ReinhardNormalize')
    """

    name: str
    transform: str
    kind: str
    summary: str
    example: str

    @property
    def class_name(self) -> str:
        """The name of the core transform class."""
        return self.transform.partition(":")[2]

    @property
    def transform_class(self) -> type:
        """The core transform class (imported on first use)."""
        return _load(self.transform)


@dataclass(frozen=True)
class ModelKind:
    """A kind of model that weights folders hold (``config.json``'s ``model_type``).

    Attributes:
        name: the kind, as the weights registry and ``config.json`` spell it.
        model: ``"module:Class"`` of the model.
        config_key: a ``config.json`` key that only this kind's models have (for configs saved
            without ``model_type``).

    Example:
        >>> MODEL_KINDS["staingan"].config_key
        'ngf'
    """

    name: str
    model: str
    config_key: str


_ROWS = (
    Method(
        "reinhard", "stain_transforms.normalizers.reinhard:ReinhardNormalize", FITTED,
        "Reinhard et al. (2001): each image gets the references' Lab mean and standard deviation.",
        "stain_transforms.ReinhardNormalize().fit(synthetic_tissue(64, seed=0))",
    ),
    Method(
        "macenko", "stain_transforms.normalizers.macenko:MacenkoNormalize", FITTED,
        "Macenko et al. (2009): unmix with each image's stain matrix, remix with the references'.",
        "stain_transforms.MacenkoNormalize().fit(synthetic_tissue(64, seed=0))",
    ),
    Method(
        "vahadane", "stain_transforms.normalizers.vahadane:VahadaneNormalize", FITTED,
        "Vahadane et al. (2016): as Macenko, with stain matrices learnt by sparse dictionary learning.",
        "stain_transforms.VahadaneNormalize().fit(synthetic_tissue(64, seed=0))",
    ),
    Method(
        "stainnet", "stain_transforms.normalizers.stainnet:StainNetNormalize", LEARNED,
        "StainNet (Kang et al., 2021): a trained per-pixel colour map, exact as a lookup table for uint8.",
        "stain_transforms.StainNetNormalize(stain_transforms.models.StainNet())",
    ),
    Method(
        "staingan", "stain_transforms.normalizers.staingan:StainGANNormalize", LEARNED,
        "StainGAN (Shaban et al., 2019): a CycleGAN generator, run on large images in blended tiles.",
        "stain_transforms.StainGANNormalize(stain_transforms.models.StainGANGenerator(ngf=8, n_blocks=1), "
        "tile_size=64, overlap=16)",
    ),
    Method(
        "hed_jitter", "stain_transforms.augment:HEDJitter", AUGMENT,
        "Tellez et al. (2018): random stain augmentation in HED space.",
        "stain_transforms.HEDJitter.strong()",
    ),
)
METHODS: dict[str, Method] = {row.name: row for row in _ROWS}

MODEL_KINDS: dict[str, ModelKind] = {
    kind.name: kind
    for kind in (
        ModelKind("stainnet", "stain_transforms.models.stainnet:StainNet", config_key="n_channel"),
        ModelKind("staingan", "stain_transforms.models.staingan:StainGANGenerator", config_key="ngf"),
    )
}

# Transform classes defined outside the table (a user's own StainNormalizer), registered by name.
_REGISTERED: dict[str, type] = {}


def methods(kind: str | None = None) -> tuple[str, ...]:
    """The method names, in table order; only those of ``kind`` (``"fitted"``, ...) when given.

    Example:
        >>> methods("fitted")
        ('reinhard', 'macenko', 'vahadane')
    """
    return tuple(name for name, row in METHODS.items() if kind is None or row.kind == kind)


def method(name: str) -> Method:
    """The table row of a method, by its name (``"macenko"``) or its class name (``"MacenkoNormalize"``).

    Raises:
        ValueError: for a name the table does not hold.

    Example:
        >>> method("MacenkoNormalize").name
        'macenko'
    """
    for row in _ROWS:
        if name in (row.name, row.class_name):
            return row
    raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")


def register(klass: type) -> type:
    """Make a transform class defined outside the table findable by :func:`transform_class`; returns it.

    ``StainNormalizer`` subclasses register themselves, so that ``StainNormalizer.load`` reads what
    a user's own normalizer saved.

    Example:
        >>> class RegistryExampleTransform:
        ...     pass
        >>> _ = register(RegistryExampleTransform)
        >>> transform_class("RegistryExampleTransform") is RegistryExampleTransform
        True
    """
    _REGISTERED[klass.__name__] = klass
    return klass


def transform_class(name: str) -> type:
    """The transform class of a method (``"macenko"``), or of that name (``"MacenkoNormalize"``).

    Raises:
        ValueError: for a name that is neither in the table nor registered.

    Example:
        >>> transform_class("HEDJitter").__name__
        'HEDJitter'
    """
    try:
        return method(name).transform_class
    except ValueError:
        if name in _REGISTERED:
            return _REGISTERED[name]
        raise ValueError(f"stain_transforms has no transform named {name!r}") from None


def model_class(name: str) -> type:
    """The model class of a model kind (``"stainnet"``), or of that class name (``"StainNet"``).

    Raises:
        ValueError: for a name that is no model kind.

    Example:
        >>> model_class("StainGANGenerator") is model_class("staingan")
        True
    """
    for kind in MODEL_KINDS.values():
        if name in (kind.name, kind.model.partition(":")[2]):
            return _load(kind.model)
    raise ValueError(f"unknown model {name!r}; the model kinds are {', '.join(MODEL_KINDS)}")


def model_kind(config: Mapping[str, Any]) -> str | None:
    """The model kind that a weights folder's ``config.json`` describes; ``None`` if none.

    A fitted normalizer saved with ``save_pretrained`` is of the kind of its method (``"reinhard"``, ...).

    Example:
        >>> model_kind({"model_type": "staingan"}), model_kind({"n_channel": 32}), model_kind({})
        ('staingan', 'stainnet', None)
        >>> model_kind({"model_type": "macenko"})
        'macenko'
    """
    if config.get("model_type") in MODEL_KINDS or config.get("model_type") in methods(FITTED):
        return config["model_type"]
    for kind in MODEL_KINDS.values():
        if kind.config_key in config:  # saved by a plain PyTorchModelHubMixin, without our model_type
            return kind.name
    return None


def build_normalizer(method: str, references: list[str] | None, weights: str | None, device: str = "cpu") -> Any:
    """A ready normalizer by method name: a fitted one fitted on ``references``, or a learned one's ``weights``.

    The command line's ``normalize`` applies it, and ``distill`` uses it as a teacher.

    Args:
        method: one of ``reinhard``, ``macenko``, ``vahadane`` (fitted on ``references``:
            image files or folders), ``stainnet``, ``staingan`` (loaded from ``weights``: a bundled
            name, a folder or a Hub id).
        references: target-domain image files or folders, for the fitted methods.
        weights: the learned model, for ``stainnet`` and ``staingan``.
        device: torch device the transform is moved to.

    Raises:
        ValueError: for an unknown method, or a missing ``references`` / ``weights``.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from stain_transforms.files import write_image_atomic
        >>> from stain_transforms.testing import synthetic_tissue
        >>> reference = Path(tempfile.mkdtemp()) / "reference.png"
        >>> write_image_atomic(synthetic_tissue(64, seed=0), reference)
        >>> type(build_normalizer("macenko", [str(reference)], None)).__name__
        'MacenkoNormalize'
        >>> build_normalizer("macenko", None, None)
        Traceback (most recent call last):
        ...
        ValueError: --method macenko needs --reference: one or more images or folders of the target domain
    """
    row = METHODS.get(method)  # the parameter keeps its old name, hiding the function method()
    if row is None or row.kind == AUGMENT:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(methods(FITTED) + methods(LEARNED))}")
    if row.kind == FITTED:
        if not references:
            raise ValueError(
                f"--method {method} needs --reference: one or more images or folders of the target domain"
            )
        from .files import expand_image_paths, read_rgb

        images = [read_rgb(path, allow_grayscale=False) for path in expand_image_paths(references)]
        return row.transform_class().fit(images).to(device)
    if not weights:
        raise ValueError(
            f"--method {method} needs --weights: a bundled name (see `stain-transforms weights`), "
            "a folder or a Hub id"
        )
    return row.transform_class.from_pretrained(weights).to(device)
