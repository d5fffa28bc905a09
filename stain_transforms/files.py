"""Reading and writing image files safely, for the command line and the trainers."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import PIL.Image

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"}


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name.

    Raises:
        ValueError: if ``folder`` is not a directory or holds no images.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> for name in ("b.png", "a.jpg", "notes.txt"):
        ...     (folder / name).touch()
        >>> [p.name for p in list_images(folder)]
        ['a.jpg', 'b.png']
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
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


def read_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as HWC uint8 RGB. Files with alpha or a palette are converted to RGB.

    Raises:
        ValueError: if the file cannot be decoded, naming the file.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "tile.png"
        >>> PIL.Image.new("RGBA", (5, 4), (200, 100, 150, 255)).save(path)
        >>> image = read_rgb(path)
        >>> image.shape, image.dtype, image[0, 0].tolist()
        ((4, 5, 3), dtype('uint8'), [200, 100, 150])
    """
    try:
        with PIL.Image.open(path) as image:
            image.load()
            if image.mode in ("I;16", "I;16B", "I;16L", "I"):
                raise ValueError(f"{path}: 16-bit images are not supported; convert to 8-bit RGB")
            return np.asarray(image.convert("RGB"))
    except (OSError, SyntaxError, PIL.Image.DecompressionBombError) as error:
        raise ValueError(f"{path}: cannot read image ({error})") from error


def write_image_atomic(image: np.ndarray, path: str | Path, overwrite: bool = False) -> None:
    """Write an HWC uint8 image through a temporary file and a rename, so no half-written file is left.

    Raises:
        FileExistsError: if ``path`` exists and ``overwrite`` is false.

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
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(handle)
    try:
        PIL.Image.fromarray(image).save(temporary)
        os.replace(temporary, path)
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
