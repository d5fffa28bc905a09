"""The bad-input matrix: every public transform, through every adapter, on awkward inputs.

Each cell (case x transform x adapter) has exactly one expected outcome, written down in
:data:`EXPECTED` below:

- ``PASSTHROUGH``: the input comes back unchanged (same type, shape, dtype, values): an image with
  no stain to normalize (blank, black, flat, too little tissue);
- ``RESULT``: a transformed image of the same type, shape, dtype and device, finite and in range,
  different from the input, and equal to the result on a plain (contiguous, writeable) copy;
- ``Raises("...")``: a ``ValueError`` whose message contains the fragment, raised before any work.

Whatever the outcome, the caller's array or tensor is never modified. Any other exception (from
deep inside torch, numpy, albumentations or MONAI) fails the test.

The documentation page ``docs/edge-cases.md`` is generated from these tables by
``docs/make_edge_case_table.py``; :func:`test_edge_case_page_is_up_to_date` keeps the two in step.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from _transforms import TRANSFORMS, as_numpy, assert_same_form, make_transform

import stain_transforms
from stain_transforms.testing import synthetic_tissue

REPO = Path(__file__).resolve().parents[1]

# -- what is tested ------------------------------------------------------------------------------

ADAPTERS = {
    "core": "core / torchvision v2 (`stain_transforms.X`), given a CHW tensor",
    "albumentations": "albumentations (`stain_transforms.albumentations.X` in `A.Compose`), given an HWC array",
    "monai": "MONAI array transform (`stain_transforms.monai.X`), given a CHW `MetaTensor`",
    "monai_dict": "MONAI dictionary transform (`stain_transforms.monai.Xd`), given a CHW array",
}

PASSTHROUGH = "passthrough"
RESULT = "result"


@dataclass(frozen=True)
class Raises:
    """A ``ValueError`` whose message contains ``fragment``."""

    fragment: str


Outcome = str | Raises

TILE = 48  # side of the small test images: big enough to hold tissue, small enough to be quick
BIG = 8192
PURPLE = (180, 90, 160)
# Per case: the outcome for every transform ("*") and the exceptions to it.
# StainNet maps every pixel, background included (see StainNetNormalize), so blank and flat images
# get the target domain's colours rather than a passthrough; HEDJitter jitters any stain there is.
EXPECTED: dict[str, dict[str, Outcome]] = {
    "tissue (uint8)": {"*": RESULT},
    "tissue (float32 in [0, 1])": {"*": RESULT},
    "all white": {"*": PASSTHROUGH, "StainNetNormalize": RESULT},
    "all black": {"*": PASSTHROUGH, "StainNetNormalize": RESULT},
    "single colour": {"*": PASSTHROUGH, "StainNetNormalize": RESULT, "HEDJitter": RESULT},
    "1x1": {"*": Raises("image too small")},
    "2x2": {"*": PASSTHROUGH, "StainNetNormalize": RESULT, "HEDJitter": RESULT},
    "0-size": {"*": Raises("empty image")},
    "grayscale 2-D": {"*": Raises("grayscale input is not supported")},
    "RGBA": {"*": Raises("RGBA input is not supported")},
    "uint16": {"*": Raises("unsupported dtype")},
    "float outside [0, 1]": {"*": Raises("float input must lie in [0, 1]")},
    "NaN": {"*": Raises("NaN or infinite")},
    "inf": {"*": Raises("NaN or infinite")},
    "wrong layout: HWC tensor": {"*": Raises("looks channel-last")},
    "wrong layout: array": {"*": Raises("looks channel-")},
    "non-contiguous": {"*": RESULT},
    "negative strides (flipped view)": {"*": RESULT},
    "read-only array": {"*": RESULT},
    "big-endian float32": {"*": RESULT},
    f"{BIG}x{BIG}": {"*": RESULT},
    "CUDA tensor": {"*": RESULT},
}

# Cells that do not exist: the adapter cannot be given such an input.
NOT_APPLICABLE: dict[tuple[str, str], str] = {
    ("wrong layout: HWC tensor", "albumentations"): "albumentations takes numpy arrays only",
    ("CUDA tensor", "albumentations"): "albumentations takes numpy arrays only",
}

# The 8192x8192 row runs by default only where it is fast (StainNet's lookup table); the classical
# methods take 10-80 s each there on a 2-core CPU. Set this variable to run the whole row.
BIG_ENV = "STAIN_TRANSFORMS_TEST_8192"
BIG_BY_DEFAULT = ("StainNetNormalize",)


def expected(case: str, transform: str) -> Outcome:
    return EXPECTED[case].get(transform, EXPECTED[case]["*"])


# -- the inputs ------------------------------------------------------------------------------------


@functools.cache
def _tissue(size: int = TILE) -> np.ndarray:
    if size == BIG:
        return np.tile(synthetic_tissue(256, seed=11, stain_scale=1.3), (BIG // 256, BIG // 256, 1))
    return synthetic_tissue(size, seed=11, stain_scale=1.3)


def _native(hwc: np.ndarray, adapter: str) -> Any:
    """A well-formed image in the form each adapter is usually given: a fresh, contiguous copy."""
    if adapter == "albumentations":
        return hwc.copy()
    chw = np.ascontiguousarray(np.moveaxis(hwc, -1, 0))
    if adapter == "monai_dict":
        return chw
    tensor = torch.from_numpy(chw)
    if adapter == "monai":
        from monai.data import MetaTensor

        return MetaTensor(tensor, meta={"filename_or_obj": "tile.png"})
    return tensor


def _channel_first_array(adapter: str) -> bool:
    return adapter.startswith("monai")


def _wrong_layout_array(adapter: str) -> np.ndarray:
    hwc = _tissue()
    return hwc.copy() if _channel_first_array(adapter) else np.ascontiguousarray(np.moveaxis(hwc, -1, 0))


def _hwc_tensor(adapter: str) -> torch.Tensor:
    tensor = torch.from_numpy(_tissue().copy())
    if adapter == "monai":
        from monai.data import MetaTensor

        return MetaTensor(tensor)
    return tensor


def _non_contiguous(adapter: str) -> Any:
    """The layout each adapter takes, as a strided view of storage in the other layout."""
    hwc = _tissue()
    if adapter == "albumentations":
        return np.moveaxis(np.ascontiguousarray(np.moveaxis(hwc, -1, 0)), 0, -1)  # HWC view of CHW storage
    if adapter == "monai_dict":
        return hwc.copy().transpose(2, 0, 1)  # CHW view of HWC storage
    view = torch.from_numpy(hwc.copy()).permute(2, 0, 1)
    if adapter == "monai":
        from monai.data import MetaTensor

        return MetaTensor(view)
    return view


def _array(hwc: np.ndarray, adapter: str) -> np.ndarray:
    """A contiguous numpy copy in the layout the adapter takes for arrays (every adapter takes numpy)."""
    return np.ascontiguousarray(hwc.transpose(2, 0, 1) if _channel_first_array(adapter) else hwc)


def _flipped(adapter: str) -> np.ndarray:
    """A numpy view with negative strides, as ``np.flip`` or ``x[::-1]`` give."""
    return (
        _array(_tissue(), adapter)[..., ::-1, ::-1] if _channel_first_array(adapter) else _tissue().copy()[::-1, ::-1]
    )


def _read_only(adapter: str) -> np.ndarray:
    array = _array(_tissue(), adapter)
    array.setflags(write=False)
    return array


def _big_endian(adapter: str) -> np.ndarray:
    return _array(_tissue().astype(np.float32) / 255, adapter).astype(">f4")


def _cuda(adapter: str) -> Any:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    image = _native(_tissue(), adapter)
    return (torch.from_numpy(image) if isinstance(image, np.ndarray) else image).to("cuda")


def _contiguous_copy(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return np.ascontiguousarray(x).copy()
    return x.clone(memory_format=torch.contiguous_format)


def _with_nan(value: float) -> np.ndarray:
    image = _tissue().astype(np.float32) / 255
    image[3, 5, 1] = image[20, 7, 0] = value
    return image


def _from_hwc(hwc: Callable[[], np.ndarray]) -> Callable[[str], Any]:
    return lambda adapter: _native(hwc(), adapter)


def _grayscale(adapter: str) -> Any:
    gray = _tissue().mean(axis=2).astype(np.uint8)
    return gray if isinstance(_native(_tissue(), adapter), np.ndarray) else torch.from_numpy(gray)


def _rgba(adapter: str) -> Any:
    hwc = _tissue()
    rgba = np.concatenate([hwc, np.full(hwc.shape[:2] + (1,), 255, np.uint8)], axis=2)
    return _native(rgba, adapter)


def _small(side: int) -> np.ndarray:
    # Stain in every pixel but one white one: a real (if tiny) piece of tissue.
    image = np.array([[PURPLE, (230, 160, 200)], [(120, 60, 140), (255, 255, 255)]], dtype=np.uint8)
    return image[:side, :side].copy()


@dataclass(frozen=True)
class Case:
    """An input: ``make(adapter)`` builds it; ``reference(x)``, if given, is a plain equivalent of it."""

    description: str
    make: Callable[[str], Any]
    reference: Callable[[Any], Any] | None = None


CASES: dict[str, Case] = {
    "tissue (uint8)": Case("synthetic H&E tile, 48x48 uint8", _from_hwc(_tissue)),
    "tissue (float32 in [0, 1])": Case(
        "the same tile as float32 in [0, 1]", _from_hwc(lambda: _tissue().astype(np.float32) / 255)
    ),
    "all white": Case("every pixel 255 (blank glass)", _from_hwc(lambda: np.full((TILE, TILE, 3), 255, np.uint8))),
    "all black": Case("every pixel 0", _from_hwc(lambda: np.zeros((TILE, TILE, 3), np.uint8))),
    "single colour": Case(
        f"every pixel the purple {PURPLE}", _from_hwc(lambda: np.full((TILE, TILE, 3), PURPLE, np.uint8))
    ),
    "1x1": Case("one stained pixel", _from_hwc(lambda: _small(1))),
    "2x2": Case("three stained pixels and a white one", _from_hwc(lambda: _small(2))),
    "0-size": Case("0x48 image", _from_hwc(lambda: np.zeros((0, TILE, 3), np.uint8))),
    "grayscale 2-D": Case("(H, W) uint8, no channel axis", _grayscale),
    "RGBA": Case("four channels (alpha 255)", _rgba),
    "uint16": Case("16-bit tile (values x 257)", _from_hwc(lambda: _tissue().astype(np.uint16) * 257)),
    "float outside [0, 1]": Case("float32 with 0-255 values", _from_hwc(lambda: _tissue().astype(np.float32))),
    "NaN": Case("float32 tile with two NaN values", _from_hwc(lambda: _with_nan(np.nan))),
    "inf": Case("float32 tile with two +inf values", _from_hwc(lambda: _with_nan(np.inf))),
    "wrong layout: HWC tensor": Case("channel-last (H, W, 3) tensor", _hwc_tensor),
    "wrong layout: array": Case(
        "array in the other layout: (3, H, W) for core and albumentations, (H, W, 3) for MONAI", _wrong_layout_array
    ),
    "non-contiguous": Case(
        "the adapter's layout as a strided view of storage in the other layout", _non_contiguous, _contiguous_copy
    ),
    "negative strides (flipped view)": Case("`x[::-1, ::-1]` numpy view", _flipped, _contiguous_copy),
    "read-only array": Case("numpy array with `writeable=False`", _read_only, _contiguous_copy),
    "big-endian float32": Case(
        "numpy float32 in [0, 1], byte order `>f4` (as some TIFF/FITS readers give)",
        _big_endian,
        lambda x: x.astype(np.float32),
    ),
    f"{BIG}x{BIG}": Case(f"{BIG}x{BIG} uint8 tissue (192 MiB)", _from_hwc(lambda: _tissue(BIG))),
    "CUDA tensor": Case("the tile on the GPU (skipped without one)", _cuda, lambda x: x.cpu()),
}

# -- the transforms --------------------------------------------------------------------------------


def core_transform(name: str) -> stain_transforms.StainTransform:
    """The shared fitted normalizer (never modified), or a new seeded HEDJitter."""
    if name == "StainNetNormalize":  # its default backend: uint8 input takes the lookup table
        return make_transform(name, backend="auto")
    return make_transform(name)


def apply(name: str, adapter: str, image: Any) -> Any:
    """Run transform ``name`` through ``adapter`` on ``image``; random transforms get a fixed seed."""
    if adapter == "core":
        return core_transform(name)(image)
    if adapter == "albumentations":
        os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
        albumentations = pytest.importorskip("albumentations")
        import stain_transforms.albumentations as sta

        if name == "HEDJitter":
            wrapper = sta.HEDJitter.strong(p=1.0)
        else:
            wrapper = getattr(sta, name)(normalizer=core_transform(name))
        return albumentations.Compose([wrapper], seed=0)(image=image)["image"]
    pytest.importorskip("monai")
    import stain_transforms.monai as stm

    if adapter == "monai":
        if name == "HEDJitter":
            return stm.RandHEDJitter(alpha=0.2, beta=0.2, prob=1.0).set_random_state(0)(image)
        return getattr(stm, name)(normalizer=core_transform(name))(image)
    if name == "HEDJitter":
        transform = stm.RandHEDJitterd(keys="image", alpha=0.2, beta=0.2, prob=1.0).set_random_state(0)
    else:
        transform = getattr(stm, f"{name}d")(keys="image", normalizer=core_transform(name))
    out = transform({"image": image, "label": 7})
    assert out["label"] == 7
    return out["image"]


# -- checking --------------------------------------------------------------------------------------


def snapshot(x: Any) -> tuple[np.ndarray, bool]:
    writeable = x.flags.writeable if isinstance(x, np.ndarray) else True
    return as_numpy(x).copy(), writeable


def assert_unchanged(x: Any, before: tuple[np.ndarray, bool]) -> None:
    values, writeable = before
    assert np.array_equal(as_numpy(x), values, equal_nan=values.dtype.kind == "f"), "the input was modified"
    if isinstance(x, np.ndarray):
        assert x.flags.writeable == writeable, "the input's flags were changed"


def assert_close_to_cpu(out: Any, cpu_out: Any) -> None:
    # GPU kernels round differently; a stain transform is still expected to agree to about a grey level.
    scale = 255.0 if as_numpy(out).dtype == np.uint8 else 1.0
    difference = np.abs(as_numpy(out).astype(np.float64) - as_numpy(cpu_out).astype(np.float64)) * (255.0 / scale)
    assert difference.mean() < 1.0, f"mean difference to the CPU result {difference.mean():.3f} grey levels"


def _big_case_selected(case: str, name: str) -> bool:
    return not case.startswith(str(BIG)) or name in BIG_BY_DEFAULT or os.environ.get(BIG_ENV) == "1"


CELLS = [
    pytest.param(case, name, adapter, id=f"{case}-{name}-{adapter}")
    for case in CASES
    for name in TRANSFORMS
    for adapter in ADAPTERS
]


@pytest.mark.parametrize("case, name, adapter", CELLS)
def test_bad_input_matrix(case: str, name: str, adapter: str) -> None:
    if (case, adapter) in NOT_APPLICABLE:
        pytest.skip(f"not applicable: {NOT_APPLICABLE[case, adapter]}")
    if not _big_case_selected(case, name):
        pytest.skip(f"{case} runs for {', '.join(BIG_BY_DEFAULT)} by default; set {BIG_ENV}=1 for every transform")
    spec, outcome = CASES[case], expected(case, name)
    image = spec.make(adapter)
    before = snapshot(image)

    if isinstance(outcome, Raises):
        with pytest.raises(ValueError, match=re.escape(outcome.fragment)):
            apply(name, adapter, image)
        assert_unchanged(image, before)
        return

    out = apply(name, adapter, image)
    assert_unchanged(image, before)
    assert_same_form(out, image)
    if outcome == PASSTHROUGH:
        assert np.array_equal(as_numpy(out), before[0]), "expected the input back unchanged"
        return
    assert not np.array_equal(as_numpy(out), before[0]), "expected a transformed image, got the input back"
    if spec.reference is not None:
        plain = spec.reference(image)
        reference_out = apply(name, adapter, plain)
        if isinstance(image, torch.Tensor) and image.device.type != "cpu":
            assert_close_to_cpu(out, reference_out)
        else:
            assert np.array_equal(as_numpy(out), as_numpy(reference_out)), "differs from the result on a plain copy"


# -- the documentation page ------------------------------------------------------------------------


def _page_generator():
    spec = importlib.util.spec_from_file_location("make_edge_case_table", REPO / "docs" / "make_edge_case_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_edge_case_page_is_up_to_date() -> None:
    import sys

    page = REPO / "docs" / "edge-cases.md"
    generated = _page_generator().render(sys.modules[__name__])
    assert page.is_file() and page.read_text(encoding="utf-8") == generated, (
        "docs/edge-cases.md is out of date: run `python docs/make_edge_case_table.py`"
    )


def test_every_case_has_an_expectation_and_every_transform_is_public() -> None:
    assert set(EXPECTED) == set(CASES)
    for name in TRANSFORMS:
        assert name in stain_transforms.__all__
    public = {
        n
        for n in stain_transforms.__all__
        if isinstance(getattr(stain_transforms, n), type)
        and issubclass(getattr(stain_transforms, n), stain_transforms.StainTransform)
        and n not in ("StainTransform", "StainNormalizer")
    }
    assert public == set(TRANSFORMS), "a public transform is missing from the bad-input matrix"
