"""Export for deployment: ONNX and TorchScript graphs of the transforms that are fixed maps, and ``.cube`` LUTs.

What can be exported is what runs as a fixed graph of tensor operations, with no data-dependent
control flow and no iterative solver:

- **StainNet** (:class:`~stain_transforms.StainNetNormalize` or the bare
  :class:`~stain_transforms.models.StainNet`): the network itself, to ONNX and TorchScript, and as a
  ``.cube`` 3D LUT for image tools (:meth:`StainNet.export_cube <stain_transforms.models.StainNet.export_cube>`).
- **Reinhard**, fitted: the whole method, per-image Lab statistics included (:class:`ReinhardModule`):
  they are a mean and a 3x3 covariance in CIE f-space, plain reductions. With ``source=`` images (one
  slide's tiles) the source statistics are fixed instead and the graph is one affine map in f-space.
- **Macenko and Vahadane**, fitted, *with a fixed source* (:class:`StainTransferModule`): the apply step,
  unmixing with a source stain matrix estimated ahead on ``source=`` images (the slide context) and
  remixing with the fitted target. That step is two small matrix products and the closed-form
  two-stain NNLS correction.

What cannot be exported, and why:

- **Macenko's per-image stain matrix**: it needs an eigen-decomposition of each image's OD covariance,
  angle percentiles (a sort or top-k over a data-dependent number of tissue pixels) and a boolean
  selection of tissue pixels, whose count differs per image. ONNX has no eigen-solver operator, and the
  masked percentile has no fixed-shape form.
- **Vahadane's per-image stain matrix**: sparse non-negative dictionary learning, a loop of solver
  iterations started from the Macenko estimate, on a random subsample of tissue pixels.
- **StainGAN**: the generator exports as any CNN would (``torch.onnx.export(normalize.generator, ...)``),
  but the library runs it on large images in blended overlapping tiles, which the graph would not do.
- **The tissue check**: the library returns images with too little tissue (blank, black, flat) unchanged.
  The exported graphs map every image they are given; check tiles first (``normalizer.informative``).
- **HED augmentation**: random by design; exporting it for deployment makes no sense.

Exported graphs take and return (B, 3, H, W) float32 RGB in [0, 1], with batch size, height and width
free. Convert uint8 images with ``/ 255`` and round results with ``round(x * 255)``.

The ONNX exporter needs ``onnx`` and ``onnxscript``, and running the graphs needs ``onnxruntime``: the
``[export]`` extra. They are imported only inside the functions that need them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._kernels.lab import CIE_F_TOE, CIE_TOE, CIE_TOE_SLOPE, SRGB_TOE
from .functional.color.lab import D65_WHITE, F_FROM_LAB, LAB_FROM_F, LAB_OFFSET, XYZ_FROM_RGB
from .functional.color.optical_density import MIN_INTENSITY
from .functional.concentrations import MIN_MAX_CONCENTRATION, _axis_map, _normal_equations
from .functional.reinhard import MIN_STD
from .models.stainnet import StainNet
from .normalizers.normalizer import StainNormalizer
from .normalizers.reinhard import ReinhardNormalize
from .normalizers.stain_matrix import StainMatrixNormalizer
from .normalizers.stainnet import StainNetNormalize

FORMATS = ("onnx", "torchscript", "cube")
SUFFIXES = {".onnx": "onnx", ".pt": "torchscript", ".ts": "torchscript", ".torchscript": "torchscript", ".cube": "cube"}
# The ONNX opset of exported graphs (onnxruntime 1.17+ runs it).
OPSET = 18
_XYZ_FROM_RGB_WHITE = XYZ_FROM_RGB / D65_WHITE[:, None]  # sRGB linear light -> XYZ relative to white


def _channels(matrix: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A (3, 3) or (B, 3, 3) matrix applied to the channels of (B, 3, N) pixels."""
    return torch.matmul(matrix, x)


class ReinhardModule(nn.Module):
    """Fitted Reinhard as a plain ``nn.Module`` for export: (B, 3, H, W) RGB in [0, 1] to the same.

    Computes what :class:`~stain_transforms.ReinhardNormalize` computes for an image with tissue:
    sRGB to CIE f-space, each image's f mean and covariance (the Lab statistics follow from them,
    Lab being affine in f), the per-image affine map that gives the target Lab mean and standard
    deviation, and back to sRGB. With ``source_mean``/``source_std`` given, every image is mapped
    with those fixed source statistics instead of its own (one slide's statistics, say).

    Args:
        target_mean, target_std: the fitted Lab target, (3,) each.
        source_mean, source_std: fixed source Lab statistics, (3,) each, or ``None`` (per image).

    Example:
        >>> from stain_transforms import ReinhardNormalize
        >>> from stain_transforms.testing import synthetic_tissue
        >>> normalizer = ReinhardNormalize().fit(synthetic_tissue(64, seed=0))
        >>> module = ReinhardModule.from_normalizer(normalizer)
        >>> x = torch.from_numpy(synthetic_tissue(64, seed=1, stain_scale=1.3)).permute(2, 0, 1)[None] / 255.0
        >>> bool((module(x) - normalizer(x)).abs().max() < 1e-4)
        True
    """

    def __init__(
        self,
        target_mean: torch.Tensor,
        target_std: torch.Tensor,
        source_mean: torch.Tensor | None = None,
        source_std: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        if (source_mean is None) != (source_std is None):
            raise ValueError("give both source_mean and source_std, or neither")
        self.fixed_source = source_mean is not None
        f32 = torch.float32
        self.register_buffer("to_xyz", _XYZ_FROM_RGB_WHITE.to(f32))
        self.register_buffer("from_xyz", torch.linalg.inv(_XYZ_FROM_RGB_WHITE).to(f32))
        self.register_buffer("lab_from_f", LAB_FROM_F.to(f32))
        if self.fixed_source:
            # lab' = scale (lab - source_mean) + target_mean, lab = K f + o: one affine map of f.
            scale = target_std.double() / source_std.double().clamp(min=MIN_STD)
            matrix = F_FROM_LAB @ (scale[:, None] * LAB_FROM_F)
            bias = F_FROM_LAB @ (target_mean.double() - scale * (source_mean.double() - LAB_OFFSET) - LAB_OFFSET)
            self.register_buffer("matrix", matrix.to(f32))
            self.register_buffer("bias", bias.to(f32)[:, None])
        else:
            self.register_buffer("f_from_lab", F_FROM_LAB.to(f32))
            self.register_buffer("target_std", target_std.to(f32))
            # Centred f is mapped to K^-1 diag(scale) K (f - mean) + K^-1 (target_mean - o).
            self.register_buffer("bias", (F_FROM_LAB @ (target_mean.double() - LAB_OFFSET)).to(f32)[:, None])

    @classmethod
    def from_normalizer(cls, normalizer: ReinhardNormalize, source: Any = None) -> ReinhardModule:
        """The module of a fitted :class:`~stain_transforms.ReinhardNormalize`; ``source`` images fix the source statistics.

        ``source`` is anything :meth:`~stain_transforms.StainNormalizer.fit` takes (e.g. tiles of
        one slide); its statistics are pooled exactly as fitting pools the references'.

        Example:
            >>> from stain_transforms import ReinhardNormalize
            >>> from stain_transforms.testing import synthetic_tissue
            >>> normalizer = ReinhardNormalize().fit(synthetic_tissue(64, seed=0))
            >>> ReinhardModule.from_normalizer(normalizer, source=synthetic_tissue(64, seed=1)).fixed_source
            True
        """
        normalizer._require_fitted()
        target = normalizer.target_statistics()
        if source is None:
            return cls(target["mean"], target["std"])
        pooled = _source_statistics(normalizer, source)
        return cls(target["mean"], target["std"], pooled["mean"], pooled["std"])

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        """Map (B, 3, H, W) RGB in [0, 1] to the target's Lab statistics."""
        shape = rgb.shape
        flat = rgb.reshape(shape[0], 3, -1)
        linear = torch.where(flat > SRGB_TOE, torch.pow((flat + 0.055) / 1.055, 2.4), flat / 12.92)
        t = _channels(self.to_xyz, linear)
        f = torch.where(t > CIE_TOE, torch.pow(t.clamp(min=CIE_TOE), 1.0 / 3.0), CIE_TOE_SLOPE * t + 16.0 / 116.0)
        if self.fixed_source:
            mapped = _channels(self.matrix, f) + self.bias
        else:
            centred = f - f.mean(dim=2, keepdim=True)
            count = max(flat.shape[2] - 1, 1) if isinstance(flat.shape[2], int) else flat.shape[2] - 1
            covariance = torch.matmul(centred, centred.transpose(1, 2)) / count
            lab_var = (torch.matmul(self.lab_from_f, covariance) * self.lab_from_f).sum(dim=2)
            scale = self.target_std / lab_var.clamp(min=0).sqrt().clamp(min=MIN_STD)  # (B, 3)
            matrix = torch.matmul(self.f_from_lab, scale[:, :, None] * self.lab_from_f)  # (B, 3, 3)
            mapped = torch.matmul(matrix, centred) + self.bias
        xyz = torch.where(mapped > CIE_F_TOE, mapped * mapped * mapped, (mapped - 16.0 / 116.0) / CIE_TOE_SLOPE)
        linear = _channels(self.from_xyz, xyz)
        srgb = torch.where(
            linear > 0.0031308, 1.055 * torch.pow(linear.clamp(min=0.0031308), 1.0 / 2.4) - 0.055, 12.92 * linear
        )
        return srgb.clamp(0.0, 1.0).reshape(shape)


class StainTransferModule(nn.Module):
    """The apply step of a fitted Macenko or Vahadane normalizer with a fixed source, for export.

    Unmixes with a fixed source stain matrix (estimated ahead, e.g. on tiles of one slide), scales
    each stain by ``target_max / source_max`` and remixes with the target matrix, exactly as
    :func:`~stain_transforms.functional.concentrations.stain_transfer` does: least squares, or the
    closed-form two-stain NNLS for stain vectors at most 90 degrees apart (always the case for
    non-negative stain matrices).

    Args:
        source_stains, target_stains: (3, 2) stain matrices (unit OD vectors as columns).
        source_max, target_max: (2,) 99th-percentile concentrations.
        solver: ``"nnls"`` or ``"lstsq"``.

    Raises:
        ValueError: for NNLS with source stain vectors more than 90 degrees apart (the general
            two-axis NNLS is not exported).

    Example:
        >>> from stain_transforms import MacenkoNormalize
        >>> from stain_transforms.testing import synthetic_tissue
        >>> normalizer = MacenkoNormalize().fit(synthetic_tissue(64, seed=0))
        >>> slide = [synthetic_tissue(64, seed=s, stain_scale=1.3) for s in (1, 2)]
        >>> module = StainTransferModule.from_normalizer(normalizer, source=slide)
        >>> module(torch.rand(2, 3, 8, 8)).shape
        torch.Size([2, 3, 8, 8])
    """

    def __init__(
        self,
        source_stains: torch.Tensor,
        source_max: torch.Tensor,
        target_stains: torch.Tensor,
        target_max: torch.Tensor,
        solver: str = "nnls",
    ) -> None:
        super().__init__()
        if solver not in ("lstsq", "nnls"):
            raise ValueError(f"solver must be 'lstsq' or 'nnls', got {solver!r}")
        source = source_stains.double().reshape(1, 3, 2)
        target = target_stains.double().reshape(1, 3, 2)
        scale = target_max.double().reshape(1, 2) / source_max.double().reshape(1, 2).clamp(min=MIN_MAX_CONCENTRATION)
        remix = target * scale[:, None, :]
        gram, inverse = _normal_equations(source)
        unmix = inverse @ source.mT
        self.solver = solver
        if solver == "lstsq":
            self.register_buffer("mapping", (remix @ unmix)[0].float())
            return
        if bool(gram[0, 0, 1] < 0):
            raise ValueError("the source stain vectors are more than 90 degrees apart; the general NNLS is not exported")
        self.clamp_output = bool((remix < 0).any())
        self.register_buffer("unmix", unmix[0].float())
        self.register_buffer("axis_map", _axis_map(gram)[0].float())
        self.register_buffer("remix", remix[0].float())

    @classmethod
    def from_normalizer(cls, normalizer: StainMatrixNormalizer, source: Any) -> StainTransferModule:
        """The module of a fitted Macenko/Vahadane normalizer, its source statistics pooled from ``source`` images.

        ``source`` is anything :meth:`~stain_transforms.StainNormalizer.fit` takes; its stain
        matrices and maximum concentrations are pooled exactly as fitting pools the references'.

        Example:
            >>> from stain_transforms import VahadaneNormalize
            >>> from stain_transforms.testing import synthetic_tissue
            >>> normalizer = VahadaneNormalize().fit(synthetic_tissue(64, seed=0))
            >>> StainTransferModule.from_normalizer(normalizer, synthetic_tissue(64, seed=1)).solver
            'nnls'
        """
        normalizer._require_fitted()
        pooled = _source_statistics(normalizer, source)
        target = normalizer.target_statistics()
        return cls(
            pooled["stain_matrix"], pooled["max_concentrations"],
            target["stain_matrix"], target["max_concentrations"], solver=normalizer.solver,
        )

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        """Re-render (B, 3, H, W) RGB in [0, 1] with the target's stains."""
        shape = rgb.shape
        log_rgb = torch.log(rgb.reshape(shape[0], 3, -1).clamp(min=MIN_INTENSITY))
        if self.solver == "lstsq":
            return torch.exp(_channels(self.mapping, log_rgb)).clamp(max=1.0).reshape(shape)
        neg_c = _channels(self.unmix, log_rgb)  # minus the unconstrained concentrations
        neg_c = (neg_c + _channels(self.axis_map, neg_c.clamp(min=0.0))).clamp(max=0.0)
        out = torch.exp(_channels(self.remix, neg_c))
        return (out.clamp(max=1.0) if self.clamp_output else out).reshape(shape)


def _source_statistics(normalizer: StainNormalizer, source: Any) -> dict[str, torch.Tensor]:
    """Source statistics: given as a mapping of statistic names to tensors (or an object with such a
    ``statistics`` mapping, e.g. a slide's), or pooled from ``source`` images as ``fit`` pools references
    (a fresh copy of the normalizer is fitted on them)."""
    values = getattr(source, "statistics", source)
    if isinstance(values, Mapping) and all(name in values for name in normalizer.statistics):
        return {name: torch.as_tensor(values[name]).to(torch.float64) for name in normalizer.statistics}
    return type(normalizer)(**normalizer.config).fit(source, progress=False).target_statistics()


def export_module(transform: Any, source: Any = None) -> nn.Module:
    """The plain ``nn.Module`` that exports ``transform`` (in float32, on the CPU, in eval mode).

    Args:
        transform: a :class:`~stain_transforms.StainNetNormalize` or
            :class:`~stain_transforms.models.StainNet`; a fitted
            :class:`~stain_transforms.ReinhardNormalize`; a fitted Macenko or Vahadane normalizer
            (with ``source``).
        source: images of the source (one slide's tiles, say) whose pooled statistics are fixed in
            the graph, or those statistics (a mapping of the normalizer's statistic names to tensors);
            needed for Macenko and Vahadane, optional for Reinhard. By default a normalizer's own
            fixed source statistics (its ``source`` attribute, when set) are used.

    Raises:
        ValueError: for a transform that cannot be exported (see the module docstring), or Macenko
            or Vahadane without ``source``.

    Example:
        >>> from stain_transforms import MacenkoNormalize
        >>> from stain_transforms.testing import synthetic_tissue
        >>> type(export_module(StainNet())).__name__
        'StainNet'
        >>> export_module(MacenkoNormalize().fit(synthetic_tissue(64, seed=0)))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: MacenkoNormalize estimates each image's stain matrix ... pass source= images ...
    """
    if isinstance(transform, StainNetNormalize):
        transform = transform.model
    if source is None and isinstance(transform, StainNormalizer):
        source = getattr(transform, "source", None)  # a normalizer given fixed (slide) source statistics
    if isinstance(transform, StainNet):
        import copy

        return copy.deepcopy(transform).float().cpu().eval()
    if isinstance(transform, ReinhardNormalize):
        return ReinhardModule.from_normalizer(transform, source).eval()
    if isinstance(transform, StainMatrixNormalizer):
        if source is None:
            raise ValueError(
                f"{type(transform).__name__} estimates each image's stain matrix with an eigen-decomposition "
                "(Macenko) or dictionary learning (Vahadane) and masked percentiles, which have no fixed-graph "
                "form; pass source= images (e.g. tiles of one slide) to export the apply step with that fixed "
                "source matrix"
            )
        return StainTransferModule.from_normalizer(transform, source).eval()
    raise ValueError(
        f"{type(transform).__name__} cannot be exported; exportable: StainNet, fitted Reinhard, and fitted "
        "Macenko/Vahadane with a fixed source (see stain_transforms.export)"
    )


def _example_input() -> torch.Tensor:
    return torch.rand(2, 3, 32, 48, generator=torch.Generator().manual_seed(0)) * 0.9 + 0.05


def export_onnx(transform: Any, path: str | Path, source: Any = None, opset: int = OPSET) -> Path:
    """Write ``transform`` as an ONNX graph: input ``rgb`` and output ``normalized``, (B, 3, H, W) float32 in [0, 1].

    Batch size, height and width are dynamic. See :func:`export_module` for what can be exported.
    Needs ``onnx`` and ``onnxscript`` (the ``[export]`` extra).

    Example:
        >>> import tempfile
        >>> path = export_onnx(StainNet(), Path(tempfile.mkdtemp()) / "stainnet.onnx")  # doctest: +SKIP
        >>> run_onnx(path, torch.rand(1, 3, 16, 16)).shape  # doctest: +SKIP
        (1, 3, 16, 16)
    """
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as error:
        raise ImportError(f"ONNX export needs onnx and onnxscript: pip install 'stain-transforms[export]' ({error})") from error
    module = export_module(transform, source)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    batch, height, width = (torch.export.Dim(name, min=1) for name in ("batch", "height", "width"))
    # The exporter's own logging goes to stdout; keep the command line's output clean.
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        program = torch.onnx.export(
            module,
            (_example_input(),),
            input_names=["rgb"],
            output_names=["normalized"],
            opset_version=opset,
            dynamo=True,
            dynamic_shapes={"rgb": {0: batch, 2: height, 3: width}},
            verbose=False,
        )
    program.save(str(path))
    return path


def export_torchscript(transform: Any, path: str | Path, source: Any = None) -> Path:
    """Write ``transform`` as a TorchScript file (``torch.jit.load`` reads it without stain_transforms).

    Traced on a float32 (B, 3, H, W) example; batch size and image size stay free because the modules
    have no shape-dependent control flow. See :func:`export_module` for what can be exported.

    Example:
        >>> import tempfile
        >>> path = export_torchscript(StainNet(), Path(tempfile.mkdtemp()) / "stainnet.pt")
        >>> loaded = torch.jit.load(str(path))
        >>> x = torch.rand(1, 3, 5, 7)
        >>> bool((loaded(x) - StainNet()(x)).abs().max() < 1.0)
        True
    """
    import warnings

    module = export_module(transform, source)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarnings about Python ints taken from shapes, and deprecation
        traced = torch.jit.trace(module, (_example_input(),), check_trace=False)
        traced.save(str(path))
    return path


def run_onnx(path: str | Path, rgb: Any, threads: int | None = None) -> Any:
    """Run an exported ONNX graph on (B, 3, H, W) float RGB in [0, 1] with onnxruntime (CPU); returns numpy float32.

    A test and benchmark helper; deployments use their own runtime. Needs ``onnxruntime``.

    Example:
        >>> import tempfile
        >>> path = export_onnx(StainNet(), Path(tempfile.mkdtemp()) / "stainnet.onnx")  # doctest: +SKIP
        >>> run_onnx(path, torch.rand(1, 3, 16, 16)).dtype  # doctest: +SKIP
        dtype('float32')
    """
    import numpy as np

    try:
        import onnxruntime
    except ImportError as error:
        raise ImportError("running ONNX graphs needs onnxruntime: pip install 'stain-transforms[export]'") from error
    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    array = rgb.detach().cpu().numpy() if isinstance(rgb, torch.Tensor) else np.asarray(rgb)
    return session.run(None, {"rgb": array.astype(np.float32)})[0]


def export(transform: Any, path: str | Path, format: str | None = None, source: Any = None) -> Path:
    """Export ``transform`` to ``path`` as ``"onnx"``, ``"torchscript"`` or ``"cube"`` (default: from the suffix).

    ``"cube"`` is StainNet only (:meth:`StainNet.export_cube <stain_transforms.models.StainNet.export_cube>`,
    33^3 entries). See :func:`export_module` for what the other two formats take.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> export(StainNet(), folder / "stainnet.cube").name, export(StainNet(), folder / "stainnet.pt").name
        ('stainnet.cube', 'stainnet.pt')
    """
    path = Path(path)
    format = format or SUFFIXES.get(path.suffix.lower())
    if format not in FORMATS:
        raise ValueError(f"cannot tell the format of {path}; pass format= one of {', '.join(FORMATS)} "
                         f"(or use a suffix: {', '.join(SUFFIXES)})")
    if format == "cube":
        model = transform.model if isinstance(transform, StainNetNormalize) else transform
        if not isinstance(model, StainNet):
            raise ValueError(f"only StainNet exports as a .cube colour LUT, not {type(transform).__name__}")
        path.parent.mkdir(parents=True, exist_ok=True)
        return model.export_cube(path)
    if format == "onnx":
        return export_onnx(transform, path, source)
    return export_torchscript(transform, path, source)


# -- the command line ---------------------------------------------------------------------------


def run_export(args: argparse.Namespace) -> int:
    """``stain-transforms export``: build the method's transform as ``normalize`` does, export it; returns 0.

    Example:
        >>> import argparse, contextlib, io, tempfile
        >>> parser = argparse.ArgumentParser()
        >>> _ = add_export_parser(parser.add_subparsers())
        >>> out = Path(tempfile.mkdtemp()) / "net.pt"
        >>> args = parser.parse_args(["export", "--method", "stainnet", "--weights", "stainnet-mitos-aperio-to-hamamatsu", "-o", str(out)])
        >>> with contextlib.redirect_stdout(io.StringIO()):
        ...     status = run_export(args)
        >>> status, out.is_file()
        (0, True)
    """
    from .files import expand_image_paths, read_rgb
    from .registry import build_normalizer

    transform = build_normalizer(args.method, args.reference, args.weights, "cpu")
    source = [read_rgb(p) for p in expand_image_paths(args.source)] if args.source else None
    path = Path(args.output)
    if path.exists() and not args.overwrite:
        raise ValueError(f"{path} exists; pass --overwrite to replace it")
    try:
        written = export(transform, path, args.format, source)
    except ImportError as error:  # ONNX without the [export] extra: one line, as other usage errors
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"exported {args.method} to {written}")
    return 0


def add_export_parser(commands: Any) -> argparse.ArgumentParser:
    """Add the ``export`` subcommand to a ``stain-transforms`` subparsers object; returns its parser.

    Example:
        >>> parser = argparse.ArgumentParser()
        >>> _ = add_export_parser(parser.add_subparsers())
        >>> args = parser.parse_args(["export", "--method", "reinhard", "--reference", "refs", "--out", "out.onnx"])
        >>> args.method, args.output, args.format
        ('reinhard', 'out.onnx', None)
    """
    from .registry import FITTED, LEARNED, methods

    export = commands.add_parser(
        "export", help="export a transform to ONNX, TorchScript or .cube (StainNet, Reinhard, Macenko/Vahadane with --source)"
    )
    export.add_argument("--method", required=True, choices=[m for m in methods(FITTED) + methods(LEARNED) if m != "staingan"])
    export.add_argument("--reference", nargs="+", metavar="PATH", help="target-domain image(s) or folder(s) to fit on (fitted methods)")
    export.add_argument("--weights", metavar="NAME_OR_PATH", help="bundled name, local folder or Hub id (stainnet)")
    export.add_argument(
        "--source", nargs="+", metavar="PATH",
        help="source images or folders (one slide's tiles) whose pooled statistics are fixed in the graph "
        "(required for macenko and vahadane, optional for reinhard)",
    )
    export.add_argument("--format", choices=FORMATS, help="default: from the output suffix (.onnx, .pt/.ts, .cube)")
    export.add_argument("--overwrite", action="store_true", help="replace the output file if it exists")
    export.add_argument("--out", "-o", dest="output", required=True, metavar="PATH", help="file to write (.onnx, .pt, .cube)")
    export.set_defaults(run=run_export)
    return export
