"""Tiling of the SD stages: shared GroupNorm statistics, tiled vs untiled, OOM recovery, the plan."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch

from ctsr_infer.errors import DeviceError
from ctsr_infer.families.base import RunOptions, TilePlan
from ctsr_infer.metrics import psnr
from ctsr_infer.tiling import _Lockstep, _patched_norms, plan_tiles, record_group_norm, tiled_vae, with_oom_retry
from tiny import tiny_vae


def _photo(height: int, width: int) -> torch.Tensor:
    yy, xx = np.mgrid[0:height, 0:width] / 23.0
    image = np.stack([np.sin(xx) * np.cos(yy / 2), np.cos(xx / 3 + yy), np.sin((xx + yy) / 5)], axis=0) * 0.45 + 0.5
    return torch.from_numpy(image).float()[None] * 2 - 1


def test_exact_statistics_equal_the_untiled_statistics() -> None:
    vae = tiny_vae(attention=False)
    image = _photo(160, 224)
    untiled: list = []
    with torch.inference_mode(), record_group_norm(vae.encoder, untiled):
        vae.encoder(image)
    # with a context as large as the image every tile sees the whole image, so any error is in how
    # the tiles' sums are combined (counting overlaps twice, say)
    lockstep = _Lockstep(plan_tiles(160, 224, tile=64, overlap=16, context=224, align=8))
    with _patched_norms(vae.encoder, lockstep.forward):
        lockstep.run(vae.encoder, image)
    assert len(lockstep.stats) == len(untiled) == 13
    for index, (mean, var) in enumerate(untiled):
        got_mean, got_var = lockstep.stats[index]
        assert torch.allclose(got_mean, mean, atol=1e-5) and torch.allclose(got_var, var, atol=1e-5), index


def _as_image(t: torch.Tensor):
    return ((t.clamp(-1, 1) + 1) / 2)[0].permute(1, 2, 0).numpy()


def _exact_vae_case(*, attention: bool):
    """A tiny VAE, its untiled latent and decode of a photo, and the exact-tiled encode and decode."""
    vae = tiny_vae(attention=attention)
    image = _photo(192, 256)
    with torch.inference_mode():
        reference = vae.encoder(image)
        latent = vae.quant_conv(reference)[:, :4]
        decoded = vae.decoder(latent)
    enc = tiled_vae(vae.encoder, vae.encoder, image, scale=Fraction(1, 8), tile=64, overlap=16, context=128, mode="exact")
    dec = tiled_vae(vae.decoder, vae.decoder, latent, scale=Fraction(8), tile=8, overlap=2, context=16, mode="exact", align=1)
    return vae, reference, latent, decoded, enc, dec


def test_exact_tiled_vae_matches_untiled_and_beats_independent_tiles() -> None:
    vae, reference, latent, decoded, enc, dec = _exact_vae_case(attention=False)
    assert torch.allclose(enc, reference, atol=1e-4)
    assert psnr(_as_image(dec), _as_image(decoded)) > 60
    # fast mode: statistics from a sample of the tiles; a random-weight VAE is far more sensitive to
    # them than a trained one, so the bounds are loose, but more sampled tiles must do better
    errors = []
    for count in (4, 16):
        fast = tiled_vae(vae.decoder, vae.decoder, latent, scale=Fraction(8), tile=8, overlap=2, context=16, mode="fast", align=1,
                         sample_tiles=count)
        errors.append(psnr(_as_image(fast), _as_image(decoded)))
    assert errors[0] > 15 and errors[1] > errors[0] + 3


def test_exact_mode_shares_the_mid_block_attention_across_tiles() -> None:
    # with attention the tiles' queries attend to the keys and values of the whole image, so exact
    # mode stays exact (measured: encoder 4e-6, decoder 131 dB; tile-local attention: 0.09 and 40 dB)
    vae, reference, _, decoded, enc, dec = _exact_vae_case(attention=True)
    assert torch.allclose(enc, reference, atol=1e-4)
    assert psnr(_as_image(dec), _as_image(decoded)) > 80
    # the model's own attention processors are back afterwards
    assert all(type(m.processor).__name__ != "_SharedAttention" for m in vae.modules() if hasattr(m, "processor"))


def test_pipeline_tiled_against_untiled(tmp_path, base_dir) -> None:
    import ctsr_infer
    from ctsr_infer.student_file import StudentFile, StudentMeta, save_student
    from tiny import prompt_embeds, write_base

    base = write_base(tmp_path / "plain", attention=False)
    student = save_student(StudentFile(StudentMeta(family="sd-onestep", base={"path": str(base)}), {"prompt_embeds": prompt_embeds()}),
                           tmp_path / "s.safetensors")
    up = ctsr_infer.load(student, device="cpu", dtype="fp32")
    x = (_photo(96, 128) + 1) / 2
    (untiled,) = up.upscale_tensor(x, scale=2, tiling="off", color_fix="none")
    as_array = lambda t: t[0].permute(1, 2, 0).numpy()  # noqa: E731
    events = []
    (vae_tiled,) = up.upscale_tensor(x, scale=2, tiling="exact", vae_tile=64, color_fix="none", on_progress=events.append)
    assert vae_tiled.shape == untiled.shape == (1, 3, 192, 256)
    assert psnr(as_array(vae_tiled), as_array(untiled)) > 60  # exact shared statistics + 64 px of context
    assert max(e.total for e in events if e.stage == "decode") > 1  # the VAE really ran in tiles
    # UNet tiles blend eps with OSEDiff's Gaussian weights; z0 = 14.6 z - 14.6 eps amplifies any
    # border effect, and a random tiny UNet has a receptive field as large as its 16-latent tiles
    events.clear()
    (unet_tiled,) = up.upscale_tensor(x, scale=2, tile=16, tile_overlap=8, color_fix="none", on_progress=events.append)
    assert max(e.total for e in events if e.stage == "denoise") > 1
    assert psnr(as_array(unet_tiled), as_array(untiled)) > 15


def test_knob_velocity_is_tiled_with_the_same_plan(ctsr_upscaler) -> None:
    events = []
    ctsr_upscaler.upscale_tensor(torch.rand(1, 3, 96, 128), t=[0.0, 1.0], scale=2, tile=16, tile_overlap=4, on_progress=events.append)
    denoise = max(e.total for e in events if e.stage == "denoise")
    knob = [e for e in events if e.stage == "knob" and e.total > 1]
    assert denoise > 1 and knob and max(e.total for e in knob) == denoise


def test_oom_halves_the_tile_then_fails_clearly() -> None:
    seen = []

    def run(tile: int) -> torch.Tensor:
        seen.append(tile)
        if tile > 100:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return torch.zeros(1)

    with_oom_retry(run, tile=512, floor=64, what="the VAE decoder", flag="--vae-tile")
    assert seen == [512, 256, 128, 64]
    seen.clear()
    with pytest.raises(DeviceError, match=r"--vae-tile.*|the VAE decoder.*--vae-tile"):
        with_oom_retry(lambda tile: run(tile * 100), tile=512, floor=64, what="the VAE decoder", flag="--vae-tile")
    with pytest.raises(ValueError):  # anything but out-of-memory passes through untouched
        with_oom_retry(lambda tile: (_ for _ in ()).throw(ValueError("bug")), tile=512, floor=64, what="x", flag="--x")


def test_plan_switches_tiling_on_only_when_needed() -> None:
    base = RunOptions(scale=4, color_fix="none", knob_steps=1, seed=None, encode="mean", memory_budget=12e9)
    cpu = torch.device("cpu")

    def plan(size: int, **changes: object) -> TilePlan:
        return TilePlan.decide(size, size, RunOptions(**{**base.__dict__, **changes}), vae_bytes=4, device=cpu, contexts=(64, 8))

    assert plan(1024).vae_mode == "off"  # 1024^2 fits 12 GB untiled
    big = plan(4096)
    assert big.vae_mode == "fast" and big.vae_tile % 64 == 0
    assert (big.vae_tile + 128) ** 2 * 5120 * 4 <= 12e9 < (big.vae_tile + 64 + 128) ** 2 * 5120 * 4  # the largest of which 4 fit
    assert 4 <= big.vae_sample_tiles < len(plan_tiles(4096, 4096, tile=big.vae_tile, overlap=64, align=8))
    assert plan(2048, memory_budget=60e9).vae_mode == "off"
    assert plan(2048, tiling="exact", vae_tile=512).vae_mode == "exact"
    assert plan(4096, tiling="off").vae_mode == "off"
    assert plan(4096, tiling="fast").vae_sample_tiles == 4


def test_the_loaded_weights_come_off_the_budget(upscaler) -> None:
    model = upscaler.model
    weights = sum(p.numel() * p.element_size() for m in (model.unet, model.vae) for p in m.parameters())
    context = max(model.vae_contexts[0], 8 * model.vae_contexts[1])
    options = upscaler.check_options(scale=4, memory_budget=weights + 4 * (64 + 2 * context) ** 2 * 5120)[1]
    # what is left after the weights holds four 64-px tiles with their context, and no more
    assert model.plan(4096, 4096, options).vae_tile == 64


def test_the_budget_for_tiles_takes_off_the_weights_and_the_full_resolution_buffers() -> None:
    from ctsr_infer.tiling.budget import MIN_TILE_BUDGET, budget_for_tiles, default_memory_budget

    cpu, net = torch.device("cpu"), torch.nn.Linear(10, 10)  # 110 fp32 parameters: 440 bytes
    assert budget_for_tiles(1e9, cpu, networks=[net], height=100, width=200) == 1e9 - 440 - 48 * 100 * 200
    assert budget_for_tiles(None, cpu, networks=[net, net], height=1, width=1) == default_memory_budget(cpu) - 880 - 48
    assert budget_for_tiles(2e8, cpu, networks=[net], height=2000, width=2000) == MIN_TILE_BUDGET  # never below the floor


def _sd_depth_vae():
    """A VAE with SD 2.1's depth (4 levels, 2 resnets each, mid-block attention) and narrow channels."""
    from diffusers import AutoencoderKL

    torch.manual_seed(11)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=4,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        block_out_channels=(8, 8, 16, 16))
    return vae.eval().requires_grad_(False)


def test_the_context_covers_the_measured_receptive_radius_of_an_sd_depth_vae() -> None:
    from ctsr_infer.receptive import context_for, receptive_radius

    vae = _sd_depth_vae()
    encoder, decoder = receptive_radius(vae.encoder, 3, probe=16), receptive_radius(vae.decoder, 4, probe=4)
    # hand count for SD 2.1's layout: decoder 138 image px (17.25 latent px), encoder 4 strided
    # levels of 2 resnets (4 convs each) plus conv_in/conv_out and three stride-2 convs
    assert decoder * 8 == pytest.approx(138, abs=0.5)
    assert 100 <= encoder <= 120
    assert context_for(decoder) * 8 >= 138 and context_for(encoder, align=8) % 8 == 0


def test_exact_tiling_equals_untiled_at_sd_depth() -> None:
    from ctsr_infer.receptive import context_for, receptive_radius

    vae = _sd_depth_vae()
    encoder_context = context_for(receptive_radius(vae.encoder, 3, probe=16), align=8)
    decoder_context = context_for(receptive_radius(vae.decoder, 4, probe=4))
    image = _photo(256, 320)
    with torch.inference_mode():
        hidden = vae.encoder(image)
        latent = vae.quant_conv(hidden)[:, :4]
        decoded = vae.decoder(latent)
    enc = tiled_vae(vae.encoder, vae.encoder, image, scale=Fraction(1, 8), tile=64, overlap=16, context=encoder_context, mode="exact")
    dec = tiled_vae(vae.decoder, vae.decoder, latent, scale=Fraction(8), tile=8, overlap=2, context=decoder_context, mode="exact", align=1)
    assert (enc - hidden).abs().max() <= 1e-4
    assert (dec - decoded).abs().max() <= 1e-4
    # the old fixed 64 px context was not enough at this depth
    old = tiled_vae(vae.decoder, vae.decoder, latent, scale=Fraction(8), tile=8, overlap=2, context=8, mode="exact", align=1)
    assert (old - decoded).abs().max() > 1e-3


def test_the_unet_is_tiled_only_when_its_latent_does_not_fit() -> None:
    base = RunOptions(scale=4, color_fix="none", knob_steps=1, seed=None, encode="mean", memory_budget=12e9)
    cpu = torch.device("cpu")
    wide = TilePlan.decide(512, 1024, base, vae_bytes=4, device=cpu, contexts=(64, 8))
    assert wide.latent_tile >= 128  # a 1024 x 512 output: 128 x 64 latent, one tile
    small = RunOptions(**{**base.__dict__, "memory_budget": 64 * 64 * 64 * 1024})
    tight = TilePlan.decide(1024, 1024, small, vae_bytes=4, device=cpu, contexts=(64, 8))
    assert tight.latent_tile == 64 and tight.latent_tile < 128
