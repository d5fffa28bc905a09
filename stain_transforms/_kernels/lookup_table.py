"""An exact colour lookup table for a per-pixel colour map on uint8 images (StainNet).

Plain formula: run the map on every pixel. A map that sees each pixel on its own (StainNet's 1x1
convolutions) is, on uint8 input, a function of the 256^3 colours, so its table (48 MB of uint8) gives
the same result with one gather per pixel, many times faster on a CPU than the network.

- Row ``r + 256 * g + 65536 * b`` holds the output for (r, g, b): the pixel's three bytes read as a
  little-endian integer. For channel-last pixels (numpy images) that index is formed by reading each
  pixel's 3 bytes plus the next pixel's first as one uint32 and masking the fourth byte off: one pass
  instead of three casts and shifts (:func:`interleaved_index`).
- The table is built in chunks of colours that are large enough for torch's threads to pay off, and
  gathered with numpy in chunks that keep the index and the output in cache.
- Built tables are kept on disk (:func:`cached_table`), keyed by the caller (StainNet: a digest of its
  weights), and memory-mapped read-only when loaded: DataLoader workers, Ray tasks and later runs load
  the table in milliseconds instead of building it for seconds, and processes share its pages.
"""

from __future__ import annotations

import contextlib
import os
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from .levels import levels_to_unit, unit_to_dtype_

N_COLOURS = 256**3
# Colours per call of the map when building the table: one blue level, all red and green levels.
_BUILD_CHUNK = 256 * 256
# Pixels per numpy gather when applying the table.
GATHER_CHUNK = 1 << 18
# The folder of the on-disk table cache; by default $XDG_CACHE_HOME/stain_transforms (~/.cache/...).
CACHE_ENV = "STAIN_TRANSFORMS_CACHE"


def build_table(colour_map: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """The (256^3, 3) uint8 table of ``colour_map``, which takes (n, 3) float32 colours in [0, 1] to (n, 3) in [0, 1].

    Colours are converted from their levels as transforms convert uint8 input, and results rounded back
    as transforms round uint8 output, so the table equals mapping the image and converting back.

    Example:
        >>> table = build_table(lambda colours: 1.0 - colours)  # an inverting map
        >>> tuple(table.shape), table[0].tolist(), table[N_COLOURS - 1].tolist()
        ((16777216, 3), [255, 255, 255], [0, 0, 0])
    """
    table = torch.empty(N_COLOURS, 3, dtype=torch.uint8)
    levels = levels_to_unit(torch.arange(256, dtype=torch.uint8))
    plane = torch.empty(_BUILD_CHUNK, 3, dtype=torch.float32)  # one blue level: red fastest, then green
    plane[:, 0] = levels.repeat(256)
    plane[:, 1] = levels.repeat_interleave(256)
    with torch.no_grad():
        for blue in range(256):
            plane[:, 2] = levels[blue]
            start = blue * _BUILD_CHUNK
            table[start : start + _BUILD_CHUNK] = unit_to_dtype_(colour_map(plane).to(torch.float32), torch.uint8)
    return table


def interleaved_index(pixels: np.ndarray) -> np.ndarray:
    """Row index ``r + 256 g + 65536 b`` of every pixel of a (..., 3) uint8 array, shape (...), int32.

    Example:
        >>> interleaved_index(np.array([[1, 2, 3], [255, 255, 255]], np.uint8)).tolist()
        [197121, 16777215]
    """
    n = pixels.size // 3
    # Copy the bytes into a buffer one byte longer, so that the last pixel's 4-byte read stays inside.
    buffer = np.empty(3 * n + 1, dtype=np.uint8)
    buffer[: 3 * n] = pixels.reshape(-1)
    buffer[3 * n] = 0
    words = np.ndarray((n,), dtype="<u4", buffer=buffer, strides=(3,))
    index = np.bitwise_and(words, 0xFFFFFF, dtype=np.uint32).view(np.int32)
    return index.reshape(pixels.shape[:-1])


def planar_index(planes: np.ndarray) -> np.ndarray:
    """Row index of every pixel of (3, N) uint8 planes, shape (N,), int32.

    Example:
        >>> planar_index(np.array([[1, 255], [2, 255], [3, 255]], np.uint8)).tolist()
        [197121, 16777215]
    """
    index = planes[2].astype(np.int32)
    index <<= 8
    index |= planes[1]
    index <<= 8
    index |= planes[0]
    return index


def apply_table(table: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Map (B, 3, H, W) uint8 ``levels`` through ``table`` (on ``levels``' device); a new uint8 batch.

    On the CPU numpy gathers, single-threaded (it does not fight DataLoader workers for cores), in
    chunks; a batch that is channel-last in memory (a numpy image's) is gathered channel-last.

    Example:
        >>> table = build_table(lambda colours: 1.0 - colours)
        >>> levels = torch.tensor([0, 10, 255], dtype=torch.uint8).view(1, 3, 1, 1)
        >>> apply_table(table, levels).flatten().tolist()
        [255, 245, 0]
    """
    if levels.device.type != "cpu":
        flat = levels.flatten(2).to(torch.int32)
        index = flat[:, 0] | (flat[:, 1] << 8) | (flat[:, 2] << 16)
        return table.index_select(0, index.reshape(-1)).view(*index.shape, 3).transpose(1, 2).reshape(levels.shape)
    table_array = table.numpy()
    channel_last = levels.permute(0, 2, 3, 1)
    if channel_last.is_contiguous():
        pixels = channel_last.numpy().reshape(-1, 3)
        out = np.empty(pixels.shape, dtype=np.uint8)
        for start in range(0, len(pixels), GATHER_CHUNK):
            part = slice(start, start + GATHER_CHUNK)
            np.take(table_array, interleaved_index(pixels[part]), axis=0, out=out[part])
        return torch.from_numpy(out).view(channel_last.shape).permute(0, 3, 1, 2)
    planes = levels.reshape(levels.shape[0], 3, -1).numpy()
    out = np.empty(planes.shape, dtype=np.uint8)
    for b in range(planes.shape[0]):
        for start in range(0, planes.shape[2], GATHER_CHUNK):
            part = slice(start, start + GATHER_CHUNK)
            out[b, :, part] = np.take(table_array, planar_index(planes[b, :, part]), axis=0).T
    return torch.from_numpy(out).view(levels.shape)


# -- the on-disk cache ----------------------------------------------------------------------------------


def cache_dir() -> Path:
    """The folder tables are cached in: ``$STAIN_TRANSFORMS_CACHE/lut``, else ``$XDG_CACHE_HOME/stain_transforms/lut``
    (``~/.cache/stain_transforms/lut``).

    Example:
        >>> cache_dir().name
        'lut'
    """
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override).expanduser() / "lut"
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "stain_transforms" / "lut"


def read_cached_table(path: Path) -> torch.Tensor | None:
    """The table in ``path`` (an ``.npy`` file), memory-mapped read-only; ``None`` if absent, unreadable or misshapen.

    Example:
        >>> read_cached_table(Path("no/such/table.npy")) is None
        True
    """
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None  # absent, truncated, or not an .npy file: the caller builds it anew
    if array.shape != (N_COLOURS, 3) or array.dtype != np.uint8:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "not writable": tables are only ever read
        return torch.from_numpy(array)


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created) across processes, where the OS has ``fcntl``; else nothing."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: concurrent builders may each build once
        yield
        return
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _write_atomically(path: Path, table: torch.Tensor) -> None:
    partial = path.with_name(f".{path.stem}.{os.getpid()}.{uuid.uuid4().hex}.partial")
    try:
        with open(partial, "wb") as handle:
            np.save(handle, table.numpy(), allow_pickle=False)
        os.replace(partial, path)  # readers see no file or the whole file, never a part
    finally:
        partial.unlink(missing_ok=True)


def cached_table(key: str, build: Callable[[], torch.Tensor]) -> torch.Tensor:
    """The table cached on disk as ``<cache_dir()>/<key>.npy``, built with ``build()`` and stored when absent.

    Plain formula: ``build()``. A cached table is memory-mapped read-only, so processes that load it
    share its pages. Processes that need the same missing table at once wait for one build (a file
    lock). A file that cannot be read as a table (truncated, corrupt, misshapen) is built and written
    anew; one that cannot be written (a read-only home) leaves the table built, in memory. ``key`` must
    change with anything that changes the table.

    Example:
        >>> import tempfile
        >>> os.environ[CACHE_ENV] = tempfile.mkdtemp()
        >>> builds = []
        >>> invert = lambda: builds.append(1) or build_table(lambda colours: 1.0 - colours)
        >>> first, second = cached_table("invert", invert), cached_table("invert", invert)
        >>> len(builds), torch.equal(first, second), (cache_dir() / "invert.npy").is_file()
        (1, True, True)
        >>> del os.environ[CACHE_ENV]
    """
    folder = cache_dir()
    path = folder / f"{key}.npy"
    table = read_cached_table(path)
    if table is not None:
        return table
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = _exclusive(folder / f".{key}.lock")
        lock.__enter__()
    except OSError:
        return build()  # no cache to write to
    try:
        table = read_cached_table(path)  # another process may have built it while this one waited
        if table is not None:
            return table
        table = build()
        with contextlib.suppress(OSError):
            _write_atomically(path, table)
        return table
    finally:
        lock.__exit__(None, None, None)
