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
import torch.nn.functional as F

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
    kernel = torch.tensor([1.0, 2.0, 1.0], dtype=x.dtype, device=x.device)
    kernel = (kernel[:, None] * kernel[None, :] / 16.0).expand(x.shape[1], 1, 3, 3).contiguous()
    for level in range(levels):
        dilation = 2**level
        pad_mode = "replicate"
        x = F.conv2d(F.pad(x, (dilation,) * 4, mode=pad_mode), kernel, dilation=dilation, groups=x.shape[1])
    return x


def _wavelet(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return (x - _low_pass(x)) + _low_pass(ref)


def color_fix(image: torch.Tensor, reference: torch.Tensor, method: ColorFix) -> torch.Tensor:
    """Return ``image`` with the colour of ``reference``; both (N, 3, H, W) in [0, 1]; clamped."""
    if method == "none":
        return image
    compute = image.float()
    ref = reference.to(device=image.device, dtype=torch.float32)
    out = _adain(compute, ref) if method == "adain" else _wavelet(compute, ref)
    return out.clamp(0.0, 1.0).to(image.dtype)
