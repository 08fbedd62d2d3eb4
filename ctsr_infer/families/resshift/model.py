"""``resshift-onestep``: ResShift-family students (SinSR, TAD-SR, co-learning) and the ResShift teacher.

A student file of this family carries the Swin-UNet (``net.unet.*``, the public parameter names),
the VQ-f4 autoencoder (``net.vq.*``, latent-diffusion names) and, in ``config``, the network
settings, the diffusion schedule and the default sampler: ``onestep`` for distilled students,
``posterior`` (ResShift's ancestral sampler) or ``ddim`` (the deterministic sampler of SinSR/TAD-SR
Eq. 3) for the multi-step teacher.

The path follows ResShift's sampler: the low-resolution image y in [-1, 1] is reflect-padded to a
multiple of the network's coarsest window (64 px), upsampled x4 with torch's bicubic kernel,
encoded to z_y (VQ-f4: the latent has the size of y), z_{T-1} = z_y + kappa sqrt(eta_{T-1}) eps
with eps from a seeded generator (default seed 12345, TAD-SR's, so a run is reproducible), the
network predicts z0 from z_t / sqrt(kappa^2 eta_t + 1) with y concatenated, z0 is quantised and
decoded, cropped and clamped. The scale is 4; other scales resize the x4 result (bicubic).

Large images: VQ encode/decode through :func:`~ctsr_infer.tiling.tiled_vae` (GroupNorm statistics
shared across tiles) and the network over Gaussian-blended latent tiles (multiples of 64) from the
same planner as the SD family; ResShift's own "chopping" runs the whole pipeline per 512-px
low-resolution patch with uniform averaging.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from fractions import Fraction
from typing import Any, cast

import torch
import torch.nn.functional as F

from ...device import Placement, check_finite
from ...errors import IncompatibleWeightsError, InvalidInputError, KnobError
from ...progress import ProgressCallback, emit
from ...receptive import context_for, receptive_radius
from ...student_file import StudentFile
from ...tiling import gaussian_window, tiled_apply, tiled_vae, with_oom_retry
from ...tiling.budget import budget_for_tiles
from ...tmap import TValue
from ..base import RunOptions, TilePlan, run_in_fp32
from ..framing import OutputsByT, pad_to_multiple, to_size
from ..state import fit_state
from .shift_diffusion import Sampler, ShiftSchedule
from .swin_unet import SwinUNet, SwinUNetConfig
from .vq_autoencoder import VQConfig, build_vq, load_ldm_state, quantize_nearest

__all__ = ["FAMILY_NAME", "DEFAULT_SEED", "ResShiftModel", "student_config", "teacher"]

logger = logging.getLogger(__name__)

FAMILY_NAME = "resshift-onestep"
DEFAULT_SEED = 12345
SCALE = 4
DEFAULT_LATENT_TILE = 256
"""Latent (= low-resolution) pixels per network tile when an image is tiled; ResShift chops at 512."""
_SAMPLERS = ("onestep", "posterior", "ddim")


def student_config(*, unet: SwinUNetConfig, vq: VQConfig, schedule: ShiftSchedule, sampler: Sampler) -> dict[str, Any]:
    """The ``config`` of a resshift-onestep student file."""
    return {"unet": unet.to_config(), "vq": vq.to_config(), "schedule": schedule.to_config(), "sampler": sampler}


class ResShiftModel:
    """A loaded ResShift-family model: Swin-UNet + VQ-f4 + schedule."""

    def __init__(self, student: StudentFile, placement: Placement) -> None:
        self.meta = student.meta
        if self.meta.knob.kind != "none":
            raise KnobError(f"resshift-onestep students have no knob; the file declares {self.meta.knob.kind!r}.")
        config = dict(self.meta.config)
        missing = [k for k in ("unet", "vq", "schedule") if not isinstance(config.get(k), Mapping)]
        if missing:
            raise IncompatibleWeightsError(f"resshift student `config` lacks {missing}; it has {sorted(config)}.")
        self.sampler = cast(Sampler, config.get("sampler", "onestep"))
        if self.sampler not in _SAMPLERS:
            raise IncompatibleWeightsError(f"resshift student sampler {self.sampler!r} is not one of {_SAMPLERS}.")
        self.schedule = ShiftSchedule.from_config(config["schedule"])
        self.unet_config = SwinUNetConfig.from_config(config["unet"])
        self.vq_config = VQConfig.from_config(config["vq"])
        if self.vq_config.factor != SCALE:
            raise IncompatibleWeightsError(f"resshift students use a VQ-f{SCALE} autoencoder; this one downsamples by {self.vq_config.factor}.")
        unet_state = {k[len("net.unet."):]: v for k, v in student.tensors.items() if k.startswith("net.unet.")}
        self.net = fit_state(lambda: SwinUNet(self.unet_config), unet_state, source="resshift student `net.unet.*`",
                             what=f"the Swin-UNet of its config ({self.unet_config.to_config()})")
        vq_state = {k[len("net.vq."):]: v for k, v in student.tensors.items() if k.startswith("net.vq.")}
        with torch.device("meta"):  # names and shapes checked before the autoencoder is allocated
            load_ldm_state(build_vq(self.vq_config), vq_state, self.vq_config, source="resshift student `net.vq.*`", check_only=True)
        self.vq = build_vq(self.vq_config)
        load_ldm_state(self.vq, vq_state, self.vq_config, source="resshift student `net.vq.*`")
        self.placement = placement
        self.net = placement.place(self.net.eval().requires_grad_(False))
        self.vq = placement.place(self.vq, placement.vae_dtype)
        self.vq_contexts = (context_for(receptive_radius(self.vq.encoder, 3, probe=16), align=SCALE),
                            context_for(receptive_radius(self.vq.decoder, int(self.vq.post_quant_conv.out_channels), probe=4)))
        """Tile context of the VQ encoder (image px) and decoder (latent px), from their receptive radius."""

    # -- the runtime path --------------------------------------------------------------------

    @torch.inference_mode()
    def forward(self, lr: torch.Tensor, *, size: tuple[int, int], ts: list[TValue] | None, options: RunOptions,
                on_progress: ProgressCallback | None = None) -> list[torch.Tensor]:
        """(1, 3, h, w) in [0, 1] -> [(1, 3, *size) float32 in [0, 1]] (no knob: ``ts`` is None)."""
        return self.prepare(lr, size=size, options=options).render(ts, on_progress)

    def prepare(self, lr: torch.Tensor, *, size: tuple[int, int], options: RunOptions,
                on_progress: ProgressCallback | None = None) -> OutputsByT:
        """No knob: the one output, computed on the first render and kept."""
        height, width = lr.shape[-2:]

        def compute(t: float, progress: ProgressCallback | None) -> torch.Tensor:
            out = self.super_resolve(lr * 2.0 - 1.0, options=options, on_progress=progress)
            out = to_size(((out[..., : height * SCALE, : width * SCALE] + 1.0) / 2.0).clamp(0.0, 1.0), lr, size, options)
            emit(progress, "colour fix", 1, 1)
            return out

        return OutputsByT(compute, size, default=0.0, no_knob="resshift-onestep students have no t knob.")

    def super_resolve(self, y: torch.Tensor, *, options: RunOptions, sampler: Sampler | None = None,
                      steps: int | None = None, on_progress: ProgressCallback | None = None) -> torch.Tensor:
        """y: (1, 3, h, w) in [-1, 1] -> (1, 3, 4h', 4w') in [-1, 1], h' and w' padded to multiples of 64.

        ``sampler`` overrides the file's (``onestep``, ``posterior``, ``ddim``); ``steps`` stops a
        multi-step sampler early."""
        y = pad_to_multiple(y.float().cpu(), self.unet_config.multiple)
        plan = self.plan(y.shape[-2] * SCALE, y.shape[-1] * SCALE, options)
        emit(on_progress, "encode", 0, 1)
        z_y = self.encode(F.interpolate(y, scale_factor=SCALE, mode="bicubic"), plan=plan, on_progress=on_progress)
        check_finite(z_y, "the encoded latent")
        generator = torch.Generator().manual_seed(DEFAULT_SEED if options.seed is None else options.seed)
        noise = torch.randn(z_y.shape, generator=generator)
        emit(on_progress, "denoise", 0, 1)
        z0 = self.schedule.sample(
            lambda z, t: self.predict_x0(z, t, y, plan=plan), z_y, sampler=sampler or self.sampler, noise=noise,
            generator=generator, steps=steps, on_step=lambda d, n: emit(on_progress, "denoise", d, n),
        )
        check_finite(z0, "the denoised latent")
        emit(on_progress, "decode", 0, 1)
        image = self.decode(z0, plan=plan, on_progress=on_progress)
        check_finite(image, "the decoded image")
        return image

    def plan(self, height: int, width: int, options: RunOptions) -> TilePlan:
        """Tiling of an output of ``height`` x ``width`` pixels; the network tile is in latent pixels."""
        multiple = self.unet_config.multiple
        tile = options.tile or DEFAULT_LATENT_TILE
        if tile % multiple:
            raise InvalidInputError(f"`tile` for resshift students must be a multiple of {multiple} latent pixels, got {tile}.")
        overlap = 64 if options.tile_overlap is None else options.tile_overlap
        budget = budget_for_tiles(options.memory_budget, self.placement.device, networks=(self.net, self.vq), height=height, width=width)
        return TilePlan.decide(height, width, replace(options, tile=tile, tile_overlap=min(overlap, tile - multiple), memory_budget=budget),
                               vae_bytes=torch.finfo(self.placement.vae_dtype).bits // 8, device=self.placement.device,
                               contexts=self.vq_contexts, latent_scale=SCALE)

    def encode(self, image: torch.Tensor, *, plan: TilePlan | None = None, on_progress: ProgressCallback | None = None) -> torch.Tensor:
        """(1, 3, H, W) in [-1, 1] -> z (1, 3, H/4, W/4) float32 (quant_conv applied, not quantised)."""
        vq, device, dtype = self.vq, self.placement.device, self.placement.vae_dtype
        plan = plan or TilePlan.untiled()

        def run(tile: int) -> torch.Tensor:
            return tiled_vae(lambda x: vq.encoder(self.placement.prepare(x, dtype)), vq.encoder, image, scale=Fraction(1, SCALE), tile=tile,
                             overlap=plan.vae_overlap, context=plan.vae_context, mode=plan.vae_mode, align=SCALE,
                             sample_tiles=plan.vae_sample_tiles, on_tile=lambda d, n: emit(on_progress, "encode", d, n))

        hidden = with_oom_retry(run, tile=plan.vae_tile, floor=64, what="the VQ encoder", flag="--vae-tile")
        return vq.quant_conv(hidden.to(device, dtype)).float().cpu() * self.schedule.scale_factor

    def decode(self, z0: torch.Tensor, *, plan: TilePlan | None = None, on_progress: ProgressCallback | None = None) -> torch.Tensor:
        """z0 -> image in [-1, 1] (float32, CPU): nearest-code quantisation, post_quant_conv, decoder."""
        vq, device, dtype = self.vq, self.placement.device, self.placement.vae_dtype
        plan = plan or TilePlan.untiled()
        quant = quantize_nearest(z0 / self.schedule.scale_factor, vq.quantize.embedding.weight.float().cpu())
        hidden = vq.post_quant_conv(quant.to(device, dtype)).cpu()

        def run(tile: int) -> torch.Tensor:
            return tiled_vae(lambda x: vq.decoder(self.placement.prepare(x, dtype)), vq.decoder, hidden, scale=Fraction(SCALE), tile=max(1, tile // SCALE),
                             overlap=plan.vae_overlap // SCALE, context=plan.decoder_context, mode=plan.vae_mode, align=1,
                             sample_tiles=plan.vae_sample_tiles, on_tile=lambda d, n: emit(on_progress, "decode", d, n))

        return with_oom_retry(run, tile=plan.vae_tile, floor=64, what="the VQ decoder", flag="--vae-tile").float().clamp(-1.0, 1.0)

    def predict_x0(self, z_scaled: torch.Tensor, t: int, y: torch.Tensor, *, plan: TilePlan | None = None) -> torch.Tensor:
        """The network's z0 for the scaled input at index ``t`` with the low-resolution image ``y``
        (same spatial size), over Gaussian-blended latent tiles when the plan says so."""
        plan = plan or TilePlan.untiled()
        device, dtype = self.placement.device, self.placement.dtype
        channels = z_scaled.shape[1]

        def network(piece: torch.Tensor) -> torch.Tensor:
            steps = torch.full((piece.shape[0],), t, device=device, dtype=torch.long)
            piece = self.placement.prepare(piece, dtype)
            return self.net(piece[:, :channels], steps, piece[:, channels:]).float().cpu()

        joined = torch.cat([z_scaled.float().cpu(), y.float().cpu()], dim=1)
        multiple = self.unet_config.multiple

        def run(tile: int) -> torch.Tensor:
            tile = max(multiple, tile // multiple * multiple)
            return tiled_apply(network, joined, tile=tile, overlap=min(plan.latent_overlap, tile - multiple) if tile > multiple else 0,
                               window=gaussian_window, batch=plan.latent_batch)

        return with_oom_retry(run, tile=plan.latent_tile, floor=multiple, what="the Swin-UNet", flag="--tile")

    @contextmanager
    def in_fp32(self) -> Iterator[None]:
        """Run in float32 for the duration (the NaN retry), then go back to the loaded dtypes."""
        with run_in_fp32(self, [(self.net, self.placement.dtype), (self.vq, self.placement.vae_dtype)]):
            yield


def teacher(model: ResShiftModel) -> Callable[..., torch.Tensor]:
    """The multi-step sampler as a function for the training side: (y in [-1, 1], sampler, seed) -> image."""

    def run(y: torch.Tensor, *, sampler: Sampler = "posterior", seed: int = DEFAULT_SEED, steps: int | None = None) -> torch.Tensor:
        options = RunOptions(scale=SCALE, color_fix="none", knob_steps=1, seed=seed, encode="mean", tiling="off")
        with torch.inference_mode():
            return model.super_resolve(y, options=options, sampler=sampler, steps=steps)

    return run
