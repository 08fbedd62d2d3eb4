"""What every family shares: the options of one call, and the tiling plan of the SD stages."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
from torch import nn

from ..colorfix import ColorFix
from ..errors import InvalidInputError
from ..tiling import TilingMode, plan_tiles

logger = logging.getLogger(__name__)

__all__ = ["RunOptions", "TilePlan", "default_memory_budget", "VAE_BYTES_PER_PIXEL", "run_in_fp32"]

TilingChoice = Literal["auto", "exact", "fast", "off"]
VAE_BYTES_PER_PIXEL = 5120
"""Peak VAE activation bytes per image pixel (tile and context) in fp32 when tiles run in lockstep:
measured 18.3 GB for nine 640-px tiles of SD 2.1's decoder on the CPU (about 4.9 kB/px)."""
UNET_BYTES_PER_LATENT_PIXEL = 64 * 1024
"""Rough peak UNet activation bytes per latent pixel in fp32 (SD 2.1's UNet, SDPA attention)."""


@dataclass(frozen=True)
class RunOptions:
    """Validated options of one upscale call (see ``Upscaler.upscale``)."""

    scale: float
    color_fix: ColorFix
    knob_steps: int
    seed: int | None
    encode: Literal["mean", "sample"]
    bit_depth: int = 32
    """Bit depth of the source pixels; 8-bit sources are resampled exactly as OSEDiff does."""
    tiling: TilingChoice = "auto"
    tile: int | None = None
    """Latent tile (latent pixels) of the UNet, or the input tile of a lite student."""
    tile_overlap: int | None = None
    vae_tile: int | None = None
    """VAE tile in image pixels."""
    memory_budget: float | None = None
    """Bytes the tiler may plan for; None: half the RAM (CPU) or 80% of the GPU's memory."""
    max_pixels: float = 256e6
    """Largest output (pixels) a call accepts; larger ones are refused before any work."""


def default_memory_budget(device: torch.device) -> float:
    if device.type == "cuda":
        return 0.8 * torch.cuda.get_device_properties(device).total_memory
    try:
        return 0.5 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8e9


@dataclass(frozen=True)
class TilePlan:
    """How the SD stages tile one image. Tiling switches on only when the image does not fit."""

    vae_mode: TilingMode
    vae_tile: int
    """Image pixels per VAE tile side (encoder input, decoder output); a multiple of 64."""
    vae_overlap: int
    vae_context: int
    """Image pixels of real image around each encoder tile (covers the encoder's receptive radius)."""
    decoder_context: int
    """Latent pixels around each decoder tile (covers the decoder's receptive radius)."""
    vae_sample_tiles: int
    """fast mode: how many tiles run in lockstep to measure the GroupNorm statistics (all that fit)."""
    latent_tile: int
    latent_overlap: int
    latent_batch: int

    @classmethod
    def untiled(cls) -> TilePlan:
        big = 1 << 30
        return cls("off", big, 0, 0, 0, 1, big, 0, 1)

    @classmethod
    def decide(cls, height: int, width: int, options: RunOptions, *, vae_bytes: int, device: torch.device,
               contexts: tuple[int, int], latent_scale: int = 8) -> TilePlan:
        """Plan for an image of ``height`` x ``width`` pixels (multiples of 8).

        ``contexts``: (encoder context in image pixels, decoder context in latent pixels), from the
        VAE's measured receptive radius (:mod:`ctsr_infer.receptive`), so ``exact`` tiles equal the
        untiled VAE up to float rounding.
        ``auto``: the VAE runs untiled when the whole image fits the budget; otherwise with the
        largest tile (a multiple of 64) of which four fit at once, in ``exact`` mode when every tile
        fits at once and ``fast`` mode (statistics from as many tiles as fit) when not. The UNet
        (``tile`` not given) runs untiled when its whole latent fits the budget, else in the largest
        tiles that fit, and says so at INFO level."""
        budget = options.memory_budget or default_memory_budget(device)
        latent_h, latent_w = -(-height // latent_scale), -(-width // latent_scale)
        if options.tile:
            latent_tile = options.tile
        elif latent_h * latent_w * UNET_BYTES_PER_LATENT_PIXEL <= budget or options.tiling == "off":
            latent_tile = max(latent_h, latent_w, 16)
        else:
            latent_tile = max(16, int(math.sqrt(budget / UNET_BYTES_PER_LATENT_PIXEL)) // 8 * 8)
            logger.info("the latent (%dx%d) does not fit the memory budget (%.1f GB): the UNet runs in %d px tiles",
                        latent_w, latent_h, budget / 1e9, latent_tile)
        latent_overlap = 32 if options.tile_overlap is None else options.tile_overlap
        if not options.tile and latent_tile >= max(latent_h, latent_w):
            latent_overlap = min(latent_overlap, latent_tile - 1)
        if latent_tile < 16 or not 0 <= latent_overlap < latent_tile:
            raise InvalidInputError(f"`tile` must be >= 16 latent pixels and `tile_overlap` in [0, tile), got {latent_tile}, {latent_overlap}.")
        if options.tiling == "off":
            return cls.untiled()
        bytes_per_pixel = VAE_BYTES_PER_PIXEL * vae_bytes / 4
        encoder_context, decoder_context = contexts
        context = max(encoder_context, decoder_context * latent_scale)
        if options.vae_tile:
            vae_tile = options.vae_tile
        else:
            side = int(math.sqrt(budget / 4 / bytes_per_pixel)) - 2 * context
            vae_tile = max(64, min(2048, side // 64 * 64))
        if vae_tile < 64 or vae_tile % 64:
            raise InvalidInputError(f"`vae_tile` must be a multiple of 64 pixels (>= 64), got {vae_tile}.")
        vae_overlap = min(64, vae_tile // 4) // 8 * 8
        total = len(plan_tiles(height, width, tile=vae_tile, overlap=vae_overlap, align=8))
        per_tile = (vae_tile + 2 * context) ** 2 * bytes_per_pixel
        fit = int(budget // per_tile)
        whole_fits = height * width * bytes_per_pixel <= budget
        if max(height, width) <= vae_tile or (options.tiling == "auto" and whole_fits and not options.vae_tile):
            vae_mode: TilingMode = "off"
        elif options.tiling in ("exact", "fast"):
            vae_mode = options.tiling
        else:
            vae_mode = "exact" if fit >= total else "fast"
        batch = int(max(1, min(4, budget // (latent_tile**2 * UNET_BYTES_PER_LATENT_PIXEL))))
        # fast asked for by name keeps memory at its minimum (4 statistics tiles); chosen by auto it
        # samples as many tiles as the budget holds
        sample = 4 if options.tiling == "fast" else max(4, min(fit, total))
        if vae_mode != "off":
            logger.info("the VAE runs in %s tiles of %d px (context %d px encoder, %d latent px decoder)",
                        vae_mode, vae_tile, encoder_context, decoder_context)
        return cls(vae_mode, vae_tile, vae_overlap, encoder_context, decoder_context, sample, latent_tile, latent_overlap, batch)


@contextmanager
def run_in_fp32(owner: Any, networks: Sequence[tuple[nn.Module, torch.dtype]]) -> Iterator[None]:
    """Run a loaded model in float32 for the duration (the pipeline's NaN retry): each network is cast
    to fp32 and back to the dtype given with it, and ``owner.placement`` says fp32 meanwhile."""
    saved = owner.placement
    for module, _ in networks:
        nn.Module.to(module, torch.float32)
    owner.placement = replace(saved, dtype=torch.float32, vae_dtype=torch.float32, decoder=None)
    try:
        yield
    finally:
        owner.placement = saved
        for module, dtype in networks:
            nn.Module.to(module, dtype)


DENOISERS = ("unet", "net")
"""Attributes that hold a family's denoising / feed-forward network."""


def compile_denoiser(model: Any) -> str:
    """``torch.compile`` the model's denoising network in place (``nn.Module.compile``: parameters and
    state-dict keys unchanged); returns its attribute name. The VAEs stay eager: tiled runs swap
    their normalisation and attention per call, which would recompile them tile after tile."""
    for name in DENOISERS:
        network = getattr(model, name, None)
        if isinstance(network, nn.Module):
            network.compile(dynamic=True)
            return name
    raise InvalidInputError(f"{type(model).__name__} has no network to compile.")
