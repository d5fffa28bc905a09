"""Peer stain-normalization / stain-augmentation libraries behind one small interface.

Benchmark helper only: run it with the separate peer environment ``.venv-bench``
(see ``benchmarks/PEERS.md`` and ``benchmarks/requirements-peers.txt``).

Every factory imports its peer lazily; a peer that is missing or fails to import is
skipped with a printed message and the factory returns ``None``.

    PEER_NORMALIZERS[method][peer](reference_hwc_uint8) -> PeerOp | None
    PEER_AUGMENTERS[method][peer](seed=0)               -> PeerOp | None

``PeerOp.transform(img)`` takes one H x W x 3 uint8 RGB numpy image and returns the
peer's *native* output (its dtype/layout/scale are described by ``out_layout`` and
``out_scale``; ``to_uint8_hwc(op, out)`` converts any of them to H x W x 3 uint8).
``PeerOp.transform_batch(batch)`` (only where the peer batches natively) takes a
B x H x W x 3 uint8 numpy array.  The conversion from numpy HWC uint8 to the peer's
input format is done inside the callables (about a millisecond per 512x512 image).

For Macenko and Vahadane every ``transform`` re-estimates the stain matrix of the
image it is given; only the reference statistics are fixed at factory time.

This module does not set thread counts: the caller sets ``torch.set_num_threads``.

Run ``python benchmarks/_peers.py`` to smoke-test every available factory.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class PeerOp:
    """One peer operation, ready to run."""

    transform: Callable[[np.ndarray], Any]
    transform_batch: Callable[[np.ndarray], Any] | None = None
    out_layout: str = "HWC"  # HWC, CHW, BHWC or BCHW
    out_scale: float = 255.0  # 255.0: values 0..255, 1.0: values 0..1
    note: str = ""

    def __call__(self, img: np.ndarray) -> Any:
        return self.transform(img)


def _skip(peer: str, err: BaseException) -> None:
    print(f"[peers] skipping {peer}: {type(err).__name__}: {err}", file=sys.stderr)


def to_uint8_hwc(op: PeerOp, out: Any) -> np.ndarray:
    """Convert a native output of ``op`` to uint8, HWC (single) or BHWC (batch)."""
    if hasattr(out, "detach"):
        out = out.detach().cpu().numpy()
    arr = np.asarray(out, dtype=np.float64)
    if op.out_layout in ("CHW", "BCHW"):
        arr = np.moveaxis(arr, -3, -1)
    arr = arr * (255.0 / op.out_scale)
    return np.clip(np.rint(arr), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------- conversions
def _chw_uint8(img: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))


def _bchw_uint8(batch: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 3, 1, 2)))


def _bchw_float01(batch: np.ndarray):
    return _bchw_uint8(batch).float().div_(255.0)


# ----------------------------------------------------------------- torchstain
def _torchstain_normalizer(method: str, backend: str):
    def make(ref: np.ndarray) -> PeerOp | None:
        try:
            import torchstain
        except Exception as err:  # noqa: BLE001 - any import failure means "skip"
            _skip("torchstain", err)
            return None
        if method == "reinhard":
            norm = torchstain.normalizers.ReinhardNormalizer(backend=backend)
        else:
            norm = torchstain.normalizers.MacenkoNormalizer(backend=backend)

        if backend == "numpy":
            norm.fit(ref)
            to_input = lambda img: img
        else:
            norm.fit(_chw_uint8(ref))
            to_input = _chw_uint8

        if method == "reinhard":
            transform = lambda img: norm.normalize(to_input(img))
        else:
            transform = lambda img: norm.normalize(to_input(img), stains=False)[0]
        # The torch backend takes CHW but returns HWC (Macenko: int32, Reinhard: uint8).
        return PeerOp(transform, out_layout="HWC", out_scale=255.0)

    return make


def _torchstain_augmenter(backend: str):
    def make(seed: int = 0) -> PeerOp | None:
        try:
            import torch
            import torchstain
        except Exception as err:  # noqa: BLE001
            _skip("torchstain", err)
            return None
        np.random.seed(seed)  # numpy backend draws from the global numpy RNG
        torch.manual_seed(seed)  # torch backend draws from the global torch RNG
        aug = torchstain.augmentors.MacenkoAugmentor(backend=backend, sigma1=0.2, sigma2=0.2)
        to_input = (lambda img: img) if backend == "numpy" else _chw_uint8

        def transform(img):
            aug.fit(to_input(img))  # fit() estimates, augment() estimates again
            return aug.augment()

        return PeerOp(transform, out_layout="HWC", out_scale=255.0)

    return make


# ----------------------------------------------------------- torch-staintools
def _tst_import(compile_: bool):
    from torch_staintools.constants import CONFIG

    # The library default is True (torch.compile of the dictionary learning);
    # eager is the default here because compilation on CPU needs a C++ compiler and
    # minutes of warm-up.  Read at call time, so it can be toggled per factory.
    CONFIG.ENABLE_COMPILE = compile_
    from torch_staintools.augmentor import AugmentorBuilder
    from torch_staintools.normalizer import NormalizerBuilder

    return NormalizerBuilder, AugmentorBuilder


def _tst_normalizer(method: str):
    def make(ref: np.ndarray, compile_: bool = False, **build_kwargs) -> PeerOp | None:
        try:
            builder, _ = _tst_import(compile_)
        except Exception as err:  # noqa: BLE001
            _skip("torch-staintools", err)
            return None
        norm = builder.build(method, **build_kwargs)
        norm.fit(_bchw_float01(ref[None]))
        # forward() swallows every exception and returns a copy of the input:
        # compare outputs with inputs when checking for failures.
        return PeerOp(
            transform=lambda img: norm(_bchw_float01(img[None])),
            transform_batch=lambda batch: norm(_bchw_float01(batch)),
            out_layout="BCHW",
            out_scale=1.0,
            note="single image output is 1x3xHxW float32 in [0, 1]",
        )

    return make


def _tst_augmenter(method: str):
    def make(seed: int = 0, compile_: bool = False, **build_kwargs) -> PeerOp | None:
        try:
            _, builder = _tst_import(compile_)
        except Exception as err:  # noqa: BLE001
            _skip("torch-staintools", err)
            return None
        aug = builder.build(method, sigma_alpha=0.2, sigma_beta=0.2, rng=seed, **build_kwargs)
        return PeerOp(
            transform=lambda img: aug(_bchw_float01(img[None])),
            transform_batch=lambda batch: aug(_bchw_float01(batch)),
            out_layout="BCHW",
            out_scale=1.0,
            note="single image output is 1x3xHxW float32 in [0, 1]",
        )

    return make


# ---------------------------------------------------------------------- stainx
def _stainx_normalizer(method: str):
    def make(ref: np.ndarray) -> PeerOp | None:
        try:
            import stainx
        except Exception as err:  # noqa: BLE001
            _skip("stainx", err)
            return None
        cls = stainx.Reinhard if method == "reinhard" else stainx.Macenko
        norm = cls(device="cpu")
        norm.fit(_bchw_uint8(ref[None]))
        note = "uint8 in -> uint8 out (1x3xHxW)"
        if method == "reinhard":
            note += "; batch transform pools the LAB mean/std over the whole batch"
        return PeerOp(
            transform=lambda img: norm.transform(_bchw_uint8(img[None])),
            transform_batch=lambda batch: norm.transform(_bchw_uint8(batch)),
            out_layout="BCHW",
            out_scale=255.0,
            note=note,
        )

    return make


# ------------------------------------------------------------------ staintools
def _staintools_normalizer(method: str):
    def make(ref: np.ndarray) -> PeerOp | None:
        try:
            import staintools
        except Exception as err:  # noqa: BLE001
            _skip("staintools", err)
            return None
        if method == "reinhard":
            norm = staintools.ReinhardColorNormalizer()
        else:
            norm = staintools.StainNormalizer(method=method)
        # staintools writes 1 into the zero pixels of its input array (in place), so it
        # gets writable copies; read-only arrays (e.g. np.asarray of a PIL image) fail.
        norm.fit(ref.copy())
        return PeerOp(lambda img: norm.transform(img.copy()), out_layout="HWC", out_scale=255.0)

    return make


def _staintools_augmenter(method: str):
    def make(seed: int = 0) -> PeerOp | None:
        try:
            import staintools
        except Exception as err:  # noqa: BLE001
            _skip("staintools", err)
            return None
        np.random.seed(seed)  # pop() draws from the global numpy RNG
        aug = staintools.StainAugmentor(method=method, sigma1=0.2, sigma2=0.2)

        def transform(img):
            aug.fit(img.copy())  # copy: staintools modifies zero pixels in place
            return aug.pop()  # float64 HWC in [0, 255]

        return PeerOp(transform, out_layout="HWC", out_scale=255.0)

    return make


# ------------------------------------------------------------------ tiatoolbox
def _tia_normalizer(method: str):
    def make(ref: np.ndarray) -> PeerOp | None:
        try:
            from tiatoolbox.tools.stainnorm import get_normalizer
        except Exception as err:  # noqa: BLE001
            _skip("tiatoolbox", err)
            return None
        norm = get_normalizer(method)
        # like staintools, rgb2od writes 1 into zero pixels in place: pass copies
        norm.fit(ref.copy())
        return PeerOp(lambda img: norm.transform(img.copy()), out_layout="HWC", out_scale=255.0)

    return make


def _tia_augmenter(method: str):
    def make(seed: int = 0) -> PeerOp | None:
        try:
            from tiatoolbox.tools.stainaugment import StainAugmentor
        except Exception as err:  # noqa: BLE001
            _skip("tiatoolbox", err)
            return None
        # StainAugmentor samples from fresh unseeded generators: seed is ignored.
        aug = StainAugmentor(method=method, sigma1=0.2, sigma2=0.2)

        def transform(img):
            # fit() keeps the first image's stain matrix forever unless it is reset.
            aug.stain_matrix = None
            return aug(img.copy())  # copy: zero pixels are modified in place

        return PeerOp(transform, out_layout="HWC", out_scale=255.0)

    return make


# ----------------------------------------------------------------------- MONAI
def _monai_normalizer(ref: np.ndarray) -> PeerOp | None:
    try:
        from monai.apps.pathology.transforms import ExtractHEStains, NormalizeHEStains
    except Exception as err:  # noqa: BLE001
        _skip("monai", err)
        return None
    tli = 240.0
    he_ref = ExtractHEStains(tli=tli)(ref)  # 3x2, columns H and E
    # MONAI has no fit(): the reference 99th-percentile concentrations are
    # computed here the same way NormalizeHEStains computes them for its input.
    absorbance = -np.log(np.minimum(ref.reshape(-1, 3).astype(np.float32) + 1.0, tli) / tli)
    conc = np.linalg.lstsq(he_ref, absorbance.T, rcond=None)[0]
    max_cref = np.percentile(conc, 99, axis=1)
    norm = NormalizeHEStains(tli=tli, target_he=he_ref, max_cref=max_cref)
    return PeerOp(norm, out_layout="HWC", out_scale=255.0)


# -------------------------------------------------------------- albumentations
def _albu_augmenter(method: str):
    def make(seed: int = 0) -> PeerOp | None:
        try:
            import albumentations as A
        except Exception as err:  # noqa: BLE001
            _skip("albumentations", err)
            return None
        # p defaults to 0.5: force 1.0.  Defaults of the ranges are (0.7, 1.3) and (-0.2, 0.2);
        # (0.8, 1.2) matches sigma1=0.2 of the other peers.
        aug = A.HEStain(
            method=method,
            intensity_scale_range=(0.8, 1.2),
            intensity_shift_range=(-0.2, 0.2),
            p=1.0,
        )
        aug.set_random_seed(seed)
        return PeerOp(
            transform=lambda img: aug(image=img)["image"],
            # images=: one stain matrix (from images[0]) and one draw for the batch
            transform_batch=lambda batch: aug(images=batch)["images"],
            out_layout="HWC",
            out_scale=255.0,
            note="batch reuses images[0]'s stain matrix and one random draw for all images",
        )

    return make


# ---------------------------------------------------------------- scikit-image
def _skimage_hed_augmenter(seed: int = 0, sigma_scale: float = 0.05, sigma_shift: float = 0.005):
    """Classic HED jitter: rgb2hed, per-channel scale/shift, hed2rgb (float [0, 1]).

    skimage's HED values are OD / ln(1e6), i.e. about 14x smaller than plain optical
    density, so a shift of 0.005 here is about 0.07 OD.  rgb2hed also clips negative
    stain values to 0, so even zero jitter does not give the input back.
    """
    try:
        from skimage.color import hed2rgb, rgb2hed
    except Exception as err:  # noqa: BLE001
        _skip("scikit-image", err)
        return None
    rng = np.random.default_rng(seed)

    def jitter(images: np.ndarray, n: int) -> np.ndarray:
        # one (scale, shift) per image and channel; broadcast over H and W
        scale = rng.uniform(1 - sigma_scale, 1 + sigma_scale, size=(n, 1, 1, 3))
        shift = rng.uniform(-sigma_shift, sigma_shift, size=(n, 1, 1, 3))
        hed = rgb2hed(images).reshape((n,) + images.shape[-3:])
        return hed2rgb(hed * scale + shift)

    return PeerOp(
        transform=lambda img: jitter(img, 1)[0],
        transform_batch=lambda batch: jitter(batch, len(batch)),
        out_layout="HWC",
        out_scale=1.0,
        note="float64 in [0, 1]; skimage converts uint8 input with img_as_float",
    )


# -------------------------------------------------------------------- registry
PEER_NORMALIZERS: dict[str, dict[str, Callable[..., PeerOp | None]]] = {
    "reinhard": {
        "torchstain-numpy": _torchstain_normalizer("reinhard", "numpy"),
        "torchstain-torch": _torchstain_normalizer("reinhard", "torch"),
        "torch-staintools": _tst_normalizer("reinhard"),
        "stainx": _stainx_normalizer("reinhard"),
        "staintools": _staintools_normalizer("reinhard"),
        "tiatoolbox": _tia_normalizer("reinhard"),
    },
    "macenko": {
        "torchstain-numpy": _torchstain_normalizer("macenko", "numpy"),
        "torchstain-torch": _torchstain_normalizer("macenko", "torch"),
        "torch-staintools": _tst_normalizer("macenko"),
        "stainx": _stainx_normalizer("macenko"),
        "staintools": _staintools_normalizer("macenko"),
        "tiatoolbox": _tia_normalizer("macenko"),
        "monai": _monai_normalizer,
    },
    "vahadane": {
        "torch-staintools": _tst_normalizer("vahadane"),
        "staintools": _staintools_normalizer("vahadane"),
        "tiatoolbox": _tia_normalizer("vahadane"),
    },
}

PEER_AUGMENTERS: dict[str, dict[str, Callable[..., PeerOp | None]]] = {
    "macenko": {
        "torchstain-numpy": _torchstain_augmenter("numpy"),
        "torchstain-torch": _torchstain_augmenter("torch"),
        "torch-staintools": _tst_augmenter("macenko"),
        "staintools": _staintools_augmenter("macenko"),
        "tiatoolbox": _tia_augmenter("macenko"),
        "albumentations": _albu_augmenter("macenko"),
    },
    "vahadane": {
        "torch-staintools": _tst_augmenter("vahadane"),
        "staintools": _staintools_augmenter("vahadane"),
        "tiatoolbox": _tia_augmenter("vahadane"),
        "albumentations": _albu_augmenter("vahadane"),
    },
    "preset": {
        "albumentations": _albu_augmenter("random_preset"),
    },
    "hed": {
        "skimage": _skimage_hed_augmenter,
    },
}


# ------------------------------------------------------------------ self-check
def _load_rgb(path: str) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"))


def _check(name: str, op: PeerOp, img: np.ndarray, batch: np.ndarray | None) -> bool:
    import time

    ok = True
    runs = [("single", op.transform, img)]
    if op.transform_batch is not None and batch is not None:
        runs.append(("batch", op.transform_batch, batch))
    for kind, fn, x in runs:
        t0 = time.perf_counter()
        out = fn(x)
        dt = time.perf_counter() - t0
        u8 = to_uint8_hwc(op, out)
        expected = x.shape if kind == "batch" or op.out_layout in ("HWC", "CHW") else (1,) + x.shape
        native = out.detach().numpy() if hasattr(out, "detach") else np.asarray(out)
        finite = bool(np.isfinite(native.astype(np.float64)).all())
        changed = float(np.abs(u8.astype(np.int16) - x.reshape(u8.shape).astype(np.int16)).mean())
        good = finite and u8.shape == expected and changed > 0.5
        ok &= good
        print(
            f"{'ok ' if good else 'BAD'} {name:40s} {kind:6s} {tuple(native.shape)!s:18s}"
            f" {native.dtype!s:14s} mean|out-in|={changed:5.1f} {dt * 1000:8.0f} ms"
        )
    return ok


def main(argv: list[str]) -> int:
    import os

    data = "/work/shared/data/peer_samples"
    src = _load_rgb(os.path.join(data, "src_512.png"))
    ref = _load_rgb(os.path.join(data, "ref_512.png"))
    n_batch = 16
    batch = np.stack([np.roll(src, 32 * i, axis=i % 2) for i in range(n_batch)])
    skip_slow = "--all" not in argv  # torch-staintools Vahadane takes minutes on CPU
    all_ok = True
    for table, arg in ((PEER_NORMALIZERS, ref), (PEER_AUGMENTERS, None)):
        for method, peers in table.items():
            for peer, factory in peers.items():
                name = f"{'norm' if arg is not None else 'aug'}/{method}/{peer}"
                if skip_slow and peer == "torch-staintools" and method == "vahadane":
                    print(f"--  {name:40s} skipped (minutes on CPU; pass --all)")
                    continue
                op = factory(arg) if arg is not None else factory()
                if op is None:
                    continue
                all_ok &= _check(name, op, src, batch)
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
