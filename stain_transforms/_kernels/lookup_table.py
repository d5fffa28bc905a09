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
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .levels import levels_to_unit, unit_to_dtype_

N_COLOURS = 256**3
# Colours per call of the map when building the table: one blue level, all red and green levels.
_BUILD_CHUNK = 256 * 256
# Pixels per numpy gather when applying the table.
GATHER_CHUNK = 1 << 18


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
