"""The tiling policy of the SD stages: how many bytes the tiler may plan for, what one pixel of each
stage costs, and :class:`TilePlan`, which tiles only what does not fit."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from torch import nn

from ..errors import InvalidInputError
from .lockstep import TilingMode
from .tiles import plan_tiles

logger = logging.getLogger(__name__)

__all__ = [
    "FULL_RES_BYTES_PER_PIXEL", "MIN_TILE_BUDGET", "UNET_BYTES_PER_LATENT_PIXEL", "VAE_BYTES_PER_PIXEL",
    "PlanOptions", "TilePlan", "TilingChoice", "budget_for_tiles", "default_memory_budget",
]

TilingChoice = Literal["auto", "exact", "fast", "off"]
VAE_BYTES_PER_PIXEL = 5120
"""Peak VAE activation bytes per image pixel (tile and context) in fp32 when tiles run in lockstep:
measured 18.3 GB for nine 640-px tiles of SD 2.1's decoder on the CPU (about 4.9 kB/px)."""
UNET_BYTES_PER_LATENT_PIXEL = 64 * 1024
"""Rough peak UNet activation bytes per latent pixel in fp32 (SD 2.1's UNet, SDPA attention)."""
FULL_RES_BYTES_PER_PIXEL = 48
"""Bytes per output pixel of the full-resolution buffers (input, padded copy, output and blend
weights) that live beside the tiles."""
MIN_TILE_BUDGET = 1e8
"""The least budget the tiler plans for, whatever the weights and buffers leave."""


class PlanOptions(Protocol):
    """The options of one call that :meth:`TilePlan.decide` reads (``RunOptions`` has them)."""

    @property
    def tiling(self) -> TilingChoice: ...
    @property
    def tile(self) -> int | None: ...
    @property
    def tile_overlap(self) -> int | None: ...
    @property
    def vae_tile(self) -> int | None: ...
    @property
    def memory_budget(self) -> float | None: ...


def default_memory_budget(device: torch.device) -> float:
    if device.type == "cuda":
        return 0.8 * torch.cuda.get_device_properties(device).total_memory
    try:
        return 0.5 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8e9


def budget_for_tiles(memory_budget: float | None, device: torch.device, *, networks: Iterable[nn.Module], height: int,
                     width: int, bytes_per_pixel: int = FULL_RES_BYTES_PER_PIXEL) -> float:
    """Bytes the tiler may plan for on ``device`` for an output of ``height`` x ``width`` pixels.

    The loaded weights of ``networks`` and the full-resolution buffers (``bytes_per_pixel`` per
    pixel) live in the same memory, so they come off ``memory_budget`` (None or 0: the
    :func:`default_memory_budget`) first; never less than :data:`MIN_TILE_BUDGET`."""
    weights = sum(p.numel() * p.element_size() for m in networks for p in m.parameters())
    budget = (memory_budget or default_memory_budget(device)) - weights - bytes_per_pixel * height * width
    return max(budget, MIN_TILE_BUDGET)


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
    def decide(cls, height: int, width: int, options: PlanOptions, *, vae_bytes: int, device: torch.device,
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
            vae_mode = "exact" if options.tiling == "exact" else "fast"
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

