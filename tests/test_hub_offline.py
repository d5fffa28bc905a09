"""A Hub id with no network fails at once with a clear ConnectionError (issue 20, item 4)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from stain_transforms import StainNetNormalize
from stain_transforms.hub import resolve_pretrained
from stain_transforms.models import StainNet


def unused_local_endpoint() -> str:
    """An http endpoint on 127.0.0.1 where nothing listens (a stand-in for an unreachable Hub)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_an_unreachable_hub_fails_in_a_couple_of_seconds(tmp_path, monkeypatch):
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    endpoint = unused_local_endpoint()
    start = time.monotonic()
    with pytest.raises(ConnectionError, match="unreachable") as error:
        resolve_pretrained("someone/some-stainnet", endpoint=endpoint, cache_dir=tmp_path)
    assert time.monotonic() - start < 3.0
    assert endpoint in str(error.value) and "HF_HUB_OFFLINE" in str(error.value)
    start = time.monotonic()
    with pytest.raises(ConnectionError, match="unreachable"):
        StainNetNormalize.from_pretrained("someone/some-stainnet", endpoint=endpoint, cache_dir=tmp_path)
    assert time.monotonic() - start < 3.0


def test_an_unreachable_hub_still_loads_a_cached_copy(tmp_path, monkeypatch):
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    # The Hugging Face cache layout: refs/main names a snapshot folder holding the files.
    repo = tmp_path / "models--someone--cached-stainnet"
    commit = "0" * 40
    StainNet().save_pretrained(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    start = time.monotonic()
    folder = resolve_pretrained("someone/cached-stainnet", endpoint=unused_local_endpoint(), cache_dir=tmp_path)
    assert time.monotonic() - start < 3.0
    assert Path(folder) == repo / "snapshots" / commit
