"""Reading whole-slide images through an existing reader: ``tiffslide`` (default), or ``openslide`` when installed.

No TIFF is parsed here: :class:`Slide` is a thin, picklable wrapper that reads regions in the
coordinates of the level they are read from, as HWC uint8 RGB, with the errors a user can act on
(``FileNotFoundError``, or a ``ValueError`` naming the file and the problem). The reader library is
imported when a slide is first opened, so ``import stain_transforms`` does not import it.

Example:
    >>> import tempfile
    >>> from stain_transforms.slides.testing import write_synthetic_slide
    >>> path = write_synthetic_slide(Path(tempfile.mkdtemp()) / "slide.tiff", width=1024, height=768)
    >>> with open_slide(path) as slide:
    ...     slide.level_dimensions, slide.mpp, slide.read(0, 0, 64, 32).shape
    (((1024, 768), (512, 384), (256, 192)), (0.5, 0.5), (32, 64, 3))
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import numpy as np

# File types that tiffslide or OpenSlide read (OpenSlide only: .mrxs, .vms, .vmu, .bif, .scn's variants).
SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".scn", ".bif", ".mrxs", ".vms", ".vmu", ".svslide", ".qptiff")
BACKENDS = ("auto", "tiffslide", "openslide")
# Background where a region reaches beyond the slide: white glass.
BACKGROUND = 255


def available_backend(backend: str = "auto") -> str:
    """The slide reader that ``backend`` resolves to: ``"auto"`` is OpenSlide when installed, else tiffslide.

    Raises:
        ValueError: for an unknown backend, or one that is not installed (with the pip command).

    Example:
        >>> available_backend() in ("tiffslide", "openslide")
        True
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown slide backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if backend == "auto":
        return "openslide" if importlib.util.find_spec("openslide") is not None else "tiffslide"
    if importlib.util.find_spec(backend) is None:
        extra = "pip install 'stain-transforms[slides]'" if backend == "tiffslide" else "pip install openslide-python openslide-bin"
        raise ValueError(f"reading slides with {backend} needs it installed: {extra}")
    return backend


class Slide:
    """A whole-slide image opened lazily with tiffslide or OpenSlide; picklable (DataLoader workers reopen it).

    Levels are numbered from 0 (full resolution); :meth:`read` takes coordinates *in the level read
    from*. Regions reaching beyond the slide are padded with white. OpenSlide's RGBA is composited
    onto white.

    Args:
        path: the slide file (.svs, .tif/.tiff, .ndpi, ...; OpenSlide adds .mrxs, .vms, ...).
        backend: ``"auto"`` (OpenSlide if installed, else tiffslide), ``"tiffslide"`` or ``"openslide"``.
        slide_id: a name for the slide (default: the file name without its suffix).

    Raises:
        FileNotFoundError: if there is no file at ``path``.
        ValueError: for a file type no reader supports, or a file the reader cannot open (corrupt,
            truncated, not a slide).

    Example:
        >>> import pickle, tempfile
        >>> from stain_transforms.slides.testing import write_synthetic_slide
        >>> path = write_synthetic_slide(Path(tempfile.mkdtemp()) / "slide.tiff", width=512, height=512)
        >>> slide = Slide(path)
        >>> slide.slide_id, slide.dimensions, slide.level_count
        ('slide', (512, 512), 2)
        >>> copy = pickle.loads(pickle.dumps(slide))  # no open file travels; the copy reopens on first read
        >>> bool((copy.read(10, 20, 16, 16, level=1) == slide.read(10, 20, 16, 16, level=1)).all())
        True
        >>> slide.read(0, 0, 8, 8, level=5)
        Traceback (most recent call last):
        ...
        ValueError: slide.tiff has levels 0 to 1; there is no level 5
    """

    def __init__(self, path: str | Path, backend: str = "auto", slide_id: str | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no slide at {self.path}")
        if self.path.suffix.lower() not in SLIDE_SUFFIXES:
            raise ValueError(
                f"{self.path.name}: unsupported slide format {self.path.suffix or '(no suffix)'}; "
                f"supported: {', '.join(SLIDE_SUFFIXES)}"
            )
        self.backend = available_backend(backend)
        self.slide_id = slide_id if slide_id is not None else self.path.stem
        self._handle: Any = None
        self._pid = os.getpid()
        handle = self._open()
        try:
            self.level_dimensions: tuple[tuple[int, int], ...] = tuple(
                (int(w), int(h)) for w, h in handle.level_dimensions
            )
            self.level_downsamples: tuple[float, ...] = tuple(float(d) for d in handle.level_downsamples)
            self.properties: dict[str, Any] = dict(handle.properties)
        except Exception as error:  # the reader's own errors vary by file and version
            raise ValueError(f"{self.path.name}: cannot read the slide's levels ({type(error).__name__}: {error})") from error
        if not self.level_dimensions or min(min(d) for d in self.level_dimensions) < 1:
            raise ValueError(f"{self.path.name}: the slide has no readable image levels")

    # -- opening -------------------------------------------------------------------------------

    def _open(self) -> Any:
        if self._handle is not None and self._pid != os.getpid():
            self._handle = None  # a forked DataLoader worker: never share the parent's file offset
        if self._handle is None:
            self._pid = os.getpid()
            try:
                if self.backend == "openslide":
                    import openslide

                    self._handle = openslide.OpenSlide(str(self.path))
                else:
                    import tiffslide

                    self._handle = tiffslide.TiffSlide(str(self.path))
            except Exception as error:  # tifffile, zarr and OpenSlide raise many types for a bad file
                raise ValueError(
                    f"{self.path.name}: cannot open as a slide with {self.backend}; the file is corrupt, truncated "
                    f"or not a slide ({type(error).__name__}: {error})"
                ) from error
        return self._handle

    def close(self) -> None:
        """Close the file; a later :meth:`read` reopens it.

        Example:
            >>> import tempfile
            >>> from stain_transforms.slides.testing import write_synthetic_slide
            >>> slide = Slide(write_synthetic_slide(Path(tempfile.mkdtemp()) / "s.tiff", width=256, height=256))
            >>> slide.close(); slide.read(0, 0, 4, 4).shape
            (4, 4, 3)
        """
        if self._handle is not None and self._pid == os.getpid():
            self._handle.close()
        self._handle = None

    def __enter__(self) -> Slide:  # noqa: PYI034 (typing.Self needs Python 3.11)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_handle": None}

    def __repr__(self) -> str:
        return f"Slide({str(self.path)!r}, backend={self.backend!r}, dimensions={self.dimensions})"

    # -- what the slide is ---------------------------------------------------------------------

    @property
    def dimensions(self) -> tuple[int, int]:
        """(width, height) of level 0."""
        return self.level_dimensions[0]

    @property
    def level_count(self) -> int:
        """The number of levels."""
        return len(self.level_dimensions)

    @property
    def mpp(self) -> tuple[float, float] | None:
        """Microns per pixel (x, y) of level 0, or ``None`` when the file does not say."""
        keys = ("tiffslide.mpp-x", "tiffslide.mpp-y") if self.backend == "tiffslide" else ("openslide.mpp-x", "openslide.mpp-y")
        try:
            x, y = (float(self.properties[key]) for key in keys)
        except (KeyError, TypeError, ValueError):
            return None
        return (x, y) if x > 0 and y > 0 else None

    def check_level(self, level: int) -> int:
        """``level`` if the slide has it.

        Raises:
            ValueError: naming the levels the slide has.

        Example:
            >>> import tempfile
            >>> from stain_transforms.slides.testing import write_synthetic_slide
            >>> Slide(write_synthetic_slide(Path(tempfile.mkdtemp()) / "s.tiff", width=256, height=256)).check_level(0)
            0
        """
        if not isinstance(level, (int, np.integer)) or not 0 <= level < self.level_count:
            raise ValueError(f"{self.path.name} has levels 0 to {self.level_count - 1}; there is no level {level}")
        return int(level)

    # -- reading -------------------------------------------------------------------------------

    def read(self, x: int, y: int, width: int, height: int, level: int = 0) -> np.ndarray:
        """The (height, width, 3) uint8 RGB region whose top-left corner is (x, y) in ``level``'s pixels.

        Raises:
            ValueError: for a level the slide lacks, or tile data the reader cannot decode (a
                truncated or corrupt file), naming the file and the region.

        Example:
            >>> import tempfile
            >>> from stain_transforms.slides.testing import write_synthetic_slide
            >>> slide = Slide(write_synthetic_slide(Path(tempfile.mkdtemp()) / "s.tiff", width=256, height=256))
            >>> slide.read(250, 0, 10, 4)[:, -1].tolist()  # beyond the right edge: white
            [[255, 255, 255], [255, 255, 255], [255, 255, 255], [255, 255, 255]]
        """
        level = self.check_level(level)
        level_width, level_height = self.level_dimensions[level]
        out = np.full((height, width, 3), BACKGROUND, np.uint8)
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + width, level_width), min(y + height, level_height)
        if x1 <= x0 or y1 <= y0:
            return out
        try:
            region = self._read_inside(x0, y0, x1 - x0, y1 - y0, level)
        except Exception as error:  # decoding errors of a damaged file come from the codec libraries
            raise ValueError(
                f"{self.path.name}: cannot read the region x={x0}, y={y0}, {x1 - x0}x{y1 - y0} of level {level}; "
                f"the file is corrupt or truncated ({type(error).__name__}: {error})"
            ) from error
        out[y0 - y : y1 - y, x0 - x : x1 - x] = region
        return out

    def _read_inside(self, x: int, y: int, width: int, height: int, level: int) -> np.ndarray:
        handle = self._open()
        if self.backend == "tiffslide":
            array = np.asarray(handle.zarr_group[str(level)][y : y + height, x : x + width])
        else:
            downsample = self.level_downsamples[level]
            location = (round(x * downsample), round(y * downsample))
            array = np.asarray(handle.read_region(location, level, (width, height)))
        return _to_rgb(array)

    def thumbnail(self, max_size: int = 1024) -> tuple[np.ndarray, float]:
        """An RGB overview no larger than ``max_size`` on its long side, and its downsample from level 0.

        Read from the smallest level that is at least ``max_size`` (or the smallest there is),
        strip by strip, averaging blocks of pixels: memory stays that of the overview, also for a
        slide with one huge level.

        Example:
            >>> import tempfile
            >>> from stain_transforms.slides.testing import write_synthetic_slide
            >>> slide = Slide(write_synthetic_slide(Path(tempfile.mkdtemp()) / "s.tiff", width=1024, height=512))
            >>> image, downsample = slide.thumbnail(128)
            >>> image.shape, downsample
            ((64, 128, 3), 8.0)
        """
        candidates = [i for i, (w, h) in enumerate(self.level_dimensions) if max(w, h) >= max_size]
        level = candidates[-1] if candidates else self.level_count - 1
        width, height = self.level_dimensions[level]
        factor = max(1, int(np.ceil(max(width, height) / max_size)))
        out_height, out_width = -(-height // factor), -(-width // factor)
        thumbnail = np.empty((out_height, out_width, 3), np.uint8)
        strip = factor * max(1, 2**24 // (3 * factor * factor * out_width))  # about 16 MB read at a time
        for top in range(0, out_height * factor, strip):
            rows = self.read(0, top, out_width * factor, strip, level).reshape(
                strip // factor, factor, out_width, factor, 3
            )
            block = rows.mean(axis=(1, 3)).round().astype(np.uint8)
            thumbnail[top // factor : top // factor + block.shape[0]] = block[: out_height - top // factor]
        return thumbnail, self.level_downsamples[level] * factor


def _to_rgb(array: np.ndarray) -> np.ndarray:
    """HWC uint8 RGB from a reader's region: greyscale repeated, alpha composited onto white."""
    if array.ndim == 2:
        array = array[..., None]
    if array.dtype != np.uint8:
        raise ValueError(f"slides of {array.dtype} samples are not supported; only 8-bit RGB")
    channels = array.shape[-1]
    if channels == 1:
        return np.repeat(array, 3, axis=-1)
    if channels == 4:  # OpenSlide: premultiplied RGBA, transparent outside the scanned area
        alpha = array[..., 3:4].astype(np.uint16)
        return (array[..., :3] + ((255 - alpha) * BACKGROUND + 127) // 255).clip(0, 255).astype(np.uint8)
    return np.ascontiguousarray(array[..., :3])


def open_slide(path: str | Path, backend: str = "auto", slide_id: str | None = None) -> Slide:
    """Open a whole-slide image: :class:`Slide` (a slide passed in is returned as it is).

    Example:
        >>> import tempfile
        >>> from stain_transforms.slides.testing import write_synthetic_slide
        >>> slide = open_slide(write_synthetic_slide(Path(tempfile.mkdtemp()) / "s.tiff", width=256, height=256))
        >>> open_slide(slide) is slide
        True
        >>> open_slide("missing.svs")
        Traceback (most recent call last):
        ...
        FileNotFoundError: no slide at missing.svs
    """
    if isinstance(path, Slide):
        return path
    return Slide(path, backend=backend, slide_id=slide_id)
