"""The cervical classifier example (examples/cervical_classifier): smoke test of the whole study and its parts.

The end-to-end test runs ``study.py`` as a user would, on a tiny ImageFolder of synthetic tiles that
it writes itself, for one short epoch with tiny normalizers; it needs no downloaded data.
"""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
import torchvision

from stain_transforms.testing import synthetic_tissue

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "cervical_classifier"
sys.path.insert(0, str(EXAMPLE))

from classifier import PretrainedWeightsError, augmentation, build_model, classification_metrics
from data import make_splits, read_records
from site_shift import SiteShift
from study import main as study_main


def _tile(seed: int, abnormal: bool, size: int = 48) -> np.ndarray:
    # "Abnormal" tiles are stained darker: the classes differ, so the run is a real (tiny) task.
    return synthetic_tissue(size, seed=seed, stain_scale=1.4 if abnormal else 0.8)


def _image_folder(root: Path, per_class: dict[str, int]) -> Path:
    seed = 0
    for split, count in per_class.items():
        for label in ("normal", "abnormal"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for _ in range(count):
                PIL.Image.fromarray(_tile(seed, label == "abnormal")).save(folder / f"{label}_{seed}.png")
                seed += 1
    return root


@pytest.mark.slow
def test_study_end_to_end(tmp_path):
    data = _image_folder(tmp_path / "data", {"train": 6, "test": 3})
    weights = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    out, results = tmp_path / "run", tmp_path / "results"
    command = [
        sys.executable, str(EXAMPLE / "study.py"), "--data", str(data), "--out", str(out), "--results", str(results),
        "--positive", "abnormal", "--arch", "resnet18", "--pretrained", str(weights), "--size", "32",
        "--epochs", "1", "--batch-size", "4", "--milestones", "1", "--holdout", "0.34",
        "--gan-ngf", "4", "--gan-blocks", "1", "--gan-ndf", "4", "--gan-layers-d", "1", "--gan-crop", "16",
        "--gan-batch", "2", "--gan-epochs", "1", "--gan-epochs-decay", "0", "--gan-steps-per-epoch", "2",
        "--stainnet-steps", "5", "--threads", "1",
    ]
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    with open(results / "table.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    test_sets = ["site A", "site B", "site B + Macenko", "site B + StainGAN", "site B + StainNet"]
    assert [(r["experiment"], r["test_set"]) for r in rows] == [(e, t) for e in ("E1", "E2", "E3") for t in test_sets]
    for row in rows:
        assert row["n_images"] == "6"
        assert all(0.0 <= float(row[m]) <= 1.0 for m in ("recall", "precision", "accuracy", "f1"))
        # 6 test images: accuracy is a whole number of sixths.
        assert abs(float(row["accuracy"]) * 6 - round(float(row["accuracy"]) * 6)) < 1e-3
    table = (results / "table.md").read_text()
    assert "| E1 (original) | site A |" in table and "| E3 (BRH) | site A |" in table
    assert (results / "bar_chart.png").stat().st_size > 1000
    for path in ("E1/best.pt", "normalizers/staingan/model.safetensors", "normalizers/stainnet/model.safetensors",
                 "normalizers/macenko.safetensors", "preview_test_sets.png", "site_shift.json"):
        assert (out / path).is_file(), path
    # The normalizers learned from 2 held-out images per class (site B pool) and 4 training images per class.
    assert len(list((out / "images" / "site_b_pool").iterdir())) == 4
    assert len(list((out / "images" / "site_a_train").iterdir())) == 8


def test_missing_pretrained_weights_is_a_plain_error(tmp_path, capsys):
    data = _image_folder(tmp_path / "data", {"train": 2, "test": 1})
    code = study_main(
        ["--data", str(data), "--out", str(tmp_path / "run"), "--arch", "resnet18", "--pretrained", str(tmp_path / "missing.pth")]
    )
    assert code == 2
    error = capsys.readouterr().err
    assert "no such file" in error and "--pretrained" in error
    assert not (tmp_path / "run" / "site_shift.json").exists()  # stopped before doing any work


def test_pretrained_file_of_another_architecture_is_rejected(tmp_path):
    weights = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    with pytest.raises(PretrainedWeightsError, match="not a resnet50"):
        build_model("resnet50", 2, str(weights))
    model = build_model("resnet18", 3, str(weights))
    assert model.fc.out_features == 3
    assert torch.equal(model.conv1.weight, torch.load(weights)["conv1.weight"])


def test_csv_input_and_stratified_holdout(tmp_path):
    for i in range(10):
        PIL.Image.fromarray(_tile(i, i % 2 == 1, 16)).save(tmp_path / f"img{i}.png")
    lines = ["file,label,split"] + [f"img{i}.png,{'pos' if i % 2 else 'neg'},{'test' if i >= 8 else 'train'}" for i in range(10)]
    (tmp_path / "list.csv").write_text("\n".join(lines) + "\n")
    records = read_records(tmp_path / "list.csv")
    splits = make_splits(records, holdout=0.25, test_fraction=0.3, seed=0)
    assert len(splits.test) == 2 and len(splits.train) + len(splits.validation) == 8
    assert sorted(r.label for r in splits.validation) == ["neg", "pos"]  # one of each class held out
    assert not {r.path for r in splits.validation} & {r.path for r in splits.train}


def test_real_labels_csv(shared_data):
    records = read_records(shared_data / "cervical_lbc_256")
    assert sorted({r.label for r in records}) == ["0", "1"]  # the binary `abnormal` column by default
    splits = make_splits(records, holdout=0.25, test_fraction=0.3, seed=0)
    assert len(splits.test) == 295 and len(splits.train) + len(splits.validation) == 655


def test_site_shift_is_deterministic_and_physical():
    x = torch.stack([torch.from_numpy(synthetic_tissue(64, seed=s)).permute(2, 0, 1) for s in range(2)]) / 255.0
    shift = SiteShift()
    y = shift(x)
    assert torch.equal(y, shift(x)) and torch.isfinite(y).all() and y.shape == x.shape
    # Stained pixels change colour (new stain vectors), not only brightness.
    tissue = x.mean(1) < 0.7
    chroma_in = (x - x.mean(1, keepdim=True)).permute(1, 0, 2, 3)[:, tissue]
    chroma_out = (y - y.mean(1, keepdim=True)).permute(1, 0, 2, 3)[:, tissue]
    assert (chroma_in - chroma_out).abs().mean() > 0.02
    # Glass (white here) takes the scanner's white balance: red >= green > blue.
    glass = x.amin(1) > 0.97
    white = y.permute(1, 0, 2, 3)[:, glass].mean(1)
    assert white[0] >= white[1] > white[2]
    # The caller's batch is untouched.
    assert torch.equal(x, torch.stack([torch.from_numpy(synthetic_tissue(64, seed=s)).permute(2, 0, 1) for s in range(2)]) / 255.0)


def test_augmentations_keep_uint8_and_shape():
    image = torch.from_numpy(synthetic_tissue(32, seed=0)).permute(2, 0, 1)
    assert augmentation("E1") is None
    torch.manual_seed(0)
    for experiment in ("E2", "E3"):
        outputs = [augmentation(experiment, p=1.0)(image) for _ in range(3)]
        assert all(o.dtype == torch.uint8 and o.shape == image.shape for o in outputs)
        assert any(not torch.equal(o, image) for o in outputs)


def test_metrics_against_hand_count():
    labels = np.array([1, 1, 1, 0, 0, 0, 0])
    predictions = np.array([1, 1, 0, 1, 0, 0, 0])
    m = classification_metrics(labels, predictions, 2)  # TP 2, FN 1, FP 1, TN 3
    assert m == pytest.approx({"recall": 2 / 3, "precision": 2 / 3, "accuracy": 5 / 7, "f1": 2 / 3})
    assert classification_metrics(labels, np.zeros(7, int), 2)["precision"] == 0.0
