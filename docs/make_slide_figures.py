"""The figures of docs/slides.md: a slide before/after (per-tile and slide-context Macenko), and a tile-border close-up.

    python docs/make_slide_figures.py

Uses ../shared/data/samples/cmu_small_region.svs (or $STAIN_TRANSFORMS_DATA) with
tiatoolbox_target_1000.png as the reference; without them, a synthetic slide and synthetic references.
Writes docs/figures/slide_thumbnails.png and docs/figures/slide_border.png.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

import stain_transforms as st
from stain_transforms.files import read_rgb
from stain_transforms.slides import fit_slide, open_slide
from stain_transforms.slides.testing import write_synthetic_slide
from stain_transforms.testing import synthetic_tissue

DOCS = Path(__file__).resolve().parent
DATA = Path(os.environ.get("STAIN_TRANSFORMS_DATA", DOCS.parents[1] / "shared" / "data")) / "samples"
TILE = 256


def tilewise(image: np.ndarray, transform) -> np.ndarray:
    """``image`` normalized tile by tile (TILE x TILE), as a tile pipeline would see it."""
    out = np.empty_like(image)
    for top in range(0, image.shape[0], TILE):
        for left in range(0, image.shape[1], TILE):
            out[top : top + TILE, left : left + TILE] = transform(np.ascontiguousarray(image[top : top + TILE, left : left + TILE]))
    return out


def main() -> None:
    torch.set_num_threads(2)
    svs, target = DATA / "cmu_small_region.svs", DATA / "tiatoolbox_target_1000.png"
    if svs.is_file() and target.is_file():
        slide_path, references, name = svs, [read_rgb(target)], "cmu_small_region.svs"
    else:
        slide_path = write_synthetic_slide(Path(tempfile.mkdtemp()) / "synthetic.tiff", 2048, 2048, stain_scale=1.3,
                                           stain_matrix=np.array([[0.70, 0.15], [0.68, 0.90], [0.22, 0.40]]))
        references, name = [synthetic_tissue(256, seed=s) for s in range(4)], "a synthetic slide"
    slide = open_slide(slide_path)
    width, height = slide.dimensions
    image = slide.read(0, 0, width, height)
    normalizer = st.MacenkoNormalize().fit(references)
    stats = fit_slide(slide, normalizer, n_tiles=64, tile_size=512, progress=False)
    per_tile = tilewise(image, normalizer)
    context = tilewise(image, normalizer.with_source(stats))

    thumbs = [image, per_tile, context]
    titles = [f"source ({name})", "Macenko, each tile's own matrix", "Macenko, the slide's matrix (slide context)"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 13 * height / width / 3 + 0.6))
    for ax, picture, title in zip(axes, thumbs, titles):
        ax.imshow(picture[::4, ::4])
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(DOCS / "figures" / "slide_thumbnails.png", dpi=110)
    plt.close(fig)

    # The close-up: the 2x2 tile corner in the tissue whose per-tile maps differ the most.
    best, corner = -1.0, (TILE, TILE)
    for top in range(TILE, height - TILE, TILE):
        for left in range(TILE, width - TILE, TILE):
            window = per_tile[top - 8 : top + 8, left - 8 : left + 8].astype(float)
            if (image[top - 64 : top + 64, left - 64 : left + 64].mean() < 215):
                jump = np.abs(np.diff(window, axis=0)[7]).mean() + np.abs(np.diff(window, axis=1)[:, 7]).mean()
                if jump > best:
                    best, corner = jump, (top, left)
    top, left = corner
    crop = (slice(top - 96, top + 96), slice(left - 96, left + 96))
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.4))
    for ax, picture, title in zip(axes, thumbs, ["source", "each tile's own matrix: seams", "slide context: no seams"]):
        ax.imshow(picture[crop], interpolation="nearest")
        ax.axhline(95.5, color="k", lw=0.6, ls=":")
        ax.axvline(95.5, color="k", lw=0.6, ls=":")
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    fig.suptitle(f"Four {TILE}-pixel tiles meeting at ({left}, {top}); dotted: the tile borders", fontsize=10)
    fig.tight_layout()
    fig.savefig(DOCS / "figures" / "slide_border.png", dpi=110)
    plt.close(fig)
    print("wrote", DOCS / "figures" / "slide_thumbnails.png", "and", DOCS / "figures" / "slide_border.png")


if __name__ == "__main__":
    main()
