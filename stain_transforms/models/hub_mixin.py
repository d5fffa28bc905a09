"""The mixin the models save and load with: huggingface_hub's ``PyTorchModelHubMixin`` with this library's rules.

Where weights are looked for (registry names, local folders, Hub repo ids) and how they are checked is
:mod:`stain_transforms.hub`'s business; this mixin only hands the verified folder to the model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from huggingface_hub import PyTorchModelHubMixin
from safetensors import SafetensorError

from .._version import __version__
from ..hub import CONFIG_FILE, WEIGHTS_FILE, resolve_pretrained


class HubModelMixin(PyTorchModelHubMixin):
    """``PyTorchModelHubMixin`` with this library's resolution order and checks.

    ``from_pretrained`` accepts registry names, local folders and Hub repo ids (see the module
    docstring), loads strictly (a missing tensor is an error, not a random weight) and checks
    the model kind. ``save_pretrained`` adds ``"model_type"`` to ``config.json``.
    Subclasses set ``model_type``.

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
    ) -> Any:
        """Load weights by registry name, local folder or Hub repo id (in that order).

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
            return super().from_pretrained(folder, map_location=map_location, strict=True)
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

    def _save_pretrained(self, save_directory: Path) -> None:
        super()._save_pretrained(save_directory)
        config = {**(self._hub_mixin_config or {}), "model_type": self.model_type}
        config["stain_transforms_version"] = __version__
        (save_directory / CONFIG_FILE).write_text(json.dumps(config, sort_keys=True, indent=2), encoding="utf-8")
