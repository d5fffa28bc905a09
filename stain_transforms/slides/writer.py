"""Normalize a whole slide into a new pyramidal tiled TIFF, streaming: memory is that of a few tiles, not of the slide.

The working level is read tile by tile (with a margin of context for StainGAN), normalized, and
handed to ``tifffile`` through a generator; each lower pyramid level is then made from the level
just written, read back tile by tile from the file being written, averaging 2x2 pixels. The TIFF
has one tiled page per level, largest first, the lower ones marked reduced-resolution (the layout
of OpenSlide's generic tiled TIFF, which tiffslide, OpenSlide and QuPath open), with the source's
microns per pixel in its resolution tags. It is written to a temporary file in the output folder
and renamed at the end; on any error the temporary file is deleted.

Example:
    >>> import tempfile
    >>> import stain_transforms
    >>> from stain_transforms.testing import synthetic_tissue
    >>> from stain_transforms.slides import open_slide
    >>> from stain_transforms.slides.testing import write_synthetic_slide
    >>> folder = Path(tempfile.mkdtemp())
    >>> source = write_synthetic_slide(folder / "source.tiff", width=1024, height=768, stain_scale=1.3)
    >>> normalizer = stain_transforms.ReinhardNormalize().fit(synthetic_tissue(128, seed=0))
    >>> out = normalize_slide(source, folder / "normalized.tiff", normalizer, tile_size=256, progress=False)
    >>> written = open_slide(out)
    >>> written.level_dimensions, written.mpp
    (((1024, 768), (512, 384), (256, 192)), (0.5, 0.5))
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .fit import fit_slide
from .reader import Slide, open_slide
from .statistics import SlideStatistics

COMPRESSIONS = ("jpeg", "zlib", "none")
OUTPUT_SUFFIXES = (".tif", ".tiff")


def _check_output(output: Path, source: Path, overwrite: bool) -> None:
    if output.suffix.lower() not in OUTPUT_SUFFIXES:
        raise ValueError(f"the output {output.name} must be a .tif or .tiff file (a pyramidal tiled TIFF is written)")
    if output.exists() and output.resolve() == source.resolve():
        raise ValueError("the output would overwrite the input slide; choose another output path")
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output} exists; pass --overwrite (overwrite=True) to replace it")
    if output.is_dir():
        raise ValueError(f"the output {output} is a folder; give a .tiff file path")


def _slide_context(normalizer: Any, slide: Slide, source: Any, level: int, fit_tiles: int, progress: bool) -> Any:
    """The transform every tile goes through: with the slide's statistics where the normalizer takes them."""
    takes_source = callable(getattr(normalizer, "with_source", None))
    if source is None or not takes_source:
        if isinstance(source, SlideStatistics) and not takes_source:
            raise ValueError(f"{type(normalizer).__name__} takes no slide statistics; pass source=None")
        return normalizer
    if isinstance(source, str) and source == "auto":
        source = fit_slide(slide, normalizer, n_tiles=fit_tiles, tile_size=512, level=level, progress=progress)
    return normalizer.with_source(source)


def _normalized_tiles(
    slide: Slide, transform: Any, level: int, tile: int, margin: int, device: torch.device, bar: Any
) -> Iterator[np.ndarray]:
    """The working level's tiles, normalized, row by row: each read with ``margin`` pixels of context on every side."""
    width, height = slide.level_dimensions[level]
    for top in range(0, height, tile):
        for left in range(0, width, tile):
            region = slide.read(left - margin, top - margin, tile + 2 * margin, tile + 2 * margin, level)
            batch = torch.from_numpy(region).permute(2, 0, 1)[None].to(device)
            with torch.inference_mode():
                out = transform(batch)
            out = out[0, :, margin : margin + tile, margin : margin + tile].permute(1, 2, 0)
            bar.update(1)
            yield np.ascontiguousarray(out.cpu().numpy())


def _downsampled_tiles(page: Any, tile: int, bar: Any) -> Iterator[np.ndarray]:
    """The tiles of the level half the size of the TIFF page ``page``, averaging 2x2 pixels, read tile by tile."""
    import zarr

    store = page.aszarr()
    try:
        array = zarr.open(store, mode="r")
        height, width = array.shape[:2]
        for top in range(0, -(-height // 2), tile):
            for left in range(0, -(-width // 2), tile):
                block = np.full((2 * tile, 2 * tile, 3), 255, np.uint16)
                region = array[2 * top : 2 * top + 2 * tile, 2 * left : 2 * left + 2 * tile]
                block[: region.shape[0], : region.shape[1]] = region
                # An odd last row or column: repeat it, so that the edge is not averaged with padding.
                if region.shape[0] % 2:
                    block[region.shape[0]] = block[region.shape[0] - 1]
                if region.shape[1] % 2:
                    block[:, region.shape[1]] = block[:, region.shape[1] - 1]
                half = (block.reshape(tile, 2, tile, 2, 3).sum(axis=(1, 3)) + 2) // 4
                bar.update(1)
                yield half.astype(np.uint8)
    finally:
        store.close()


def normalize_slide(
    slide: Slide | str | Path,
    output: str | Path,
    normalizer: Any,
    source: Any = "auto",
    level: int = 0,
    tile_size: int = 512,
    margin: int | None = None,
    compression: str = "jpeg",
    quality: int = 90,
    min_size: int | None = None,
    fit_tiles: int = 64,
    overwrite: bool = False,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> Path:
    """Normalize a whole slide into a new pyramidal tiled TIFF; returns the output path.

    Args:
        slide: a :class:`~stain_transforms.slides.Slide` or a path.
        output: the ``.tif``/``.tiff`` file to write.
        normalizer: a ready transform: a fitted Reinhard/Macenko/Vahadane normalizer, or a
            StainNet/StainGAN (e.g. from :func:`stain_transforms.registry.build_normalizer`).
        source: for the fitted methods, the source statistics every tile is normalized with:
            ``"auto"`` measures the slide's (:func:`~stain_transforms.slides.fit_slide`, on
            ``fit_tiles`` tissue tiles), or give :class:`~stain_transforms.slides.SlideStatistics`;
            ``None`` estimates each tile's own (seams between tiles; for comparison only).
        level: the slide level to normalize (the output's full resolution).
        tile_size: the output's tile side (a multiple of 16); also what is normalized at a time.
        margin: pixels of context read around each tile and cut off after (default: a StainGAN's
            ``overlap``, so that its blended sub-tiles see past the tile's border; 0 otherwise).
        compression: ``"jpeg"`` (``quality``), ``"zlib"`` (lossless) or ``"none"``.
        quality: JPEG quality, 1-100.
        min_size: pyramid levels are added, each half the last, while the last's long side exceeds
            this (default: ``tile_size``).
        fit_tiles: tissue tiles measured for ``source="auto"``.
        overwrite: replace an existing output file.
        device: where the tiles are normalized (the normalizer is moved there).
        progress: show tqdm bars.

    Raises:
        FileNotFoundError: if the slide does not exist.
        FileExistsError: if ``output`` exists and ``overwrite`` is false.
        ValueError: for a slide that cannot be read (corrupt, truncated, unsupported), a level it
            lacks, a slide without tissue (for ``source="auto"``), or bad settings. No partial
            output file is left behind.

    Example:
        >>> import tempfile
        >>> import stain_transforms
        >>> from stain_transforms.slides.testing import write_synthetic_slide
        >>> folder = Path(tempfile.mkdtemp())
        >>> source = write_synthetic_slide(folder / "source.tiff", width=512, height=512)
        >>> stainnet = stain_transforms.StainNetNormalize.from_pretrained("stainnet-mitos-aperio-to-hamamatsu")
        >>> out = normalize_slide(source, folder / "out.tiff", stainnet, tile_size=256, compression="zlib", progress=False)
        >>> normalize_slide(source, out, stainnet, progress=False)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        FileExistsError: ...out.tiff exists; pass --overwrite (overwrite=True) to replace it
    """
    import tifffile

    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {', '.join(COMPRESSIONS)}, got {compression!r}")
    if tile_size < 16 or tile_size % 16:
        raise ValueError(f"tile_size must be a multiple of 16 (a TIFF tile rule), got {tile_size}")
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be between 1 and 100, got {quality}")
    output = Path(output)
    slide = open_slide(slide)
    _check_output(output, slide.path, overwrite)
    level = slide.check_level(level)
    if not bool(getattr(normalizer, "fitted", True)):
        raise ValueError(f"the {type(normalizer).__name__} is not fitted: call .fit(reference_images) first")
    device = torch.device(device)
    if isinstance(normalizer, torch.nn.Module):
        normalizer = normalizer.to(device)
    if margin is None:
        margin = int(getattr(normalizer, "overlap", 0) or 0)
    if margin < 0:
        raise ValueError(f"margin must be at least 0, got {margin}")
    transform = _slide_context(normalizer, slide, source, level, fit_tiles, progress)

    width, height = slide.level_dimensions[level]
    sizes = [(width, height)]
    limit = tile_size if min_size is None else min_size
    while max(sizes[-1]) > limit:
        sizes.append((-(-sizes[-1][0] // 2), -(-sizes[-1][1] // 2)))
    mpp = slide.mpp
    downsample = slide.level_downsamples[level]
    options: dict[str, Any] = {
        "dtype": np.uint8,
        "tile": (tile_size, tile_size),
        "photometric": "rgb",
        "compression": None if compression == "none" else compression,
        "software": "stain_transforms",
    }
    if compression == "jpeg":
        options["compressionargs"] = {"level": quality}
    total = sum(-(-w // tile_size) * -(-h // tile_size) for w, h in sizes)

    output.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary_name = tempfile.mkstemp(dir=output.parent, prefix=f".{output.stem}.", suffix=".partial.tiff")
    os.close(handle)
    temporary = Path(temporary_name)
    try:
        with (
            tqdm(total=total, desc=f"normalize {slide.slide_id}", unit="tile", disable=not progress) as bar,
            tifffile.TiffWriter(temporary, bigtiff=width * height * 3 > 2**31) as writer,
        ):
            for index, (level_width, level_height) in enumerate(sizes):
                if index == 0:
                    tiles = _normalized_tiles(slide, transform, level, tile_size, margin, device, bar)
                else:
                    writer.filehandle.flush()
                    reader = tifffile.TiffFile(temporary)
                    tiles = _downsampled_tiles(reader.pages[index - 1], tile_size, bar)
                extra: dict[str, Any] = {}
                if mpp is not None:
                    per_cm = 1e4 / (mpp[0] * downsample * 2**index), 1e4 / (mpp[1] * downsample * 2**index)
                    extra = {"resolution": per_cm, "resolutionunit": "CENTIMETER"}
                try:
                    writer.write(
                        tiles, shape=(level_height, level_width, 3), subfiletype=1 if index else 0, **options, **extra
                    )
                finally:
                    if index:
                        reader.close()
        umask = os.umask(0)
        os.umask(umask)
        temporary.chmod(0o666 & ~umask)  # mkstemp made it private; the output gets the usual permissions
        os.replace(temporary, output)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return output
