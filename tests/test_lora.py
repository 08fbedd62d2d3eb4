"""Fused LoRA equals the same model run with peft adapters active."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, inject_adapter_in_model

from ctsr_infer.errors import IncompatibleWeightsError
from ctsr_infer.families.sd_onestep.base_model import VAE_SCALING
from ctsr_infer.lora import fuse, lora_delta
from tiny import prompt_embeds


class _Toy(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(6, 5)
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)


@pytest.mark.parametrize("rank,alpha", [(1, 8.0), (4, 8.0), (3, 1.5)])
def test_fused_layer_matches_peft_on_linear_and_conv(rank: int, alpha: float) -> None:
    torch.manual_seed(rank)
    base = _Toy()
    peft_model = inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=alpha, target_modules=["lin", "conv"], init_lora_weights="gaussian"), copy.deepcopy(base))
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            param.data.normal_()
    fused = copy.deepcopy(base)
    for layer in ("lin", "conv"):
        a = peft_model.get_submodule(f"{layer}.lora_A.default").weight
        b = peft_model.get_submodule(f"{layer}.lora_B.default").weight
        target = fused.get_submodule(layer)
        target.weight.data = fuse(target.weight.data, lora_delta(a, b, scale=alpha / rank))
    x_lin, x_conv = torch.randn(2, 6), torch.randn(2, 3, 7, 9)
    with torch.no_grad():
        assert torch.allclose(fused.lin(x_lin), peft_model.lin(x_lin), atol=1e-5)
        assert torch.allclose(fused.conv(x_conv), peft_model.conv(x_conv), atol=1e-5)
        # and the LoRA really changed something (the test could not pass with a no-op fuse)
        assert (peft_model.conv(x_conv) - base.conv(x_conv)).abs().max() > 1e-2


def test_lora_shape_errors_name_the_key() -> None:
    with pytest.raises(IncompatibleWeightsError, match="my.layer"):
        lora_delta(torch.zeros(2, 3), torch.zeros(4, 3), scale=1.0, key="my.layer")
    with pytest.raises(IncompatibleWeightsError, match="does not fit"):
        fuse(torch.zeros(5, 3), torch.zeros(5, 4), key="x")


def test_whole_student_matches_osediff_forward_with_peft(osediff, base_dir, upscaler) -> None:
    """Our fused pipeline vs OSEDiff's forward on peft-wrapped modules (posterior mean, no colour fix)."""
    from diffusers import DDPMScheduler

    _, unet_p, vae_p = osediff
    x01 = torch.rand(1, 3, 32, 40, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        lq = x01 * 2 - 1
        z = vae_p.encode(lq).latent_dist.mean * VAE_SCALING
        eps = unet_p(z, torch.tensor([999]), encoder_hidden_states=prompt_embeds()).sample
        scheduler = DDPMScheduler.from_pretrained(base_dir, subfolder="scheduler")
        z0 = scheduler.step(eps, 999, z).pred_original_sample
        reference = (vae_p.decode(z0 / VAE_SCALING).sample.clamp(-1, 1) + 1) / 2
    (ours,) = upscaler.upscale_tensor(x01, scale=1, color_fix="none")
    assert ours.shape == reference.shape
    assert torch.allclose(ours, reference, atol=1e-5), (ours - reference).abs().max()
    # the LoRA matters: the same forward with the adapters switched off is clearly different
    with torch.no_grad():
        unet_p.disable_adapters()
        try:
            eps_base = unet_p(z, torch.tensor([999]), encoder_hidden_states=prompt_embeds()).sample
        finally:
            unet_p.enable_adapters()
    assert (eps_base - eps).abs().max() > 1e-2
