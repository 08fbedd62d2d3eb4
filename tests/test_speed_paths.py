"""`dtype="auto"` on the CPU: the per-family fast path (each family's cpu_fast_path) is what load() picks on a CPU
with native bf16, and every entry passes the accuracy guard (output PSNR >= 40 dB against fp32, with
no colour fix to hide low-frequency errors) on the tiny models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import ctsr_infer
import ctsr_infer.device as device
from ctsr_infer.families import FAMILIES
from ctsr_infer.image import read_image
from ctsr_infer.metrics import psnr

PHOTO = Path(__file__).parent.parent / "examples" / "coffee_lowres.png"


@pytest.fixture
def fast_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CPU with native bf16 and the fast path allowed (the conftest turns it off)."""
    monkeypatch.setenv("CTSR_CPU_FAST", "1")
    monkeypatch.setattr(device, "native_bf16_cpu", lambda: True)


def _crop(side: int) -> np.ndarray:
    pixels = np.asarray(read_image(PHOTO).pixels, dtype=np.float32)[..., :3]
    return np.ascontiguousarray(pixels[:side, :side])


def _guard(path: str | Path, family: str, image: np.ndarray, **options) -> float:
    exact = ctsr_infer.load(str(path), dtype="fp32").upscale(image, **options)
    auto = ctsr_infer.load(str(path))  # dtype auto
    names = {torch.float32: "fp32", torch.bfloat16: "bf16"}
    placement = auto.model.placement
    chosen = (names[placement.dtype], names[placement.vae_dtype], names[placement.decoder_dtype], placement.channels_last)
    path_ = FAMILIES[family].cpu_fast_path
    assert path_ is not None and chosen == (path_.network, path_.encoder, path_.decoder, path_.channels_last)
    fast = auto.upscale(image, **options)
    assert fast.shape == exact.shape
    return psnr(np.asarray(fast, dtype=np.float64), np.asarray(exact, dtype=np.float64))


def test_lite_auto_path_passes_the_guard(fast_cpu: None) -> None:
    assert _guard("ctsr-lite", "lite", _crop(96), t=0.3) >= 40


def test_resshift_auto_path_passes_the_guard(fast_cpu: None, tmp_path: Path) -> None:
    from ctsr_infer.families.resshift.convert import convert_resshift
    from ctsr_infer.student_file import save_student
    from tests.tiny import tiny_swin_config, tiny_vq_config, write_resshift_pair

    unet, vq = write_resshift_pair(tmp_path)
    path = save_student(convert_resshift(unet, vq, unet=tiny_swin_config().to_config(), vq=tiny_vq_config().to_config()),
                        tmp_path / "s.safetensors")
    assert _guard(path, "resshift-onestep", _crop(32)) >= 40


def test_sd_auto_path_passes_the_guard(fast_cpu: None, student_path: Path) -> None:
    assert _guard(student_path, "sd-onestep", _crop(32), color_fix="none") >= 40


def test_sd_with_a_bf16_unet_and_encoder_would_fail_the_guard(student_path: Path) -> None:
    """Why the SD fast path keeps the SD UNet and VAE encoder in fp32: the x0 formula amplifies their bf16 error."""
    image = _crop(32)
    exact = ctsr_infer.load(str(student_path), dtype="fp32").upscale(image, color_fix="none")
    bf16 = ctsr_infer.load(str(student_path), dtype="bf16").upscale(image, color_fix="none")
    assert psnr(np.asarray(bf16, dtype=np.float64), np.asarray(exact, dtype=np.float64)) < 40


def test_auto_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    fp32 = torch.float32
    monkeypatch.setattr(device, "native_bf16_cpu", lambda: True)
    monkeypatch.setenv("CTSR_CPU_FAST", "1")
    sd = FAMILIES["sd-onestep"].cpu_fast_path
    assert sd is not None
    chosen = device.resolve("cpu", "auto", fast_path=sd)
    assert (chosen.dtype, chosen.vae_dtype, chosen.decoder_dtype, chosen.channels_last) == (fp32, fp32, torch.bfloat16, sd.channels_last)
    assert device.resolve("cpu", "auto", fast_path=sd, channels_last=False).channels_last is False
    assert device.resolve("cpu", "fp32", fast_path=sd).vae_dtype == fp32  # an explicit dtype wins
    assert device.resolve("cpu", "auto").dtype == fp32  # no fast path: fp32
    monkeypatch.setenv("CTSR_CPU_FAST", "0")
    assert device.resolve("cpu", "auto", fast_path=FAMILIES["lite"].cpu_fast_path).dtype == fp32
    monkeypatch.setenv("CTSR_CPU_FAST", "1")
    monkeypatch.setattr(device, "native_bf16_cpu", lambda: False)  # emulated bf16 is slower than fp32
    assert device.resolve("cpu", "auto", fast_path=FAMILIES["lite"].cpu_fast_path).dtype == fp32
