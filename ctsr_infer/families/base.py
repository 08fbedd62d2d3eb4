"""What every family shares: the options of one call."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..colorfix import ColorFix

__all__ = ["RunOptions"]


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
