"""The core transforms every adapter test runs, built once per process (tests must not modify them)."""

from __future__ import annotations

import functools

import pytest
import torch

import stain_transforms
import stain_transforms.models
from stain_transforms.testing import synthetic_tissue

NORMALIZERS = ["ReinhardNormalize", "MacenkoNormalize", "VahadaneNormalize", "StainNetNormalize", "StainGANNormalize"]
TRANSFORMS = (*NORMALIZERS, "HEDJitter")  # every public transform


@functools.cache
def _fitted(name: str) -> stain_transforms.StainTransform:
    klass = getattr(stain_transforms, name, None)
    if klass is None:
        raise LookupError(name)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        if name == "StainNetNormalize":  # untrained but deterministic models: adapters only pass data through
            return klass(stain_transforms.models.StainNet(), backend="conv")
        if name == "StainGANNormalize":
            return klass(stain_transforms.models.StainGANGenerator(ngf=8, n_blocks=1), tile_size=64, overlap=16)
    return klass().fit([synthetic_tissue(64, seed=s) for s in range(3)])


def fitted_normalizer(name: str) -> stain_transforms.StainTransform:
    """A ready core normalizer of each method (the same object for every test: never modify it)."""
    try:
        return _fitted(name)
    except LookupError:
        pytest.skip(f"stain_transforms.{name} is not available")
