"""What every family shares: the options of one call (the tiling plan of the SD stages lives in
:mod:`ctsr_infer.tiling.budget` and is re-exported here)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
from torch import nn

from ..colorfix import ColorFix
from ..errors import InvalidInputError

# the tiling policy moved to the tiling package; its names stay importable from here
from ..tiling.budget import (  # noqa: F401
    UNET_BYTES_PER_LATENT_PIXEL,
    VAE_BYTES_PER_PIXEL,
    TilePlan,
    TilingChoice,
    default_memory_budget,
)

__all__ = ["RunOptions", "TilePlan", "default_memory_budget", "VAE_BYTES_PER_PIXEL", "run_in_fp32"]


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
    protect_faces: float | None = None
    """The t faces get (a map pins them, feathered); None: faces are not treated apart."""


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
