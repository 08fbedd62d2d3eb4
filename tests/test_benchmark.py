"""`ctsr bench` and the fast paths it measures: results are shaped right and each fast path computes
the same image as the plain path (channels-last exactly, bf16 within the accuracy guard)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import ctsr_infer
from ctsr_infer.cli import app
from ctsr_infer.metrics import psnr


def test_bench_cli_writes_per_stage_results(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["bench", "--model", "lite", "--size", "64", "--dtype", "fp32", "--dtype", "bf16",
                                      "--runs", "1", "--warmup", "0", "--json", str(tmp_path / "b.json")])
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "b.json").read_text())
    assert [r["dtype"] for r in rows] == ["fp32", "bf16"]
    for row in rows:
        assert row["size"] == 64 and row["runs"] == 1 and row["seconds"] > 0 and row["peak_rss_gb"] > 0
        assert set(row["stages"]) >= {"preprocess", "network", "image out"}
        assert sum(row["stages"].values()) == pytest.approx(row["seconds"], rel=0.05)
    # above the guard, and on the [0, 1] scale (a 0-255 mix-up once added 48 dB)
    assert rows[0]["psnr_vs_fp32"] is None and 40 < rows[1]["psnr_vs_fp32"] < 80


@pytest.mark.parametrize("fixture", ["upscaler", "ctsr_upscaler"])
def test_channels_last_gives_the_same_image_sd(fixture: str, request: pytest.FixtureRequest, student_path: Path,
                                               ctsr_student_path: Path) -> None:
    path = student_path if fixture == "upscaler" else ctsr_student_path
    plain = request.getfixturevalue(fixture)
    fast = ctsr_infer.load(str(path), device="cpu", channels_last=True)
    image = np.random.default_rng(0).random((24, 20, 3)).astype(np.float32)
    t = None if fixture == "upscaler" else 0.6
    a, b = plain.upscale(image, t=t), fast.upscale(image, t=t)
    assert np.abs(a - b).max() < 2e-4


def test_channels_last_and_bf16_lite() -> None:
    image = np.random.default_rng(1).random((40, 40, 3)).astype(np.float32)
    plain = ctsr_infer.load("ctsr-lite").upscale(image, t=0.3)
    assert np.abs(ctsr_infer.load("ctsr-lite", channels_last=True).upscale(image, t=0.3) - plain).max() < 1e-4
    bf16 = ctsr_infer.load("ctsr-lite", dtype="bf16", channels_last=True).upscale(image, t=0.3)
    assert psnr(bf16.astype(np.float64), plain.astype(np.float64)) > 40


def test_resshift_runs_in_bf16_within_the_accuracy_guard(tmp_path: Path) -> None:
    # GroupNorm32 computes in float32 with bf16 parameters (it used to fail with "mixed dtype")
    from ctsr_infer.families.resshift.convert import convert_resshift
    from ctsr_infer.student_file import save_student
    from tests.tiny import tiny_swin_config, tiny_vq_config, write_resshift_pair

    unet, vq = write_resshift_pair(tmp_path)
    path = save_student(convert_resshift(unet, vq, unet=tiny_swin_config().to_config(), vq=tiny_vq_config().to_config()),
                        tmp_path / "s.safetensors")
    image = np.random.default_rng(2).random((32, 32, 3)).astype(np.float32)
    plain = ctsr_infer.load(str(path)).upscale(image)
    fast = ctsr_infer.load(str(path), dtype="bf16", channels_last=True).upscale(image)
    assert psnr(fast.astype(np.float64), plain.astype(np.float64)) > 40  # measured 46.7 dB on the example photo


@pytest.mark.skipif(__import__("shutil").which("g++") is None, reason="torch.compile on the CPU needs a C++ compiler")
def test_compiled_network_gives_the_same_image() -> None:
    image = np.random.default_rng(4).random((20, 24, 3)).astype(np.float32)
    plain = ctsr_infer.load("ctsr-lite", dtype="fp32").upscale(image, t=0.4)
    compiled = ctsr_infer.load("ctsr-lite", dtype="fp32", compile=True)
    assert compiled.model.net._compiled_call_impl is not None  # nn.Module.compile took effect
    out = compiled.upscale(image, t=0.4)
    assert np.abs(out - plain).max() < 1e-4


def test_bench_reports_threads_and_refuses_a_bad_count(tmp_path: Path) -> None:
    bad = CliRunner().invoke(app, ["bench", "--model", "lite", "--size", "64", "--threads", "0"])
    assert bad.exit_code == 2 and "--threads" in bad.output
    good = CliRunner().invoke(app, ["bench", "--model", "lite", "--size", "64", "--threads", "1", "--runs", "1", "--warmup", "0",
                                    "--json", str(tmp_path / "b.json")])
    assert good.exit_code == 0, good.output
    [row] = json.loads((tmp_path / "b.json").read_text())
    assert row["threads"] == 1 and row["compiled"] is False


def test_saved_outputs_load_on_one_scale(tmp_path: Path) -> None:
    from ctsr_infer.benchmark import load_output

    values = np.random.default_rng(1).random((4, 5, 3))
    np.save(tmp_path / "f.npy", values.astype(np.float32))
    np.save(tmp_path / "u.npy", (values * 255).round().astype(np.uint8))
    np.save(tmp_path / "w.npy", (values * 65535).round().astype(np.uint16))
    for name, tolerance in (("f", 1e-6), ("u", 0.5 / 255 + 1e-9), ("w", 0.5 / 65535 + 1e-9)):
        assert np.abs(load_output(tmp_path / f"{name}.npy") - values).max() <= tolerance
