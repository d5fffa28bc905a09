"""Pretrained weights: the bundled registry, local folders, and the Hugging Face Hub.

Weights are Hub-style folders: ``config.json`` + ``model.safetensors`` + a ``README.md`` model
card, written by ``save_pretrained`` of huggingface_hub's ``PyTorchModelHubMixin``.
``from_pretrained(name_or_path)`` resolves its argument in this order:

1. a name in the bundled registry (``weights/registry.json``, shipped inside the package as
   ``stain_transforms/_weights``; the folder ``$STAIN_TRANSFORMS_WEIGHTS`` replaces it when set).
   An entry names its Hub repo id and revision, the sha256 of its ``model.safetensors``, its
   source and target stain domains, and its training data. A bundled copy in
   ``weights/<name>/`` is used when present (offline); otherwise the files are downloaded from
   the Hub. Either way the sha256 is checked.
2. a local folder.
3. a Hub repo id (``owner/name``), downloaded into the Hugging Face cache with ``hf_hub_download``
   (so ``HF_ENDPOINT``, ``HF_HUB_OFFLINE``, ``HF_HUB_CACHE`` and ``HF_TOKEN`` apply as usual).

Errors: an unknown name lists the available ones; a corrupt file or a sha256 mismatch raises
``ValueError``; no network (or ``HF_HUB_OFFLINE``) without a cached copy raises ``ConnectionError``
saying so. Before downloading, a TCP connection to the Hub's host is tried for 2 s
(``$STAIN_TRANSFORMS_HUB_PROBE_TIMEOUT`` seconds; 0 turns the probe off; skipped behind a proxy):
when it fails, a cached copy is used if there is one, and otherwise the ``ConnectionError`` comes at
once instead of after huggingface_hub's ~25 s of retries.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import constants, hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from safetensors import SafetensorError, safe_open

from .registry import MODEL_KINDS, model_class, model_kind

WEIGHTS_ENV = "STAIN_TRANSFORMS_WEIGHTS"
REGISTRY_FILE = "registry.json"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "README.md"
KINDS = tuple(MODEL_KINDS)
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_ENTRY_FIELDS = ("kind", "repo_id", "sha256", "source_domain", "target_domain", "training_data")


@dataclass(frozen=True)
class WeightsEntry:
    """One entry of the bundled registry.

    Attributes:
        name: the name ``from_pretrained`` accepts.
        kind: ``"stainnet"`` or ``"staingan"``.
        repo_id: the Hub repository holding the files.
        sha256: hex sha256 of ``model.safetensors``.
        source_domain: the stain domain the model maps from.
        target_domain: the stain domain it maps to.
        training_data: what it was trained on (and that data's terms).
        revision: Hub revision (branch, tag or commit) to download; ``None`` for the default branch.
        description: one line for listings.
    """

    name: str
    kind: str
    repo_id: str
    sha256: str
    source_domain: str
    target_domain: str
    training_data: str
    revision: str | None = None
    description: str = ""

    @property
    def folder(self) -> Path:
        """Where a bundled copy lives (it may be absent; then the files come from the Hub)."""
        return weights_dir() / self.name

    @property
    def bundled(self) -> bool:
        """Whether the weights ship with the package (usable offline)."""
        return (self.folder / WEIGHTS_FILE).is_file()

    def card(self) -> str:
        """The model card: the bundled ``README.md``, or one made from the registry fields."""
        path = self.folder / CARD_FILE
        if path.is_file():
            return path.read_text(encoding="utf-8")
        return (
            f"# {self.name}\n\n{self.description}\n\n- kind: {self.kind}\n- source domain: {self.source_domain}\n"
            f"- target domain: {self.target_domain}\n- training data: {self.training_data}\n"
            f"- Hub: {self.repo_id}" + (f"@{self.revision}" if self.revision else "") + f"\n- sha256: {self.sha256}\n"
        )


# -- the registry ------------------------------------------------------------------------------


def weights_dir() -> Path:
    """The folder holding ``registry.json`` and bundled weights.

    ``$STAIN_TRANSFORMS_WEIGHTS`` when set; otherwise the copy shipped inside the package
    (``stain_transforms/_weights``, which is the repository's top-level ``weights/``).
    """
    override = os.environ.get(WEIGHTS_ENV)
    if override:
        return Path(override).expanduser()
    packaged = Path(__file__).resolve().parent / "_weights"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "weights"  # a source checkout without the link


def load_registry() -> dict[str, WeightsEntry]:
    """The registry entries by name (empty when there is no ``registry.json``).

    Raises:
        ValueError: if ``registry.json`` is malformed.
    """
    path = weights_dir() / REGISTRY_FILE
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        entries = raw.get("weights", {})
        registry = {}
        for name, fields in entries.items():
            missing = [f for f in _ENTRY_FIELDS if not fields.get(f)]
            if missing:
                raise ValueError(f"entry {name!r} lacks {', '.join(missing)}")
            if fields["kind"] not in KINDS:
                raise ValueError(f"entry {name!r} has kind {fields['kind']!r}, expected one of {KINDS}")
            known = set(WeightsEntry.__dataclass_fields__) - {"name"}
            registry[name] = WeightsEntry(name=name, **{k: v for k, v in fields.items() if k in known})
        return registry
    except (json.JSONDecodeError, AttributeError, TypeError, ValueError) as error:
        raise ValueError(f"malformed weights registry {path}: {error}") from error


def list_weights() -> list[dict[str, Any]]:
    """The registry entries as dicts, each with ``name``, its fields, ``bundled`` and its ``card`` text.

    Example:
        >>> isinstance(list_weights(), list)
        True
    """
    return [{**asdict(e), "bundled": e.bundled, "card": e.card()} for e in load_registry().values()]


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def bundle_weights(
    folder: str | Path,
    name: str,
    *,
    repo_id: str,
    source_domain: str,
    target_domain: str,
    training_data: str,
    revision: str | None = None,
    description: str = "",
    destination: str | Path | None = None,
) -> WeightsEntry:
    """Copy a ``save_pretrained`` folder into the weights folder as ``<name>/`` and register it.

    For maintainers shipping trained weights: the sha256 is computed here, the kind read from
    ``config.json``. ``destination`` defaults to :func:`weights_dir`.
    """
    folder = Path(folder)
    target_root = Path(destination) if destination is not None else weights_dir()
    kind = _folder_kind(folder)
    _check_safetensors(folder / WEIGHTS_FILE)
    target = target_root / name
    target.mkdir(parents=True, exist_ok=True)
    for filename in (CONFIG_FILE, WEIGHTS_FILE, CARD_FILE):
        if (folder / filename).is_file():
            shutil.copyfile(folder / filename, target / filename)
    entry = WeightsEntry(
        name=name,
        kind=kind,
        repo_id=repo_id,
        sha256=file_sha256(target / WEIGHTS_FILE),
        source_domain=source_domain,
        target_domain=target_domain,
        training_data=training_data,
        revision=revision,
        description=description,
    )
    registry_path = target_root / REGISTRY_FILE
    raw = json.loads(registry_path.read_text(encoding="utf-8")) if registry_path.is_file() else {}
    raw.setdefault("format_version", 1)
    fields = {k: v for k, v in asdict(entry).items() if k != "name" and v not in (None, "")}
    raw.setdefault("weights", {})[name] = fields
    registry_path.write_text(json.dumps(raw, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return entry


# -- resolving a name or path to a verified local folder ---------------------------------------


def resolve_pretrained(
    name_or_path: str | Path,
    *,
    kind: str | None = None,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    force_download: bool = False,
    token: str | bool | None = None,
    local_files_only: bool = False,
    endpoint: str | None = None,
) -> Path:
    """Return a local folder holding ``config.json`` and a readable ``model.safetensors``.

    Args:
        name_or_path: a registry name, a local folder, or a Hub repo id ``owner/name``.
        kind: ``"stainnet"`` or ``"staingan"``: the kind of model expected (checked).
        revision, cache_dir, force_download, token, local_files_only, endpoint: passed to
            ``huggingface_hub.hf_hub_download`` when downloading.

    Raises:
        ValueError: unknown name (the message lists the available ones), missing or corrupt
            files, a sha256 mismatch, or a model of the wrong kind.
        ConnectionError: the files must be downloaded but the Hub cannot be reached (or
            ``HF_HUB_OFFLINE`` is set) and they are not in the local cache.
    """
    download = {
        "cache_dir": cache_dir,
        "force_download": force_download,
        "token": token,
        "local_files_only": local_files_only,
        "endpoint": endpoint,
    }
    text = str(name_or_path)
    registry = load_registry()
    if not isinstance(name_or_path, Path) and text in registry:
        entry = registry[text]
        _check_kind(entry.kind, kind, f"registry entry {text!r}")
        if entry.bundled:
            folder = entry.folder
        else:
            folder = _download(entry.repo_id, revision or entry.revision, **download)
        actual = file_sha256(folder / WEIGHTS_FILE)
        if actual != entry.sha256:
            raise ValueError(
                f"sha256 mismatch for {text!r}: {folder / WEIGHTS_FILE} has {actual}, the registry expects "
                f"{entry.sha256}; the file is corrupt or was replaced (delete it, or download again with "
                "force_download=True)"
            )
    elif Path(text).expanduser().is_dir():
        folder = Path(text).expanduser()
    elif isinstance(name_or_path, Path) or _looks_like_path(text):
        raise ValueError(f"no folder at {text}: pass a folder written by save_pretrained(), a Hub repo id or a name")
    elif _REPO_ID.match(text):
        folder = _download(text, revision, **download)
    else:
        available = ", ".join(sorted(registry)) or "none bundled yet"
        raise ValueError(
            f"unknown weights {text!r}; available names: {available}. "
            "Or pass a local folder written by save_pretrained(), or a Hub repo id 'owner/name'."
        )
    _check_folder(folder)
    _check_kind(_folder_kind(folder), kind, str(folder))
    return folder


def _looks_like_path(text: str) -> bool:
    return text.startswith((".", "~", "/", "\\")) or text.count("/") > 1 or "\\" in text or Path(text).exists()


def _check_kind(actual: str, expected: str | None, where: str) -> None:
    if expected is not None and actual != expected:
        raise ValueError(f"{where} holds a {actual} model, not a {expected} one")


def _folder_kind(folder: Path) -> str:
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise ValueError(f"{folder} has no {CONFIG_FILE}; it was not written by save_pretrained()")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{config_path} is not valid JSON ({error})") from error
    kind = model_kind(config)
    if kind is None:
        raise ValueError(f"{config_path} describes neither a StainNet nor a StainGAN model")
    return kind


def _check_safetensors(path: Path) -> None:
    if not path.is_file():
        raise ValueError(f"missing {path}; a weights folder needs {CONFIG_FILE} and {WEIGHTS_FILE}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 - a safe_open handle is not a dict
                handle.get_tensor(key)  # reads every tensor: a truncated file fails here
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise ValueError(f"{path} is not a valid safetensors file ({error}); the download may be corrupt") from error


def _check_folder(folder: Path) -> None:
    _check_safetensors(folder / WEIGHTS_FILE)


# Seconds to wait for a TCP connection to the Hub before calling it unreachable (0: do not probe).
PROBE_TIMEOUT_ENV = "STAIN_TRANSFORMS_HUB_PROBE_TIMEOUT"
_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def _hub_unreachable(endpoint: str) -> str | None:
    """Why the Hub at ``endpoint`` cannot be reached (a TCP connection within a couple of seconds), or None.

    None also when it cannot be told: through a proxy, or with the probe switched off
    (``$STAIN_TRANSFORMS_HUB_PROBE_TIMEOUT=0``); then huggingface_hub's own timeouts and retries apply.
    """
    import socket
    import threading
    from urllib.parse import urlsplit

    timeout = float(os.environ.get(PROBE_TIMEOUT_ENV, "2") or 0)
    if timeout <= 0 or any(os.environ.get(name) for name in _PROXY_VARIABLES):
        return None
    parts = urlsplit(endpoint)
    if not parts.hostname:
        return None
    port = parts.port or (443 if parts.scheme == "https" else 80)
    outcome: list[str | None] = []

    def probe() -> None:  # in a thread, so that a hanging DNS lookup is bounded too
        try:
            socket.create_connection((parts.hostname, port), timeout=timeout).close()
            outcome.append(None)
        except OSError as error:
            outcome.append(f"cannot connect to {parts.hostname}:{port}: {error.strerror or error}")

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    if not outcome:
        return f"no answer from {parts.hostname}:{port} within {timeout:g} s"
    return outcome[0]


def _download(
    repo_id: str,
    revision: str | None,
    *,
    cache_dir: str | Path | None,
    force_download: bool,
    token: str | bool | None,
    local_files_only: bool,
    endpoint: str | None,
) -> Path:
    options = {
        "repo_id": repo_id,
        "revision": revision,
        "cache_dir": cache_dir,
        "force_download": force_download,
        "token": token,
        "local_files_only": local_files_only,
        "endpoint": endpoint,
    }
    where = endpoint or constants.ENDPOINT
    unreachable = None
    if not (local_files_only or constants.HF_HUB_OFFLINE):
        unreachable = _hub_unreachable(where)
        if unreachable:
            # No network: huggingface_hub would retry for ~25 s. A cached copy still loads; else the error below, at once.
            options["local_files_only"] = True
    try:
        config = hf_hub_download(filename=CONFIG_FILE, **options)
        weights = hf_hub_download(filename=WEIGHTS_FILE, **options)
        try:
            hf_hub_download(filename=CARD_FILE, **options)
        except EntryNotFoundError:
            pass  # the card is optional
    except LocalEntryNotFoundError:
        if local_files_only or constants.HF_HUB_OFFLINE:
            reason = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "local_files_only=True"
            raise ConnectionError(
                f"cannot load {repo_id!r}: {reason} and it is not in the Hugging Face cache; go online once "
                "(unset HF_HUB_OFFLINE) to download it, or pass the path of a local folder with config.json "
                "and model.safetensors"
            ) from None
        raise ConnectionError(
            f"cannot download {repo_id!r}: the Hugging Face Hub at {where} is unreachable "
            f"({unreachable or 'no network?'}) and it "
            "is not in the local cache; connect and retry, set HF_HUB_OFFLINE=1 to use cached files only, or "
            "pass the path of a local folder with config.json and model.safetensors"
        ) from None
    except GatedRepoError:
        raise ValueError(f"Hub repo {repo_id!r} is gated: accept its terms and log in (`hf auth login`)") from None
    except RepositoryNotFoundError:
        raise ValueError(
            f"no Hub repository {repo_id!r} at {where} (or it is private: log in with `hf auth login`), "
            "and no local folder of that name"
        ) from None
    except RevisionNotFoundError:
        raise ValueError(f"Hub repository {repo_id!r} has no revision {revision!r}") from None
    except EntryNotFoundError:
        raise ValueError(
            f"Hub repository {repo_id!r} has no {CONFIG_FILE} + {WEIGHTS_FILE}; it is not a stain_transforms model"
        ) from None
    except HfHubHTTPError as error:
        raise ConnectionError(f"cannot download {repo_id!r} from {where}: {error}".splitlines()[0]) from None
    folder = Path(weights).parent
    if Path(config).parent != folder:  # a new commit landed between the two downloads
        raise ValueError(f"{repo_id!r} changed during the download; retry, or pin a revision")
    return folder


def load_model(name_or_path: str | Path, **kwargs: Any) -> Any:
    """Load a StainNet or StainGAN generator, whichever the weights hold (for the command line).

    Example:
        >>> import tempfile
        >>> from stain_transforms.models import StainNet
        >>> with tempfile.TemporaryDirectory() as d:
        ...     _ = StainNet().save_pretrained(d)
        ...     type(load_model(d)).__name__
        'StainNet'
    """
    folder = resolve_pretrained(name_or_path, **{k: v for k, v in kwargs.items() if k != "map_location"})
    return model_class(_folder_kind(folder)).from_pretrained(folder, map_location=kwargs.get("map_location", "cpu"))


def __getattr__(name: str) -> Any:
    # A deprecated alias: the mixin moved to stain_transforms.models.hub_mixin, which imports this
    # module, so it is looked up when asked for rather than imported here.
    if name == "HubModelMixin":
        return importlib.import_module("stain_transforms.models.hub_mixin").HubModelMixin
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "WeightsEntry",
    "bundle_weights",
    "file_sha256",
    "list_weights",
    "load_model",
    "load_registry",
    "resolve_pretrained",
    "weights_dir",
]
