"""Normalizing an archive: many files, in this process or on a Ray cluster, resumable.

One code path does the work on both engines: :class:`NormalizeBatch`, a callable class that holds a
fitted normalizer (or a model) and takes a batch of ``(source, destination)`` rows, reads, normalizes
and writes them. The in-process engine calls it in a loop; the Ray engine hands it to Ray Data's
``map_batches`` as a pool of actors, each holding its own copy of the normalizer (on a GPU when the
actors get one).

- **Atomic and resumable.** Every output is written to a temporary file and renamed into place, so a
  file is there whole or not at all. With ``existing="skip"`` (the default) a rerun skips the outputs
  that exist, and clears the temporary files a killed worker left behind: rerunning a killed job
  finishes it, and nothing is normalized twice.
- **Faults.** Ray restarts a killed actor and retries its batch (``max_restarts`` and
  ``max_task_retries`` are unlimited for Ray Data actors); images that the killed actor had already
  written are skipped on the retry. A file that cannot be read or decoded is reported and skipped;
  :attr:`ArchiveResult.ok` is then false, and the command line exits 1.
- **Fitting** on many references also runs on Ray (:func:`fit_references`): per-image statistics are
  computed in parallel by actors, and pooled on the driver by the normalizer's own
  :meth:`~stain_transforms.StainNormalizer.pool`, exactly as :meth:`~stain_transforms.StainNormalizer.fit`
  pools them.

Ray is an optional dependency (the ``[ray]`` extra, ``pip install "stain-transforms[ray]"``); it is
imported only when the Ray engine runs.
"""

from __future__ import annotations

import argparse
import re
import socket
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .conversion import to_batch
from .files import expand_image_paths, read_rgb, write_image_atomic

ENGINES = ("local", "ray")
EXISTING = ("skip", "overwrite", "error")
# Images per batch: per map_batches call on Ray, per loop step in process.
BATCH_SIZE = 16
# Seconds to wait for a Ray address to answer before giving up.
CONNECT_TIMEOUT = 5.0
# write_image_atomic's temporary files: ".<stem>.<8 random characters>.tmp" (or the output's suffix).
_TEMPORARY = re.compile(r"^\.(?P<stem>.*)\.[A-Za-z0-9_]{8}(?P<suffix>\.[^.]+)$")


@dataclass
class ArchiveResult:
    """What a run did: counts of images written and skipped, the failures, and the time taken.

    Attributes:
        written: images normalized and written by this run.
        skipped: outputs that existed already and were left alone (``existing="skip"``).
        failed: ``(source, reason)`` of every image that could not be read, normalized or written.
        seconds: wall time of the run, including starting Ray's workers.
        engine: ``"local"`` or ``"ray"``.

    Example:
        >>> result = ArchiveResult(written=3, skipped=1, failed=[("a.png", "cannot read image")])
        >>> result.ok, result.total
        (False, 5)
    """

    written: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    engine: str = "local"

    @property
    def ok(self) -> bool:
        """True when no image failed."""
        return not self.failed

    @property
    def total(self) -> int:
        """Images in the run: written, skipped and failed."""
        return self.written + self.skipped + len(self.failed)

    def _add(self, statuses: Sequence[str], sources: Sequence[str], errors: Sequence[str]) -> None:
        for status, source, error in zip(statuses, sources, errors):
            if status == "written":
                self.written += 1
            elif status == "exists":
                self.skipped += 1
            else:
                self.failed.append((str(source), str(error)))


class NormalizeBatch:
    """Read, normalize and write a batch of ``{"source": [...], "destination": [...]}`` rows; Ray Data's callable class.

    Returns the rows with a ``status`` (``"written"``, ``"exists"`` or ``"failed"``) and an ``error``
    column. Images of the same size are normalized together, as one batch, on ``device``.

    Args:
        normalizer: a ready transform (a fitted normalizer, a StainNet...), or a function of no
            arguments that makes one (called once per worker).
        existing: what to do with an output that exists: ``"skip"`` it (resume), ``"overwrite"`` it,
            or report it as an ``"error"``.
        device: torch device; default ``"cuda"`` when a GPU is visible, else ``"cpu"``.
        quality: JPEG/WebP quality of the outputs (1-100; default: the writer's).

    Example:
        >>> import tempfile
        >>> from stain_transforms import ReinhardNormalize
        >>> from stain_transforms.testing import synthetic_tissue
        >>> root = Path(tempfile.mkdtemp())
        >>> write_image_atomic(synthetic_tissue(64, seed=1), root / "a.png")
        >>> (root / "bad.png").write_bytes(b"not an image")
        12
        >>> worker = NormalizeBatch(ReinhardNormalize().fit(synthetic_tissue(64, seed=0)))
        >>> rows = {"source": np.array([str(root / "a.png"), str(root / "bad.png")]),
        ...         "destination": np.array([str(root / "out/a.png"), str(root / "out/bad.png")])}
        >>> worker(rows)["status"].tolist(), worker(rows)["status"].tolist()  # the second call skips the done file
        (['written', 'failed'], ['exists', 'failed'])
    """

    def __init__(self, normalizer: Any, existing: str = "skip", device: str | None = None, quality: int | None = None) -> None:
        if existing not in EXISTING:
            raise ValueError(f"existing must be one of {EXISTING}, got {existing!r}")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if not isinstance(normalizer, torch.nn.Module) and callable(normalizer):
            normalizer = normalizer()
        self.normalizer = normalizer.to(self.device) if isinstance(normalizer, torch.nn.Module) else normalizer
        self.existing = existing
        self.quality = quality

    def __call__(self, batch: dict[str, Any]) -> dict[str, np.ndarray]:
        sources = [str(s) for s in batch["source"]]
        destinations = [Path(str(d)) for d in batch["destination"]]
        status = ["failed"] * len(sources)
        errors = [""] * len(sources)
        images: dict[int, np.ndarray] = {}
        for i, (source, destination) in enumerate(zip(sources, destinations)):
            if destination.exists() and self.existing != "overwrite":
                if self.existing == "skip":
                    status[i] = "exists"
                else:
                    errors[i] = f"{destination} exists"
                continue
            try:
                images[i] = read_rgb(source)
            except (ValueError, OSError) as error:
                errors[i] = str(error)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, image in images.items():
            by_shape.setdefault(image.shape, []).append(i)
        for indices in by_shape.values():
            for i, result in zip(indices, self._normalize([images[i] for i in indices], indices, errors)):
                if result is None:
                    continue
                try:
                    write_image_atomic(result, destinations[i], overwrite=self.existing == "overwrite", quality=self.quality)
                    status[i] = "written"
                except FileExistsError:  # written meanwhile by another attempt: done
                    status[i] = "exists"
                except OSError as error:
                    errors[i] = f"cannot write {destinations[i]}: {error}"
        return {
            "source": np.array(sources, dtype=object),
            "status": np.array(status, dtype=object),
            "error": np.array(errors, dtype=object),
        }

    def _normalize(self, images: list[np.ndarray], indices: list[int], errors: list[str]) -> list[np.ndarray | None]:
        """Normalize images of one size together; one by one if the batch fails, to find the bad one."""
        try:
            return list(self._run(np.stack(images)))
        except ValueError as error:
            if len(images) == 1:
                errors[indices[0]] = str(error)
                return [None]
            return [r for image, i in zip(images, indices) for r in self._normalize([image], [i], errors)]

    def _run(self, stack: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            batch = torch.from_numpy(stack).permute(0, 3, 1, 2).to(self.device)
            return self.normalizer(batch).permute(0, 2, 3, 1).cpu().numpy()


# -- planning ---------------------------------------------------------------------------------


def clear_temporaries(pairs: Iterable[tuple[Path, Path]]) -> int:
    """Delete the temporary files that a killed writer left next to the outputs of ``pairs``; returns how many.

    Only files named as :func:`~stain_transforms.files.write_image_atomic` names its temporaries
    (``.<stem>.<8 characters>.tmp``, or with the output's suffix), for the stems of the given outputs,
    are removed.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> for name in (".a.x1y2z3w4.tmp", ".a.Q1y2z3w4.png", "keep.png", ".b.x1y2z3w4.tmp"):
        ...     (folder / name).touch()
        >>> clear_temporaries([(Path("in/a.png"), folder / "a.png")]), sorted(p.name for p in folder.iterdir())
        (2, ['.b.x1y2z3w4.tmp', 'keep.png'])
    """
    wanted: dict[Path, set[tuple[str, str]]] = {}
    stems: dict[Path, set[str]] = {}
    for _, destination in pairs:
        destination = Path(destination)
        wanted.setdefault(destination.parent, set()).add((destination.stem, destination.suffix))
        stems.setdefault(destination.parent, set()).add(destination.stem)
    removed = 0
    for folder, names in wanted.items():
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            match = _TEMPORARY.match(entry.name)
            if not match or not entry.is_file():
                continue
            if (match["stem"], match["suffix"]) in names or (match["suffix"] == ".tmp" and match["stem"] in stems[folder]):
                entry.unlink(missing_ok=True)
                removed += 1
    return removed


def _check_pairs(pairs: Iterable[tuple[Any, Any]]) -> list[tuple[Path, Path]]:
    checked = [(Path(source), Path(destination)) for source, destination in pairs]
    seen: set[Path] = set()
    for _, destination in checked:
        if destination in seen:
            raise ValueError(f"two inputs would be written to the same output {destination}")
        seen.add(destination)
    return checked


# -- the engines ------------------------------------------------------------------------------


def normalize_files(
    pairs: Iterable[tuple[str | Path, str | Path]],
    normalizer: Any,
    *,
    engine: str = "local",
    existing: str = "skip",
    batch_size: int = BATCH_SIZE,
    device: str | None = None,
    address: str | None = None,
    num_workers: int | None = None,
    num_gpus: float = 0.0,
    progress: bool = True,
    quality: int | None = None,
) -> ArchiveResult:
    """Normalize every ``(input file, output file)`` pair, in this process or on Ray; returns an :class:`ArchiveResult`.

    Outputs are written atomically; with ``existing="skip"`` a rerun after a killed job does only
    what is missing. Unreadable inputs are reported in the result and skipped.

    Args:
        pairs: ``(source, destination)`` paths; the output folders are created.
        normalizer: a ready transform (e.g. a fitted :class:`~stain_transforms.MacenkoNormalize`, a
            :class:`~stain_transforms.StainNetNormalize`), or a function of no arguments that makes
            one in each worker. On Ray it is pickled to every worker.
        engine: ``"local"`` (this process) or ``"ray"`` (Ray Data, a pool of actors).
        existing: ``"skip"`` existing outputs (resume), ``"overwrite"`` them, or count them as ``"error"``.
        batch_size: images per batch.
        device: torch device of the local engine (default: CUDA if present, else CPU). On Ray, actors
            run on a GPU when ``num_gpus`` > 0.
        address: Ray only: a cluster to join (``"auto"``, ``"host:port"``, ``"ray://host:port"``); by
            default a running Ray in this process is used, else a local one is started (and stopped
            at the end).
        num_workers: Ray only: actors in the pool (default: one per CPU, or per GPU with ``num_gpus``).
        num_gpus: Ray only: GPUs per actor (fractions share a GPU between actors).
        progress: show progress (tqdm in process, Ray Data's bars on Ray).
        quality: JPEG/WebP quality of the outputs (1-100; default: the writer's).

    Raises:
        ValueError: for an unknown engine or ``existing``, or two inputs with the same output.
        ConnectionError: when no Ray cluster answers at ``address``.

    Example:
        >>> import tempfile
        >>> from stain_transforms import ReinhardNormalize
        >>> from stain_transforms.testing import synthetic_tissue
        >>> root = Path(tempfile.mkdtemp())
        >>> pairs = [(root / f"in/{i}.png", root / f"out/{i}.png") for i in range(3)]
        >>> for i, (source, _) in enumerate(pairs):
        ...     write_image_atomic(synthetic_tissue(64, seed=i), source)
        >>> normalizer = ReinhardNormalize().fit(synthetic_tissue(64, seed=9))
        >>> result = normalize_files(pairs, normalizer, progress=False)
        >>> result.written, result.skipped, result.ok
        (3, 0, True)
        >>> normalize_files(pairs, normalizer, progress=False).skipped  # a rerun skips what is done
        3
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if existing not in EXISTING:
        raise ValueError(f"existing must be one of {EXISTING}, got {existing!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    pairs = _check_pairs(pairs)
    start = time.perf_counter()
    if existing == "skip":
        clear_temporaries(pairs)
    if engine == "ray":
        result = _run_ray(pairs, normalizer, existing, batch_size, address, num_workers, num_gpus, progress, quality)
    else:
        result = _run_local(pairs, normalizer, existing, batch_size, device, progress, quality)
    clear_temporaries(pairs)  # left by a worker killed mid-write, whose batch was retried
    result.seconds = time.perf_counter() - start
    return result


def _rows(pairs: Sequence[tuple[Path, Path]]) -> dict[str, np.ndarray]:
    return {
        "source": np.array([str(s) for s, _ in pairs], dtype=object),
        "destination": np.array([str(d) for _, d in pairs], dtype=object),
    }


def _run_local(pairs, normalizer, existing, batch_size, device, progress, quality) -> ArchiveResult:
    from tqdm.auto import tqdm

    worker = NormalizeBatch(normalizer, existing=existing, device=device, quality=quality)
    result = ArchiveResult(engine="local")
    with tqdm(total=len(pairs), desc="normalize", unit="image", disable=not progress) as bar:
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start : start + batch_size]
            out = worker(_rows(chunk))
            result._add(out["status"], out["source"], out["error"])
            for source, error in zip(out["source"], out["error"]):
                if error:
                    bar.write(f"skipped {source}: {error}", file=sys.stderr)
            bar.update(len(chunk))
    return result


# -- Ray --------------------------------------------------------------------------------------


def _import_ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError as error:
        raise ImportError(
            f"the Ray engine needs Ray Data: pip install 'stain-transforms[ray]' ({error})"
        ) from error
    return ray


def _check_address(address: str, timeout: float = CONNECT_TIMEOUT) -> None:
    """Fail fast, with a clear message, when nothing listens at a ``host:port`` Ray address."""
    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"Ray address {address!r} is not 'auto', 'host:port' or 'ray://host:port'")
    advice = "start one with `ray start --head`, check the address, or leave out --address to run a local Ray on this machine"
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as error:
        raise ConnectionError(f"no Ray cluster answers at {address} ({error}); {advice}") from None
    if "://" in address:
        return  # a Ray Client server (ray://): ray.init reports its own errors
    # Something listens; ask it for the cluster id as Ray's GCS would answer (Ray's own join keeps
    # retrying for tens of seconds when the port belongs to something else).
    try:
        from ray._raylet import GcsClient

        GcsClient(address=f"{host}:{port}", cluster_id=None)
    except (ImportError, TypeError):  # another Ray version's client: let ray.init judge
        return
    except Exception as error:  # noqa: BLE001 - Ray's RpcError and friends
        if "auth" in str(error).lower():
            return  # a Ray GCS that wants a token: ray.init brings it
        raise ConnectionError(f"no Ray cluster answers at {address}: something else listens there ({error}); {advice}") from None


def connect_ray(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Join the Ray cluster at ``address``, or start a local one; returns whether this call started Ray.

    An address where nothing answers fails within :data:`CONNECT_TIMEOUT` seconds with a
    ``ConnectionError`` (Ray itself would wait for minutes). When Ray is already initialized in this
    process, it is used as it is.

    Example:
        >>> connect_ray("127.0.0.1:9")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ConnectionError: no Ray cluster answers at 127.0.0.1:9 (...); start one with `ray start --head`, ...
    """
    if address:
        _check_address(address)
    ray = _import_ray()
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True}
    if address:
        kwargs["address"] = address
    elif num_cpus:
        kwargs["num_cpus"] = num_cpus
    try:
        ray.init(**kwargs)
    except ConnectionError as error:
        raise ConnectionError(f"cannot join the Ray cluster at {address}: {error}") from error
    return True


def _quiet_ray_data(progress: bool) -> None:
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = progress
    context.print_on_execution_start = False


def _pool_size(ray: Any, num_workers: int | None, num_gpus: float) -> int:
    if num_workers:
        return int(num_workers)
    resources = ray.cluster_resources()
    if num_gpus:
        return max(1, int(resources.get("GPU", 0) / num_gpus))
    return max(1, int(resources.get("CPU", 1)))


def _run_ray(pairs, normalizer, existing, batch_size, address, num_workers, num_gpus, progress, quality) -> ArchiveResult:
    started = connect_ray(address)  # checks the address first, then imports Ray
    ray = _import_ray()
    try:
        _quiet_ray_data(progress)
        result = ArchiveResult(engine="ray")
        if not pairs:
            return result
        workers = _pool_size(ray, num_workers, num_gpus)
        blocks = max(workers, min(len(pairs) // batch_size, 4 * workers * 8))
        dataset = ray.data.from_items(
            [{"source": str(s), "destination": str(d)} for s, d in pairs], override_num_blocks=blocks
        )
        normalized = dataset.map_batches(
            NormalizeBatch,
            fn_constructor_kwargs={
                "normalizer": normalizer, "existing": existing, "device": "cuda" if num_gpus else "cpu",
                "quality": quality,
            },
            batch_size=batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=1,
            num_gpus=num_gpus or None,
        )
        for out in normalized.iter_batches(batch_size=None, batch_format="numpy"):
            result._add(out["status"], out["source"], out["error"])
        return result
    finally:
        if started:
            ray.shutdown()


# -- fitting ----------------------------------------------------------------------------------


class ReferenceStatistics:
    """Per-image statistics of a batch of reference files (``{"source": [...]}``); Ray Data's callable class for fitting.

    Returns, per row, ``usable`` (the image has enough tissue), one column ``stat_<name>`` per
    statistic (NaN where not usable) and an ``error`` column for files that cannot be read.

    Example:
        >>> import tempfile
        >>> from stain_transforms import ReinhardNormalize
        >>> from stain_transforms.testing import synthetic_tissue
        >>> path = Path(tempfile.mkdtemp()) / "ref.png"
        >>> write_image_atomic(synthetic_tissue(64, seed=0), path)
        >>> out = ReferenceStatistics(ReinhardNormalize())({"source": np.array([str(path)])})
        >>> out["usable"].tolist(), out["stat_mean"].shape
        ([True], (1, 3))
    """

    def __init__(self, normalizer: Any) -> None:
        self.normalizer = normalizer

    def __call__(self, batch: dict[str, Any]) -> dict[str, np.ndarray]:
        normalizer = self.normalizer
        count = len(batch["source"])
        shapes = {name: tuple(getattr(normalizer, f"target_{name}").shape) for name in normalizer.statistics}
        columns = {name: np.full((count, *shape), np.nan) for name, shape in shapes.items()}
        usable = np.zeros(count, dtype=bool)
        errors = [""] * count
        with torch.inference_mode():
            for i, source in enumerate(batch["source"]):
                try:
                    image = to_batch(read_rgb(str(source)))[0]  # as fit() converts each image
                except (ValueError, OSError) as error:
                    errors[i] = str(error)
                    continue
                if not bool(normalizer.informative(image)[0]):
                    continue
                usable[i] = True
                for name, value in normalizer.image_statistics(image).items():
                    columns[name][i] = value[0].to("cpu", torch.float64).numpy()
        return {
            "source": np.array([str(s) for s in batch["source"]], dtype=object),
            "usable": usable,
            "error": np.array(errors, dtype=object),
            **{f"stat_{name}": values for name, values in columns.items()},
        }


def fit_references(
    normalizer: Any,
    references: Sequence[str | Path],
    *,
    engine: str = "local",
    address: str | None = None,
    num_workers: int | None = None,
    batch_size: int = BATCH_SIZE,
    progress: bool = True,
) -> Any:
    """Fit ``normalizer`` on reference image files or folders, in process or as a distributed reduction on Ray; returns it.

    On Ray, actors compute each image's statistics (:class:`ReferenceStatistics`) and the driver pools
    them with the normalizer's own :meth:`~stain_transforms.StainNormalizer.pool` (the element-wise
    median), in file order: the result equals ``normalizer.fit(images)`` exactly. Unreadable
    references are reported on stderr and left out.

    Raises:
        ValueError: when no reference has enough tissue, or none can be read.

    Example:
        >>> import tempfile
        >>> from stain_transforms import MacenkoNormalize
        >>> from stain_transforms.testing import synthetic_tissue
        >>> folder = Path(tempfile.mkdtemp())
        >>> tiles = [synthetic_tissue(64, seed=s) for s in range(3)]
        >>> for s, tile in enumerate(tiles):
        ...     write_image_atomic(tile, folder / f"{s}.png")
        >>> fitted = fit_references(MacenkoNormalize(), [folder], progress=False)
        >>> torch.equal(fitted.target_stain_matrix, MacenkoNormalize().fit(tiles).target_stain_matrix)
        True
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    paths = expand_image_paths(list(references))
    rows = {"source": np.array([str(p) for p in paths], dtype=object)}
    if engine == "local":
        out = ReferenceStatistics(normalizer)(rows)
    else:
        started = connect_ray(address)
        ray = _import_ray()
        try:
            _quiet_ray_data(progress)
            workers = _pool_size(ray, num_workers, 0)
            dataset = ray.data.from_items([{"index": i, "source": str(p)} for i, p in enumerate(paths)],
                                          override_num_blocks=max(1, min(len(paths), 4 * workers)))
            parts = list(
                dataset.map_batches(
                    _IndexedReferenceStatistics, fn_constructor_kwargs={"normalizer": normalizer},
                    batch_size=batch_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=1,
                ).iter_batches(batch_size=None, batch_format="numpy")
            )
        finally:
            if started:
                ray.shutdown()
        order = np.argsort(np.concatenate([part["index"] for part in parts]), kind="stable")
        out = {key: np.concatenate([part[key] for part in parts])[order] for key in parts[0]}
    for source, error in zip(out["source"], out["error"]):
        if error:
            print(f"skipped reference {source}: {error}", file=sys.stderr)
    return _pool_into(normalizer, out, len(paths))


class _IndexedReferenceStatistics(ReferenceStatistics):
    """:class:`ReferenceStatistics` that carries each row's index, so the driver restores file order."""

    def __call__(self, batch: dict[str, Any]) -> dict[str, np.ndarray]:
        return {"index": np.asarray(batch["index"]), **super().__call__(batch)}


def _pool_into(normalizer: Any, out: dict[str, np.ndarray], seen: int) -> Any:
    """Pool the usable rows' statistics with ``normalizer.pool`` and make them its target, as ``fit`` does."""
    usable = out["usable"].astype(bool)
    if not usable.any():
        raise ValueError(
            f"none of the {seen} reference image(s) is readable with enough tissue (at least "
            f"{normalizer.min_tissue_fraction:.0%} of pixels below the luminosity threshold, and more than one colour)"
        )
    for name in normalizer.statistics:
        values = torch.from_numpy(np.asarray(out[f"stat_{name}"][usable], dtype=np.float64))
        buffer = getattr(normalizer, f"target_{name}")
        buffer.copy_(normalizer.pool(name, values).to(buffer))
    normalizer.fitted.fill_(True)
    return normalizer


# -- the command line -------------------------------------------------------------------------


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--engine``, ``--address``, ``--num-workers``, ``--num-gpus``, ``--batch-size`` and ``--resume`` to ``normalize``.

    Example:
        >>> parser = argparse.ArgumentParser()
        >>> add_engine_arguments(parser)
        >>> args = parser.parse_args(["--engine", "ray", "--num-workers", "2", "--resume"])
        >>> args.engine, args.num_workers, args.num_gpus, args.resume
        ('ray', 2, 0.0, True)
    """
    parser.add_argument("--engine", choices=ENGINES, default="local",
                        help="local: in this process (default); ray: Ray Data actors, on a local or joined Ray cluster")
    parser.add_argument("--address", metavar="ADDRESS",
                        help="--engine ray: the cluster to join ('auto', host:port, ray://host:port); default: start a local Ray")
    parser.add_argument("--num-workers", type=int, metavar="N", help="--engine ray: actors (default: one per CPU, or per GPU)")
    parser.add_argument("--num-gpus", type=float, default=0.0, metavar="G",
                        help="--engine ray: GPUs per actor, e.g. 1 or 0.5 (default: %(default)s, CPU actors)")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE, metavar="N", help="images per batch (default: %(default)s)")
    parser.add_argument("--resume", action="store_true",
                        help="skip outputs that already exist (rerun a killed job to finish it)")


def build_archive_normalizer(args: argparse.Namespace) -> Any:
    """The command line's normalizer: as :func:`~stain_transforms.registry.build_normalizer`, fitted on Ray with ``--engine ray``.

    Example:
        >>> import tempfile
        >>> from stain_transforms.testing import synthetic_tissue
        >>> reference = Path(tempfile.mkdtemp()) / "r.png"
        >>> write_image_atomic(synthetic_tissue(64, seed=0), reference)
        >>> args = argparse.Namespace(method="reinhard", reference=[str(reference)], weights=None, device="cpu", engine="local")
        >>> type(build_archive_normalizer(args)).__name__
        'ReinhardNormalize'
    """
    from .registry import FITTED, METHODS, build_normalizer

    row = METHODS.get(args.method)
    if getattr(args, "engine", "local") != "ray" or row is None or row.kind != FITTED or not args.reference:
        return build_normalizer(args.method, args.reference, args.weights, args.device)
    return fit_references(row.transform_class(), args.reference, engine="ray", address=args.address,
                          num_workers=args.num_workers, batch_size=args.batch_size)


def run_archive(args: argparse.Namespace, pairs: Sequence[tuple[Path, Path]], output: Path) -> int:
    """``stain-transforms normalize`` with ``--engine ray`` or ``--resume``: returns 0, or 1 when some images failed.

    Example:
        >>> import contextlib, io, tempfile
        >>> from stain_transforms.testing import synthetic_tissue
        >>> root = Path(tempfile.mkdtemp())
        >>> write_image_atomic(synthetic_tissue(64, seed=0), root / "r.png")
        >>> write_image_atomic(synthetic_tissue(64, seed=1), root / "in/a.png")
        >>> args = argparse.Namespace(method="reinhard", reference=[str(root / "r.png")], weights=None, device="cpu",
        ...                           engine="local", address=None, num_workers=None, num_gpus=0.0, batch_size=4,
        ...                           resume=True, overwrite=False)
        >>> with contextlib.redirect_stderr(io.StringIO()):
        ...     run_archive(args, [(root / "in/a.png", root / "out/a.png")], root / "out")  # doctest: +ELLIPSIS
        normalized 1 of 1 image(s) with reinhard into .../out (0 existed and were skipped) in ... s
        0
    """
    existing = "overwrite" if args.overwrite else "skip" if args.resume else "error"
    if existing == "error":  # as the in-process command: refuse before any work
        found = [destination for _, destination in pairs if Path(destination).exists()]
        if found:
            raise ValueError(
                f"{len(found)} output file(s) exist, e.g. {found[0]}; pass --resume to skip them or --overwrite to replace them"
            )
    try:
        normalizer = build_archive_normalizer(args)
        result = normalize_files(
            pairs, normalizer, engine=args.engine, existing=existing, batch_size=args.batch_size,
            device=args.device if args.engine == "local" else None, address=args.address,
            num_workers=args.num_workers, num_gpus=args.num_gpus, quality=getattr(args, "jpeg_quality", None),
        )
    except ImportError as error:  # --engine ray without the [ray] extra: one line, as other usage errors
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"normalized {result.written} of {result.total} image(s) with {args.method} into {output} "
          f"({result.skipped} existed and were skipped) in {result.seconds:.1f} s")
    if result.failed:
        print(f"{len(result.failed)} image(s) failed:", *(e if e.startswith(s) else f"{s}: {e}" for s, e in result.failed), sep="\n  ",
              file=sys.stderr)
        return 1
    return 0


__all__ = [
    "ArchiveResult", "NormalizeBatch", "ReferenceStatistics", "normalize_files", "fit_references",
    "clear_temporaries", "connect_ray", "add_engine_arguments", "build_archive_normalizer", "run_archive",
]
