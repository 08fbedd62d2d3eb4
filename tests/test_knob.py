"""The CTSR knob (ctsr-flow): t = 0 is stage 1, a sweep costs one velocity, K-step Euler."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, inject_adapter_in_model

from ctsr_infer.student_file import load_student
from ctsr_infer.errors import InvalidInputError, KnobError
from ctsr_infer.knob import Knob, normalize_t
from tiny import CTRL_MODULES


def _image() -> torch.Tensor:
    return torch.rand(1, 3, 24, 32, generator=torch.Generator().manual_seed(7))


def test_t0_is_exactly_the_stage1_output(upscaler, ctsr_upscaler) -> None:
    x = _image()
    (stage1,) = upscaler.upscale_tensor(x, scale=1, color_fix="none")
    (at_zero,) = ctsr_upscaler.upscale_tensor(x, t=0.0, scale=1, color_fix="none")
    assert torch.equal(stage1, at_zero)


def test_sweep_reuses_one_velocity_and_is_linear_in_t(ctsr_upscaler, monkeypatch: pytest.MonkeyPatch) -> None:
    model = ctsr_upscaler.model
    calls: list[int] = []
    original = model.velocity

    def counting(z: torch.Tensor, timestep: int, **kwargs: object) -> torch.Tensor:
        calls.append(timestep)
        return original(z, timestep, **kwargs)

    monkeypatch.setattr(model, "velocity", counting)
    latents: list[torch.Tensor] = []
    original_decode = model.decode
    monkeypatch.setattr(model, "decode", lambda z, **kw: latents.append(z) or original_decode(z, **kw))
    ts = [0.0, 0.25, 0.5, 0.75, 1.0]
    outs = ctsr_upscaler.upscale_tensor(_image(), t=ts, scale=1, color_fix="none")
    assert calls == [0]  # one ctrl UNet call at tau(0) for the whole sweep
    assert len(outs) == len(latents) == 5  # one decode per t
    velocity = latents[-1] - latents[0]
    for t, z in zip(ts, latents):
        assert torch.allclose(z, latents[0] + t * velocity, atol=1e-5)
    assert velocity.abs().max() > 1e-3
    assert not torch.equal(outs[0], outs[-1])


def test_velocity_equals_the_ctrl_lora_run_through_peft(ctsr_upscaler, ctsr_student_path) -> None:
    model = ctsr_upscaler.model
    student = load_student(ctsr_student_path)
    adapter = student.adapter("ctrl")
    reference = inject_adapter_in_model(
        LoraConfig(r=adapter.rank, lora_alpha=adapter.alpha, target_modules=list(CTRL_MODULES)), copy.deepcopy(model.unet), adapter_name="ctrl"
    )
    for name, (a, b) in student.lora_pairs(adapter).items():
        reference.get_submodule(f"{name}.lora_A.ctrl").weight.data = a.clone()
        reference.get_submodule(f"{name}.lora_B.ctrl").weight.data = b.clone()
    z = torch.randn(1, 4, 3, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference(z, torch.tensor([37]), encoder_hidden_states=model.prompt_embeds).sample
        plain = model.unet(z, torch.tensor([37]), encoder_hidden_states=model.prompt_embeds).sample
    ours = model.velocity(z, 37)
    assert torch.allclose(ours, expected, atol=1e-5)
    assert (expected - plain).abs().max() > 1e-3
    # phase 2 leaves the fused stage-1 weights untouched
    with torch.no_grad():
        assert torch.equal(model.unet(z, torch.tensor([37]), encoder_hidden_states=model.prompt_embeds).sample, plain)


def test_knob_steps_integrate_with_euler(ctsr_upscaler, monkeypatch: pytest.MonkeyPatch) -> None:
    model, knob = ctsr_upscaler.model, ctsr_upscaler.knob
    latents: list[torch.Tensor] = []
    original_decode = model.decode
    monkeypatch.setattr(model, "decode", lambda z, **kw: latents.append(z) or original_decode(z, **kw))
    x = _image()
    ctsr_upscaler.upscale_tensor(x, t=[0.0, 0.6], scale=1, color_fix="none", knob_steps=3)
    z0, z_end = latents
    z, dt = z0, 0.6 / 3
    for k in range(3):
        z = z + dt * model.velocity(z, knob.tau(k * dt))
    assert torch.allclose(z_end, z, atol=1e-5)


def test_model_without_knob_rejects_t(upscaler) -> None:
    with pytest.raises(KnobError, match="no fidelity/realness knob"):
        upscaler.upscale_tensor(_image(), t=0.5)
    assert len(upscaler.upscale_tensor(_image())) == 1


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), "0.5", True])
def test_t_outside_the_range_is_refused(bad) -> None:
    knob = Knob(kind="ctsr-flow", default_t=0.5)
    with pytest.raises(InvalidInputError, match="`t`"):
        normalize_t(bad, knob)


def test_tau_mapping_and_defaults() -> None:
    knob = Knob(kind="ctsr-flow", default_t=0.3, tau_start=999, tau_end=0)
    assert [knob.tau(t) for t in (0.0, 0.5, 1.0)] == [999, 500, 0]
    assert normalize_t(None, knob) == [0.3]
    assert normalize_t(None, Knob()) is None
    with pytest.raises(KnobError):
        Knob(kind="ctsr-flow", default_t=None)
    with pytest.raises(KnobError):
        Knob.from_json({"kind": "dual-lora"})
