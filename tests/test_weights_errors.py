"""Every way of loading weights wrong gives one clear line: in Python, and on the command line.

``tests/test_hub.py`` checks what each message says (and the real unreachable-endpoint case, which
takes ~20 s of retries). Here, for a truncated ``model.safetensors``, a sha256 mismatch, a folder
without ``config.json``, an unknown name, and a Hub that cannot be reached with nothing cached:

- ``from_pretrained`` raises the documented type with a single-line message naming the problem;
- ``stain-transforms normalize --weights ...`` prints exactly one ``error: ...`` line, no
  traceback, exits with status 2, and writes nothing.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import torch

from stain_transforms import StainNetNormalize
from stain_transforms.cli import main
from stain_transforms.files import write_image_atomic
from stain_transforms.hub import WEIGHTS_ENV, bundle_weights
from stain_transforms.models import StainNet

CARD = {"source_domain": "fixture A", "target_domain": "fixture B", "training_data": "test fixture (seeded init)"}


def _save(folder: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    StainNet(n_channel=8).save_pretrained(folder)
    return folder


def truncated(tmp_path: Path, monkeypatch) -> str:
    folder = _save(tmp_path / "truncated")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # an interrupted download
    return str(folder)


def sha256_mismatch(tmp_path: Path, monkeypatch) -> str:
    registry = tmp_path / "registry"
    registry.mkdir()
    (registry / "registry.json").write_text(json.dumps({"format_version": 1, "weights": {}}))
    monkeypatch.setenv(WEIGHTS_ENV, str(registry))
    bundle_weights(_save(tmp_path / "trained"), "fixture-stainnet", repo_id="fixture/stainnet", **CARD)
    _save(tmp_path / "other", seed=1)
    shutil.copyfile(tmp_path / "other" / "model.safetensors", registry / "fixture-stainnet" / "model.safetensors")
    return "fixture-stainnet"


def missing_config(tmp_path: Path, monkeypatch) -> str:
    folder = _save(tmp_path / "no_config")
    (folder / "config.json").unlink()  # model.safetensors alone, e.g. copied by hand
    return str(folder)


def unknown_name(tmp_path: Path, monkeypatch) -> str:
    return "stainnet-nowhere"


def hub_unreachable(tmp_path: Path, monkeypatch) -> str:
    # What a user without network sees for weights not in the cache: offline mode is how
    # huggingface_hub reports it without ~20 s of retries (the real closed port is in test_hub.py).
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    return "fixture/not-cached"


FAILURES = {
    "truncated safetensors": (truncated, ValueError, "not a valid safetensors file"),
    "sha256 mismatch": (sha256_mismatch, ValueError, "sha256 mismatch for 'fixture-stainnet'"),
    "missing config.json": (missing_config, ValueError, "has no config.json"),
    "unknown name": (unknown_name, ValueError, "unknown weights 'stainnet-nowhere'; available names:"),
    "unreachable Hub": (
        hub_unreachable,
        ConnectionError,
        "HF_HUB_OFFLINE is set and it is not in the Hugging Face cache",
    ),
}


@pytest.mark.parametrize("failure", FAILURES)
def test_from_pretrained_raises_one_line(failure, tmp_path, monkeypatch):
    setup, error_type, fragment = FAILURES[failure]
    name = setup(tmp_path, monkeypatch)
    with pytest.raises(error_type) as info:
        StainNetNormalize.from_pretrained(name, cache_dir=tmp_path / "empty_cache")
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message, f"a multi-line message: {message!r}"


@pytest.mark.parametrize("failure", FAILURES)
def test_command_line_prints_one_error_line(failure, tmp_path, monkeypatch, capsys):
    setup, _, fragment = FAILURES[failure]
    name = setup(tmp_path, monkeypatch)
    images = tmp_path / "in"
    write_image_atomic(np.full((16, 16, 3), 120, np.uint8), images / "a.png")
    out = tmp_path / "out"
    code = main(["normalize", "--method", "stainnet", "--weights", name, str(images), str(out)])
    stderr = capsys.readouterr().err
    assert code == 2
    assert stderr.count("\n") == 1 and stderr.startswith("error: ") and fragment in stderr, stderr
    assert "Traceback" not in stderr
    assert not out.exists()
