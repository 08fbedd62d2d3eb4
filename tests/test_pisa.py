"""PiSA-SR's dual LoRA as the `dual-lora` knob: conversion, the two branches against peft, the
lambda mix, a sweep's cost, and t maps on a latent-linear knob."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import ctsr_infer
from ctsr_infer.cli import app
from ctsr_infer.families.sd_onestep.pisa import GROUPS, PISA_LORA_ALPHA, convert_pisa
from ctsr_infer.knob import Knob
from ctsr_infer.student_file import load_student, save_student
from tiny import prompt_embeds, write_pisa_pkl

RANK_PIX, RANK_SEM = 4, 2


@pytest.fixture(scope="module")
def pisa(tmp_path_factory: pytest.TempPathFactory):
    """(pisa_sr.pkl, the peft UNet it was saved from)."""
    return write_pisa_pkl(tmp_path_factory.mktemp("pisa") / "pisa_sr.pkl", RANK_PIX, RANK_SEM)


@pytest.fixture(scope="module")
def pisa_student(pisa, base_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    student = convert_pisa(pisa[0], prompt_embeds=prompt_embeds(), base={"path": str(base_dir)})
    return save_student(student, tmp_path_factory.mktemp("pisa-student") / "pisa.safetensors")


@pytest.fixture(scope="module")
def up(pisa_student: Path) -> ctsr_infer.Upscaler:
    return ctsr_infer.load(pisa_student, device="cpu", dtype="fp32")


def _image(height: int = 16, width: int = 24) -> torch.Tensor:
    return torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(11))


def test_the_converter_keeps_every_tensor_and_the_scale(pisa, pisa_student: Path) -> None:
    path, unet = pisa
    saved = torch.load(path, weights_only=True)["state_dict_unet"]
    student = load_student(pisa_student)
    assert {a.name: (a.phase, a.rank, a.scale) for a in student.meta.adapters} == {
        **{f"unet_{g}_pix": ("sr", RANK_PIX, PISA_LORA_ALPHA / RANK_PIX) for g in GROUPS},
        **{f"unet_{g}_sem": ("ctrl", RANK_SEM, PISA_LORA_ALPHA / RANK_SEM) for g in GROUPS},
    }
    assert sum(1 for k in student.tensors if k.startswith("lora.")) == len(saved)
    for key, tensor in saved.items():
        module, which, adapter = key.rsplit(".lora_", 1)[0], key.split(".lora_")[1][0], key.split(".")[-2]
        group, branch = adapter.split("_")[1:]
        assert torch.equal(student.tensors[f"lora.unet_{group}_{branch}.unet.{module}.{which}"], tensor.float())
    meta = student.meta
    assert (meta.knob.kind, meta.knob.default_t, meta.timestep, meta.color_fix, meta.config) == ("dual-lora", 0.0, 1, "adain",
                                                                                               {"prediction": "residual"})


def test_cli_detects_and_converts_a_pisa_checkpoint(pisa, base_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "p.safetensors"
    result = CliRunner().invoke(app, ["models", "convert", str(pisa[0]), str(target), "--base", str(base_dir)])
    assert result.exit_code == 0, result.output
    assert "from pisa-sr-pkl" in result.output and load_student(target).meta.knob.kind == "dual-lora"


def _latents(up: ctsr_infer.Upscaler) -> torch.Tensor:
    model = up.model
    padded = _image() * 2 - 1  # 16 x 24: multiples of 8, no padding
    with torch.inference_mode():
        return model.encode(padded)


def _peft_eps(unet: torch.nn.Module, latents: torch.Tensor, adapters: list[str]) -> torch.Tensor:
    unet.set_adapter(adapters)
    with torch.inference_mode():
        return unet(latents, torch.tensor([1]), encoder_hidden_states=prompt_embeds()).sample.float()


def test_the_two_branches_equal_peft_with_those_adapters(up: ctsr_infer.Upscaler, pisa) -> None:
    _, unet = pisa
    model = up.model
    latents = _latents(up)
    with torch.inference_mode():
        eps_pix, eps_sem = model.noise(latents), model.velocity(latents, 1)
    pix = [f"default_{g}_pix" for g in GROUPS]
    reference_pix = _peft_eps(unet, latents, pix)
    reference_sem = _peft_eps(unet, latents, pix + [f"default_{g}_sem" for g in GROUPS])
    assert (reference_sem - reference_pix).abs().max() > 1e-3  # the semantic branch changes the result
    assert (eps_pix - reference_pix).abs().max() <= 1e-5
    assert (eps_sem - reference_sem).abs().max() <= 1e-5


def test_t0_is_pisa_default_and_every_t_is_the_lambda_formula(up: ctsr_infer.Upscaler, pisa) -> None:
    _, unet = pisa
    model = up.model
    latents = _latents(up)
    pix = [f"default_{g}_pix" for g in GROUPS]
    eps_pix = _peft_eps(unet, latents, pix)
    eps_sem = _peft_eps(unet, latents, pix + [f"default_{g}_sem" for g in GROUPS])
    ts = [0.0, 0.5, 1.0]
    with torch.inference_mode():
        mixed = model.mix_branches(latents, ts)
    knob: Knob = model.meta.knob
    for t, z0 in zip(ts, mixed, strict=True):
        lam_pix, lam_sem = knob.lambdas(t)
        expected = latents - (lam_pix * eps_pix + lam_sem * (eps_sem - eps_pix))  # PiSA-SR: x0 = z - eps_hat
        assert (z0 - expected).abs().max() <= 1e-5, t
    # t = 0: PiSA-SR's default single pass (both branches merged into the weights, one UNet call)
    assert (mixed[0] - (latents - eps_sem)).abs().max() <= 1e-5
    assert (mixed[2] - (latents - eps_pix)).abs().max() <= 1e-5


def test_a_sweep_costs_two_unet_calls_and_one_decode_per_t(up: ctsr_infer.Upscaler, monkeypatch: pytest.MonkeyPatch) -> None:
    model = up.model
    calls: list[int] = []
    handle = model.unet.register_forward_pre_hook(lambda module, args: calls.append(1))
    decodes: list[torch.Tensor] = []
    original = model.decode
    monkeypatch.setattr(model, "decode", lambda z, **kw: decodes.append(z) or original(z, **kw))
    try:
        outs = up.upscale_tensor(_image(), t=[0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0], scale=1, color_fix="none")
    finally:
        handle.remove()
    assert len(calls) == 2 and len(decodes) == len(outs) == 7
    assert not torch.equal(outs[0], outs[-1])
    # one t at an end of the default mapping needs one branch only: PiSA-SR's own single-pass cost
    for t in (0.0, 1.0):
        calls.clear()
        handle = model.unet.register_forward_pre_hook(lambda module, args: calls.append(1))
        try:
            up.upscale_tensor(_image(), t=t, scale=1, color_fix="none")
        finally:
            handle.remove()
        assert len(calls) == 1, t


def test_maps_on_a_latent_linear_knob(up: ctsr_infer.Upscaler, monkeypatch: pytest.MonkeyPatch) -> None:
    image = _image(16, 48)
    (scalar,) = up.upscale_tensor(image, t=0.4, scale=1, color_fix="none")
    (constant,) = up.upscale_tensor(image, t=np.full((16, 48), 0.4, np.float32), scale=1, color_fix="none")
    assert torch.allclose(scalar, constant, atol=1e-6)
    # per latent position (the tiny VAE's mid-block attention mixes the whole latent when decoding,
    # so the decoded halves are compared as latents): each half of the map is its own scalar t
    model = up.model
    decoded: list[torch.Tensor] = []
    original = model.decode
    monkeypatch.setattr(model, "decode", lambda z, **kw: decoded.append(z) or original(z, **kw))
    mask = np.zeros((16, 48), np.float32)
    mask[:, 24:] = 1.0
    up.upscale_tensor(image, t=mask, scale=1, color_fix="none")
    up.upscale_tensor(image, t=[0.0, 1.0], scale=1, color_fix="none")
    mixed, zero, one = decoded
    assert (zero - one).abs().max() > 0.01
    # 6 latent columns; the anti-aliased resize blends the map across the middle two
    assert torch.allclose(mixed[..., :2], zero[..., :2], atol=1e-6)
    assert torch.allclose(mixed[..., 4:], one[..., 4:], atol=1e-6)
    assert not torch.allclose(mixed[..., :2], one[..., :2], atol=1e-3)


def test_a_map_is_applied_alike_tiled_and_untiled(up: ctsr_infer.Upscaler) -> None:
    image = _image(32, 48)
    ramp = np.tile(np.linspace(0, 1, 48, dtype=np.float32), (32, 1))
    (untiled,) = up.upscale_tensor(image, t=ramp, scale=1, color_fix="none", tiling="off")
    (tiled,) = up.upscale_tensor(image, t=ramp, scale=1, color_fix="none", tiling="exact", vae_tile=64)
    assert (untiled - tiled).abs().max() < 1e-4


def test_ctsr_flow_takes_a_map_with_one_step(ctsr_upscaler: ctsr_infer.Upscaler) -> None:
    image = _image()
    (scalar,) = ctsr_upscaler.upscale_tensor(image, t=0.6, scale=1, color_fix="none")
    (constant,) = ctsr_upscaler.upscale_tensor(image, t=np.full((16, 24), 0.6, np.float32), scale=1, color_fix="none")
    assert torch.allclose(scalar, constant, atol=1e-6)
    with pytest.raises(ctsr_infer.InvalidInputError, match="knob_steps"):
        ctsr_upscaler.upscale_tensor(image, t=np.full((16, 24), 0.6, np.float32), knob_steps=2)


def test_the_manifest_model_runs_from_a_pisa_pkl_downloaded_by_hand(pisa, base_dir: Path, tmp_path: Path) -> None:
    """`pisa-sr` has no direct link (a Google Drive folder): the message says where to put the file;
    once it is there, the CLI converts it on first use and runs with a t and protected faces."""
    import shutil

    from ctsr_infer.hub import _download_dir
    from PIL import Image

    with pytest.raises(ctsr_infer.WeightsNotFoundError, match="drive.google.com.*pisa_sr.pkl"):
        ctsr_infer.load("pisa-sr", base=base_dir)
    target = _download_dir("pisa-sr") / "pisa_sr.pkl"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(pisa[0], target)
    source = tmp_path / "photo.png"
    Image.fromarray((np.random.default_rng(1).random((16, 24, 3)) * 255).astype(np.uint8)).save(source)
    result = CliRunner().invoke(app, ["upscale", str(source), "-o", str(tmp_path / "out.png"), "--model", "pisa-sr", "--base",
                                      str(base_dir), "--t", "0.3", "--protect-faces", "1", "--scale", "2"])
    assert result.exit_code == 0, result.output
    out = np.asarray(Image.open(tmp_path / "out.png"))
    assert out.shape == (32, 48, 3)
    up = ctsr_infer.load("pisa-sr", base=base_dir)
    assert up.knob.kind == "dual-lora" and np.array_equal(out, np.asarray(up.upscale(str(source), t=0.3, scale=2)))
