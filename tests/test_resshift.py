"""The ResShift family: schedule and samplers against the equations, the public checkpoint layouts,
and a converted tiny student end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from ctsr_infer import load
from ctsr_infer.families.resshift.convert import convert_resshift
from ctsr_infer.student_file import save_student
from ctsr_infer.cli import app
from ctsr_infer.errors import IncompatibleWeightsError, InvalidInputError
from ctsr_infer.families.resshift.model import teacher
from ctsr_infer.families.resshift.shift_diffusion import ShiftSchedule
from ctsr_infer.families.resshift.swin_unet import SwinUNet, load_public_state, resshift_window_mask
from ctsr_infer.families.resshift.vq_autoencoder import build_vq, load_ldm_state, quantize_nearest
from ctsr_infer.metrics import psnr
from tests.tiny import public_swin_state, public_vq_state, randomised, tiny_swin_config, tiny_vq_config, write_resshift_pair

S = ShiftSchedule()


def _rand(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# -- schedule --------------------------------------------------------------------------------------

def test_schedule_constants_match_resshift_v1() -> None:
    # seeds-digest §1: sqrt(eta) of resshift_realsrx4_s15_v1, index 0..14
    table = [0.02000, 0.11717, 0.17630, 0.23363, 0.29157, 0.35101, 0.41236, 0.47586,
             0.54167, 0.60991, 0.68066, 0.75399, 0.82995, 0.90861, 0.99000]
    assert torch.allclose(S.sqrt_etas, torch.tensor(table, dtype=torch.float64), atol=6e-6)
    v3 = ShiftSchedule(steps=4, min_noise_level=0.2)
    assert math.isclose(float(v3.sqrt_etas[0]), 0.1) and math.isclose(float(v3.sqrt_etas[-1]), 0.99)


def test_forward_posterior_and_ddim_follow_the_equations() -> None:
    z0, zy, eps = _rand(2, 3, 8, 8, seed=0), _rand(2, 3, 8, 8, seed=1), _rand(2, 3, 8, 8, seed=2)
    etas = [float(v) for v in S.etas]
    for t in (0, 5, 14):
        eta, prev = etas[t], etas[t - 1] if t else 0.0
        zt = S.q_sample(z0, zy, t, eps)
        assert torch.allclose(zt, z0 + eta * (zy - z0) + 2.0 * math.sqrt(eta) * eps, atol=1e-6)
        mean, var = S.posterior(z0, zt, t)
        assert torch.allclose(mean, prev / eta * zt + (eta - prev) / eta * z0, atol=1e-6)
        assert math.isclose(float(var), 4.0 * prev / eta * (eta - prev), rel_tol=1e-6, abs_tol=1e-12)
        # the deterministic sampler with the true z0 moves q_sample(t, eps) to q_sample(t - 1, eps) exactly
        if t:
            k, m, j = S.ddim_coefficients(t)
            assert math.isclose(m, math.sqrt(prev / eta)) and math.isclose(j, prev - math.sqrt(prev * eta))
            assert torch.allclose(k * z0 + m * zt + j * zy, S.q_sample(z0, zy, t - 1, eps), atol=1e-5)
        # round trips in float64 (1 - eta_14 = 0.02 amplifies float32 rounding 50 times)
        z0d, zyd, ztd = z0.double(), zy.double(), S.q_sample(z0.double(), zy.double(), t, eps.double())
        assert torch.allclose(S.x0_from_eps(ztd, zyd, S.eps_from_x0(ztd, zyd, z0d, t), t), z0d, atol=1e-10)
        assert torch.allclose(S.eps_from_x0(ztd, zyd, z0d, t), eps.double(), atol=1e-10)
    assert torch.allclose(S.scale_input(zt, 14), zt / math.sqrt(4.0 * etas[14] + 1), atol=1e-6)


def test_posterior_keeps_the_forward_marginals() -> None:
    # z_t ~ q(z_t | z0), then z_{t-1} ~ q(z_{t-1} | z_t, z0): z_{t-1} must follow q(z_{t-1} | z0)
    t, n = 9, 200_000
    z0, zy = torch.full((n,), 0.3), torch.full((n,), -0.5)
    zt = S.q_sample(z0, zy, t, _rand(n, seed=3))
    mean, var = S.posterior(z0, zt, t)
    prev = mean + var.sqrt() * _rand(n, seed=4)
    eta_prev = float(S.etas[t - 1])
    assert abs(prev.mean().item() - (0.3 + eta_prev * (-0.8))) < 0.01
    assert abs(prev.var().item() - 4.0 * eta_prev) < 0.02 * 4.0 * eta_prev


@pytest.mark.parametrize("sampler", ["posterior", "ddim", "onestep"])
def test_oracle_predictor_recovers_z0(sampler: str) -> None:
    z0, zy = _rand(1, 3, 8, 8, seed=5), _rand(1, 3, 8, 8, seed=6)
    calls: list[int] = []

    def oracle(z_in: torch.Tensor, t: int) -> torch.Tensor:
        calls.append(t)
        return z0

    out = S.sample(oracle, zy, sampler=sampler, noise=_rand(1, 3, 8, 8, seed=7), generator=torch.Generator().manual_seed(0))  # type: ignore[arg-type]
    assert torch.equal(out, z0)
    assert calls == ([14] if sampler == "onestep" else list(range(14, -1, -1)))


def test_onestep_input_is_the_normalised_prior_sample() -> None:
    zy, noise = _rand(1, 3, 4, 4, seed=8), _rand(1, 3, 4, 4, seed=9)
    seen = []
    S.sample(lambda z, t: seen.append(z) or z, zy, sampler="onestep", noise=noise)
    expected = (zy + 2.0 * 0.99 * noise) / math.sqrt(4.0 * 0.99**2 + 1)
    assert torch.allclose(seen[0], expected, atol=1e-6)


# -- networks in the public layouts ----------------------------------------------------------------

def _mask_by_procedure(height: int, width: int, window: int, shift: int) -> torch.Tensor:
    """ResShift's mask procedure spelled out: label the rows of a (1, 1, H, W) map with the slices
    (only the last row-slice applies along the size-1 axis, so the row labels come from the column
    slices), cut windows, order each window's labels column-major, compare all pairs."""
    labels = torch.zeros(height, width)
    labels[: height - window] = 6
    labels[height - window : height - shift] = 7
    labels[height - shift :] = 8
    masks = []
    for wi in range(height // window):
        for wj in range(width // window):
            block = labels[wi * window : (wi + 1) * window, wj * window : (wj + 1) * window]
            flat = block.T.reshape(-1)  # column-major: token p <- row p % window
            masks.append(torch.where(flat[None] != flat[:, None], -100.0, 0.0))
    return torch.stack(masks)


@pytest.mark.parametrize("size,window,shift", [((16, 16), 4, 2), ((24, 32), 8, 4), ((8, 8), 8, 4)])
def test_window_mask_is_resshifts(size: tuple[int, int], window: int, shift: int) -> None:
    mask = resshift_window_mask(*size, window, shift)
    assert torch.equal(mask, _mask_by_procedure(*size, window, shift))
    # only the bottom row of windows is masked, and a standard Swin mask would differ
    per_row = mask.reshape(size[0] // window, -1).abs().sum(dim=1)
    assert per_row[:-1].sum() == 0 and per_row[-1] > 0


def test_swin_unet_public_state_loads_strictly_and_names_a_renamed_key() -> None:
    source = randomised(SwinUNet(tiny_swin_config()), 11)
    state = {"module." + k: v for k, v in public_swin_state(source).items()}
    target = SwinUNet(tiny_swin_config())
    load_public_state(target, {"state_dict": state}, source="test")
    x, lq = _rand(1, 3, 32, 48, seed=12), _rand(1, 3, 32, 48, seed=13)
    with torch.inference_mode():
        assert torch.equal(target(x, torch.tensor([3]), lq), source(x, torch.tensor([3]), lq))
    renamed = dict(state)
    renamed["module.input_blocks.1.0.in_layers.2.weightX"] = renamed.pop("module.input_blocks.1.0.in_layers.2.weight")
    with pytest.raises(IncompatibleWeightsError, match=r"input_blocks\.1\.0\.in_layers\.2\.weight"):
        load_public_state(SwinUNet(tiny_swin_config()), renamed, source="test")
    missing_buffer = {k: v for k, v in state.items() if not k.endswith("attn_mask")}
    with pytest.raises(IncompatibleWeightsError, match="attn_mask"):
        load_public_state(SwinUNet(tiny_swin_config()), missing_buffer, source="test")


def test_full_size_swin_unet_has_the_public_parameter_count() -> None:
    net = SwinUNet()
    assert sum(p.numel() for p in net.parameters()) == 118_593_583
    assert len(public_swin_state(net)) == 564


def test_vq_public_state_loads_and_names_a_renamed_key() -> None:
    config = tiny_vq_config()
    source = randomised(build_vq(config), 14)
    state = public_vq_state(source, config)
    target = build_vq(config)
    load_ldm_state(target, state, config, source="test")
    x = _rand(1, 3, 32, 32, seed=15).clamp(-1, 1)
    with torch.inference_mode():
        assert torch.allclose(target.encode(x).latents, source.encode(x).latents, atol=1e-6)
    renamed = dict(state)
    renamed["decoder.up.0.block.1.conv9.weight"] = renamed.pop("decoder.up.0.block.1.conv2.weight")
    with pytest.raises(IncompatibleWeightsError, match=r"decoder\.up\.0\.block\.1\.conv9\.weight"):
        load_ldm_state(build_vq(config), renamed, config, source="test")
    dropped = {k: v for k, v in state.items() if k != "encoder.mid.attn_1.q.weight"}
    with pytest.raises(IncompatibleWeightsError, match=r"encoder\.mid\.attn_1\.q\.weight"):
        load_ldm_state(build_vq(config), dropped, config, source="test")


def test_quantize_nearest_is_the_brute_force_nearest_code() -> None:
    z, codes = _rand(2, 3, 9, 7, seed=16), _rand(50, 3, seed=17)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 3)
    expected = codes[torch.cdist(flat.double(), codes.double()).argmin(dim=1)].reshape(2, 9, 7, 3).permute(0, 3, 1, 2)
    assert torch.equal(quantize_nearest(z, codes, chunk=17), expected)


# -- conversion and the runtime ----------------------------------------------------------------------

NET_CONFIG = {"unet": tiny_swin_config().to_config(), "vq": tiny_vq_config().to_config()}


@pytest.fixture(scope="module")
def resshift_student(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("resshift")
    unet_path, vq_path = write_resshift_pair(folder)
    (folder / "net.json").write_text(json.dumps(NET_CONFIG))
    target = folder / "tiny-sinsr.safetensors"
    result = CliRunner().invoke(app, ["models", "convert", str(unet_path), str(target), "--vq", str(vq_path),
                                      "--net-config", str(folder / "net.json"), "--licence", "test"])
    assert result.exit_code == 0, result.output
    return target


def test_cli_upscale_runs_a_converted_resshift_student(resshift_student: Path, tmp_path: Path) -> None:
    image = np.asarray(Image.open(Path(__file__).parent.parent / "examples" / "coffee_lowres.png").convert("RGB"))[:40, :56]
    Image.fromarray(image).save(tmp_path / "in.png")
    result = CliRunner().invoke(app, ["upscale", str(tmp_path / "in.png"), "--model", str(resshift_student), "-o", str(tmp_path / "out.png")])
    assert result.exit_code == 0, result.output
    out = np.asarray(Image.open(tmp_path / "out.png"))
    assert out.shape == (160, 224, 3)
    assert out.std() > 1  # not a flat image


def test_onestep_is_seeded(resshift_student: Path) -> None:
    up = load(str(resshift_student))
    image = np.random.default_rng(0).random((16, 16, 3)).astype(np.float32)
    a, b = up.upscale(image, seed=1), up.upscale(image, seed=1)
    c = up.upscale(image, seed=2)
    assert a.shape == (64, 64, 3) and np.array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3
    with pytest.raises(InvalidInputError, match="multiple of 16"):
        up.upscale(image, tile=24)


def test_tiled_network_is_close_to_untiled(resshift_student: Path) -> None:
    # latent tiles of 32 with overlap 16 on a 64 x 80 latent against the untiled network; the Swin-UNet's
    # receptive field is the whole tile, so tiles differ near their borders (measured 34.8 dB; without
    # overlap, ResShift-style butt joints, 32.1 dB)
    up = load(str(resshift_student))
    image = np.asarray(Image.open(Path(__file__).parent.parent / "examples" / "coffee_lowres.png").convert("RGB"))[:64, :80]
    whole = up.upscale(image, tiling="off").astype(np.float64) / 255
    tiled = up.upscale(image, tile=32, tile_overlap=16).astype(np.float64) / 255
    assert whole.shape == tiled.shape == (256, 320, 3)
    assert psnr(tiled, whole) > 33.0


def test_teacher_runs_the_multistep_samplers(resshift_student: Path) -> None:
    up = load(str(resshift_student))
    run = teacher(up.model)
    y = _rand(1, 3, 16, 16, seed=18).clamp(-1, 1)
    ddim_a, ddim_b = run(y, sampler="ddim", seed=3), run(y, sampler="ddim", seed=3)
    posterior = run(y, sampler="posterior", seed=3)
    assert ddim_a.shape == posterior.shape == (1, 3, 64, 64)
    assert torch.equal(ddim_a, ddim_b)
    assert ddim_a.abs().max() <= 1.0 and (ddim_a - posterior).abs().max() > 1e-3


def test_converter_refuses_a_mismatched_checkpoint(tmp_path: Path) -> None:
    unet_path, vq_path = write_resshift_pair(tmp_path)
    with pytest.raises(IncompatibleWeightsError, match="does not fit the Swin-UNet"):
        convert_resshift(unet_path, vq_path, vq=tiny_vq_config().to_config())  # default (full-size) UNet config
    student = convert_resshift(unet_path, vq_path, unet=tiny_swin_config().to_config(), vq=tiny_vq_config().to_config(), sampler="ddim")
    assert student.meta.config["sampler"] == "ddim" and student.meta.timestep == 14
    save_student(student, tmp_path / "teacher.safetensors")
    assert load(str(tmp_path / "teacher.safetensors")).model.sampler == "ddim"


def test_manifest_model_downloads_both_files_and_converts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ctsr_infer import settings
    from tests.test_hub import _Server

    unet_path, vq_path = write_resshift_pair(tmp_path / "release")
    srv = _Server({"/r/SinSR_tiny.pth": unet_path.read_bytes(), "/r/vq.pth": vq_path.read_bytes()})
    try:
        entry = {
            "family": "resshift-onestep",
            "file": {"filename": "SinSR_tiny.pth", "format": "resshift-pth", "sources": [{"url": f"{srv.url}/r/SinSR_tiny.pth"}]},
            "vq": {"filename": "vq.pth", "format": "ldm-vq-pth", "sources": [{"url": f"{srv.url}/r/vq.pth"}]},
            "convert": {"sampler": "onestep", **NET_CONFIG}, "knob": {"kind": "none"}, "licence": "test",
        }
        settings.current().home.mkdir(parents=True, exist_ok=True)
        (settings.current().home / "user_models.json").write_text(json.dumps({"tiny-sinsr": entry}))
        monkeypatch.setenv("CTSR_OFFLINE", "0")  # the loopback server only: conftest blocks other sockets
        monkeypatch.setenv("HF_HUB_OFFLINE", "0")
        result = CliRunner().invoke(app, ["models", "download", "tiny-sinsr"])
        assert result.exit_code == 0, result.output
        monkeypatch.setenv("CTSR_OFFLINE", "1")
        assert sorted(srv.requests) == ["/r/SinSR_tiny.pth", "/r/vq.pth"]
        out = load("tiny-sinsr").upscale(np.full((16, 16, 3), 0.5, np.float32))
        assert out.shape == (64, 64, 3)
        assert len(srv.requests) == 2  # converted once, then loaded from the student file
    finally:
        srv.httpd.shutdown()
