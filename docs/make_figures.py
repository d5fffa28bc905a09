"""Make the documentation figures: a before/after panel per method, the augmentation panel, the README gallery.

Only images whose terms allow redistribution go into the figures:

- Camelyon17 lymph-node tiles, five hospitals (CC0), from ``camelyon17_tiles/``;
- the cervical liquid-based cytology set (CC BY 4.0): "Liquid based cytology pap smear images for
  multi-class diagnosis of cervical cancer", Mendeley Data, from ``cervical_lbc_256/``.

Never MITOS-ATYPIA-14 images or the official StainNet assets. The learned methods use the bundled
weights (``stain_transforms.list_weights()``); a method without bundled weights gets no figure, and
the script says so. The figures are written to ``docs/figures/`` (quantised PNGs, a few hundred KB):

- ``gallery.png``: one tile from each of hospitals 1-4, normalized to hospital 0 by every classical method;
- ``methods/<method>.png``: before/after on histology (and, for the classical methods, cytology);
- ``augmentation.png``: HEDJitter presets on a histology tile and a cytology image.

Run it from anywhere; the data folder is ``$STAIN_TRANSFORMS_DATA`` or ``../shared/data`` next to the
repository (or ``--data``):

    python docs/make_figures.py [--data DIR] [--out docs/figures] [--tile 192] [--gallery-tile 160]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont
import PIL.PngImagePlugin
import torch

import stain_transforms as st

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("STAIN_TRANSFORMS_DATA", REPO.parent / "shared" / "data"))

# Hospital 0 is the target: the normalizers are fitted on all five of its tiles (fit on many).
TARGET_HOSPITAL = 0
# One tile from each other hospital (file names in camelyon17_tiles/).
SOURCE_TILES = ["domain_1_2680.png", "domain_2_4194.png", "domain_3_24502.png", "domain_4_17868.png"]
# The method panels show three of them (the most different looks).
PANEL_SOURCES = SOURCE_TILES[1:]
# Cytology: the target look is one smear (crops of original image 42, NILM); the sources are smears
# stained and photographed differently (blue, green, pink).
CYTOLOGY_REFERENCES = [f"nilm_42_{i}.jpg" for i in range(1, 9)]
CYTOLOGY_SOURCES = ["lsil_1_14.jpg", "nilm_5_5.jpg", "hsil_3_24.jpg"]
CYTOLOGY_AUGMENT = "nilm_2_9.jpg"

CAMELYON_CREDIT = "Camelyon17 tiles (CC0)"
LBC_CREDIT = (
    'Cytology: "Liquid based cytology pap smear images for multi-class diagnosis of cervical cancer", '
    "Mendeley Data (CC BY 4.0)"
)
CAPTION_HEIGHT = 18
GUTTER = 4


# -- images -------------------------------------------------------------------------------------


def read(path: Path) -> np.ndarray:
    with PIL.Image.open(path) as image:
        return np.array(image.convert("RGB"))


def camelyon(data: Path) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
    """The target hospital's five tiles, and the source tiles by file name."""
    folder = data / "camelyon17_tiles"
    references = [read(p) for p in sorted(folder.glob(f"domain_{TARGET_HOSPITAL}_*.png"))]
    sources = {name: read(folder / name) for name in SOURCE_TILES}
    return references, sources


def cytology(data: Path) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
    folder = data / "cervical_lbc_256" / "images"
    return [read(folder / name) for name in CYTOLOGY_REFERENCES], {n: read(folder / n) for n in CYTOLOGY_SOURCES}


def hospital(name: str) -> str:
    return f"hospital {name.split('_')[1]}"


# -- drawing ------------------------------------------------------------------------------------


def font(size: int = 13) -> PIL.ImageFont.ImageFont:
    try:
        return PIL.ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size
        return PIL.ImageFont.load_default()


def tile(image: np.ndarray, side: int, caption: str = "") -> np.ndarray:
    """``image`` resized to ``side`` pixels square, under a white strip with ``caption``."""
    picture = PIL.Image.fromarray(image).resize((side, side), PIL.Image.Resampling.LANCZOS)
    canvas = PIL.Image.new("RGB", (side, side + CAPTION_HEIGHT), "white")
    canvas.paste(picture, (0, CAPTION_HEIGHT))
    PIL.ImageDraw.Draw(canvas).text((2, 2), caption, fill="black", font=font())
    return np.asarray(canvas)


def blank(side: int) -> np.ndarray:
    return np.full((side + CAPTION_HEIGHT, side, 3), 255, np.uint8)


def grid(rows: list[list[np.ndarray]]) -> np.ndarray:
    """Tiles of equal size in rows, with white gutters; shorter rows are padded with white."""
    width = max(len(row) for row in rows)
    height = rows[0][0].shape[0]
    lines = []
    for row in rows:
        cells = row + [np.full_like(row[0], 255)] * (width - len(row))
        gap = np.full((height, GUTTER, 3), 255, np.uint8)
        lines.append(np.concatenate([x for cell in cells for x in (cell, gap)][:-1], axis=1))
    gap = np.full((GUTTER, lines[0].shape[1], 3), 255, np.uint8)
    return np.concatenate([x for line in lines for x in (line, gap)][:-1], axis=0)


def footer(image: np.ndarray, text: str) -> np.ndarray:
    canvas = PIL.Image.new("RGB", (image.shape[1], image.shape[0] + CAPTION_HEIGHT + 2), "white")
    canvas.paste(PIL.Image.fromarray(image), (0, 0))
    PIL.ImageDraw.Draw(canvas).text((2, image.shape[0] + 3), text, fill=(90, 90, 90), font=font(11))
    return np.asarray(canvas)


def save(image: np.ndarray, path: Path, credit: str) -> None:
    """A 256-colour PNG (dithered: a few times smaller than RGB, and hard to tell apart), with credits."""
    path.parent.mkdir(parents=True, exist_ok=True)
    quantised = PIL.Image.fromarray(image).quantize(256, method=PIL.Image.Quantize.MEDIANCUT)
    info = PIL.PngImagePlugin.PngInfo()
    info.add_text("Software", f"stain_transforms {st.__version__}, docs/make_figures.py")
    info.add_text("Source", credit)
    quantised.save(path, optimize=True, pnginfo=info)
    print(f"wrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path} ({path.stat().st_size // 1024} KB)")


# -- methods ------------------------------------------------------------------------------------


def classical(references: list[np.ndarray]) -> dict[str, st.StainNormalizer]:
    """The classical normalizers, fitted on every reference (their statistics pooled by the median)."""
    return {
        "Reinhard": st.ReinhardNormalize().fit(references),
        "Macenko": st.MacenkoNormalize().fit(references),
        "Vahadane": st.VahadaneNormalize(seed=0).fit(references),
    }


def learned() -> dict[str, tuple[str, Callable[[np.ndarray], np.ndarray]]]:
    """Bundled learned models: method -> (weights name, transform). Missing ones are reported."""
    bundled = {entry["name"]: entry for entry in st.list_weights() if entry["bundled"]}
    found = {}
    for method, name, klass in [
        ("StainNet", "stainnet-mitos-aperio-to-hamamatsu", st.StainNetNormalize),
        ("StainGAN", "staingan-mitos-aperio-to-hamamatsu", st.StainGANNormalize),
    ]:
        if name in bundled:
            found[method] = (name, klass.from_pretrained(name))
        else:
            print(f"no bundled weights {name!r}: no {method} figure", file=sys.stderr)
    return found


# -- figures ------------------------------------------------------------------------------------


def gallery(out: Path, side: int, references: list[np.ndarray], sources: dict[str, np.ndarray], methods: dict) -> None:
    """Rows: original, then each method; columns: hospitals 1-4, then reference tiles of hospital 0."""
    originals = [tile(img, side, hospital(name)) for name, img in sources.items()]
    rows = [originals + [tile(references[0], side, "target: hospital 0")]]
    for i, (label, normalize) in enumerate(methods.items(), start=1):
        row = [tile(normalize(img), side, f"{label}") for img in sources.values()]
        rows.append(row + [tile(references[i % len(references)], side, "hospital 0")])
    text = f"Normalized to hospital 0 (fitted on its 5 tiles). {CAMELYON_CREDIT}."
    save(footer(grid(rows), text), out / "gallery.png", CAMELYON_CREDIT)


def method_panel(
    out: Path,
    side: int,
    label: str,
    normalize: Callable[[np.ndarray], np.ndarray],
    histology: tuple[list[np.ndarray], dict[str, np.ndarray]],
    cyto: tuple[list[np.ndarray], dict[str, np.ndarray]] | None,
    target_caption: str | None = "target",
) -> None:
    """Before/after rows on histology (and cytology), with a reference of the target in the last column."""
    references, sources = histology
    picked = {name: sources[name] for name in PANEL_SOURCES}
    before = [tile(img, side, hospital(name)) for name, img in picked.items()]
    after = [tile(normalize(img), side, f"{label}") for img in picked.values()]
    if target_caption is not None:
        before.append(tile(references[0], side, f"{target_caption}: hospital 0"))
        after.append(blank(side))
    rows, credit, text = [before, after], CAMELYON_CREDIT, f"{CAMELYON_CREDIT}."
    if cyto is not None:
        cyto_normalize, (cyto_references, cyto_sources) = cyto
        before = [tile(img, side, "cytology") for img in cyto_sources.values()]
        after = [tile(cyto_normalize(img), side, label) for img in cyto_sources.values()]
        rows += [before + [tile(cyto_references[0], side, "target smear")], after + [blank(side)]]
        credit, text = f"{CAMELYON_CREDIT}. {LBC_CREDIT}", f"{CAMELYON_CREDIT}. Cytology: LBC set (CC BY 4.0)."
    save(footer(grid(rows), text), out / "methods" / f"{label.lower().split()[0]}.png", credit)


def augmentation_panel(out: Path, side: int, histology_tile: np.ndarray, cytology_image: np.ndarray) -> None:
    """Each row an image; columns: original, then one seeded draw of each preset (and a Macenko basis)."""
    variants = [
        ("HED light", lambda g: st.HEDJitter.light(generator=g)),
        ("HED strong", lambda g: st.HEDJitter.strong(generator=g)),
        ("BRH (StainNet paper)", lambda g: st.HEDJitter.brh(generator=g)),
        ("strong, Macenko basis", lambda g: st.HEDJitter.strong(basis="macenko", generator=g)),
    ]
    rows = []
    for image in (histology_tile, cytology_image):
        row = [tile(image, side, "original")]
        for seed, (label, make) in enumerate(variants):
            row.append(tile(make(torch.Generator().manual_seed(seed))(image), side, label))
        rows.append(row)
    text = f"{CAMELYON_CREDIT}. Cytology: LBC set (CC BY 4.0)."
    save(footer(grid(rows), text), out / "augmentation.png", f"{CAMELYON_CREDIT}. {LBC_CREDIT}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="holds camelyon17_tiles/ and cervical_lbc_256/")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "figures", help="default: %(default)s")
    parser.add_argument("--tile", type=int, default=192, help="tile side in the method panels (default: %(default)s)")
    parser.add_argument("--gallery-tile", type=int, default=160, help="tile side in the gallery (default: %(default)s)")
    args = parser.parse_args(argv)
    for folder in ("camelyon17_tiles", "cervical_lbc_256"):
        if not (args.data / folder).is_dir():
            parser.error(f"{args.data / folder} not found: pass --data or set STAIN_TRANSFORMS_DATA")
    start = time.perf_counter()
    histology = camelyon(args.data)
    cyto = cytology(args.data)
    methods = classical(histology[0])
    cyto_methods = classical(cyto[0])

    gallery(args.out, args.gallery_tile, *histology, methods)
    for label, normalize in methods.items():
        method_panel(args.out, args.tile, label, normalize, histology, (cyto_methods[label], cyto))
    for label, (weights, normalize) in learned().items():
        # The learned models map to the domain they were trained on (MITOS-ATYPIA-14 Hamamatsu scans),
        # whose images may not be shown: no target column.
        caption = f"{label} ({weights.split('-')[1].upper()})"
        method_panel(args.out, args.tile, caption, normalize, histology, None, target_caption=None)
    smear = read(args.data / "cervical_lbc_256" / "images" / CYTOLOGY_AUGMENT)
    augmentation_panel(args.out, args.tile, histology[1][SOURCE_TILES[0]], smear)
    print(f"done in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
