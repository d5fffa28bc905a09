"""StainNet as a transform, with an exact lookup-table fast path for uint8 images on the CPU.

StainNet maps each RGB value on its own, so for 8-bit images it is a function on 256^3 colours.
The table of that function (48 MB of uint8) is compiled once by running every colour through the
same code path as the network backend, so the two give identical results, and it is applied with
one gather per pixel. ``backend="auto"`` uses it for uint8 input on the CPU.
"""

from __future__ import annotations

import copy
import hashlib
import threading
from pathlib import Path
from typing import Any

import torch

from .._kernels.levels import levels_to_unit
from .._kernels.lookup_table import apply_table, build_table, cached_table
from ..hub import resolve_pretrained
from ..models.hub_mixin import push_folder, save_model_transform, transform_settings
from ..models.stainnet import StainNet
from ..transform import StainTransform

BACKENDS = ("auto", "conv", "lut")
# Part of the key of tables cached on disk: bump it whenever the way a table is computed changes.
TABLE_VERSION = 1
# Held while a table is built: threads that first need a table together wait for one build
# instead of each building its own (seconds of CPU and 48 MB each).
_TABLE_LOCK = threading.Lock()


class StainNetNormalize(StainTransform):
    """Normalize stain with a trained StainNet (Kang et al., 2021).

    Every pixel is mapped, background included: StainNet is a colour map, so a blank tile gets
    the target domain's background colour, just like the blank areas of tissue tiles (an image-
    level passthrough, as the fitted normalizers do, would make near-blank tiles flip between two
    behaviours at a threshold).

    Backends:
        - ``"conv"``: the network, on the input's device (the model moves there on first use,
          so ``normalize.to("cuda")`` is optional). On the CPU the 1x1 convolutions run as matrix
          products over pixels (:meth:`StainNet.forward_pixels`), whose result for a pixel does
          not depend on image size or thread count; PyTorch's CPU convolution differs in the last
          float bit with the thread count, which flips a rounded uint8 value now and then.
        - ``"lut"``: the exact 256^3 table for uint8 input (numpy, PIL or uint8 tensors, on any
          device). It equals the ``"conv"`` result on the CPU bit for bit. It is built on the CPU on
          first use (a few seconds) and kept on the instance, and rebuilt if the weights change.
          Built tables are also kept on disk, keyed by a digest of the weights, in
          ``$STAIN_TRANSFORMS_CACHE/lut`` (default ``~/.cache/stain_transforms/lut``), written
          atomically and memory-mapped read-only when loaded: every other instance with the same
          weights, in any process (DataLoader workers, Ray tasks, the next run), loads it in
          milliseconds, and processes on one machine share its pages. The table is not pickled or
          part of ``state_dict()``. :meth:`compile` gets it ahead of use. On a GPU it reproduces
          the CPU results, which may differ by 1/255 in rare pixels from the GPU network.
        - ``"auto"`` (default): ``"lut"`` for uint8 input on the CPU, ``"conv"`` otherwise.

    Args:
        model: a :class:`~stain_transforms.models.StainNet`.
        backend: ``"auto"``, ``"conv"`` or ``"lut"``.

    Example:
        >>> import numpy as np
        >>> from stain_transforms.models import StainNet
        >>> from stain_transforms.testing import synthetic_tissue
        >>> normalize = StainNetNormalize(StainNet(), backend="conv")
        >>> out = normalize(synthetic_tissue(seed=0))
        >>> out.shape, out.dtype
        ((128, 128, 3), dtype('uint8'))
    """

    accepts_uint8 = True  # uint8 levels go through the lookup table
    # The table is a per-pixel gather with no float intermediates: a CPU batch gains nothing from
    # being worked image by image, and would pay for stacking the results.
    splits_cpu_batches = False

    def __init__(self, model: StainNet, backend: str = "auto") -> None:
        super().__init__()
        if not isinstance(model, StainNet):
            raise ValueError(f"model must be a stain_transforms.models.StainNet, got {type(model).__name__}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.model = model.eval()
        self.backend = backend
        self._tables: dict[torch.device, tuple[bytes, torch.Tensor]] = {}
        self._digest: tuple[tuple, bytes] | None = None

    @property
    def config(self) -> dict[str, Any]:
        """The constructor arguments other than the model.

        Example:
            >>> StainNetNormalize(StainNet(), backend="conv").config
            {'backend': 'conv'}
        """
        return {"backend": self.backend}

    # -- loading and saving ------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | Path, *, backend: str | None = None, map_location: str = "cpu", **hub_kwargs: Any
    ) -> StainNetNormalize:
        """Load weights by registry name, local folder or Hub repo id (see :mod:`stain_transforms.hub`).

        ``backend`` defaults to the one :meth:`save_pretrained` recorded, else ``"auto"``. ``hub_kwargs``
        (``revision``, ``cache_dir``, ``token``, ``local_files_only``, ``endpoint``, ...) go to
        :func:`~stain_transforms.hub.resolve_pretrained`.

        Example:
            >>> import tempfile
            >>> folder = Path(tempfile.mkdtemp())
            >>> _ = StainNetNormalize(StainNet(), backend="conv").save_pretrained(folder)
            >>> StainNetNormalize.from_pretrained(folder).backend, StainNetNormalize.from_pretrained(folder, backend="lut").backend
            ('conv', 'lut')
        """
        folder = resolve_pretrained(name_or_path, kind=StainNet.model_type, **hub_kwargs)
        if backend is None:
            backend = transform_settings(folder, cls.__name__).get("backend", "auto")
        return cls(StainNet.from_pretrained(folder, map_location=map_location), backend=backend)

    def save_pretrained(self, save_directory: str | Path, **kwargs: Any) -> Any:
        """Write ``config.json`` (the model's, and this transform's ``backend``), ``model.safetensors`` and a
        ``README.md`` card (``model_card_kwargs=...``; see :meth:`StainNet.generate_model_card`).

        Example:
            >>> import json, tempfile
            >>> folder = Path(tempfile.mkdtemp())
            >>> _ = StainNetNormalize(StainNet(), backend="conv").save_pretrained(folder)
            >>> json.loads((folder / "config.json").read_text())["transform"]
            {'backend': 'conv', 'class': 'StainNetNormalize'}
        """
        return save_model_transform(self, save_directory, **kwargs)

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> Any:
        """Upload :meth:`save_pretrained`'s files to the Hub (see :func:`~stain_transforms.models.hub_mixin.push_folder`).

        Raises:
            ConnectionError: when the Hub (``endpoint``, default ``HF_ENDPOINT``) cannot be reached.

        Example:
            >>> StainNetNormalize(StainNet()).push_to_hub("me/stainnet", endpoint="http://127.0.0.1:9")  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ...
            ConnectionError: cannot push to 'me/stainnet': the Hugging Face Hub at http://127.0.0.1:9 is unreachable ...
        """
        return push_folder(self.save_pretrained, repo_id, **kwargs)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_tables"] = {}  # 48 MB each; rebuilt on demand in the receiving process
        state["_digest"] = None  # holds data pointers, meaningless elsewhere
        return state

    # -- the network -------------------------------------------------------------------------

    def _model_on(self, device: torch.device) -> StainNet:
        if next(self.model.parameters()).device != device:
            self.model.to(device)
        return self.model

    def apply_batch(self, batch: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
        """Map a (B, 3, H, W) batch: through the table (uint8 levels, see the backends), else the network."""
        levels = batch.dtype == torch.uint8
        if self.backend == "lut" and not levels:
            raise ValueError(
                f"backend='lut' needs uint8 images, got {batch.dtype}; use backend='auto' or 'conv' for float input"
            )
        if levels and (self.backend == "lut" or (self.backend == "auto" and batch.device.type == "cpu")):
            return apply_table(self.lookup_table(batch.device), batch)
        return self._run_network(levels_to_unit(batch) if levels else batch)

    def _run_network(self, batch: torch.Tensor) -> torch.Tensor:
        model = self._model_on(batch.device)
        dtype = next(model.parameters()).dtype
        # A float batch that autograd tracks keeps its graph (gradients reach the input, and the weights).
        with torch.set_grad_enabled(torch.is_grad_enabled() and batch.requires_grad):
            if batch.device.type == "cpu":
                # The 1x1 convolutions as matrix products over pixels: on the CPU these give the same
                # bits for a pixel whatever the image size and thread count (PyTorch's convolution
                # kernels do not), which is what lets the lookup table equal this path exactly.
                return model.forward_pixels(batch.to(dtype).permute(0, 2, 3, 1)).permute(0, 3, 1, 2).to(batch.dtype)
            return model(batch.to(dtype)).to(batch.dtype)

    # -- the lookup table --------------------------------------------------------------------

    def _fingerprint(self) -> bytes:
        """A digest of the weights: the table follows in-place updates and survives device moves."""
        # Tensor versions count in-place writes; hashing the bytes only when they change keeps
        # this check to microseconds per call.
        quick = tuple((p.data_ptr(), p._version, p.device, p.dtype) for p in self.model.parameters())
        if self._digest is not None and self._digest[0] == quick:
            return self._digest[1]
        digest = hashlib.sha256(type(self.model).__name__.encode())
        for p in self.model.parameters():
            digest.update(f"{p.dtype}{tuple(p.shape)}".encode())
            digest.update(p.detach().cpu().flatten().view(torch.uint8).numpy().tobytes())
        self._digest = (quick, digest.digest())
        return self._digest[1]

    @torch.no_grad()
    def lookup_table(self, device: str | torch.device = "cpu") -> torch.Tensor:
        """The (256^3, 3) uint8 table on ``device``: row ``r + 256 * g + 65536 * b`` holds the output for (r, g, b).

        The row index is the pixel's three bytes read as a little-endian integer, which makes the
        index of an interleaved RGB pixel cheap to form. Built on the CPU by passing every colour, in
        chunks, through the network as the ``"conv"`` backend runs it on the CPU.

        Example:
            >>> table = StainNetNormalize(StainNet()).lookup_table()
            >>> tuple(table.shape), table.dtype
            ((16777216, 3), torch.uint8)
        """
        device = torch.device(device)
        key = self._fingerprint()
        cached = self._tables.get(device)
        if cached is not None and cached[0] == key:
            return cached[1]
        with _TABLE_LOCK:
            cached = self._tables.get(device)  # another thread may have built it while we waited
            if cached is not None and cached[0] == key:
                return cached[1]
            cpu = self._tables.get(torch.device("cpu"))
            if cpu is not None and cpu[0] == key:
                table = cpu[1].to(device)
            else:
                table = self._build_table().to(device)
            self._tables[device] = (key, table)
        return table

    def compile(self) -> StainNetNormalize:
        """Get the CPU lookup table now rather than on first use (from the on-disk cache, else built); returns ``self``."""
        self.lookup_table("cpu")
        return self

    def _build_table(self) -> torch.Tensor:
        """The CPU table: from the on-disk cache, keyed by the weights' digest, else computed and stored there."""
        key = f"stainnet-v{TABLE_VERSION}-{self._fingerprint().hex()}"
        return cached_table(key, self._compute_table)

    def _compute_table(self) -> torch.Tensor:
        model = self.model
        if next(model.parameters()).device.type != "cpu":
            model = copy.deepcopy(model).cpu()  # the table reproduces the CPU path
        dtype = next(model.parameters()).dtype
        return build_table(lambda colours: model.forward_pixels(colours.to(dtype)))
