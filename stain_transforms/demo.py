"""The built-in demo: real tissue from three hospitals normalized to a fourth with every method, as one PNG.

It needs no data and no network: seven small Camelyon17 lymph-node tiles (CC0) ship with the package
(``stain_transforms/_demo_tiles``), and the learned method uses the bundled StainNet weights. Every
column is labelled with what it maps from and to: the fitted methods (Reinhard, Macenko, Vahadane)
map each source tile to the reference hospital they are fitted on; the bundled StainNet is a fixed
model, trained to map MITOS-ATYPIA-14 Aperio scans to Hamamatsu colours, whatever the reference.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont

from .files import read_rgb, write_image_atomic

TILE = 192
TILES_DIR = Path(__file__).resolve().parent / "_demo_tiles"
TARGET_HOSPITAL = "hospital 0"
DEMO_STAINNET = "stainnet-mitos-aperio-to-hamamatsu"
LABEL_HEIGHT = 30
FOOTER = (
    "Camelyon17 lymph-node tiles (CC0). Rows: a tile from each source hospital. Reinhard, Macenko and Vahadane are "
    f"fitted on 4 tiles of {TARGET_HOSPITAL}\nand map every source to it. StainNet is the bundled pretrained model: "
    "it maps MITOS-ATYPIA-14 Aperio scans to Hamamatsu colours whatever the reference;\ntrain your own for your "
    "domains with `stain-transforms train-staingan` and `stain-transforms distill`."
)


def _hospital(path: Path) -> str:
    return f"hospital {path.stem.split('_')[0].removeprefix('hospital')}"


def demo_images() -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
    """The bundled tiles: four references of the target hospital, and one tile per source hospital by name.

    Example:
        >>> references, sources = demo_images()
        >>> len(references), sorted(sources), references[0].shape
        (4, ['hospital 1', 'hospital 2', 'hospital 3'], (192, 192, 3))
    """
    paths = sorted(TILES_DIR.glob("hospital*.jpg"))
    references = [read_rgb(path) for path in paths if _hospital(path) == TARGET_HOSPITAL]
    sources = {_hospital(path): read_rgb(path) for path in paths if _hospital(path) != TARGET_HOSPITAL}
    return references, sources


def demo_methods(references: list[np.ndarray]) -> dict[tuple[str, str], Any]:
    """Every normalizer that runs offline, by (name, what it maps from and to): the fitted ones fitted on
    ``references``, and the bundled StainNet.

    Example:
        >>> references, _ = demo_images()
        >>> for name, mapping in demo_methods(references):
        ...     print(f"{name}: {mapping}")
        Reinhard: source -> hospital 0
        Macenko: source -> hospital 0
        Vahadane: source -> hospital 0
        StainNet (pretrained): Aperio -> Hamamatsu
    """
    import stain_transforms as st

    target = f"source -> {TARGET_HOSPITAL}"
    methods = {
        ("Reinhard", target): st.ReinhardNormalize().fit(references),
        ("Macenko", target): st.MacenkoNormalize().fit(references),
        ("Vahadane", target): st.VahadaneNormalize(seed=0).fit(references),
    }
    from .hub import load_registry

    entry = load_registry().get(DEMO_STAINNET)
    if entry is not None and entry.bundled:
        mapping = f"{_short(entry.source_domain)} -> {_short(entry.target_domain)}"
        methods[("StainNet (pretrained)", mapping)] = st.StainNetNormalize.from_pretrained(DEMO_STAINNET)
    return methods


def _short(domain: str) -> str:
    """The scanner named in a registry domain ("MITOS-ATYPIA-14 H&E, Aperio ScanScope XT" -> "Aperio")."""
    for word in ("Aperio", "Hamamatsu"):
        if word.lower() in domain.lower():
            return word
    return domain.split(",")[0][:20]


def _font(size: int = 11) -> Any:
    try:
        return PIL.ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size
        return PIL.ImageFont.load_default()


def _label(tile: np.ndarray, title: str, subtitle: str) -> np.ndarray:
    canvas = PIL.Image.new("RGB", (tile.shape[1], tile.shape[0] + LABEL_HEIGHT), "white")
    canvas.paste(PIL.Image.fromarray(tile), (0, LABEL_HEIGHT))
    draw = PIL.ImageDraw.Draw(canvas)
    draw.text((3, 1), title, fill=(0, 0, 0), font=_font(12))
    draw.text((3, 15), subtitle, fill=(90, 90, 90), font=_font(11))
    return np.asarray(canvas)


def _footer(width: int, text: str) -> np.ndarray:
    lines = text.count("\n") + 1
    canvas = PIL.Image.new("RGB", (width, 8 + 14 * lines), "white")
    PIL.ImageDraw.Draw(canvas).multiline_text((4, 4), text, fill=(0, 0, 0), font=_font(11), spacing=3)
    return np.asarray(canvas)


def run_demo(out: str | Path = "stain_transforms_demo.png", overwrite: bool = False) -> Path:
    """Write the before/after grid: a row per source hospital; columns source, reference, each method.

    Example:
        >>> import tempfile
        >>> path = run_demo(Path(tempfile.mkdtemp()) / "demo.png")
        >>> PIL.Image.open(path).size[0] == 6 * TILE
        True
    """
    references, sources = demo_images()
    methods = demo_methods(references)
    rows = []
    for name, source in sources.items():
        tiles = [_label(source, "source", name), _label(references[0], "reference", f"target: {TARGET_HOSPITAL}")]
        tiles += [_label(method(source), title, mapping) for (title, mapping), method in methods.items()]
        rows.append(np.concatenate(tiles, axis=1))
    grid = np.concatenate(rows, axis=0)
    out = Path(out)
    write_image_atomic(np.concatenate([grid, _footer(grid.shape[1], FOOTER)], axis=0), out, overwrite=overwrite)
    return out
