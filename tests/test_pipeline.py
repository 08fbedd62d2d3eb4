"""The Upscaler end to end on tiny models: sizes, modes, colour fix, NaN retry, bad input."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ctsr_infer
from ctsr_infer.student_file import StudentFile, StudentMeta, save_student
from ctsr_infer.colorfix import color_fix
from ctsr_infer.errors import InvalidInputError, NumericalError
from ctsr_infer.pipeline import target_size
from tiny import prompt_embeds, write_base


@pytest.fixture(scope="module")
def plain_upscaler(tmp_path_factory: pytest.TempPathFactory):
    """A tiny student without attention layers, fast enough for multi-megapixel outputs."""
    folder = tmp_path_factory.mktemp("plain")
    base = write_base(folder / "base", attention=False)
    student = StudentFile(StudentMeta(family="sd-onestep", base={"path": str(base)}), {"prompt_embeds": prompt_embeds()})
    return ctsr_infer.load(save_student(student, folder / "plain.safetensors"), device="cpu", dtype="fp32")


@pytest.mark.slow
@pytest.mark.parametrize("size", [(1, 1), (7, 513), (771, 1023)])
@pytest.mark.parametrize("scale", [1, 2.5, 4])
def test_exact_output_size(plain_upscaler, size: tuple[int, int], scale: float) -> None:
    height, width = size
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    out = plain_upscaler.upscale(image, scale=scale)
    expected = (int(np.floor(height * scale + 0.5)), int(np.floor(width * scale + 0.5)))
    assert out.shape == (*expected, 3) and out.dtype == np.uint8
    assert target_size(7, 513, 2.5) == (18, 1283)


@pytest.mark.parametrize(
    "mode,channels",
    [("RGB", 3), ("RGBA", 4), ("L", 1), ("LA", 2)],
)
def test_modes_come_back_in_kind(upscaler, mode: str, channels: int) -> None:
    array = np.random.default_rng(1).integers(0, 256, (10, 12, channels), dtype=np.uint8)
    image = Image.fromarray(array if channels > 1 else array[:, :, 0], mode)
    out = upscaler.upscale(image, scale=2)
    assert out.mode == mode and out.size == (24, 20)
    as_array = upscaler.upscale(array if channels > 1 else array[:, :, 0], scale=2)
    assert as_array.dtype == np.uint8 and as_array.shape == ((20, 24, channels) if channels > 1 else (20, 24))


def test_16bit_in_16bit_out_and_float_in_float_out(upscaler) -> None:
    wide = (np.random.default_rng(2).integers(0, 65536, (9, 9, 3))).astype(np.uint16)
    out = upscaler.upscale(wide, scale=2)
    assert out.dtype == np.uint16 and out.shape == (18, 18, 3)
    assert len(np.unique(out)) > 256  # genuinely more than 8 bits of levels
    floats = upscaler.upscale(wide.astype(np.float32) / 65535, scale=2)
    assert floats.dtype == np.float32 and 0 <= floats.min() and floats.max() <= 1


def test_alpha_is_reattached_without_dark_fringes(upscaler) -> None:
    """A red square on transparent black: at the square's soft edge the colour stays red."""
    size = 32
    rgba = np.zeros((size, size, 4), dtype=np.uint8)
    rgba[8:24, 8:24] = [230, 20, 20, 255]
    out = np.asarray(upscaler.upscale(Image.fromarray(rgba, "RGBA"), scale=2, color_fix="none")).astype(float)
    edge = (out[:, :, 3] > 20) & (out[:, :, 3] < 235)
    assert edge.sum() > 20
    inside = out[:, :, 3] >= 235
    # an edge pixel is as bright as the interior the network produced, not pulled towards black
    assert out[edge][:, :3].sum(axis=1).mean() > 0.8 * out[inside][:, :3].sum(axis=1).mean()


def test_image_path_and_tensor_path_agree(upscaler) -> None:
    array = np.random.default_rng(3).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    from_image = upscaler.upscale(array, scale=1).astype(np.float32) / 255
    (from_tensor,) = upscaler.upscale_tensor(torch.from_numpy(array).permute(2, 0, 1)[None].float() / 255, scale=1)
    assert np.abs(from_image - from_tensor[0].permute(1, 2, 0).numpy()).max() <= 0.5 / 255 + 1e-6


def test_adain_and_wavelet_colour_fix() -> None:
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, 40, 48, generator=generator) * 0.5
    reference = torch.rand(1, 3, 40, 48, generator=generator) * 0.3 + 0.6
    fixed = color_fix(image, reference, "adain")
    assert torch.allclose(fixed.mean((2, 3)), reference.mean((2, 3)), atol=1e-4)
    assert torch.allclose(fixed.std((2, 3)), reference.std((2, 3)), atol=1e-3)
    # wavelet: low frequencies come from the reference (a flat 0.7), the fine detail from the image
    waved = color_fix(image, reference * 0 + 0.7, "wavelet")
    assert torch.allclose(waved.mean(), torch.tensor(0.7), atol=0.02)
    detail = torch.corrcoef(torch.stack([(waved - waved.mean()).flatten(), (image - image.mean()).flatten()]))[0, 1]
    assert detail > 0.8
    assert torch.equal(color_fix(image, reference, "none"), image)


def test_nan_in_bf16_retries_in_fp32_with_a_warning(student_path: Path, upscaler, caplog: pytest.LogCaptureFixture) -> None:
    up = ctsr_infer.load(student_path, device="cpu", dtype="bf16")
    assert up.placement.dtype == torch.bfloat16

    def nan_in_bf16(module, inputs, output):
        return output * float("nan") if output.dtype == torch.bfloat16 else output

    handle = up.model.unet.conv_out.register_forward_hook(nan_in_bf16)
    image = np.random.default_rng(5).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    try:
        with caplog.at_level(logging.WARNING):
            out = up.upscale(image, scale=1)
    finally:
        handle.remove()
    expected = upscaler.upscale(image, scale=1)  # the same student loaded in fp32
    # the retry computes in fp32 with the loaded weights, which were rounded to bf16
    difference = np.abs(out.astype(int) - expected.astype(int))
    assert difference.max() <= 8 and difference.mean() <= 1.0
    assert "retrying this image in float32" in caplog.text
    assert up.placement.dtype == torch.bfloat16 and next(up.model.unet.parameters()).dtype == torch.bfloat16


def test_nan_that_persists_is_an_error_not_a_black_image(upscaler) -> None:
    handle = upscaler.model.vae.decoder.conv_out.register_forward_hook(lambda m, i, o: o * float("nan"))
    try:
        with pytest.raises(NumericalError, match="NaN"):
            upscaler.upscale(np.zeros((8, 8, 3), dtype=np.uint8), scale=1)
    finally:
        handle.remove()


@pytest.mark.parametrize(
    "kwargs,match",
    [({"scale": 0.5}, "`scale`"), ({"scale": float("inf")}, "`scale`"), ({"color_fix": "magic"}, "`color_fix`"),
     ({"knob_steps": 0}, "`knob_steps`"), ({"encode": "median"}, "`encode`"), ({"seed": "x"}, "`seed`")],
)
def test_bad_options_name_the_argument(upscaler, kwargs: dict, match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        upscaler.upscale(np.zeros((4, 4, 3), dtype=np.uint8), **kwargs)


def test_bad_tensors_are_refused(upscaler) -> None:
    with pytest.raises(InvalidInputError, match="`x`"):
        upscaler.upscale_tensor(torch.zeros(3, 8, 8))
    with pytest.raises(InvalidInputError, match=r"\[0, 1\]"):
        upscaler.upscale_tensor(torch.full((1, 3, 8, 8), 2.0))


def test_sample_mode_is_reproducible_with_a_seed(upscaler) -> None:
    image = np.random.default_rng(4).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    a = upscaler.upscale(image, scale=1, encode="sample", seed=3, color_fix="none")
    b = upscaler.upscale(image, scale=1, encode="sample", seed=3, color_fix="none")
    c = upscaler.upscale(image, scale=1, encode="sample", seed=4, color_fix="none")
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_a_misspelt_option_is_an_error_not_ignored(upscaler) -> None:
    with pytest.raises(InvalidInputError, match="colour_fix"):
        upscaler.upscale(np.zeros((4, 4, 3), dtype=np.uint8), colour_fix="none")
