"""The mixin the models save and load with: huggingface_hub's ``PyTorchModelHubMixin`` with this library's rules.

Where weights are looked for (registry names, local folders, Hub repo ids) and how they are checked is
:mod:`stain_transforms.hub`'s business; this mixin only hands the verified folder to the model.
"""

from __future__ import annotations

import copy
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, ModelCard, PyTorchModelHubMixin, constants
from safetensors import SafetensorError

from .._version import __version__
from ..hub import CONFIG_FILE, WEIGHTS_FILE, resolve_pretrained


class HubModelMixin(PyTorchModelHubMixin):
    """``PyTorchModelHubMixin`` with this library's resolution order and checks.

    ``from_pretrained`` accepts registry names, local folders and Hub repo ids (see the module
    docstring), loads strictly (a missing tensor is an error, not a random weight) and checks
    the model kind; keyword arguments override the saved ``config.json``. ``save_pretrained`` adds
    ``"model_type"`` to ``config.json``, and a ``license`` to the card's front matter (see
    :meth:`generate_model_card`). ``push_to_hub`` takes an ``endpoint`` and raises ``ConnectionError``
    when the Hub cannot be reached. Subclasses set ``model_type``.

    Example:
        >>> import json, tempfile
        >>> from stain_transforms.models import StainNet
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = StainNet(n_channel=8).save_pretrained(folder)
        >>> json.loads((folder / "config.json").read_text())["model_type"]
        'stainnet'
        >>> StainNet.from_pretrained(folder).net[0].out_channels
        8
    """

    model_type: str = ""

    @classmethod
    def from_pretrained(  # type: ignore[override]
        cls,
        pretrained_model_name_or_path: str | Path,
        *,
        revision: str | None = None,
        cache_dir: str | Path | None = None,
        force_download: bool = False,
        token: str | bool | None = None,
        local_files_only: bool = False,
        endpoint: str | None = None,
        map_location: str = "cpu",
        **model_kwargs: Any,
    ) -> Any:
        """Load weights by registry name, local folder or Hub repo id (in that order).

        ``model_kwargs`` are constructor arguments that override those saved in ``config.json``.

        Raises:
            ValueError: unknown name, corrupt files, sha256 mismatch, wrong model kind.
            ConnectionError: no network (or ``HF_HUB_OFFLINE``) and no cached copy.
        """
        folder = resolve_pretrained(
            pretrained_model_name_or_path,
            kind=cls.model_type or None,
            revision=revision,
            cache_dir=cache_dir,
            force_download=force_download,
            token=token,
            local_files_only=local_files_only,
            endpoint=endpoint,
        )
        try:
            return super().from_pretrained(folder, map_location=map_location, strict=True, **model_kwargs)
        except (RuntimeError, SafetensorError, TypeError) as error:
            raise ValueError(f"{folder} does not hold a valid {cls.__name__}: {error}") from error

    @classmethod
    def _from_pretrained(
        cls,
        *,
        model_id: str,
        revision: str | None,
        cache_dir: str | Path | None,
        force_download: bool,
        local_files_only: bool,
        token: str | bool | None,
        map_location: str = "cpu",
        strict: bool = True,
        **model_kwargs: Any,
    ) -> Any:
        # from_pretrained above always hands over a verified local folder.
        model = cls(**model_kwargs)
        return cls._load_as_safetensor(model, str(Path(model_id) / WEIGHTS_FILE), map_location, strict)

    def _pretrained_config(self) -> dict[str, Any]:
        """The constructor arguments written to ``config.json`` (by default those the object was made with)."""
        return dict(self._hub_mixin_config or {})

    def _save_pretrained(self, save_directory: Path) -> None:
        super()._save_pretrained(save_directory)
        config = {**self._pretrained_config(), "model_type": self.model_type}
        config["stain_transforms_version"] = __version__
        (save_directory / CONFIG_FILE).write_text(json.dumps(config, sort_keys=True, indent=2), encoding="utf-8")

    def generate_model_card(self, *args: Any, **kwargs: Any) -> ModelCard:
        """The ``README.md`` card: the class's template filled with ``kwargs`` (``model_card_kwargs``).

        The front matter always carries a licence: ``license`` (an identifier of the Hub's list, e.g.
        ``"cc-by-4.0"``, or ``"other"`` with ``license_name`` and ``license_link``) as given in
        ``kwargs``; without one, ``license: other`` with ``license_name: not-stated``, and the card
        says that no licence was stated.

        Example:
            >>> from stain_transforms.models import StainNet
            >>> card = StainNet().generate_model_card(license="cc-by-4.0")
            >>> card.data.license, "Licence" in card.text
            ('cc-by-4.0', True)
            >>> StainNet().generate_model_card().data.license_name
            'not-stated'
        """
        return model_card(self._hub_mixin_info, kwargs)

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> Any:
        """Upload ``save_pretrained``'s files to the Hub repo ``repo_id`` (see :func:`push_folder`); returns the commit.

        Raises:
            ConnectionError: when the Hub (``endpoint``, default ``HF_ENDPOINT``) cannot be reached.
        """
        return push_folder(self.save_pretrained, repo_id, **kwargs)


def model_card(info: Any, fields: dict[str, Any]) -> ModelCard:
    """A card from a ``ModelHubMixin`` class's template and card data, with the licence rules of
    :meth:`HubModelMixin.generate_model_card`, filled with ``fields``.

    Example:
        >>> from stain_transforms.models import StainNet
        >>> card = model_card(StainNet._hub_mixin_info, {"license": "other", "license_name": "research-only"})
        >>> card.data.license, card.data.license_name
        ('other', 'research-only')
    """
    card_data = copy.deepcopy(info.model_card_data)
    fields = dict(fields)
    license_id, name, link = fields.get("license"), fields.get("license_name"), fields.get("license_link")
    if not license_id:
        license_id = "other"
        name = name or ("not-stated" if not link else None)
    card_data.license, card_data.license_name, card_data.license_link = license_id, name, link
    if "license_text" not in fields:
        if name == "not-stated":
            fields["license_text"] = (
                "No licence was stated for these weights (`license: other`, `license_name: not-stated`): ask "
                "their publisher before any use. The stain_transforms code is Apache-2.0; weights learnt from "
                "data carry the terms of that data."
            )
        else:
            described = " ".join(part for part in (name or "", f"<{link}>" if link else "") if part)
            fields["license_text"] = f"`{license_id}`" + (f": {described}" if described else "") + "."
    return ModelCard.from_template(
        card_data=card_data,
        template_str=info.model_card_template,
        repo_url=info.repo_url,
        paper_url=info.paper_url,
        docs_url=info.docs_url,
        **fields,
    )


def _is_network_error(error: BaseException) -> bool:
    """Whether ``error`` says the server could not be reached (refused, unresolvable, timed out), whatever the HTTP library."""
    if isinstance(error, (ConnectionError, TimeoutError)):
        return True
    names = {klass.__name__ for klass in type(error).__mro__}
    return bool(names & {"TransportError", "NetworkError", "ConnectError", "TimeoutException", "ConnectTimeout"})


def push_folder(
    save: Callable[[Path], Any],
    repo_id: str,
    *,
    endpoint: str | None = None,
    token: str | bool | None = None,
    private: bool | None = None,
    commit_message: str = "Upload with stain_transforms",
    branch: str | None = None,
    create_pr: bool | None = None,
    model_card_kwargs: dict[str, Any] | None = None,
    **save_kwargs: Any,
) -> Any:
    """Create the Hub repo ``repo_id`` (if needed) and upload, in one commit, the folder that ``save(folder)`` writes.

    ``save`` is a ``save_pretrained``; it gets ``model_card_kwargs`` and ``save_kwargs``. ``endpoint``
    defaults to ``HF_ENDPOINT`` (the public Hub), ``token`` to the logged-in one.

    Raises:
        ConnectionError: when the Hub cannot be reached (no network, a wrong endpoint), naming it.

    Example:
        >>> from stain_transforms.models import StainNet
        >>> push_folder(StainNet().save_pretrained, "me/stainnet", endpoint="http://127.0.0.1:9")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ConnectionError: cannot push to 'me/stainnet': the Hugging Face Hub at http://127.0.0.1:9 is unreachable ...
    """
    where = endpoint or constants.ENDPOINT
    api = HfApi(endpoint=endpoint, token=token)
    try:
        repo_id = api.create_repo(repo_id=repo_id, private=private, exist_ok=True).repo_id
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "upload"
            save(folder, model_card_kwargs=model_card_kwargs, **save_kwargs)
            return api.upload_folder(
                repo_id=repo_id,
                repo_type="model",
                folder_path=folder,
                commit_message=commit_message,
                revision=branch,
                create_pr=create_pr,
            )
    except Exception as error:
        if not _is_network_error(error):
            raise
        raise ConnectionError(
            f"cannot push to {repo_id!r}: the Hugging Face Hub at {where} is unreachable ({error}); check the "
            "network and the endpoint (HF_ENDPOINT), or save_pretrained() to a folder and upload it later"
        ) from error


# The key of config.json under which a transform's settings are kept (a model-based transform: the
# model's config and weights, plus e.g. StainGAN's tile size).
TRANSFORM_KEY = "transform"


def add_transform_settings(folder: str | Path, class_name: str, settings: dict[str, Any]) -> None:
    """Record a transform's settings (its ``config``) in the ``config.json`` of a ``save_pretrained`` folder.

    Example:
        >>> import tempfile
        >>> from stain_transforms.models import StainNet
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = StainNet().save_pretrained(folder)
        >>> add_transform_settings(folder, "StainNetNormalize", {"backend": "conv"})
        >>> transform_settings(folder, "StainNetNormalize")
        {'backend': 'conv'}
    """
    path = Path(folder) / CONFIG_FILE
    config = json.loads(path.read_text(encoding="utf-8"))
    config[TRANSFORM_KEY] = {"class": class_name, **settings}
    path.write_text(json.dumps(config, sort_keys=True, indent=2), encoding="utf-8")


def save_model_transform(transform: Any, save_directory: str | Path, **kwargs: Any) -> Any:
    """``save_pretrained`` of a transform that wraps a model (StainNet, StainGAN): the model's files plus the
    transform's settings (:func:`add_transform_settings`); ``push_to_hub=True`` also uploads them.

    ``kwargs``: ``model_card_kwargs``, and with ``push_to_hub`` its ``repo_id`` (default: the folder's
    name) and :func:`push_folder`'s options.

    Example:
        >>> import json, tempfile
        >>> from stain_transforms import StainNetNormalize
        >>> from stain_transforms.models import StainNet
        >>> folder = Path(tempfile.mkdtemp())
        >>> save_model_transform(StainNetNormalize(StainNet(), backend="conv"), folder)
        >>> json.loads((folder / "config.json").read_text())["transform"]["backend"]
        'conv'
    """
    push, repo_id = kwargs.pop("push_to_hub", False), kwargs.pop("repo_id", None)
    transform.model.save_pretrained(save_directory, model_card_kwargs=kwargs.pop("model_card_kwargs", None))
    add_transform_settings(save_directory, type(transform).__name__, transform.config)
    if push:
        return transform.push_to_hub(repo_id or Path(save_directory).name, **kwargs)
    return None


def transform_settings(folder: str | Path, class_name: str) -> dict[str, Any]:
    """The settings recorded by :func:`add_transform_settings` for ``class_name``; ``{}`` if there are none.

    Example:
        >>> import tempfile
        >>> from stain_transforms.models import StainNet
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = StainNet().save_pretrained(folder)
        >>> transform_settings(folder, "StainNetNormalize")  # saved by the model alone
        {}
    """
    try:
        config = json.loads((Path(folder) / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    saved = config.get(TRANSFORM_KEY) if isinstance(config, dict) else None
    if not isinstance(saved, dict) or saved.get("class") != class_name:
        return {}
    return {key: value for key, value in saved.items() if key != "class"}
