"""Colour correction of an SR output against its bicubic-upsampled input (OSEDiff's two methods).

Both run on the whole image (never per tile), on (N, 3, H, W) float tensors in [0, 1]:

* ``adain``: per channel, out = (x - mean_x) / std_x * std_ref + mean_ref with
  std = sqrt(unbiased variance + 1e-5);
* ``wavelet``: the low frequencies of the output are replaced by those of the reference, the low
  band being five a-trous passes of the 3x3 binomial kernel with dilation 2^i and replicate padding.
"""

from __future__ import annotations

from typing import Literal, cast, get_args

import torch

from .errors import InvalidInputError

__all__ = ["ColorFix", "color_fix", "check_color_fix"]

ColorFix = Literal["adain", "wavelet", "none"]


def check_color_fix(value: str) -> ColorFix:
    if value not in get_args(ColorFix):
        raise InvalidInputError(f"`color_fix` must be one of {list(get_args(ColorFix))}, got {value!r}.")
    return cast(ColorFix, value)


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


LOW_PASS_REACH = sum(2**level for level in range(5))
"""Rows of the five a-trous passes' reach (1 + 2 + 4 + 8 + 16 = 31): a strip computed with this many
extra rows on each side equals the whole-image result on its own rows."""


def _wavelet(x: torch.Tensor, ref: torch.Tensor, *, strip: int = 256) -> torch.Tensor:
    """(x - low(x)) + low(ref) = x + low(ref - x): the low pass is linear, so one pass instead of two,
    computed in horizontal strips of ``strip`` rows (each with :data:`LOW_PASS_REACH` rows of halo) so a
    large image needs strip-sized temporaries, not five image-sized ones; ``x`` is updated in place."""
    height = x.shape[-2]
    reach = LOW_PASS_REACH
    difference = ref - x  # before x changes: every strip's halo must see the original rows
    for top in range(0, height, strip):
        bottom = min(height, top + strip)
        lo, hi = max(0, top - reach), min(height, bottom + reach)
        x[..., top:bottom, :] += _low_pass(difference[..., lo:hi, :])[..., top - lo : bottom - lo, :]
    return x


def color_fix(image: torch.Tensor, reference: torch.Tensor, method: ColorFix, *, inplace: bool = False) -> torch.Tensor:
    """Return ``image`` with the colour of ``reference``; both (N, 3, H, W) in [0, 1]; clamped.
    ``inplace``: a float32 ``image`` may be overwritten (saves an image-sized copy)."""
    if method == "none":
        return image
    compute = image.float()
    ref = reference.to(device=image.device, dtype=torch.float32)
    if method == "adain":
        out = _adain(compute, ref)
    else:
        out = _wavelet(compute.clone() if compute is image and not inplace else compute, ref)  # the caller's tensor stays
    return out.clamp_(0.0, 1.0).to(image.dtype)
