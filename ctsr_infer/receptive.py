"""Receptive radius of a convolutional network, measured from the module itself.

Tiled runs add real image around each tile ("context"); a tile's core is exact only when the
context covers the network's receptive radius, the farthest input pixel an output pixel depends on
through its convolutions. The radius is summed over the network's convolutions as one forward pass
actually calls them (hooks on a small probe input), each contributing its reach ((k - 1) / 2 taps
times the dilation, plus stride - 1 for the asymmetric padding of strided convs) in the units of the
network's input, so it follows any depth or layout without a table of hard-coded numbers. Global
operators (self-attention, GroupNorm statistics) are not convolutions: the tiled VAE shares them
across tiles (see :mod:`ctsr_infer.tiling`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

__all__ = ["receptive_radius", "context_for"]


@torch.inference_mode()
def receptive_radius(module: nn.Module, channels: int, *, probe: int = 32, dtype: torch.dtype | None = None,
                     call: Callable[[torch.Tensor], object] | None = None) -> float:
    """The receptive radius of ``module`` in pixels of its input, measured on a ``probe`` x ``probe``
    input of ``channels`` channels (any size the module accepts; the result does not depend on it).
    ``call(x)`` runs the module when it takes more than the image (default: ``module(x)``)."""
    reach: list[float] = []

    def hook(conv: nn.Conv2d, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        # the conv's input resolution from its output (explicit padding, as in diffusers' Downsample2D,
        # would otherwise count as image)
        size = output.shape[-1] * conv.stride[-1]
        taps = (conv.kernel_size[-1] - 1) * conv.dilation[-1] / 2 + (conv.stride[-1] - 1)
        reach.append(taps * probe / size)  # this conv's input pixel, in pixels of the module's input

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, nn.Conv2d)]
    try:
        parameter = next(module.parameters())
        x = torch.zeros(1, channels, probe, probe, device=parameter.device, dtype=dtype or parameter.dtype)
        (call or module)(x)
    finally:
        for handle in handles:
            handle.remove()
    return float(sum(reach))


def context_for(radius: float, *, align: int = 1) -> int:
    """The context (pixels, a multiple of ``align``) that covers ``radius`` plus one pixel of rounding."""
    return int(math.ceil((radius + 1) / align)) * align
