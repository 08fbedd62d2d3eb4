"""The ``lite`` network: a compact feed-forward x4 student whose FiLM layers take t as an input.

A head conv, residual blocks whose first conv is modulated by FiLM (scale and shift per channel)
from an embedding of t, and a sub-pixel (pixel shuffle) tail added to a bilinear upsample of the
input. Layer sizes are read from the tensors (:func:`config_from_state`), never from metadata alone.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import IncompatibleWeightsError

__all__ = ["CONFIG_BOUNDS", "LiteNet", "check_config", "config_from_state", "icnr_"]

CONFIG_BOUNDS: dict[str, tuple[int, int]] = {"channels": (1, 512), "blocks": (1, 64), "scale": (1, 8), "embed": (1, 256)}
"""Inclusive bounds of the metadata ``config`` fields (the shipped model: 64 channels, 16 blocks, x4, 16)."""


class LiteNet(nn.Module):
    """(N, 3, h, w) in [0, 1] and t (N,) in [0, 1] -> (N, 3, 4h, 4w), about [0, 1]."""

    def __init__(self, *, channels: int = 48, blocks: int = 8, scale: int = 4, embed: int = 16) -> None:
        super().__init__()
        self.channels, self.blocks, self.scale, self.embed = channels, blocks, scale, embed
        self.head = nn.Conv2d(3, channels, 3, padding=1)
        self.film = nn.Sequential(nn.Linear(2 * embed, 64), nn.SiLU(), nn.Linear(64, blocks * 2 * channels))
        self.convs1 = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in range(blocks))
        self.convs2 = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in range(blocks))
        self.body = nn.Conv2d(channels, channels, 3, padding=1)
        self.tail = nn.Conv2d(channels, 3 * scale * scale, 3, padding=1)
        film_out = self.film[-1]
        assert isinstance(film_out, nn.Linear) and self.tail.bias is not None
        nn.init.zeros_(film_out.weight)
        nn.init.zeros_(film_out.bias)
        icnr_(self.tail.weight, scale)
        nn.init.zeros_(self.tail.bias)

    def config(self) -> dict[str, int]:
        return {"channels": self.channels, "blocks": self.blocks, "scale": self.scale, "embed": self.embed}

    def _t_features(self, t: torch.Tensor) -> torch.Tensor:
        frequencies = torch.exp(torch.arange(self.embed, device=t.device, dtype=torch.float32) * (math.log(100.0) / self.embed))
        angles = t.float()[:, None] * frequencies[None] * math.pi
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        film = self.film(self._t_features(t).to(x.dtype)).view(x.shape[0], self.blocks, 2, self.channels, 1, 1)
        features = F.leaky_relu(self.head(x * 2.0 - 1.0), 0.1)
        skip = features
        # one t for the whole batch at inference (every runtime call): FiLM folds into conv1's weights
        # and bias (scale the output channels, shift the bias), which saves two full-resolution passes
        # per block; the same result up to float rounding
        folded = not torch.is_grad_enabled() and (t.numel() == 1 or bool((t == t.flatten()[0]).all()))
        for index in range(self.blocks):
            conv = cast(nn.Conv2d, self.convs1[index])
            if folded:
                gain, shift = 1.0 + film[0, index, 0, :, 0, 0], film[0, index, 1, :, 0, 0]
                weight = conv.weight * gain.to(conv.weight.dtype)[:, None, None, None]
                bias = conv.bias * gain.to(conv.bias.dtype) + shift.to(conv.bias.dtype) if conv.bias is not None else shift
                residual = F.conv2d(features, weight, bias, padding=conv.padding)
            else:
                residual = conv(features)
                residual = residual * (1.0 + film[:, index, 0]) + film[:, index, 1]
            residual = self.convs2[index](F.leaky_relu(residual, 0.1, inplace=True))
            features = features + residual
        features = self.body(features) + skip
        detail = F.pixel_shuffle(self.tail(features), self.scale)
        base = F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)
        if folded and detail.dtype == base.dtype:  # inference: in place, one output-sized tensor less at the peak
            return detail.add_(base)
        return base + detail


def icnr_(weight: torch.Tensor, scale: int) -> None:
    """ICNR initialisation of a conv feeding ``pixel_shuffle(scale)``: the scale² sub-pixel outputs of
    each channel start identical, so the untrained tail is a nearest-neighbour upsampler and training
    does not start from (and tends not to keep) a checkerboard (Aitken et al., 2017)."""
    out_channels = weight.shape[0] // (scale * scale)
    base = torch.empty(out_channels, *weight.shape[1:])
    nn.init.kaiming_normal_(base, a=0.1)
    with torch.no_grad():
        weight.copy_(base.repeat_interleave(scale * scale, dim=0) * 0.1)


def check_config(config: Mapping[str, Any]) -> None:
    """Bounds of a lite student's ``config`` metadata: known integer fields within :data:`CONFIG_BOUNDS`."""
    unknown = sorted(set(config) - set(CONFIG_BOUNDS))
    if unknown:
        raise IncompatibleWeightsError(f"lite student `config` has unknown fields {unknown}; known: {sorted(CONFIG_BOUNDS)}.")
    for name, value in config.items():
        low, high = CONFIG_BOUNDS[name]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise IncompatibleWeightsError(f"lite student `config.{name}` must be an integer in [{low}, {high}], got {value!r}.")


def config_from_state(state: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, int]:
    """The network's sizes read from the tensor shapes (spandrel's rule), checked against ``config``:
    a file whose metadata claims other sizes than its tensors have is refused before any network is
    built."""
    check_config(config)

    def shape(key: str, dims: int) -> tuple[int, ...]:
        tensor = state.get(key)
        if tensor is None:
            raise IncompatibleWeightsError(f"lite student has no tensor `net.{key}`.")
        if tensor.dim() != dims:
            raise IncompatibleWeightsError(f"lite student tensor `net.{key}` has {tensor.dim()} dimensions, expected {dims}.")
        return tuple(tensor.shape)

    channels = shape("head.weight", 4)[0]
    blocks = 1 + max((int(m[1]) for key in state if (m := re.fullmatch(r"convs1\.(\d+)\.weight", key))), default=-1)
    embed2 = shape("film.0.weight", 2)[1]
    tail = shape("tail.weight", 4)[0]
    scale = math.isqrt(max(tail // 3, 0))
    found = {"channels": channels, "blocks": blocks, "scale": scale, "embed": embed2 // 2}
    if blocks < 1 or embed2 % 2 or scale * scale * 3 != tail:
        raise IncompatibleWeightsError(
            f"lite student tensors do not form a lite network ({blocks} blocks, `net.film.0.weight` width {embed2}, "
            f"`net.tail.weight` with {tail} outputs)."
        )
    check_config(found)
    for name, value in config.items():
        if found[name] != value:
            raise IncompatibleWeightsError(f"lite student `config.{name}` is {value}, but its tensors have {name} = {found[name]}.")
    return found
