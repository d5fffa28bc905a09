"""Resumable training state: random-number-generator states and checkpoints that an interruption cannot corrupt."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch


def rng_state() -> dict[str, Any]:
    """The states of torch's, numpy's and Python's global generators (and CUDA's, when present).

    Example:
        >>> sorted(rng_state())[:3]
        ['numpy', 'python', 'torch']
    """
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned.

    Example:
        >>> saved = rng_state()
        >>> a = torch.rand(2)
        >>> set_rng_state(saved)
        >>> bool((torch.rand(2) == a).all())
        True
    """
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file, then rename: an interrupted run never leaves a truncated checkpoint.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "checkpoints" / "latest.pt"
        >>> atomic_save({"step": 3, "rng": rng_state()}, path)
        >>> load_checkpoint(path)["step"], sorted(p.name for p in path.parent.iterdir())
        (3, ['latest.pt'])
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    torch.save(obj, temporary)
    os.replace(temporary, path)


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """A checkpoint written by :func:`atomic_save` (our own file: it holds numpy RNG state, so not weights-only).

    Only load checkpoints that you or this library wrote: unpickling runs code.

    Example: see :func:`atomic_save`.
    """
    return torch.load(path, map_location=device, weights_only=False)


__all__ = ["atomic_save", "load_checkpoint", "rng_state", "set_rng_state"]
