"""The study's outputs: a table like the StainNet paper's Table 3 (markdown and CSV) and a bar chart."""

from __future__ import annotations

import csv
from pathlib import Path

METRICS = ("recall", "precision", "accuracy", "f1")


def write_csv(rows: list[dict], path: Path) -> Path:
    """One row per (experiment, test set): the metrics and the number of test images."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = ["experiment", "augmentation", "test_set", "n_images", *METRICS]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, **{m: f"{row[m]:.4f}" for m in METRICS}})
    return path


def markdown_table(rows: list[dict]) -> str:
    """Rows grouped by experiment, as in the paper: experiment | test set | recall | precision | accuracy | F1.

    Example:
        >>> print(markdown_table([{"experiment": "E1", "augmentation": "none", "test_set": "site B",
        ...     "n_images": 4, "recall": 0.5, "precision": 1.0, "accuracy": 0.75, "f1": 2 / 3}]))
        | Experiment | Test set | Recall | Precision | Accuracy | F1 |
        |---|---|---|---|---|---|
        | E1 (none) | site B | 0.500 | 1.000 | 0.750 | 0.667 |
    """
    lines = ["| Experiment | Test set | Recall | Precision | Accuracy | F1 |", "|---|---|---|---|---|---|"]
    previous = None
    for row in rows:
        name = f"{row['experiment']} ({row['augmentation']})" if row["experiment"] != previous else ""
        previous = row["experiment"]
        lines.append(f"| {name} | {row['test_set']} | " + " | ".join(f"{row[m]:.3f}" for m in METRICS) + " |")
    return "\n".join(lines)


def bar_chart(rows: list[dict], path: Path, title: str) -> Path:
    """Grouped bars of accuracy and F1: one group per test set, one bar per experiment."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    experiments = list(dict.fromkeys(r["experiment"] for r in rows))
    test_sets = list(dict.fromkeys(r["test_set"] for r in rows))
    value = {(r["experiment"], r["test_set"], m): r[m] for r in rows for m in METRICS}
    fig, axes = plt.subplots(1, 2, figsize=(2.0 + 1.6 * len(test_sets) * 2, 4.2), sharey=True)
    width = 0.8 / max(1, len(experiments))
    x = np.arange(len(test_sets))
    for ax, metric in zip(axes, ("accuracy", "f1")):
        for i, experiment in enumerate(experiments):
            heights = [value.get((experiment, t, metric), np.nan) for t in test_sets]
            bars = ax.bar(x + (i - (len(experiments) - 1) / 2) * width, heights, width, label=experiment)
            ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
        ax.set_xticks(x, test_sets, rotation=20, ha="right")
        ax.set_title("F1" if metric == "f1" else metric.capitalize())
        ax.set_ylim(0, 1.05)
        ax.grid(axis="y", alpha=0.3)
    axes[1].legend(title="experiment", fontsize=8, loc="upper right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
