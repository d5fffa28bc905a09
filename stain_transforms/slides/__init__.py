"""Whole-slide images: reading (tiffslide or OpenSlide), slide-level stain statistics, slide-context
normalization of tiles, streaming normalization of a whole slide to a pyramidal TIFF, and tile datasets.

Needs the ``slides`` extra (``pip install 'stain-transforms[slides]'``: tiffslide and tifffile);
the reader is imported when a slide is first opened. See the Whole-slide images page of the docs.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> import stain_transforms
    >>> from stain_transforms.testing import synthetic_tissue
    >>> from stain_transforms.slides.testing import write_synthetic_slide
    >>> folder = Path(tempfile.mkdtemp())
    >>> slide = write_synthetic_slide(folder / "slide.tiff", width=1024, height=768, stain_scale=1.3)
    >>> normalizer = stain_transforms.MacenkoNormalize().fit(synthetic_tissue(128, seed=0))
    >>> stats = fit_slide(slide, normalizer, n_tiles=8, tile_size=256, progress=False)
    >>> per_slide = normalizer.with_source(stats)  # one colour map for every tile of this slide
    >>> out = normalize_slide(slide, folder / "normalized.tiff", normalizer, source=stats, tile_size=256, progress=False)
    >>> open_slide(out).dimensions
    (1024, 768)
"""

from .context import SlideContextNormalize
from .dataset import SlideTileDataset
from .fit import fit_slide, sample_tiles, slide_tissue_mask, tissue_tiles
from .reader import SLIDE_SUFFIXES, Slide, open_slide
from .statistics import SlideStatistics
from .writer import normalize_slide

__all__ = [
    "Slide", "open_slide", "SLIDE_SUFFIXES", "SlideStatistics", "fit_slide", "sample_tiles", "slide_tissue_mask",
    "tissue_tiles", "SlideContextNormalize", "normalize_slide", "SlideTileDataset",
]
