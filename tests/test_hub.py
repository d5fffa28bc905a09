"""Pretrained weights: registry, local folders, and real downloads from a Hub stand-in on 127.0.0.1.

The stand-in implements the two requests ``huggingface_hub.hf_hub_download`` (2.x) makes for a
file: ``HEAD /{repo_id}/resolve/{revision}/{filename}`` (metadata: ``X-Repo-Commit``, ``ETag``,
``Content-Length``; errors flagged by ``X-Error-Code``) and ``GET`` of the same URL. The library
itself is not mocked: it talks HTTP to this server.

The weights used here are test fixtures made by the tests (seeded initialisations), never shipped.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch

from stain_transforms import StainGANNormalize, StainNetNormalize, list_weights
from stain_transforms.hub import WEIGHTS_ENV, bundle_weights, file_sha256, load_model, load_registry, weights_dir
from stain_transforms.models import StainGANGenerator, StainNet

REPO = Path(__file__).resolve().parents[1]
FIXTURE_CARD = {
    "source_domain": "fixture A",
    "target_domain": "fixture B",
    "training_data": "test fixture (seeded init)",
}


class HubStandIn:
    """A minimal Hub: serves folders as model repos at one commit each, and logs requests."""

    def __init__(self) -> None:
        self.repos: dict[str, tuple[str, dict[str, bytes]]] = {}
        self.requests: list[tuple[str, str]] = []
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def do_HEAD(self):
                stand_in.requests.append(("HEAD", self.path))
                self._respond(body=False)

            def do_GET(self):
                stand_in.requests.append(("GET", self.path))
                self._respond(body=True)

            def _respond(self, body: bool) -> None:
                match = re.match(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", self.path.split("?")[0])
                if match is None:
                    return self._error(404, "RepoNotFound")
                repo_id, revision, filename = match.groups()
                if repo_id not in stand_in.repos:
                    return self._error(404, "RepoNotFound")
                commit, files = stand_in.repos[repo_id]
                if revision not in ("main", commit):
                    return self._error(404, "RevisionNotFound")
                if filename not in files:
                    return self._error(404, "EntryNotFound", commit)
                data = files[filename]
                self.send_response(200)
                self.send_header("X-Repo-Commit", commit)
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def _error(self, status: int, code: str, commit: str | None = None) -> None:
                self.send_response(status)
                self.send_header("X-Error-Code", code)
                if commit:
                    self.send_header("X-Repo-Commit", commit)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def add_folder(self, repo_id: str, folder: Path) -> None:
        files = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
        commit = hashlib.sha1(b"".join(files[k] for k in sorted(files))).hexdigest()
        self.repos[repo_id] = (commit, files)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hub():
    stand_in = HubStandIn()
    yield stand_in
    stand_in.close()


def fixture_stainnet(seed: int = 0) -> StainNet:
    torch.manual_seed(seed)
    return StainNet(n_channel=8)


@pytest.fixture
def stainnet_folder(tmp_path) -> Path:
    folder = tmp_path / "saved_stainnet"
    StainNetNormalize(fixture_stainnet()).save_pretrained(folder, model_card_kwargs=FIXTURE_CARD)
    return folder


@pytest.fixture
def registry(tmp_path, monkeypatch) -> Path:
    """An empty weights folder standing in for the bundled one."""
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "registry.json").write_text(json.dumps({"format_version": 1, "weights": {}}))
    monkeypatch.setenv(WEIGHTS_ENV, str(folder))
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def same_outputs(a, b) -> bool:
    x = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    return np.array_equal(a(x), b(x))


# -- local folders -----------------------------------------------------------------------------


def test_save_pretrained_writes_hub_folder(stainnet_folder):
    assert sorted(p.name for p in stainnet_folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((stainnet_folder / "config.json").read_text())
    assert config["model_type"] == "stainnet" and config["n_channel"] == 8 and config["n_layer"] == 3
    card = (stainnet_folder / "README.md").read_text()
    assert "fixture A" in card and "test fixture (seeded init)" in card and "StainNetNormalize" in card


def test_local_folder_round_trip(stainnet_folder, tmp_path):
    loaded = StainNetNormalize.from_pretrained(stainnet_folder)
    assert same_outputs(loaded, StainNetNormalize(fixture_stainnet()))
    assert StainNetNormalize.from_pretrained(str(stainnet_folder)).model.n_channel == 8
    torch.manual_seed(0)
    gan = StainGANNormalize(StainGANGenerator(ngf=4, n_blocks=1), tile_size=64, overlap=16)
    gan.save_pretrained(tmp_path / "gan")
    again = StainGANNormalize.from_pretrained(tmp_path / "gan", tile_size=64, overlap=16)
    for key, value in gan.model.state_dict().items():
        assert torch.equal(value, again.model.state_dict()[key])
    assert type(load_model(tmp_path / "gan")).__name__ == "StainGANGenerator"


def test_wrong_kind_and_missing_files(stainnet_folder, tmp_path):
    with pytest.raises(ValueError, match="stainnet model, not a staingan"):
        StainGANNormalize.from_pretrained(stainnet_folder)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="config.json"):
        StainNetNormalize.from_pretrained(empty)
    with pytest.raises(ValueError, match="no folder"):
        StainNetNormalize.from_pretrained(tmp_path / "does" / "not" / "exist")


def test_corrupt_safetensors(stainnet_folder):
    weights = stainnet_folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])  # truncated download
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        StainNetNormalize.from_pretrained(stainnet_folder)
    weights.write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        StainNetNormalize.from_pretrained(stainnet_folder)


def test_mismatched_config_is_an_error_not_random_weights(stainnet_folder):
    config = json.loads((stainnet_folder / "config.json").read_text())
    (stainnet_folder / "config.json").write_text(json.dumps({**config, "n_channel": 16}))
    with pytest.raises(ValueError, match="does not hold a valid StainNet"):
        StainNetNormalize.from_pretrained(stainnet_folder)


# -- the registry --------------------------------------------------------------------------------


def test_shipped_registry_is_valid_and_in_the_package(monkeypatch):
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    assert (weights_dir() / "registry.json").is_file()
    assert weights_dir().resolve() == (REPO / "weights").resolve()
    for entry in load_registry().values():  # whatever ships must be complete and verifiable
        assert entry.bundled or entry.repo_id
        if entry.bundled:
            assert file_sha256(entry.folder / "model.safetensors") == entry.sha256


def test_bundled_entry(stainnet_folder, registry):
    entry = bundle_weights(stainnet_folder, "fixture-stainnet", repo_id="fixture/stainnet", **FIXTURE_CARD)
    assert entry.sha256 == file_sha256(stainnet_folder / "model.safetensors")
    loaded = StainNetNormalize.from_pretrained("fixture-stainnet")
    assert same_outputs(loaded, StainNetNormalize(fixture_stainnet()))
    (listed,) = list_weights()
    assert listed["name"] == "fixture-stainnet" and listed["bundled"] and listed["kind"] == "stainnet"
    assert listed["source_domain"] == "fixture A" and "fixture B" in listed["card"]
    with pytest.raises(ValueError, match="not a staingan"):
        StainGANNormalize.from_pretrained("fixture-stainnet")


def test_unknown_name_lists_available(stainnet_folder, registry):
    bundle_weights(stainnet_folder, "fixture-stainnet", repo_id="fixture/stainnet", **FIXTURE_CARD)
    with pytest.raises(ValueError, match="available names: fixture-stainnet"):
        StainNetNormalize.from_pretrained("stainnet-nowhere")


def test_sha256_mismatch(stainnet_folder, registry):
    bundle_weights(stainnet_folder, "fixture-stainnet", repo_id="fixture/stainnet", **FIXTURE_CARD)
    replacement = fixture_stainnet(seed=1)
    replacement.save_pretrained(registry / "fixture-stainnet")  # a different, valid file
    with pytest.raises(ValueError, match="sha256 mismatch for 'fixture-stainnet'"):
        StainNetNormalize.from_pretrained("fixture-stainnet")


def test_malformed_registry(registry):
    (registry / "registry.json").write_text(json.dumps({"weights": {"x": {"kind": "stainnet"}}}))
    with pytest.raises(ValueError, match="malformed weights registry"):
        list_weights()


# -- downloads from the stand-in ----------------------------------------------------------------


def test_download_registry_entry_and_repo_id(hub, stainnet_folder, registry, tmp_path):
    hub.add_folder("fixture/stainnet", stainnet_folder)
    sha = file_sha256(stainnet_folder / "model.safetensors")
    entry = {"kind": "stainnet", "repo_id": "fixture/stainnet", "sha256": sha, **FIXTURE_CARD}
    (registry / "registry.json").write_text(json.dumps({"weights": {"fixture-remote": entry}}))
    cache = tmp_path / "hf_cache"
    loaded = StainNetNormalize.from_pretrained("fixture-remote", endpoint=hub.url, cache_dir=cache)
    assert same_outputs(loaded, StainNetNormalize(fixture_stainnet()))
    assert ("HEAD", "/fixture/stainnet/resolve/main/model.safetensors") in hub.requests
    paths = [path for method, path in hub.requests if method == "GET"]
    assert "/fixture/stainnet/resolve/main/model.safetensors" in paths
    assert "/fixture/stainnet/resolve/main/config.json" in paths
    assert not list_weights()[0]["bundled"]
    # A repo id not in the registry downloads too; a second load is served from the cache.
    again = StainNetNormalize.from_pretrained("fixture/stainnet", endpoint=hub.url, cache_dir=cache)
    assert same_outputs(again, loaded)
    cached = StainNetNormalize.from_pretrained("fixture/stainnet", cache_dir=cache, local_files_only=True)
    assert same_outputs(cached, loaded)


def test_download_with_wrong_sha256(hub, stainnet_folder, registry, tmp_path):
    hub.add_folder("fixture/stainnet", stainnet_folder)
    entry = {"kind": "stainnet", "repo_id": "fixture/stainnet", "sha256": "0" * 64, **FIXTURE_CARD}
    (registry / "registry.json").write_text(json.dumps({"weights": {"fixture-remote": entry}}))
    with pytest.raises(ValueError, match="sha256 mismatch"):
        StainNetNormalize.from_pretrained("fixture-remote", endpoint=hub.url, cache_dir=tmp_path / "c")


def test_missing_repo_revision_and_files(hub, stainnet_folder, tmp_path):
    hub.add_folder("fixture/stainnet", stainnet_folder)
    with pytest.raises(ValueError, match="no Hub repository 'fixture/absent'"):
        StainNetNormalize.from_pretrained("fixture/absent", endpoint=hub.url, cache_dir=tmp_path / "c")
    with pytest.raises(ValueError, match="no revision 'v9'"):
        StainNetNormalize.from_pretrained("fixture/stainnet", revision="v9", endpoint=hub.url, cache_dir=tmp_path / "c")
    other = tmp_path / "not_a_model"
    other.mkdir()
    (other / "data.txt").write_text("hello")
    hub.add_folder("fixture/other", other)
    with pytest.raises(ValueError, match="not a stain_transforms model"):
        StainNetNormalize.from_pretrained("fixture/other", endpoint=hub.url, cache_dir=tmp_path / "c")


@pytest.mark.slow
def test_unreachable_hub_says_so(tmp_path):
    """huggingface_hub retries for about 20 s before giving up; then the error must say what to do."""
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(ConnectionError, match="unreachable") as info:
        StainNetNormalize.from_pretrained("fixture/stainnet", endpoint=endpoint, cache_dir=tmp_path / "c")
    message = str(info.value)
    assert "HF_HUB_OFFLINE" in message and "local folder" in message and "\n" not in message


def test_offline_without_cached_copy_says_so(tmp_path):
    with pytest.raises(ConnectionError, match="local_files_only=True and it is not in the Hugging Face cache") as info:
        StainNetNormalize.from_pretrained("fixture/stainnet", cache_dir=tmp_path / "c", local_files_only=True)
    assert "HF_HUB_OFFLINE" in str(info.value) and "local folder" in str(info.value)


LOAD_SCRIPT = """
import sys
from stain_transforms import StainNetNormalize
for name in sys.argv[1:]:
    try:
        print("LOADED", name, StainNetNormalize.from_pretrained(name).model.n_channel)
    except ConnectionError as error:
        print("CONNECTIONERROR", name, error)
"""


def run_loader(env: dict[str, str], *names: str) -> str:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    full_env.update(HF_HUB_DISABLE_TELEMETRY="1", **env)
    result = subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT, *names],
        check=False,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.slow
def test_hf_endpoint_and_hf_hub_offline_environment(hub, stainnet_folder, registry, tmp_path):
    """The variables users set, read by huggingface_hub at import: a fresh interpreter each time."""
    hub.add_folder("fixture/stainnet", stainnet_folder)
    sha = file_sha256(stainnet_folder / "model.safetensors")
    entries = {
        "fixture-remote": {"kind": "stainnet", "repo_id": "fixture/stainnet", "sha256": sha, **FIXTURE_CARD},
        "fixture-uncached": {"kind": "stainnet", "repo_id": "fixture/elsewhere", "sha256": sha, **FIXTURE_CARD},
    }
    (registry / "registry.json").write_text(json.dumps({"weights": entries}))
    env = {"HF_ENDPOINT": hub.url, "HF_HUB_CACHE": str(tmp_path / "cache"), WEIGHTS_ENV: str(registry)}
    assert "LOADED fixture-remote 8" in run_loader(env, "fixture-remote")
    offline = run_loader({**env, "HF_HUB_OFFLINE": "1"}, "fixture-remote", "fixture-uncached")
    assert "LOADED fixture-remote 8" in offline  # from the cache, no network
    line = next(x for x in offline.splitlines() if x.startswith("CONNECTIONERROR fixture-uncached"))
    assert "HF_HUB_OFFLINE is set" in line and "local folder" in line


# -- packaging ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_wheel_ships_the_weights_folder(tmp_path):
    """A real wheel build: weights/ (registry and any bundled folder) lands in stain_transforms/_weights."""
    source = tmp_path / "src"
    skip = shutil.ignore_patterns(".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache")
    shutil.copytree(REPO, source, symlinks=True, ignore=skip)
    bundled = tmp_path / "trained"
    fixture_stainnet().save_pretrained(bundled)
    bundle_weights(
        bundled, "fixture-stainnet", repo_id="fixture/stainnet", destination=source / "weights", **FIXTURE_CARD
    )
    out = tmp_path / "dist"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(source)],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    import zipfile

    (wheel,) = out.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "stain_transforms/_weights/registry.json" in names
    assert "stain_transforms/_weights/fixture-stainnet/model.safetensors" in names
    assert "stain_transforms/_weights/fixture-stainnet/config.json" in names
    assert any(n.startswith("stain_transforms/_demo_tiles/") and n.endswith(".jpg") for n in names)  # the demo's tiles
    assert "stain_transforms/hub.py" in names and "stain_transforms/models/stainnet.py" in names
    # Installed (not editable), offline, without a source tree: the bundled weights load by name.
    site = tmp_path / "site"
    install = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--no-deps",
        "--no-index",
        "-q",
        "--target",
        str(site),
        str(wheel),
    ]
    result = subprocess.run(install, check=False, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    (source / "weights" / "registry.json").unlink()  # the copy in the wheel is the one that must be found
    script = (
        "import stain_transforms, stain_transforms.hub as hub;"
        "print(stain_transforms.__file__);"
        "print(hub.list_weights()[0]['name']);"
        "print(stain_transforms.StainNetNormalize.from_pretrained('fixture-stainnet').model.n_channel)"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "STAIN_TRANSFORMS"))}
    env.update(PYTHONPATH=str(site), HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, "-c", script], check=False, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300
    )
    assert result.returncode == 0, result.stderr
    location, name, width = result.stdout.split()
    assert location.startswith(str(site)) and name == "fixture-stainnet" and width == "8"
