"""Run a benchmark against two checkouts of stain_transforms in alternation, and compare their ratios to peers.

A refactoring must not cost speed. This runs ``classical.py`` or ``augment.py`` (from the new checkout)
``--runs`` times against each checkout, alternating old and new so that a change of machine load hits
both alike, reads "ours / fastest peer" ratios from each run's output, and prints, per ratio, every
run's value and the change of the medians (new / old). The peers are the same in both runs, so the
change is the change of our own speed.

    .venv-bench/bin/python benchmarks/compare_checkouts.py --old ../baseline --new . --script classical.py \
        --runs 2 -- --threads 2

The checkouts are put first on ``PYTHONPATH``; the environment running this needs the peers and
stain_transforms' dependencies, not stain_transforms itself.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def classical_ratios(output: str) -> dict[str, float]:
    """Ours / fastest peer, single image and batch, per method, from ``classical.py``'s table."""
    rates: dict[str, dict[str, tuple[float, float]]] = {}
    for method, name, single, batch in re.findall(r"^\| (\w+) \| ([\w-]+) \| ([\d.]+) \| ([\d.]+) \|", output, re.MULTILINE):
        rates.setdefault(method, {})[name] = (float(single), float(batch))
    ratios = {}
    for method, by_name in rates.items():
        ours = by_name.pop("stain_transforms")
        for mode, label in ((0, "single"), (1, "batch 16")):
            ratios[f"{method} {label}"] = ours[mode] / max(rate[mode] for rate in by_name.values())
    return ratios


def augment_ratios(output: str) -> dict[str, float]:
    """Ours (Ruifrok) / fastest peer, from ``augment.py``'s table and its head-to-head lines."""
    rows = dict(
        (name.strip(), (float(single), float(batch)))
        for name, single, batch in re.findall(r"^(.{45}) +([\d.]+) +([\d.]+) +[\d.]+x +[\d.]+x$", output, re.MULTILINE)
    )
    ours = rows.pop("stain_transforms HEDJitter (Ruifrok)")
    peers = {name: rate for name, rate in rows.items() if not name.startswith("stain_transforms")}
    ratios = {
        "table single": ours[0] / max(rate[0] for rate in peers.values()),
        "table batch 16": ours[1] / max(rate[1] for rate in peers.values()),
    }
    for label, ratio in re.findall(r"^  (one image|batch of 16) *:.*: ([\d.]+)x$", output, re.MULTILINE):
        ratios[f"head to head {label}"] = float(ratio)
    return ratios


PARSERS = {"classical.py": classical_ratios, "augment.py": augment_ratios}


def run(checkout: Path, script: str, extra: list[str]) -> str:
    environment = {**os.environ, "PYTHONPATH": f"{checkout}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    command = [sys.executable, str(HERE / script), *extra]
    return subprocess.run(command, env=environment, capture_output=True, text=True, check=True).stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old", type=Path, required=True, help="checkout before the change")
    parser.add_argument("--new", type=Path, required=True, help="checkout after the change")
    parser.add_argument("--script", choices=sorted(PARSERS), required=True)
    parser.add_argument("--runs", type=int, default=2, help="runs per checkout, alternating")
    parser.add_argument("extra", nargs="*", help="arguments for the script (after --)")
    args = parser.parse_args()
    found: dict[str, dict[str, list[float]]] = {"old": {}, "new": {}}
    for index in range(args.runs):
        for side in ("old", "new"):
            output = run(getattr(args, side).resolve(), args.script, args.extra)
            print(f"## run {index + 1}, {side}\n{output}", flush=True)
            for name, ratio in PARSERS[args.script](output).items():
                found[side].setdefault(name, []).append(ratio)
    print(f"| {args.script} ratio to the fastest peer | old runs | new runs | new / old (medians) |")
    print("|---|---|---|---:|")
    for name, old in found["old"].items():
        new = found["new"].get(name, [])
        change = statistics.median(new) / statistics.median(old) if new else float("nan")
        show = lambda values: ", ".join(f"{v:.2f}x" for v in values)
        print(f"| {name} | {show(old)} | {show(new)} | {change:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
