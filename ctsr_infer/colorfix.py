"""Colour correction of an SR output against its bicubic-upsampled input (OSEDiff's two methods).

Both run on the whole image (never per tile), on (N, 3, H, W) float tensors in [0, 1]:

* ``adain``: per channel, out = (x - mean_x) / std_x * std_ref + mean_ref with
  std = sqrt(unbiased variance + 1e-5);
* ``wavelet``: the low frequencies of the output are replaced by those of the reference, the low
  band being five a-trous passes of the 3x3 binomial kernel with dilation 2^i and replicate padding.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch

from .errors import InvalidInputError

__all__ = ["ColorFix", "color_fix", "check_color_fix"]

ColorFix = Literal["adain", "wavelet", "none"]


def check_color_fix(value: str) -> ColorFix:
    if value not in get_args(ColorFix):
        raise InvalidInputError(f"`color_fix` must be one of {list(get_args(ColorFix))}, got {value!r}.")
    return value  # type: ignore[return-value]


def _adain(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    n, c = x.shape[:2]
    xf, rf = x.reshape(n, c, -1), ref.reshape(n, c, -1)
    x_mean, r_mean = xf.mean(-1, keepdim=True), rf.mean(-1, keepdim=True)
    # unbiased variance needs two samples; a 1-pixel image keeps its own colour spread (0)
    x_std = (xf.var(-1, keepdim=True, unbiased=xf.shape[-1] > 1) + 1e-5).sqrt()
    r_std = (rf.var(-1, keepdim=True, unbiased=rf.shape[-1] > 1) + 1e-5).sqrt()
    return ((xf - x_mean) / x_std * r_std + r_mean).reshape(x.shape)


def _low_pass(x: torch.Tensor, levels: int = 5) -> torch.Tensor:
    """Five a-trous passes of the 3x3 binomial kernel with replicate padding, computed separably with
    shifted slices: the kernel is the outer product of [1, 2, 1] / 4 with itself, and replicate
    padding clamps each axis on its own, so a horizontal then a vertical 3-tap pass equals the 3x3
    pass to float rounding (and runs in a fraction of a dilated depthwise convolution's time on a CPU)."""
    y = x
    for level in range(levels):
        d = 2**level
        for dim in (-1, -2):
            size = y.shape[dim]
            first, last = y.narrow(dim, 0, 1), y.narrow(dim, size - 1, 1)
            padded = torch.cat([first.expand_as(y.narrow(dim, 0, d)) if size >= d else first.repeat_interleave(d, dim), y,
                                last.expand_as(y.narrow(dim, 0, d)) if size >= d else last.repeat_interleave(d, dim)], dim=dim)
            out = padded.narrow(dim, 0, size) * 0.25
            out.add_(y, alpha=0.5).add_(padded.narrow(dim, 2 * d, size), alpha=0.25)
            y = out
    return y


def _wavelet(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    # (x - low(x)) + low(ref) = x + low(ref - x): the low pass is linear, so one pass instead of two
    return x + _low_pass(ref - x)


def color_fix(image: torch.Tensor, reference: torch.Tensor, method: ColorFix) -> torch.Tensor:
    """Return ``image`` with the colour of ``reference``; both (N, 3, H, W) in [0, 1]; clamped."""
    if method == "none":
        return image
    compute = image.float()
    ref = reference.to(device=image.device, dtype=torch.float32)
    out = _adain(compute, ref) if method == "adain" else _wavelet(compute, ref)
    return out.clamp(0.0, 1.0).to(image.dtype)
