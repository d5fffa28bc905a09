"""Training curves (``plot_curves``) and resuming ``distill`` after an interruption: tiny CPU runs."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from stain_transforms.cli import main
from stain_transforms.testing import synthetic_tissue
from stain_transforms.training.curves import plot_curves
from stain_transforms.training.distill import CHECKPOINT, DistillConfig, PairSet, distill

# The module (the package's ``distill`` attribute is the function).
distill_module = importlib.import_module("stain_transforms.training.distill")

# Small enough for a shared CPU, but the fast recipe samples colour pairs and the paper recipe crops
# and shuffles, so that an exact resume needs the random-number generators restored.
RECIPES = {
    "fast": {"steps": 40, "val_every_steps": 10, "pixel_batch": 256},
    "paper": {"recipe": "paper", "epochs": 6, "val_every_epochs": 2, "batch_size": 2, "crop_size": 16, "lr": 0.5},
}


def _pairs() -> tuple[PairSet, PairSet]:
    sources = [synthetic_tissue(32, seed=i) for i in range(4)]
    teachers = [np.clip(s.astype(int) * 3 // 4 + 40, 0, 255).astype(np.uint8) for s in sources]
    pairs = PairSet(["a", "b", "c", "d"], sources, teachers)
    return pairs.subset(["a", "b", "c"]), pairs.subset(["d"])


def _without_seconds(history: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in entry.items() if k != "seconds"} for entry in history]


# -- plot_curves ------------------------------------------------------------------------------


def test_plot_curves_writes_a_png_with_a_panel_per_present_kind(tmp_path):
    full = [{"epoch": e, "G": 1 / e, "cyc": 2 / e, "val_psnr": 20 + e, "val_ssim_target": 0.5, "val_ssim_source": 0.9}
            for e in (1, 2, 3)]
    path = plot_curves(full, tmp_path / "sub" / "curves.png", "epoch", "StainGAN", loss_keys=("G", "cyc", "D_t"))
    with PIL.Image.open(path) as image:
        assert image.format == "PNG" and path.stat().st_size > 0
        three_panels = image.size[0]
    # No SSIM in the history: its panel is left out; PSNR only at some entries is fine.
    partial = [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.5, "val_psnr": 25.0}]
    with PIL.Image.open(plot_curves(partial, tmp_path / "partial.png", "step", "distil")) as image:
        assert image.size[0] == pytest.approx(three_panels * 2 / 3, abs=2)


def test_plot_curves_rejects_histories_with_nothing_to_draw(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        plot_curves([], tmp_path / "c.png", "step", "t")
    with pytest.raises(ValueError, match="'epoch' is missing"):
        plot_curves([{"step": 1, "loss": 1.0}], tmp_path / "c.png", "epoch", "t")
    with pytest.raises(ValueError, match="none of the keys"):
        plot_curves([{"step": 1, "lr": 0.1}], tmp_path / "c.png", "step", "t")
    assert not (tmp_path / "c.png").exists()


# -- distill: SSIM at validation, checkpoints and resume -----------------------------------------


@pytest.mark.parametrize("recipe", ["fast", "paper"])
def test_distill_resumed_after_an_interruption_equals_an_uninterrupted_run(tmp_path, monkeypatch, recipe):
    train, val = _pairs()
    config = DistillConfig(progress=False, **RECIPES[recipe])
    whole = distill(train, val, config)

    # Interrupt (as Ctrl-C would) just after the second checkpoint.
    save = distill_module.atomic_save
    saves = []

    def save_then_interrupt(obj, path):
        save(obj, path)
        saves.append(obj["at"])
        if len(saves) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(distill_module, "atomic_save", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        distill(train, val, config, out_dir=tmp_path / "run")
    monkeypatch.setattr(distill_module, "atomic_save", save)
    checkpoint = torch.load(tmp_path / "run" / CHECKPOINT, weights_only=False)
    assert not (tmp_path / "run" / "model.safetensors").exists()

    resumed = distill(train, val, config, out_dir=tmp_path / "run", resume=True)
    assert resumed.history[:2] == checkpoint["history"]  # the earlier validations, their seconds included
    assert _without_seconds(resumed.history) == _without_seconds(whole.history)
    assert {"val_ssim_target", "val_ssim_source"} <= set(resumed.history[-1])
    assert (resumed.best_psnr, resumed.best_at) == (whole.best_psnr, whole.best_at)
    for name, value in whole.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], value)
    seconds = [entry["seconds"] for entry in resumed.history]
    assert seconds == sorted(seconds) and resumed.seconds >= seconds[-1]
    assert resumed.curves == tmp_path / "run" / "curves.png" and resumed.curves.is_file()
    assert json.loads((tmp_path / "run" / "distill_history.json").read_text())["curves"] == str(resumed.curves)


def test_distill_resume_refuses_another_architecture_and_needs_out_dir(tmp_path):
    train, val = _pairs()
    distill(train, val, DistillConfig(n_channel=8, steps=4, val_every_steps=2, progress=False), out_dir=tmp_path)
    with pytest.raises(ValueError, match="n_channel: 8 != 16"):
        distill(train, val, DistillConfig(n_channel=16, steps=4, progress=False), out_dir=tmp_path, resume=True)
    with pytest.raises(ValueError, match="recipe: 'fast' != 'paper'"):
        distill(train, val, DistillConfig(recipe="paper", n_channel=8, progress=False), out_dir=tmp_path, resume=True)
    with pytest.raises(ValueError, match="out_dir"):
        distill(train, val, DistillConfig(progress=False), resume=True)


def test_distill_val_ssim_off_records_psnr_only():
    train, val = _pairs()
    result = distill(train, val, DistillConfig(steps=4, val_every_steps=2, val_ssim=False, progress=False))
    assert [sorted(entry) for entry in result.history] == [["loss", "seconds", "step", "val_psnr"]] * 2


def test_cli_distill_resume_continues_a_run_stopped_by_max_seconds(tmp_path, capsys):
    source = tmp_path / "source"
    source.mkdir()
    for i in range(3):
        PIL.Image.fromarray(synthetic_tissue(32, seed=i)).save(source / f"{i}.png")
    out = tmp_path / "net"
    argv = ["distill", "--source", str(source), "--teacher-outputs", str(source), "--out", str(out),
            "--steps", "30", "--pixel-batch", "256", "--threads", "1", "--no-progress"]
    assert main([*argv, "--max-seconds", "0"]) == 0
    printed = capsys.readouterr().out
    assert f"validation curves: {out / 'curves.png'}" in printed and (out / "curves.png").is_file()
    assert (out / CHECKPOINT).is_file()
    assert main(argv) == 2  # a model and a checkpoint are there: --resume or --overwrite
    assert "--resume" in capsys.readouterr().err
    assert main([*argv, "--resume", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert [entry["step"] for entry in summary["history"]] == [1, 30]  # stopped at step 1, then finished
    assert summary["curves"] == str(out / "curves.png")
    assert Path(summary["out_dir"], "model.safetensors").is_file()


def test_trainers_warn_and_finish_without_matplotlib(tmp_path, monkeypatch):
    from stain_transforms.training import curves
    from stain_transforms.training.unpaired import UnpairedStainNetConfig, train_stainnet_unpaired

    def no_matplotlib(*args, **kwargs):
        raise ImportError("plotting training curves needs matplotlib")

    monkeypatch.setattr(curves, "plot_curves", no_matplotlib)
    sources = [synthetic_tissue(32, seed=i) for i in range(2)]
    with pytest.warns(UserWarning, match="no curves.png"):
        result = train_stainnet_unpaired(sources, [255 - s for s in sources],
                                         UnpairedStainNetConfig(steps=20, val_every=10, progress=False), out_dir=tmp_path / "run")
    assert (tmp_path / "run" / "model.safetensors").is_file() and not (tmp_path / "run" / "curves.png").exists()
    train, val = _pairs()
    with pytest.warns(UserWarning, match="no curves.png"):
        distilled = distill(train, val, DistillConfig(**RECIPES["fast"], progress=False), out_dir=tmp_path / "net")
    assert distilled.curves is None and result.history
