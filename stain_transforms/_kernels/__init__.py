"""Private speed kernels: the tricks that make the plain maths of ``functional/`` fast, each in one module.

Nothing outside the package should import from here. Every module states the plain formula it
computes and why it computes it differently, and ``tests/test_kernels.py`` checks each one against
that plain formula:

- :mod:`.constants`: module-level constants copied once per dtype and device.
- :mod:`.levels`: uint8 levels <-> floats in [0, 1], and channel-last uint8 output.
- :mod:`.blocks`: working a CPU image in cache-sized blocks with scratch buffers kept per thread.
- :mod:`.jitter`: the inner loop of stain jitter, one matrix product per block.
- :mod:`.lab`: sRGB <-> CIE Lab in place, with the sRGB gain folded into the matrices.
- :mod:`.gram`: per-image ``x @ x^T`` over many pixels, summed in blocks on the CPU.
- :mod:`.lookup_table`: StainNet's exact 256^3 colour table and its gather.

Conventions: a function whose name ends in ``_`` overwrites its (first) argument, as torch's ``add_``.
"""
