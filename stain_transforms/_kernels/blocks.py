"""Working a CPU image in cache-sized blocks, with scratch buffers kept per thread.

Plain formula: the whole (B, 3, N) batch at once. On a CPU every intermediate result of a whole
512x512 image is megabytes, out of cache, and each freshly allocated one costs a page fault per
4 KiB whenever malloc has handed the last ones back to the system (which it does when the rest of a
pipeline frees enough memory between two calls). So a CPU batch is worked image by image, in blocks
of ``CPU_BLOCK_PER_THREAD`` pixels per thread, and the block's intermediates go into scratch buffers
that each thread keeps for its next call. On a GPU, or where autograd must follow, the whole batch is
one block. The result does not depend on the blocking: every pixel's arithmetic is the same.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

import torch

# Pixels per block and torch thread on the CPU: a block's few float rows then stay in cache.
CPU_BLOCK_PER_THREAD = 2**15
# A thread keeps its last scratch buffers for its next call up to this size.
KEEP_SCRATCH_BYTES = 16 * 2**20

Block = tuple[slice, slice, slice]  # (images, channels, pixels) of a (B, C, N) tensor

_KEPT = threading.local()


def works_in_blocks(x: torch.Tensor, needs_grad: bool) -> bool:
    """Whether ``x`` is worked in blocks: on the CPU, unless autograd must follow (out= buffers refuse it).

    Example:
        >>> works_in_blocks(torch.zeros(1), needs_grad=False), works_in_blocks(torch.zeros(1), needs_grad=True)
        (True, False)
    """
    return x.device.type == "cpu" and not needs_grad


def cpu_blocks(batch_size: int, pixels: int) -> tuple[int, list[Block]]:
    """The block size and the blocks of a (batch_size, C, pixels) CPU tensor: image by image, in pixel runs.

    Every block but an image's last has the block size.

    Example:
        >>> size, blocks = cpu_blocks(2, 10)
        >>> size, len(blocks), blocks[1]
        (10, 2, (slice(1, 2, None), slice(None, None, None), slice(0, 10, None)))
    """
    size = min(CPU_BLOCK_PER_THREAD * torch.get_num_threads(), pixels)
    starts = range(0, pixels, size)
    return size, [(slice(b, b + 1), slice(None), slice(s, s + size)) for b in range(batch_size) for s in starts]


def thread_scratch(rows: Mapping[str, int], size: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Named (1, rows, size) scratch tensors for one block, in one allocation, kept per thread.

    The thread's last set is returned again while ``rows``, ``size`` and ``dtype`` stay the same (and
    it is at most ``KEEP_SCRATCH_BYTES``); its contents are whatever the last block left there.

    Example:
        >>> scratch = thread_scratch({"a": 3, "b": 1}, 8, torch.float32)
        >>> {name: tuple(t.shape) for name, t in scratch.items()}
        {'a': (1, 3, 8), 'b': (1, 1, 8)}
        >>> thread_scratch({"a": 3, "b": 1}, 8, torch.float32)["a"] is scratch["a"]
        True
    """
    key = (tuple(rows.items()), size, dtype)
    kept = getattr(_KEPT, "scratch", None)
    if kept is not None and kept[0] == key:
        return kept[1]
    whole = torch.empty(sum(rows.values()) * size, dtype=dtype)
    parts = whole.split([count * size for count in rows.values()])
    scratch = {name: part.view(1, -1, size) for name, part in zip(rows, parts)}
    if whole.numel() * whole.element_size() <= KEEP_SCRATCH_BYTES:
        _KEPT.scratch = (key, scratch)
    return scratch
