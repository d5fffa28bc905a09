"""Reading and writing image files safely, for the command line and the trainers."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import PIL.Image

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"}
# The PIL format each output suffix is written in: the formats that hold 8-bit RGB losslessly or as JPEG.
OUTPUT_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF", ".bmp": "BMP", ".webp": "WEBP"}
# PIL modes without colour: stain methods need RGB, so the command line refuses them as the Python API does.
GRAYSCALE_MODES = {"1", "L", "LA", "La", "I", "F"}


def list_images(folder: str | Path, recursive: bool = False) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name; with ``recursive``, in its subfolders too.

    A recursive listing is sorted by path and leaves out hidden files and folders (names starting with ``.``).

    Raises:
        ValueError: if ``folder`` is not a directory or holds no images.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> for name in ("b.png", "a.jpg", "notes.txt"):
        ...     (folder / name).touch()
        >>> [p.name for p in list_images(folder)]
        ['a.jpg', 'b.png']
        >>> (folder / "tumour").mkdir()
        >>> (folder / "tumour" / "c.png").touch()
        >>> [p.relative_to(folder).as_posix() for p in list_images(folder, recursive=True)]
        ['a.jpg', 'b.png', 'tumour/c.png']
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder")
    if recursive:
        candidates = (
            p for p in folder.rglob("*") if not any(part.startswith(".") for part in p.relative_to(folder).parts)
        )
    else:
        candidates = folder.iterdir()
    files = sorted(p for p in candidates if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        where = f"{folder} or its subfolders" if recursive else str(folder)
        raise ValueError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {where}")
    return files


def expand_image_paths(paths: list[str | Path]) -> list[Path]:
    """Files stay files; folders become the images inside them.

    Raises:
        ValueError: if a path does not exist (or a folder holds no images).

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> for name in ("refs/1.png", "refs/2.png", "extra.png"):
        ...     (folder / name).parent.mkdir(exist_ok=True)
        ...     (folder / name).touch()
        >>> [p.name for p in expand_image_paths([folder / "refs", folder / "extra.png"])]
        ['1.png', '2.png', 'extra.png']
    """
    expanded: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            expanded.extend(list_images(path))
        elif path.is_file():
            expanded.append(path)
        else:
            raise ValueError(f"{path} does not exist")
    return expanded


def read_rgb(path: str | Path, *, allow_grayscale: bool = True) -> np.ndarray:
    """Read an image file as HWC uint8 RGB. Files with alpha or a palette are converted to RGB.

    With ``allow_grayscale=False`` a grayscale file is refused (as the transforms refuse a grayscale
    image) instead of being copied into three equal channels.

    Raises:
        ValueError: if the file cannot be decoded (or is grayscale, when refused), naming the file.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "tile.png"
        >>> PIL.Image.new("RGBA", (5, 4), (200, 100, 150, 255)).save(path)
        >>> image = read_rgb(path)
        >>> image.shape, image.dtype, image[0, 0].tolist()
        ((4, 5, 3), dtype('uint8'), [200, 100, 150])
        >>> PIL.Image.new("L", (5, 4)).save(path)
        >>> read_rgb(path, allow_grayscale=False)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: .../tile.png: grayscale image (mode 'L') is not supported; stain methods need RGB
    """
    try:
        with PIL.Image.open(path) as image:
            image.load()
            if image.mode in ("I;16", "I;16B", "I;16L", "I"):
                raise ValueError(f"{path}: 16-bit images are not supported; convert to 8-bit RGB")
            if not allow_grayscale and image.mode in GRAYSCALE_MODES:
                raise ValueError(f"{path}: grayscale image (mode {image.mode!r}) is not supported; stain methods need RGB")
            return np.asarray(image.convert("RGB"))
    except (OSError, SyntaxError, PIL.Image.DecompressionBombError) as error:
        raise ValueError(f"{path}: cannot read image ({error})") from error


def output_format(path: str | Path) -> str:
    """The PIL format an output file is written in, from its suffix.

    Raises:
        ValueError: for a suffix that is not an image format we write, naming the output.

    Example:
        >>> output_format("out/tile.JPG")
        'JPEG'
        >>> output_format("out/slide.svs")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: output out/slide.svs: cannot write '.svs' files; use one of .bmp, .jpeg, .jpg, .png, ...
    """
    suffix = Path(path).suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        what = f"cannot write {suffix!r} files" if suffix else "has no file extension"
        raise ValueError(f"output {path}: {what}; use one of {', '.join(sorted(OUTPUT_FORMATS))}")
    return OUTPUT_FORMATS[suffix]


def _umask() -> int:
    """The process's umask, read without changing it where /proc allows (os.umask sets it to read it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_image_atomic(image: np.ndarray, path: str | Path, overwrite: bool = False, *, quality: int | None = None) -> None:
    """Write an HWC uint8 image through a temporary file and a rename, so no half-written file is left.

    The format follows ``path``'s suffix (see :func:`output_format`); ``quality`` (1-100) applies to
    JPEG and WebP. The file gets the permissions of a file created normally (``0o666`` less the
    umask), or those of the file it replaces.

    Raises:
        FileExistsError: if ``path`` exists and ``overwrite`` is false.
        ValueError: for an unsupported suffix or ``quality``, naming ``path``.
        OSError: if the file cannot be written, naming ``path`` (never the temporary file).

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "out" / "tile.png"
        >>> write_image_atomic(np.zeros((4, 4, 3), np.uint8), path)  # creates out/
        >>> write_image_atomic(np.zeros((4, 4, 3), np.uint8), path)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        FileExistsError: ... exists; pass --overwrite to replace it
        >>> sorted(p.name for p in path.parent.iterdir())  # no temporary file left behind
        ['tile.png']
    """
    path = Path(path)
    image_format = output_format(path)
    if quality is not None and not 1 <= quality <= 100:
        raise ValueError(f"output {path}: quality must be in 1..100, got {quality}")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
    mode = (path.stat().st_mode & 0o7777) if path.is_file() else 0o666 & ~_umask()
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    os.close(handle)
    options = {"quality": quality} if quality is not None and image_format in ("JPEG", "WEBP") else {}
    try:
        try:
            PIL.Image.fromarray(image).save(temporary, format=image_format, **options)
            os.chmod(temporary, mode)
            os.replace(temporary, path)
        except (OSError, ValueError) as error:
            message = str(error).replace(temporary, str(path))
            raise type(error)(f"cannot write {path}: {message}") from None
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def is_inside(path: str | Path, folder: str | Path) -> bool:
    """True if ``path`` equals ``folder`` or lies below it (after resolving links).

    Example:
        >>> is_inside("data/tiles/out", "data/tiles"), is_inside("data/out", "data/tiles")
        (True, False)
    """
    path, folder = Path(path).resolve(), Path(folder).resolve()
    return path == folder or folder in path.parents
