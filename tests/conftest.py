"""Shared fixtures: synthetic tissue made by the tests, and the optional real data in ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from stain_transforms.testing import synthetic_tissue

REPO = Path(__file__).resolve().parents[1]

# One thread: results do not depend on the thread count, and OpenMP's barriers make torch many times
# slower on a small machine that is busy with other work. Tests never measure speed.
torch.set_num_threads(1)


def shared_data_dir() -> Path:
    return Path(os.environ.get("STAIN_TRANSFORMS_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def shared_data() -> Path:
    """The real images of ../shared/data (or $STAIN_TRANSFORMS_DATA); skips the test when absent."""
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"real data not found at {path} (set STAIN_TRANSFORMS_DATA to run this test)")
    return path


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture(scope="session", autouse=True)
def _table_cache(tmp_path_factory):
    """StainNet's on-disk table cache in a folder of this session: tests neither read tables left by other
    runs nor leave 48 MB files in ~/.cache. A test that needs its own cache sets STAIN_TRANSFORMS_CACHE itself."""
    previous = os.environ.get("STAIN_TRANSFORMS_CACHE")
    os.environ["STAIN_TRANSFORMS_CACHE"] = str(tmp_path_factory.mktemp("stain_transforms_cache"))
    yield
    if previous is None:
        os.environ.pop("STAIN_TRANSFORMS_CACHE", None)
    else:
        os.environ["STAIN_TRANSFORMS_CACHE"] = previous


@pytest.fixture(scope="session")
def reference_tile() -> np.ndarray:
    return synthetic_tissue(96, seed=0)


@pytest.fixture(scope="session")
def source_tile() -> np.ndarray:
    stains = np.array([[0.70, 0.15], [0.68, 0.90], [0.22, 0.40]])
    return synthetic_tissue(96, seed=1, stain_matrix=stains, stain_scale=1.3)
