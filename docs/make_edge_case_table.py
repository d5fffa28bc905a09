"""Write ``docs/edge-cases.md`` from the expectation table of ``tests/test_bad_inputs.py``.

The test module is the single source of truth (its ``CASES``, ``TRANSFORMS``, ``ADAPTERS`` and
``EXPECTED``); this script only formats it, plus the exact error messages, produced by the input
validation every transform shares. ``tests/test_bad_inputs.py`` checks that the page is up to date.

    python docs/make_edge_case_table.py            # rewrite the page
    python docs/make_edge_case_table.py --check    # exit 1 if the page is out of date
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType

DOCS = Path(__file__).resolve().parent
PAGE = DOCS / "edge-cases.md"
TEST_MODULE = DOCS.parent / "tests" / "test_bad_inputs.py"

SHORT_NAMES = {
    "ReinhardNormalize": "Reinhard",
    "MacenkoNormalize": "Macenko",
    "VahadaneNormalize": "Vahadane",
    "StainNetNormalize": "StainNet",
    "StainGANNormalize": "StainGAN",
    "HEDJitter": "HEDJitter",
}

INTRO = """\
# Edge cases and errors

Blank tiles, black tiles, tiny crops, NaN-bearing floats and wrongly laid-out arrays are ordinary in
histopathology pipelines. Other stain libraries answer some of them with NaN images, black images,
`ZeroDivisionError`, `kthvalue()` errors from inside torch, or by returning the input silently after
an exception. Here every input gets exactly one of three documented outcomes:

- **passthrough**: the image comes back unchanged (same type, shape, dtype and values). This is the
  answer for images with no stain to normalize: less than `min_tissue_fraction` (1%) tissue or
  fewer than 16 tissue pixels, or a single colour (every channel spans less than 2/255). Estimating
  a stain from such an image would invent colour, and raising would stop a slide-tiling loop on
  its first background tile. `informative(batch)` tells which images of a batch are normalized; it
  is measured on a regular grid of about 4,096 pixels per image
  (`stain_transforms.functional.informative_images`), or, for Macenko and Vahadane, on the pixels
  their stain matrix is estimated from.
- **result**: a transformed image of the same type, shape, dtype and device, finite and in range.
  StainNet is a per-pixel colour map trained on whole tiles, background included, so it maps blank
  and flat images too (to the target domain's colours). HEDJitter only moves stain that is there:
  white stays white and black stays black, but a flat stained colour is jittered.
- **`ValueError`** whose message names the problem and what to do, raised by the input validation
  that every transform and adapter shares, before any work is done.

Whatever the outcome, **your array or tensor is never modified**, and no output contains NaN.

```python
import numpy as np
import stain_transforms
from stain_transforms.testing import synthetic_tissue

normalize = stain_transforms.MacenkoNormalize().fit(synthetic_tissue(seed=0))

white = np.full((256, 256, 3), 255, np.uint8)
assert np.array_equal(normalize(white), white)  # passthrough: no tissue

noisy = synthetic_tissue(seed=1).astype(np.float32) / 255
noisy[10, 10] = np.nan
try:
    normalize(noisy)
except ValueError as error:
    print(error)  # input contains NaN or infinite values (ndarray of shape (128, 128, 3) ...
```
"""


def load_test_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("test_bad_inputs", TEST_MODULE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _cell(outcome) -> str:
    return "ValueError" if not isinstance(outcome, str) else outcome


def _message(tests: ModuleType, case: str) -> str:
    """The full message the shared validation gives for ``case`` (as the core adapter is given it)."""
    from stain_transforms.conversion import to_batch

    try:
        to_batch(tests.CASES[case].make("core"))
    except ValueError as error:
        return str(error)
    raise AssertionError(f"{case!r} is expected to raise, but the validation accepts it")


def _counts(tests: ModuleType) -> tuple[int, Counter]:
    counts: Counter = Counter()
    cells = 0
    for case in tests.CASES:
        for name in tests.TRANSFORMS:
            for adapter in tests.ADAPTERS:
                cells += 1
                if (case, adapter) in tests.NOT_APPLICABLE:
                    counts["not applicable"] += 1
                else:
                    counts[_cell(tests.expected(case, name))] += 1
    return cells, counts


def render(tests: ModuleType) -> str:
    names = [SHORT_NAMES.get(n, n) for n in tests.TRANSFORMS]
    big = f"{tests.BIG}x{tests.BIG}"
    notes = {big: "¹", "CUDA tensor": "²"}
    lines = [INTRO, "## The table", ""]
    lines.append(
        "One row per input, one column per transform; each cell holds for all four adapters (below). "
        "For the `ValueError` rows, the last column is a part of the message."
    )
    lines.append("")
    lines.append("| input | " + " | ".join(names) + " | message contains |")
    lines.append("|---|" + "---|" * len(names) + "---|")
    for case, spec in tests.CASES.items():
        outcomes = [tests.expected(case, name) for name in tests.TRANSFORMS]
        fragments = sorted({o.fragment for o in outcomes if not isinstance(o, str)})
        label = f"**{case}**{notes.get(case, '')}<br>{spec.description}"
        message = " / ".join(f"`{f}`" for f in fragments)
        lines.append(f"| {label} | " + " | ".join(_cell(o) for o in outcomes) + f" | {message} |")
    lines.append("")
    lines.append(
        f"¹ Checked by default for {', '.join(SHORT_NAMES.get(n, n) for n in tests.BIG_BY_DEFAULT)} (its lookup "
        f"table is fast on a CPU); the other transforms take 10-80 s each at this size on a 2-core CPU, so they run "
        f"with `{tests.BIG_ENV}=1`.  \n"
        "² Checked when a CUDA device is present; the result must then agree with the CPU result to within "
        "a grey level on average."
    )
    lines += ["", "## The adapters", ""]
    for adapter, description in tests.ADAPTERS.items():
        lines.append(f"- `{adapter}`: {description}.")
    lines.append("")
    lines.append(
        "The wrong-layout, strided, flipped, read-only and big-endian rows give each adapter what is wrong "
        "*for it*: MONAI takes channel-first arrays, so its wrong array layout is channel-last."
    )
    not_applicable = sorted({(case, adapter, why) for (case, adapter), why in tests.NOT_APPLICABLE.items()})
    if not_applicable:
        lines.append("")
        lines.append("Cells that do not exist, because the adapter cannot be given such an input:")
        lines.append("")
        for case, adapter, why in not_applicable:
            lines.append(f"- {case} with `{adapter}`: {why}.")
    lines += ["", "## The messages", ""]
    lines.append("What the validation says for each rejected input (here as the core transform is given it):")
    lines.append("")
    for case in tests.CASES:
        if any(not isinstance(tests.expected(case, name), str) for name in tests.TRANSFORMS):
            lines.append(f"- **{case}**: `{_message(tests, case)}`")
    cells, counts = _counts(tests)
    lines += ["", "## Counts", ""]
    lines.append(
        f"{len(tests.CASES)} inputs x {len(tests.TRANSFORMS)} transforms x {len(tests.ADAPTERS)} adapters = "
        f"{cells} cells: "
        + ", ".join(f"{counts[kind]} {kind}" for kind in ("passthrough", "result", "ValueError", "not applicable"))
        + "."
    )
    lines += ["", "## How this page is made", ""]
    lines.append(
        "`tests/test_bad_inputs.py` runs every cell and asserts its outcome, that the input was not modified, "
        "and, for the strided, flipped, read-only and big-endian rows, that the result equals the one for a "
        "plain copy. This page is generated from that test's tables by `python docs/make_edge_case_table.py`, "
        "and a test fails when the two differ."
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the page is out of date, write nothing")
    args = parser.parse_args(argv)
    text = render(load_test_module())
    if args.check:
        current = PAGE.read_text(encoding="utf-8") if PAGE.is_file() else ""
        if current != text:
            print(f"{PAGE} is out of date: run python {__file__}")
            return 1
        return 0
    PAGE.write_text(text, encoding="utf-8")
    print(f"wrote {PAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
