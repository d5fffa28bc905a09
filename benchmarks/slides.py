"""Whole-slide measurements: throughput and peak memory of normalize_slide per method, and tile-to-tile consistency.

    python benchmarks/slides.py                 # the real slide (../shared/data) and a synthetic 8k x 8k slide
    python benchmarks/slides.py --large 40000   # also a synthetic 40,000 x 40,000 pyramidal slide (StainNet)

Each normalization runs in a fresh subprocess, whose peak resident memory (ru_maxrss) is reported.
Times are wall-clock on whatever machine runs this (here: 2 shared CPU cores, so approximate).
Prints a Markdown table and writes it (.md), with the consistency figures (.json), to
docs/results/slides_<name of --workdir>.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
SVS = Path(os.environ.get("STAIN_TRANSFORMS_DATA", REPO.parent / "shared" / "data")) / "samples" / "cmu_small_region.svs"
METHODS = ("reinhard", "macenko", "vahadane", "stainnet", "staingan")
WEIGHTS = {"stainnet": "stainnet-mitos-aperio-to-hamamatsu", "staingan": "staingan-mitos-aperio-to-hamamatsu"}


def normalizer_for(method: str):
    from stain_transforms.registry import FITTED
    from stain_transforms.registry import method as row
    from stain_transforms.testing import synthetic_tissue

    if row(method).kind == FITTED:
        return row(method).transform_class().fit([synthetic_tissue(256, seed=s) for s in range(4)])
    return row(method).transform_class.from_pretrained(WEIGHTS[method])


def child(args: argparse.Namespace) -> None:
    """One normalization, in this (fresh) process: prints a JSON line of what was measured."""
    import tiffslide

    from stain_transforms.slides import normalize_slide, open_slide

    torch.set_num_threads(args.threads)
    normalizer = normalizer_for(args.method)
    slide = open_slide(args.slide)
    start = time.perf_counter()
    out = normalize_slide(slide, args.out, normalizer, tile_size=512, compression="jpeg", overwrite=True, progress=False)
    seconds = time.perf_counter() - start
    width, height = slide.dimensions
    written = tiffslide.TiffSlide(out)
    print(json.dumps({
        "method": args.method,
        "seconds": seconds,
        "mpx_per_s": width * height / 1e6 / seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "opens_in_tiffslide": True,
        "levels": [list(d) for d in written.level_dimensions],
        "mpp": written.properties.get("tiffslide.mpp-x"),
        "size_mb": Path(out).stat().st_size / 2**20,
    }))


def run_child(method: str, slide: Path, out: Path, threads: int) -> dict:
    command = [sys.executable, __file__, "--child", "--method", method, "--slide", str(slide), "--out", str(out),
               "--threads", str(threads)]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    print(f"  {slide.name} {method}: {measured['seconds']:.1f} s, {measured['mpx_per_s']:.2f} Mpx/s, "
          f"peak RSS {measured['peak_rss_mb']:.0f} MB", flush=True)
    return measured


def border_step(image: np.ndarray, tile: int) -> tuple[float, float]:
    """Mean absolute step between neighbouring pixel columns/rows across tile borders, and elsewhere (0-255)."""
    image = image[: image.shape[0] // tile * tile, : image.shape[1] // tile * tile].astype(np.float64)
    steps_x = np.abs(np.diff(image, axis=1)).mean(axis=(0, 2))
    steps_y = np.abs(np.diff(image, axis=0)).mean(axis=(1, 2))
    at_x, at_y = np.arange(tile - 1, len(steps_x), tile), np.arange(tile - 1, len(steps_y), tile)
    border = np.concatenate([steps_x[at_x], steps_y[at_y]]).mean()
    inside = np.concatenate([np.delete(steps_x, at_x), np.delete(steps_y, at_y)]).mean()
    return float(border), float(inside)


def consistency(slide_path: Path, tile: int = 256) -> dict:
    """Per-tile Macenko/Vahadane/Reinhard against slide context, on the tissue tiles of one slide."""
    from stain_transforms.functional import rgb_to_lab, tissue_mask
    from stain_transforms.slides import fit_slide, open_slide, tissue_tiles

    slide = open_slide(slide_path)
    corners = tissue_tiles(slide, tile, min_tissue=0.5)
    tiles = [slide.read(int(x), int(y), tile, tile) for x, y in corners]
    batch = torch.stack([torch.from_numpy(t).permute(2, 0, 1) for t in tiles]).double() / 255
    results = {"tiles": len(tiles), "tile": tile}
    width, height = slide.dimensions
    whole = slide.read(0, 0, width, height)
    whole_batch = torch.from_numpy(whole).permute(2, 0, 1)[None].double() / 255
    for method in ("reinhard", "macenko", "vahadane"):
        normalizer = normalizer_for(method)
        stats = fit_slide(slide, normalizer, n_tiles=64, tile_size=512, progress=False)
        entry = {}
        if method != "reinhard":
            matrices = normalizer.image_statistics(batch)["stain_matrix"]  # (N, 3, 2)
            cosines = (matrices * stats["stain_matrix"].to(matrices)).sum(dim=1)  # per tile, per stain
            angles = torch.rad2deg(torch.arccos(cosines.clamp(-1, 1)))
            entry["stain_matrix_element_std"] = float(matrices.std(dim=0).mean())
            entry["angle_to_slide_matrix_deg_mean"] = [float(a) for a in angles.mean(dim=0)]
            entry["angle_to_slide_matrix_deg_p95"] = [float(a) for a in angles.quantile(0.95, dim=0)]
        # The spread of the colour map itself: the same probe pixels (tissue from the slide) mapped with
        # each tile's own statistics; the std over tiles of the probe's mean Lab. Slide context: one map, 0.
        per_tile_stats = normalizer.image_statistics(batch)
        probe = batch[:: max(1, len(batch) // 4)][:4, :, ::2, ::2]
        probe_mask = tissue_mask(probe).unsqueeze(1)
        probe_means = []
        for i in range(len(batch)):
            mapped = rgb_to_lab(normalizer.normalize_with(probe, {k: v[i] for k, v in per_tile_stats.items()}))
            probe_means.append(((mapped * probe_mask).sum(dim=(0, 2, 3)) / probe_mask.sum()).tolist())
        entry["per_tile_map_spread_lab_std"] = [float(v) for v in torch.tensor(probe_means).std(dim=0)]
        entry["slide_context_map_spread_lab_std"] = [0.0, 0.0, 0.0]
        for mode, transform in (("per_tile", normalizer), ("slide_context", normalizer.with_source(stats))):
            out = torch.cat([transform(batch[i : i + 1]) for i in range(len(batch))])
            # the output's mean Lab over each tile's tissue pixels, then its spread over tiles
            lab = rgb_to_lab(out)
            mask = tissue_mask(batch).unsqueeze(1)
            means = (lab * mask).sum(dim=(2, 3)) / mask.sum(dim=(2, 3)).clamp(min=1)
            entry[f"{mode}_lab_mean_std_over_tiles"] = [float(v) for v in means.std(dim=0)]
            # the border step: the whole slide normalized tile by tile (tile-sized grid)
            image = np.zeros_like(whole)
            for top in range(0, height, tile):
                for left in range(0, width, tile):
                    piece = whole_batch[..., top : top + tile, left : left + tile]
                    image[top : top + tile, left : left + tile] = (
                        transform(piece)[0].permute(1, 2, 0).mul(255).round().clamp(0, 255).byte().numpy()
                    )
            border, inside = border_step(image, tile)
            entry[f"{mode}_border_step"] = border
            entry[f"{mode}_interior_step"] = inside
        source_border, source_inside = border_step(whole, tile)
        entry["source_border_step"], entry["source_interior_step"] = source_border, source_inside
        results[method] = entry
        print(f"  {method}: {json.dumps(entry)}", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--method")
    parser.add_argument("--slide")
    parser.add_argument("--out")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--large", type=int, default=0, help="also a synthetic slide of this side (e.g. 40000)")
    parser.add_argument("--medium", type=int, default=8192, help="side of the synthetic slide all methods run on")
    parser.add_argument("--svs-methods", default=",".join(METHODS), help="methods run on the real slide ('' for none)")
    parser.add_argument("--medium-methods", default=",".join(METHODS), help="methods run on the medium slide ('' for none)")
    parser.add_argument("--large-methods", default="stainnet", help="methods run on the large slide")
    parser.add_argument("--skip-consistency", action="store_true")
    parser.add_argument("--workdir", default=None, help="where the synthetic slides and outputs go (default: a temp dir)")
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    from stain_transforms.slides.testing import write_synthetic_slide

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="slides_bench_"))
    workdir.mkdir(parents=True, exist_ok=True)
    report: dict = {"machine": f"{os.cpu_count()} CPU cores, torch threads {args.threads}", "runs": []}
    stains = np.array([[0.70, 0.15], [0.68, 0.90], [0.22, 0.40]])
    slides = []
    methods_of = {name: tuple(m for m in getattr(args, f"{name}_methods").split(",") if m) for name in ("svs", "medium", "large")}
    if SVS.is_file():
        slides.append((SVS, methods_of["svs"]))
    else:
        print(f"skipping the real slide: {SVS} not found")
    medium = workdir / f"synthetic_{args.medium}.tiff"
    if methods_of["medium"] and not medium.exists():
        start = time.perf_counter()
        write_synthetic_slide(medium, args.medium, args.medium, tile=512, compression="jpeg", stain_matrix=stains, stain_scale=1.3)
        print(f"wrote {medium} in {time.perf_counter() - start:.0f} s")
    slides.append((medium, methods_of["medium"]))
    if args.large:
        large = workdir / f"synthetic_{args.large}.tiff"
        if not large.exists():
            start = time.perf_counter()
            write_synthetic_slide(large, args.large, args.large, tile=512, compression="jpeg", stain_matrix=stains, stain_scale=1.3)
            print(f"wrote {large} ({large.stat().st_size / 2**30:.2f} GiB) in {time.perf_counter() - start:.0f} s")
        slides.append((large, methods_of["large"]))
    for slide, methods in slides:
        for method in methods:
            measured = run_child(method, slide, workdir / f"{slide.stem}_{method}.tiff", args.threads)
            report["runs"].append({"slide": slide.name, **measured})
    if not args.skip_consistency and SVS.is_file():
        print("consistency on", SVS.name)
        report["consistency"] = consistency(SVS)
    results = REPO / "docs" / "results"
    results.mkdir(exist_ok=True)
    name = "slides_" + (Path(args.workdir).name if args.workdir else "run")
    (results / f"{name}.json").write_text(json.dumps(report, indent=2))
    lines = ["| slide | method | time (s) | Mpx/s | peak RSS (MB) | levels | output (MB) |", "|---|---|---|---|---|---|---|"]
    for run in report["runs"]:
        lines.append(f"| {run['slide']} | {run['method']} | {run['seconds']:.1f} | {run['mpx_per_s']:.2f} | "
                     f"{run['peak_rss_mb']:.0f} | {len(run['levels'])} | {run['size_mb']:.0f} |")
    print("\n".join(lines))
    (results / f"{name}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
