"""The built-in demo: normalize synthetic tissue from three "sites" with every method, as one PNG.

It needs no data and no network: the images are rendered with known stain matrices
(:mod:`stain_transforms.testing`) and the learned method uses the bundled StainNet weights.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageDraw

from .files import write_image_atomic
from .testing import DEFAULT_STAIN_MATRIX, synthetic_tissue

TILE = 192
DEMO_STAINNET = "stainnet-mitos-aperio-to-hamamatsu"

# Three source sites: a pale bluish stain, a dark purple one, and a pink eosin-heavy one.
SOURCE_SITES = {
    "site A (pale, blue)": (np.array([[0.45, 0.30], [0.70, 0.85], [0.55, 0.43]]), 0.7),
    "site B (dark)": (np.array([[0.70, 0.15], [0.68, 0.90], [0.22, 0.40]]), 1.5),
    "site C (pink)": (np.array([[0.50, 0.05], [0.80, 0.95], [0.33, 0.30]]), 1.0),
}


def demo_images() -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
    """Four reference tiles of the target site, and one tile per source site."""
    references = [synthetic_tissue(TILE, seed=seed, stain_matrix=DEFAULT_STAIN_MATRIX) for seed in range(4)]
    sources = {
        name: synthetic_tissue(TILE, seed=10 + i, stain_matrix=matrix, stain_scale=scale)
        for i, (name, (matrix, scale)) in enumerate(SOURCE_SITES.items())
    }
    return references, sources


def demo_methods(references: list[np.ndarray]) -> dict:
    """Every normalizer that can run offline: the classical ones fitted on the references, and StainNet."""
    import stain_transforms as st

    methods = {
        "Reinhard": st.ReinhardNormalize().fit(references),
        "Macenko": st.MacenkoNormalize().fit(references),
        "Vahadane": st.VahadaneNormalize(seed=0).fit(references),
    }
    from .hub import list_weights

    if any(entry["name"] == DEMO_STAINNET for entry in list_weights()):
        methods["StainNet (Aperio->Hamamatsu)"] = st.StainNetNormalize.from_pretrained(DEMO_STAINNET)
    return methods


def _label(tile: np.ndarray, text: str) -> np.ndarray:
    image = PIL.Image.fromarray(tile)
    draw = PIL.ImageDraw.Draw(image)
    draw.rectangle((0, 0, TILE, 14), fill=(255, 255, 255))
    draw.text((3, 1), text, fill=(0, 0, 0))
    return np.asarray(image)


def run_demo(out: str | Path = "stain_transforms_demo.png", overwrite: bool = False) -> Path:
    """Write the before/after grid: a row per source site; columns source, reference, each method."""
    references, sources = demo_images()
    methods = demo_methods(references)
    rows = []
    for name, source in sources.items():
        tiles = [_label(source, name), _label(references[0], "target site")]
        tiles += [_label(method(source), label) for label, method in methods.items()]
        rows.append(np.concatenate(tiles, axis=1))
    out = Path(out)
    write_image_atomic(np.concatenate(rows, axis=0), out, overwrite=overwrite)
    return out
