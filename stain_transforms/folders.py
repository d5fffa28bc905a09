"""Normalizing image files and folders: the Python side of ``stain-transforms normalize``.

:func:`normalize_folder` is the one call; its steps are public so that other engines can reuse them:
:func:`plan_outputs` turns an input and an output path into (input file, output file) pairs and
checks them before any work, :func:`check_existing` refuses to replace files, and
:func:`normalize_pairs` reads, normalizes and writes each pair, collecting the failures.

Paths: an input file and an output folder (an existing folder, a path ending in ``/``, or one without
a file extension; created when missing) write ``output/<input name>``; an input folder writes every
image inside it (with ``recursive``, in its subfolders too, keeping their layout, e.g. class folders)
into the output folder. ``format`` (``"png"``, ``"jpg"``, ...) replaces the outputs' extension.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .files import OUTPUT_FORMATS, is_inside, list_images, output_format, read_rgb, write_image_atomic

#: The output formats ``format=`` (``--format``) accepts.
FORMATS = ("png", "jpg", "jpeg", "tif", "tiff", "bmp", "webp")
#: The JPEG and WebP quality written unless another is asked for.
DEFAULT_JPEG_QUALITY = 95


@dataclass
class FolderResult:
    """What :func:`normalize_pairs` (and :func:`normalize_folder`) did.

    Attributes:
        written: the output files written.
        failures: one line per image that failed, ``"path: reason"`` (the input for a read or
            normalization error, the output for a write error); those images were skipped.

    Example:
        >>> result = FolderResult(written=[Path("out/a.png")], failures=["in/b.png: cannot read image"])
        >>> result.ok, len(result.written)
        (False, 1)
    """

    written: list[Path] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no image failed."""
        return not self.failures


def _is_folder_path(text: str) -> bool:
    return text.endswith(("/", os.sep)) or Path(text).is_dir() or not Path(text).suffix


def plan_outputs(
    input_path: str | Path,
    output_path: str | Path,
    *,
    recursive: bool = False,
    format: str | None = None,
) -> list[tuple[Path, Path]]:
    """The (input image, output file) pairs to normalize, checked before any work is done.

    Args:
        input_path: an image file, or a folder of images.
        output_path: for an input file, an output file, or a folder (an existing one, a path ending
            in ``/``, or one without an extension); for an input folder, a folder. Missing folders
            are created when the files are written.
        recursive: for an input folder, take the images of its subfolders too, written to the same
            subfolders of the output.
        format: the output format (``"png"``, ``"jpg"``, ``"tif"``, ...); by default each output
            keeps its input's extension (or the output file's own).

    Raises:
        ValueError: a missing input, an output inside the input folder, an output that would
            replace its input, an unsupported output extension or format (naming the output), two
            inputs that would write the same output.

    Example:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> for name in ("in/a.png", "in/tumour/b.png"):
        ...     (root / name).parent.mkdir(parents=True, exist_ok=True)
        ...     (root / name).touch()
        >>> [(i.relative_to(root).as_posix(), o.relative_to(root).as_posix())
        ...  for i, o in plan_outputs(root / "in", root / "out", recursive=True, format="jpg")]
        [('in/a.png', 'out/a.jpg'), ('in/tumour/b.png', 'out/tumour/b.jpg')]
        >>> [o.relative_to(root).as_posix() for _, o in plan_outputs(root / "in/a.png", f"{root}/new/")]
        ['new/a.png']
        >>> plan_outputs(root / "in/a.png", root / "a.svs")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: output .../a.svs: cannot write '.svs' files; use one of ...
    """
    suffix = None
    if format is not None:
        suffix = "." + format.lower().lstrip(".")
        if suffix not in OUTPUT_FORMATS:
            raise ValueError(f"unknown output format {format!r}; choose from {', '.join(FORMATS)}")
    output_text = str(output_path)
    input_path, output_path = Path(input_path), Path(output_path)
    if input_path.is_dir():
        if is_inside(output_path, input_path):
            raise ValueError(f"output folder {output_path} is inside the input folder {input_path}; choose another")
        if output_path.exists() and not output_path.is_dir():
            raise ValueError(f"input {input_path} is a folder, so output {output_path} must be a folder too")
        pairs = [
            (path, output_path / (path.relative_to(input_path) if recursive else Path(path.name)))
            for path in list_images(input_path, recursive=recursive)
        ]
    elif not input_path.is_file():
        raise ValueError(f"input {input_path} does not exist")
    elif _is_folder_path(output_text):
        if output_path.exists() and not output_path.is_dir():
            raise ValueError(f"output {output_text} is not a folder")
        pairs = [(input_path, output_path / input_path.name)]
    else:
        if suffix is not None and output_path.suffix.lower() not in (suffix, ".jpeg" if suffix == ".jpg" else suffix):
            raise ValueError(f"output {output_path} does not have the extension of format {format!r}")
        try:
            output_format(output_path)
        except ValueError as error:
            raise ValueError(f"{error} (for a folder, end the path with /)") from None
        if output_path.resolve() == input_path.resolve():
            raise ValueError("output would overwrite the input file; choose another output path")
        return [(input_path, output_path)]
    if suffix is not None:
        pairs = [(source, destination.with_suffix(suffix)) for source, destination in pairs]
    else:
        for _, destination in pairs:
            output_format(destination)  # every input extension is an output one; checked all the same
    seen: dict[Path, Path] = {}
    for source, destination in pairs:
        if destination in seen:
            raise ValueError(f"{seen[destination]} and {source} would both be written to {destination}")
        seen[destination] = source
    return pairs


def check_existing(pairs: Iterable[tuple[Path, Path]], overwrite: bool = False) -> None:
    """Refuse, before any work, to replace existing output files unless ``overwrite``.

    Raises:
        ValueError: naming the number of existing outputs and one of them.

    Example:
        >>> import tempfile
        >>> existing = Path(tempfile.mkdtemp()) / "out.png"
        >>> existing.touch()
        >>> check_existing([(Path("in.png"), existing)])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: 1 output file(s) exist, e.g. .../out.png; pass --overwrite (overwrite=True) to replace them
        >>> check_existing([(Path("in.png"), existing)], overwrite=True)
    """
    if overwrite:
        return
    existing = [destination for _, destination in pairs if destination.exists()]
    if existing:
        raise ValueError(
            f"{len(existing)} output file(s) exist, e.g. {existing[0]}; pass --overwrite (overwrite=True) to replace them"
        )


def ignored_options(
    method: str | None,
    reference: Any = None,
    weights: Any = None,
    *,
    jpeg_quality: int | None = None,
    outputs: Iterable[Path] = (),
    cli: bool = False,
) -> list[str]:
    """Warnings for options that go unused: reference images for a learned model, weights for a fitted
    method, a JPEG quality when none of ``outputs`` is a JPEG or WebP file.

    Example:
        >>> ignored_options("stainnet", reference=["refs/"], weights="w", cli=True)  # doctest: +ELLIPSIS
        ['--reference is ignored by --method stainnet: a trained model maps ...']
        >>> ignored_options("macenko", reference=["refs/"])
        []
    """
    from .registry import FITTED, LEARNED, METHODS

    messages = []
    if jpeg_quality is not None and not any(output_format(path) in ("JPEG", "WEBP") for path in outputs):
        flag = "--jpeg-quality" if cli else "jpeg_quality="
        messages.append(f"{flag} is ignored: no output is a JPEG or WebP file (see {'--format' if cli else 'format='})")
    row = METHODS.get(method) if method is not None else None
    if row is None:
        return messages
    method_name = f"--method {method}" if cli else f"method {method!r}"
    reference_name, weights_name = ("--reference", "--weights") if cli else ("reference=", "weights=")
    if row.kind == LEARNED and reference:
        messages.append(
            f"{reference_name} is ignored by {method_name}: a trained model maps the stain domain it was trained "
            "on to a fixed target domain (see `stain-transforms weights`); to normalize to your own reference "
            "images use reinhard, macenko or vahadane"
        )
    if row.kind == FITTED and weights:
        messages.append(f"{weights_name} is ignored by {method_name}, which is fitted on {reference_name} images")
    return messages


def normalize_pairs(
    normalizer: Any,
    pairs: Iterable[tuple[Path, Path]],
    *,
    device: str = "cpu",
    overwrite: bool = False,
    jpeg_quality: int | None = None,
    progress: bool = True,
) -> FolderResult:
    """Read, normalize and write each (input, output) pair; failing images are reported and skipped.

    Grayscale files are refused, as the transforms refuse grayscale images. A read or normalization
    failure names the input; a write failure names the output. An ``OSError`` while writing (a full
    disk, no permission) is raised, naming the output: it stops the run.

    Example:
        >>> import tempfile
        >>> import stain_transforms as st
        >>> from .testing import synthetic_tissue
        >>> root = Path(tempfile.mkdtemp())
        >>> write_image_atomic(synthetic_tissue(32, seed=1), root / "a.png")
        >>> normalizer = st.ReinhardNormalize().fit(synthetic_tissue(32, seed=0))
        >>> result = normalize_pairs(normalizer, [(root / "a.png", root / "out" / "a.png")], progress=False)
        >>> result.ok, [p.name for p in result.written]
        (True, ['a.png'])
    """
    import torch
    from tqdm.auto import tqdm

    pairs = list(pairs)
    quality = DEFAULT_JPEG_QUALITY if jpeg_quality is None else jpeg_quality
    result = FolderResult()
    for source, destination in tqdm(pairs, desc="normalize", unit="image", disable=not progress):
        try:
            # torch.tensor copies: decoded arrays are read-only, which torch.from_numpy warns about.
            image = torch.tensor(read_rgb(source, allow_grayscale=False)).permute(2, 0, 1).to(device)
            normalized = normalizer(image).permute(1, 2, 0).cpu().numpy()
        except ValueError as error:
            message = str(error)
            result.failures.append(message if message.startswith(str(source)) else f"{source}: {message}")
            tqdm.write(f"skipped {result.failures[-1]}", file=sys.stderr)
            continue
        try:
            # An OSError (disk full, permissions) stops the run: it would fail every image after this one.
            write_image_atomic(normalized, destination, overwrite=overwrite, quality=quality)
        except ValueError as error:
            result.failures.append(str(error) if str(destination) in str(error) else f"{destination}: {error}")
            tqdm.write(f"skipped {source}: {result.failures[-1]}", file=sys.stderr)
            continue
        result.written.append(destination)
    return result


def normalize_folder(
    input_path: str | Path,
    output_path: str | Path,
    normalizer: Any,
    *,
    reference: str | Path | list[str | Path] | None = None,
    weights: str | Path | None = None,
    recursive: bool = False,
    format: str | None = None,
    jpeg_quality: int | None = None,
    overwrite: bool = False,
    device: str = "cpu",
    progress: bool = True,
) -> FolderResult:
    """Normalize an image file or a folder of images into ``output_path``, as ``stain-transforms normalize`` does.

    Args:
        input_path: an image file or a folder of images.
        output_path: an output file or folder (see :func:`plan_outputs`).
        normalizer: a ready transform (e.g. a fitted ``MacenkoNormalize``), or a method name
            (``"reinhard"``, ``"macenko"``, ``"vahadane"`` fitted on ``reference``; ``"stainnet"``,
            ``"staingan"`` loaded from ``weights``).
        reference: target-domain image files or folders, for a fitted method given by name.
        weights: a bundled name, a folder or a Hub id, for a learned method given by name.
        recursive: take the images of subfolders too, keeping the subfolders in the output.
        format: output format (``"png"``, ``"jpg"``, ``"tif"``, ...); default: the input's.
        jpeg_quality: JPEG / WebP quality, 1-100 (default 95).
        overwrite: replace existing output files (otherwise any existing one is an error, up front).
        device: torch device to normalize on.
        progress: show a progress bar.

    Returns:
        A :class:`FolderResult`: the files written and the images that failed (skipped).

    Raises:
        ValueError: for bad paths, formats, existing outputs, or a method without its reference / weights.

    Example:
        >>> import tempfile
        >>> from .testing import synthetic_tissue
        >>> root = Path(tempfile.mkdtemp())
        >>> write_image_atomic(synthetic_tissue(32, seed=0), root / "refs" / "r.png")
        >>> for name in ("in/normal/a.png", "in/tumour/b.png"):
        ...     write_image_atomic(synthetic_tissue(32, seed=1), root / name)
        >>> result = normalize_folder(root / "in", root / "out", "macenko", reference=root / "refs",
        ...                           recursive=True, format="jpg", progress=False)
        >>> sorted(p.relative_to(root / "out").as_posix() for p in result.written)
        ['normal/a.jpg', 'tumour/b.jpg']
    """
    from .registry import build_normalizer

    pairs = plan_outputs(input_path, output_path, recursive=recursive, format=format)
    check_existing(pairs, overwrite)
    if jpeg_quality is not None and not 1 <= jpeg_quality <= 100:
        raise ValueError(f"jpeg_quality must be in 1..100, got {jpeg_quality}")
    method = normalizer if isinstance(normalizer, str) else None
    outputs = [destination for _, destination in pairs]
    for message in ignored_options(method, reference, weights, jpeg_quality=jpeg_quality, outputs=outputs):
        warnings.warn(message, UserWarning, stacklevel=2)
    if isinstance(normalizer, str):
        references = [reference] if isinstance(reference, (str, Path)) else reference
        normalizer = build_normalizer(normalizer, [str(r) for r in references or []] or None, weights, device)
    return normalize_pairs(
        normalizer, pairs, device=device, overwrite=overwrite, jpeg_quality=jpeg_quality, progress=progress
    )


__all__ = [
    "DEFAULT_JPEG_QUALITY",
    "FORMATS",
    "FolderResult",
    "check_existing",
    "ignored_options",
    "normalize_folder",
    "normalize_pairs",
    "plan_outputs",
]
