"""The closed-form z0 and the schedule match diffusers."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler

from ctsr_infer.families.sd_onestep.base_model import alphas_cumprod_scaled_linear, predict_x0


def _sd21_scheduler() -> DDPMScheduler:
    return DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                         prediction_type="epsilon", clip_sample=False, steps_offset=1)


def test_alphas_cumprod_equals_diffusers_bit_for_bit() -> None:
    ours = alphas_cumprod_scaled_linear()
    assert torch.equal(ours, _sd21_scheduler().alphas_cumprod)
    assert ours[999].item() == pytest.approx(0.004660, abs=1e-6)


@pytest.mark.parametrize("timestep", [999, 500, 10])
def test_closed_form_x0_equals_diffusers_prediction(timestep: int) -> None:
    generator = torch.Generator().manual_seed(timestep)
    sample, eps = torch.randn(2, 4, 8, 8, generator=generator), torch.randn(2, 4, 8, 8, generator=generator)
    reference = _sd21_scheduler().step(eps, timestep, sample).pred_original_sample
    ours = predict_x0(sample, eps, alphas_cumprod_scaled_linear(), timestep)
    assert torch.equal(ours, reference)
    # and it is the textbook formula (a reference computed another way, in float64)
    abar = alphas_cumprod_scaled_linear().double()[timestep]
    textbook = (sample.double() - (1 - abar).sqrt() * eps.double()) / abar.sqrt()
    assert torch.allclose(ours.double(), textbook, rtol=1e-5, atol=1e-4)
