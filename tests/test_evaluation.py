"""`ctsr eval`: the written protocol, checked against metrics computed another way."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import ctsr_infer
from ctsr_infer.cli import app
from ctsr_infer.evaluation import degrade_for_eval, evaluate, evaluate_folders


def _ground_truth(folder: Path, count: int = 2) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        y, x = np.mgrid[0:66, 0:70].astype(np.float32)  # not multiples of 4: cropped by the protocol
        image = np.stack([0.5 + 0.4 * np.sin((x + index * 7) / 6), 0.5 + 0.4 * np.cos(y / 5), (x * y) / (x * y).max()], axis=-1)
        Image.fromarray((image * 255 + 0.5).astype(np.uint8)).save(folder / f"img{index}.png")
    return folder


def test_scores_follow_the_protocol(tmp_path: Path) -> None:
    skimage = pytest.importorskip("skimage.metrics")
    data = _ground_truth(tmp_path / "gt")
    up = ctsr_infer.load("ctsr-lite", device="cpu")
    report = evaluate(up, data, ts=[0.0, 1.0])
    assert len(report.scores) == 2 * (2 + 2)  # per image: bicubic, lanczos, and each t
    gt = np.asarray(Image.open(data / "img0.png"), dtype=np.float64)[:64, :68] / 255.0
    low = degrade_for_eval(gt.astype(np.float32), "clean", 4, seed=0)
    bicubic = np.asarray(Image.fromarray((low * 255 + 0.5).astype(np.uint8)).resize((68, 64), Image.Resampling.BICUBIC),
                         dtype=np.float64) / 255.0
    expected = skimage.peak_signal_noise_ratio(gt[4:-4, 4:-4], bicubic[4:-4, 4:-4], data_range=1.0)
    score = next(s for s in report.scores if s.image == "img0.png" and s.method == "bicubic")
    assert abs(score.psnr_rgb - expected) < 1e-6
    out = np.round(np.clip(np.asarray(up.upscale(low, t=1.0, scale=4), dtype=np.float64), 0, 1) * 255) / 255
    model_score = next(s for s in report.scores if s.image == "img0.png" and s.t == 1.0)
    assert abs(model_score.psnr_rgb - skimage.peak_signal_noise_ratio(gt[4:-4, 4:-4], out[4:-4, 4:-4], data_range=1.0)) < 1e-6
    means = {(r["method"], r["t"]): r for r in report.means()}
    assert means[("ctsr-lite", 1.0)]["images"] == 2
    assert abs(means[("bicubic", None)]["psnr_rgb"] - np.mean([s.psnr_rgb for s in report.scores if s.method == "bicubic"])) < 1e-9
    assert report.protocol["border_crop"] == 4 and "LPIPS" in report.notes[0]


def test_degradations_are_seeded() -> None:
    gt = np.random.default_rng(0).random((96, 96, 3)).astype(np.float32)
    for kind in ("clean", "mild", "realesrgan"):
        a, b = degrade_for_eval(gt, kind, 4, seed=5), degrade_for_eval(gt, kind, 4, seed=5)
        assert a.shape == (24, 24, 3) and np.array_equal(a, b) and np.array_equal(a, np.round(a * 255) / 255)
    assert not np.array_equal(degrade_for_eval(gt, "mild", 4, seed=5), degrade_for_eval(gt, "mild", 4, seed=6))
    with pytest.raises(ctsr_infer.InvalidInputError, match="--degrade"):
        degrade_for_eval(gt, "blur", 4, seed=0)


def test_outputs_made_elsewhere(tmp_path: Path) -> None:
    truth = _ground_truth(tmp_path / "gt")
    predictions = tmp_path / "pred"
    predictions.mkdir()
    for path in truth.iterdir():
        pixels = np.asarray(Image.open(path), dtype=np.int16)[:64, :68]
        Image.fromarray(np.clip(pixels + 2, 0, 255).astype(np.uint8)).save(predictions / f"{path.stem}.png")
    report = evaluate_folders(predictions, truth, scale=4)
    for score in report.scores:  # +2 levels everywhere (none clipped here): PSNR = 20 log10(255 / 2)
        assert abs(score.psnr_rgb - 20 * np.log10(255 / 2)) < 0.05
    (predictions / "img1.png").unlink()
    with pytest.raises(ctsr_infer.InvalidInputError, match="img1"):
        evaluate_folders(predictions, truth, scale=4)


def test_the_crop_grid_shows_each_method_at_full_resolution(tmp_path: Path) -> None:
    from ctsr_infer.evaluation import crop_grid

    up = ctsr_infer.load("ctsr-lite", device="cpu")
    report = evaluate(up, _ground_truth(tmp_path / "gt"), ts=[0.0, 1.0], samples=1)
    assert len(report.samples) == 1
    name, outputs = report.samples[0]
    assert name == "img0.png" and list(outputs) == ["bicubic", "lanczos", "ctsr-lite t=0", "ctsr-lite t=1", "ground truth"]
    assert all(a.shape == (64, 68, 3) and a.dtype == np.uint8 for a in outputs.values())
    path = crop_grid(report.samples, tmp_path / "grid.png", crop=32, zoom=2, column=64)
    with Image.open(path) as grid:
        sheet = np.asarray(grid.convert("RGB"))
    # the zoomed row holds each method's 32x32 window enlarged 2x: the ground truth's is found in the sheet
    gt_zoom = np.kron(outputs["ground truth"], np.ones((2, 2, 1), np.uint8))
    found = False
    for top in range(sheet.shape[0] - 64):
        for left in range(sheet.shape[1] - 64):
            window = sheet[top:top + 64, left:left + 64]
            if window[0, 0, 0] == window[1, 1, 0] and any(
                    np.array_equal(window, gt_zoom[y:y + 64, x:x + 64]) for y in range(0, 2 * 64 - 64 + 1, 2) for x in range(0, 2 * 68 - 64 + 1, 2)
                    if gt_zoom[y, x, 0] == window[0, 0, 0]):
                found = True
                break
        if found:
            break
    assert found


def test_cli_writes_the_report_and_the_knob_curve(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    data = _ground_truth(tmp_path / "gt", count=1)
    result = CliRunner().invoke(app, ["eval", "--model", "ctsr-lite", "--data", str(data), "--t", "0,0.5,1", "--json",
                                      str(tmp_path / "r.json"), "--plot", str(tmp_path / "curve.png"), "--grid", str(tmp_path / "grid.png")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert {row["method"] for row in report["means"]} == {"bicubic", "lanczos", "ctsr-lite"} and len(report["per_image"]) == 5
    with Image.open(tmp_path / "curve.png") as plot:
        assert plot.format == "PNG" and plot.size[0] > 100
    with Image.open(tmp_path / "grid.png") as grid:  # 6 columns: bicubic, lanczos, 3 t values, ground truth
        assert grid.format == "PNG" and grid.size[0] >= 6 * 192
    both = CliRunner().invoke(app, ["eval", str(tmp_path), str(data), "--model", "ctsr-lite"])
    assert both.exit_code == 2
