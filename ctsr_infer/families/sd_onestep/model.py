"""``sd-onestep``: Stable Diffusion 2.1-base UNet + VAE with LoRA fused at load (OSEDiff, CTSR).

The OSEDiff convention (cswry/OSEDiff, ``OSEDiff_test.forward``): the input is the bicubic-upsampled
image in [-1, 1]; it is encoded, scaled by 0.18215, passed once through the UNet at timestep 999
with the student's prompt embedding, and z0 is formed in closed form,
z0 = (z - sqrt(1 - abar_999) * eps) / sqrt(abar_999), from the ``alphas_cumprod`` of the SD 2.1-base
scheduler (scaled_linear 0.00085 -> 0.012, 1000 steps). ``scheduler.step`` is never called: its
behaviour for a one-step schedule changed in diffusers 0.32. z0 / 0.18215 is decoded and clamped.

The CTSR knob (``ctsr-flow``, arXiv 2503.14272 Sec. 3.3) adds the stage-2 "ctrl" LoRA for phase 2:
z(t) = z0 + t * eps_ctrl(z0, tau(0), c), or K Euler steps of the same field. The ctrl LoRA is fused
into a temporary copy of the weights it touches for that one call (``torch.func.functional_call``),
so the stage-1 weights are never modified and t = 0 stays exactly the stage-1 output.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from fractions import Fraction
from typing import TYPE_CHECKING

import torch
from torch import nn

from ...device import Placement, check_finite
from ...errors import IncompatibleWeightsError, KnobError
from ...image import resize_bicubic
from ...lora import fuse, lora_delta
from ...progress import ProgressCallback, Stage, emit
from ...receptive import context_for, receptive_radius
from ...student_file import Component, StudentFile
from ...tiling import gaussian_window, tiled_apply, tiled_vae, with_oom_retry
from ...tiling.budget import budget_for_tiles
from ...tmap import TMap, TValue
from ..base import RunOptions, TilePlan, run_in_fp32
from ..framing import pad_to_multiple
from .base_model import SD21_BASE, VAE_SCALING, predict_x0
from .prepared import PreparedLatents

if TYPE_CHECKING:  # from diffusers.models: mypy reads diffusers' top level as its dummy objects
    from diffusers.models import AutoencoderKL, UNet2DConditionModel

__all__ = ["FAMILY_NAME", "SDOneStep"]

logger = logging.getLogger(__name__)

FAMILY_NAME = "sd-onestep"
KNOB_KINDS = ("none", "ctsr-flow", "dual-lora")
PREDICTIONS = ("epsilon", "residual")


def _base_description(unet: UNet2DConditionModel, vae: AutoencoderKL) -> str:
    cfg = unet.config
    return (
        f"found UNet in_channels {cfg['in_channels']}, cross_attention_dim {cfg['cross_attention_dim']}, "
        f"block_out_channels {list(cfg['block_out_channels'])}; VAE latent_channels {vae.config['latent_channels']}"
    )


class SDOneStep:
    """A loaded sd-onestep student: plain diffusers modules with the SR LoRA fused in."""

    def __init__(self, student: StudentFile, unet: UNet2DConditionModel, vae: AutoencoderKL, alphas_cumprod: torch.Tensor,
                 placement: Placement) -> None:
        self.meta = student.meta
        self.placement = placement
        if self.meta.knob.kind not in KNOB_KINDS:
            raise KnobError(f"sd-onestep students support knob kinds {list(KNOB_KINDS)}, not {self.meta.knob.kind!r}.")
        self.prediction = str(self.meta.config.get("prediction", "epsilon"))
        """``epsilon``: x0 from the noise schedule (OSEDiff, CTSR); ``residual``: x0 = z - eps (PiSA-SR)."""
        self.alphas_cumprod = alphas_cumprod
        modules: dict[Component, nn.Module] = {"unet": unet, "vae": vae}
        prompt = student.prompt_embeds
        cross_dim = int(unet.config["cross_attention_dim"])
        if prompt is None:
            raise IncompatibleWeightsError("the student file has no `prompt_embeds` tensor; sd-onestep students carry one.")
        if prompt.dim() != 3 or prompt.shape[-1] != cross_dim:
            raise IncompatibleWeightsError(
                f"`prompt_embeds` has shape {tuple(prompt.shape)}, but the base UNet's cross-attention dim is "
                f"{cross_dim}; expected {SD21_BASE}; {_base_description(unet, vae)}."
            )
        for component, module in modules.items():
            self._apply_overrides(module, student.base_overrides(component), component, unet, vae)
        self.ctrl: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = {}
        for adapter in student.meta.adapters:
            pairs = student.lora_pairs(adapter)
            target = modules[adapter.component]
            for name, (a, b) in pairs.items():
                layer = self._layer(target, name, adapter.name, adapter.component, unet, vae)
                key = f"lora.{adapter.name}.{adapter.component}.{name}"
                if adapter.phase == "sr":
                    layer.weight.data = fuse(layer.weight.data, lora_delta(a, b, scale=adapter.scale, key=key), key=key)
                else:
                    if adapter.component != "unet":
                        raise IncompatibleWeightsError(f"ctrl adapter `{adapter.name}` must target the UNet.")
                    # check the shape now so a bad ctrl LoRA fails at load, not at the first t > 0
                    fuse(layer.weight.data, lora_delta(a, b, scale=adapter.scale, key=key), key=key)
                    self.ctrl[f"{name}.weight"] = (a, b, adapter.scale)
        # nn.Module.to, not diffusers' override: it warns about casting, and fusing was done in fp32 on purpose
        self.unet = placement.place(unet)
        self.vae = placement.place(vae, placement.vae_dtype)
        latent_channels = int(vae.config["latent_channels"])
        self.vae_contexts = (context_for(receptive_radius(vae.encoder, 3, probe=16), align=8),
                             context_for(receptive_radius(vae.decoder, latent_channels, probe=4)))
        """Tile context of the encoder (image px) and the decoder (latent px), from their receptive radius."""
        for part in self._decoder_parts():
            placement.place(part, placement.decoder_dtype)
        self.prompt_embeds = prompt.to(device=placement.device, dtype=placement.dtype)
        if self.meta.knob.kind in ("ctsr-flow", "dual-lora") and not self.ctrl:
            raise KnobError(f"the student declares the {self.meta.knob.kind} knob but its file has no `ctrl` adapter.")

    @staticmethod
    def _apply_overrides(module: nn.Module, overrides: Mapping[str, torch.Tensor], component: str, unet: UNet2DConditionModel,
                         vae: AutoencoderKL) -> None:
        params = dict(module.named_parameters())
        for name, tensor in overrides.items():
            if name not in params or params[name].shape != tensor.shape:
                found = tuple(params[name].shape) if name in params else "no such parameter"
                raise IncompatibleWeightsError(
                    f"`base.{component}.{name}` of shape {tuple(tensor.shape)} does not fit the base model "
                    f"({found}); expected {SD21_BASE}; {_base_description(unet, vae)}."
                )
            params[name].data = tensor.to(params[name].dtype).clone()

    @staticmethod
    def _layer(module: nn.Module, name: str, adapter: str, component: str, unet: UNet2DConditionModel,
               vae: AutoencoderKL) -> nn.Linear | nn.Conv2d:
        try:
            layer = module.get_submodule(name)
        except AttributeError:
            layer = None
        if not isinstance(layer, (nn.Linear, nn.Conv2d)):
            kind = "no such module" if layer is None else type(layer).__name__
            raise IncompatibleWeightsError(
                f"LoRA `lora.{adapter}.{component}.{name}` does not fit the base model ({kind}; LoRA targets "
                f"Linear or Conv2d layers). Expected {SD21_BASE}; {_base_description(unet, vae)}."
            )
        return layer

    # -- one call: upsample, pad, encode, denoise, knob, decode, colour fix ------------------------

    @torch.inference_mode()
    def forward(self, lr: torch.Tensor, *, size: tuple[int, int], ts: list[TValue] | None, options: RunOptions,
                on_progress: ProgressCallback | None = None) -> list[torch.Tensor]:
        """(1, 3, h, w) float in [0, 1] -> one (1, 3, *size) float32 CPU tensor in [0, 1] per t.

        The input is bicubic-upsampled to ``size`` first (OSEDiff's network is 1x); t = None means
        the plain student output. A t map acts per latent position (the knobs here are linear in the
        latent), on the whole latent after the UNet's tiles are blended."""
        return self.prepare(lr, size=size, options=options, on_progress=on_progress).render(ts, on_progress)

    def prepare(self, lr: torch.Tensor, *, size: tuple[int, int], options: RunOptions,
                on_progress: ProgressCallback | None = None) -> PreparedLatents:
        """Upsample, pad and encode now; the UNet calls run on the first render that needs them and
        are kept, so a later t costs the knob's arithmetic and one decode."""
        pixels = lr[0].permute(1, 2, 0).numpy()
        upsampled = torch.from_numpy(resize_bicubic(pixels, size, bit_depth=options.bit_depth)).permute(2, 0, 1)[None]
        padded = pad_to_multiple(upsampled, 8) * 2.0 - 1.0
        generator = None
        if options.encode == "sample":
            generator = torch.Generator(device=self.placement.device)
            generator.manual_seed(options.seed if options.seed is not None else int(torch.seed() % (2**63)))
        plan = self.plan(padded.shape[-2], padded.shape[-1], options)
        emit(on_progress, "encode", 0, 1)
        latents = self.encode(padded, generator=generator, mode=options.encode, plan=plan, on_progress=on_progress)
        check_finite(latents, "the encoded latent")
        return PreparedLatents(self, latents=latents, plan=plan, upsampled=upsampled, size=size, options=options)

    @staticmethod
    def _on_latent(t: TValue, like: torch.Tensor) -> torch.Tensor | float:
        """A number as is; a map resized to the latent grid (the padded image's, 1/8 of its pixels)."""
        return t.resized(like.shape[-2], like.shape[-1]).to(like.device) if isinstance(t, TMap) else t

    def apply_knob(self, z0: torch.Tensor, ts: list[TValue] | None, steps: int, on_progress: ProgressCallback | None = None,
                   *, plan: TilePlan | None = None, cache: dict[str, torch.Tensor] | None = None) -> list[torch.Tensor]:
        """t = 0 is z0 itself; t > 0 follows the ctrl velocity field (one velocity when steps = 1; a t
        map needs one step, which the pipeline checks). ``cache`` keeps the one-step velocity across
        calls on the same ``z0``."""
        if ts is None:
            return [z0]
        knob = self.meta.knob
        positive = [t for t in ts if (t.high if isinstance(t, TMap) else t) > 0]
        cache = {} if cache is None else cache
        velocity = cache.get("velocity")
        calls = (1 if positive and velocity is None else 0) if steps == 1 else steps * len(positive)
        done = 0
        emit(on_progress, "knob", 0, calls)
        if steps == 1 and positive and velocity is None:
            velocity = cache["velocity"] = self.velocity(z0, knob.tau(0.0), plan=plan, on_progress=on_progress)
            check_finite(velocity, "the knob velocity")
            done = 1
            emit(on_progress, "knob", done, calls)
        finals: list[torch.Tensor] = []
        for t in ts:
            if t not in positive:
                finals.append(z0)
            elif steps == 1 and velocity is not None:
                finals.append(z0 + self._on_latent(t, z0) * velocity)
            else:
                assert not isinstance(t, TMap)  # the pipeline refuses maps with steps > 1
                z, dt = z0, t / steps
                for k in range(steps):
                    v = self.velocity(z, knob.tau(k * dt), plan=plan, on_progress=on_progress)
                    check_finite(v, "the knob velocity")
                    z = z + dt * v
                    done += 1
                    emit(on_progress, "knob", done, calls)
                finals.append(z)
        return finals

    def mix_branches(self, latents: torch.Tensor, ts: list[TValue] | None, on_progress: ProgressCallback | None = None,
                     *, plan: TilePlan | None = None, cache: dict[str, torch.Tensor] | None = None) -> list[torch.Tensor]:
        """The dual-lora knob (PiSA-SR): eps_pix from the fused pixel branch, eps_sem from the same
        weights plus the semantic (ctrl) LoRA, each at most once; every t (every position's own t) is
        then eps = lambda_pix * eps_pix + lambda_sem * (eps_sem - eps_pix), x0 from eps. ``cache`` keeps
        the branches across calls on the same ``latents``.

        Written as (lambda_pix - lambda_sem) * eps_pix + lambda_sem * eps_sem, a branch whose weight is
        0 for every t is not run: t = 0 with the default mapping (1, 1) is PiSA-SR's single pass with
        both branches, t = 1 (1, 0) the pixel branch alone, a sweep two UNet calls in all."""
        knob = self.meta.knob
        values = ts if ts is not None else [float(knob.default_t or 0.0)]
        ends = [(knob.lambdas(0.0), knob.lambdas(1.0)) if isinstance(t, TMap) else (knob.lambdas(t),) * 2 for t in values]
        need_pix = any(pix != sem for pair in ends for pix, sem in pair)
        need_sem = any(sem != 0.0 for pair in ends for _, sem in pair)
        cache = {} if cache is None else cache
        if need_pix and "eps_pix" not in cache:
            cache["eps_pix"] = self.noise(latents, plan=plan, on_progress=on_progress)
            check_finite(cache["eps_pix"], "the pixel branch's UNet output")
        run_sem = need_sem and "eps_sem" not in cache
        emit(on_progress, "knob", 0, int(run_sem))
        if run_sem:
            cache["eps_sem"] = self.velocity(latents, self.meta.timestep, plan=plan, on_progress=on_progress)
            check_finite(cache["eps_sem"], "the semantic branch's UNet output")
            emit(on_progress, "knob", 1, 1)
        eps_pix = cache.get("eps_pix") if need_pix else None
        eps_sem = cache.get("eps_sem") if need_sem else None
        finals = []
        for t, (at0, at1) in zip(values, ends, strict=True):
            weight = self._on_latent(t, latents) if isinstance(t, TMap) else 0.0
            pix = at0[0] + (at1[0] - at0[0]) * weight
            sem = at0[1] + (at1[1] - at0[1]) * weight
            eps = torch.zeros_like(latents)
            if eps_pix is not None:
                eps = eps + eps_pix * (pix - sem)
            if eps_sem is not None:
                eps = eps + eps_sem * sem
            z0 = self.to_x0(latents, eps)
            check_finite(z0, "the denoised latent")
            finals.append(z0)
        return finals

    # -- the stages; each tiles itself according to the plan ----------------------------------

    def plan(self, height: int, width: int, options: RunOptions) -> TilePlan:
        """Decide the tiling of an image of ``height`` x ``width`` padded pixels (see :class:`TilePlan`).

        The loaded weights and the full-resolution buffers (input, padded copy, output and blend
        weights: about 48 bytes per pixel) live in the same memory, so they come off the budget first."""
        budget = budget_for_tiles(options.memory_budget, self.placement.device, networks=(self.unet, self.vae), height=height, width=width)
        return TilePlan.decide(height, width, replace(options, memory_budget=budget),
                               vae_bytes=torch.finfo(self.placement.vae_dtype).bits // 8, device=self.placement.device,
                               contexts=self.vae_contexts)

    def encode(self, image: torch.Tensor, *, generator: torch.Generator | None = None, mode: str = "mean",
               plan: TilePlan | None = None, on_progress: ProgressCallback | None = None) -> torch.Tensor:
        """(N, 3, H, W) in [-1, 1], H and W multiples of 8 -> scaled latents (N, 4, H/8, W/8)."""
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        vae, device, dtype = self.vae, self.placement.device, self.placement.vae_dtype
        plan = plan or TilePlan.untiled()

        def run(tile: int) -> torch.Tensor:
            def encoder(x: torch.Tensor) -> torch.Tensor:
                return vae.encoder(self.placement.prepare(x, dtype))

            return tiled_vae(encoder, vae.encoder, image, scale=Fraction(1, 8), tile=tile, overlap=plan.vae_overlap,
                             context=plan.vae_context, mode=plan.vae_mode, align=8, sample_tiles=plan.vae_sample_tiles,
                             on_tile=lambda d, n: emit(on_progress, "encode", d, n))

        hidden = with_oom_retry(run, tile=plan.vae_tile, floor=64, what="the VAE encoder", flag="--vae-tile").to(device, dtype)
        moments = vae.quant_conv(hidden) if vae.quant_conv is not None else hidden
        posterior = DiagonalGaussianDistribution(moments)
        latents = posterior.sample(generator=generator) if mode == "sample" else posterior.mean
        return latents.float() * VAE_SCALING

    def noise(self, latents: torch.Tensor, *, plan: TilePlan | None = None, on_progress: ProgressCallback | None = None) -> torch.Tensor:
        """One UNet call (tiled by the plan) at the student's timestep: eps (float32)."""
        timestep = self.meta.timestep
        return self._tiled_unet(lambda z: self._unet(z, timestep), latents, plan, on_progress, "denoise").to(latents.device)

    def to_x0(self, latents: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """z0 from the latent and the UNet's eps: the schedule's closed form, or z - eps (``residual``)."""
        if self.prediction == "residual":
            return latents.float() - eps.float()
        return predict_x0(latents, eps, self.alphas_cumprod, self.meta.timestep)

    def denoise(self, latents: torch.Tensor, *, plan: TilePlan | None = None, on_progress: ProgressCallback | None = None) -> torch.Tensor:
        """One UNet call (tiled by the plan) at the student's timestep; returns z0 (float32) in closed form."""
        return self.to_x0(latents, self.noise(latents, plan=plan, on_progress=on_progress))

    def velocity(self, latents: torch.Tensor, timestep: int, *, plan: TilePlan | None = None,
                 on_progress: ProgressCallback | None = None) -> torch.Tensor:
        """eps of the UNet with the ctrl LoRA on top of the fused stage-1 weights (float32), tiled
        with the same plan as the SR step (ctsr-flow: the knob's velocity; dual-lora: eps_sem). The
        ctrl delta is added to a temporary copy of the weights it touches for this call only."""
        from torch.func import functional_call

        params = dict(self.unet.named_parameters())
        overrides = {
            name: fuse(params[name], lora_delta(a, b, scale=scale).to(params[name].device), key=name)
            for name, (a, b, scale) in self.ctrl.items()
        }

        def run(z: torch.Tensor) -> torch.Tensor:
            batch = z.shape[0]
            return functional_call(
                self.unet, overrides,
                (self.placement.prepare(z), torch.full((batch,), timestep, device=self.placement.device, dtype=torch.long)),
                {"encoder_hidden_states": self.prompt_embeds.expand(batch, -1, -1)}, strict=False,
            ).sample.float()

        return self._tiled_unet(run, latents, plan, on_progress, "knob").to(latents.device)

    def decode(self, latents: torch.Tensor, *, plan: TilePlan | None = None, on_progress: ProgressCallback | None = None) -> torch.Tensor:
        """Scaled latents -> image in [-1, 1] (float32, clamped, on the CPU)."""
        vae, device, dtype = self.vae, self.placement.device, self.placement.decoder_dtype
        plan = plan or TilePlan.untiled()
        z = latents.to(device, dtype) / VAE_SCALING
        z = vae.post_quant_conv(z) if vae.post_quant_conv is not None else z

        def run(tile: int) -> torch.Tensor:
            def decoder(x: torch.Tensor) -> torch.Tensor:
                return vae.decoder(self.placement.prepare(x, dtype))

            return tiled_vae(decoder, vae.decoder, z, scale=Fraction(8), tile=max(1, tile // 8), overlap=plan.vae_overlap // 8,
                             context=plan.decoder_context, mode=plan.vae_mode, align=1, sample_tiles=plan.vae_sample_tiles,
                             on_tile=lambda d, n: emit(on_progress, "decode", d, n))

        image = with_oom_retry(run, tile=plan.vae_tile, floor=64, what="the VAE decoder", flag="--vae-tile")
        return image.float().clamp(-1.0, 1.0)

    def _tiled_unet(self, fn: Callable[[torch.Tensor], torch.Tensor], latents: torch.Tensor, plan: TilePlan | None,
                    on_progress: ProgressCallback | None, stage: Stage) -> torch.Tensor:
        plan = plan or TilePlan.untiled()

        def run(tile: int) -> torch.Tensor:
            return tiled_apply(fn, latents, tile=tile, overlap=min(plan.latent_overlap, tile // 2), window=gaussian_window,
                               batch=plan.latent_batch, on_tile=lambda d, n: emit(on_progress, stage, d, n))

        return with_oom_retry(run, tile=plan.latent_tile, floor=16, what="the UNet", flag="--tile")

    def _unet(self, latents: torch.Tensor, timestep: int) -> torch.Tensor:
        batch = latents.shape[0]
        timesteps = torch.full((batch,), timestep, device=self.placement.device, dtype=torch.long)
        out = self.unet(self.placement.prepare(latents), timesteps,
                        encoder_hidden_states=self.prompt_embeds.expand(batch, -1, -1))
        return out.sample.float()

    def _decoder_parts(self) -> list[torch.nn.Module]:
        return [m for m in (self.vae.post_quant_conv, self.vae.decoder) if m is not None]

    @contextmanager
    def in_fp32(self) -> Iterator[None]:
        """Run in float32 for the duration (the NaN retry), then go back to the loaded dtypes."""
        dtype = self.prompt_embeds.dtype
        self.prompt_embeds = self.prompt_embeds.float()
        try:
            parts = [(part, self.placement.decoder_dtype) for part in self._decoder_parts()]
            with run_in_fp32(self, [(self.unet, self.placement.dtype), (self.vae, self.placement.vae_dtype), *parts]):
                yield
        finally:
            self.prompt_embeds = self.prompt_embeds.to(dtype)
