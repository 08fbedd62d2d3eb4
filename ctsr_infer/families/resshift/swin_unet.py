"""ResShift's denoiser: a UNet with Swin-transformer layers (``UNetModelSwin`` of zsyOAOA/ResShift).

Written from the architecture, with parameter names laid out as in the public checkpoints
(``resshift_realsrx4_s15_v1.pth``, ``SinSR_v1.pth``, ``resshift_realsrx4_s4_v3.pth``), so their state
dicts load strictly. Two behaviours of the public model are reproduced on purpose:

* the shifted-window attention mask is ResShift's, not standard Swin's: its region ids come from the
  image row only and its in-window token order is transposed, so in effect only the bottom row of
  windows is masked, by the in-window *column* of each token; it is recomputed for the actual input
  size on every call (the ``attn_mask`` buffers in the checkpoints are never used);
* window size and shift are fixed when the network is built, from ``image_size`` (a layer whose
  build-time resolution is <= the window gets the whole resolution as window and no shift).

The low-resolution image is concatenated to the latent on channels (``cond_lq`` with
``lq_size == image_size``: no feature extractor). GroupNorms compute in float32 (``GroupNorm32``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import IncompatibleWeightsError
from ..state import check_state

__all__ = ["SwinUNetConfig", "SwinUNet", "load_public_state", "strip_prefixes", "PUBLIC_BUFFERS"]

PUBLIC_BUFFERS = ("attn.relative_position_index", "attn_mask")
"""Buffers the public checkpoints carry that this implementation derives instead."""


@dataclass(frozen=True)
class SwinUNetConfig:
    """The ``model.params`` of ResShift's real-SR configs (defaults: the x4 real-SR model)."""

    image_size: int = 64
    in_channels: int = 3
    model_channels: int = 160
    out_channels: int = 3
    attention_resolutions: tuple[int, ...] = (64, 32, 16, 8)
    channel_mult: tuple[int, ...] = (1, 2, 2, 4)
    num_res_blocks: tuple[int, ...] = (2, 2, 2, 2)
    num_head_channels: int = 32
    swin_depth: int = 2
    swin_embed_dim: int = 192
    window_size: int = 8
    mlp_ratio: float = 4.0
    lq_channels: int = 3
    """Channels of the low-resolution image concatenated to the latent."""
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> SwinUNetConfig:
        known = set(cls.__dataclass_fields__) - {"extra"}
        unknown = sorted(set(config) - known)
        if unknown:
            raise IncompatibleWeightsError(f"unknown Swin-UNet setting(s) {unknown}; known: {sorted(known)}.")
        values = dict(config)
        for key in ("attention_resolutions", "channel_mult", "num_res_blocks"):
            if key in values:
                value = values[key]
                values[key] = tuple(int(v) for v in (value if isinstance(value, Sequence) else [value] * len(values.get("channel_mult", cls.channel_mult))))
        return cls(**values)

    def to_config(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("extra")
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}

    @property
    def multiple(self) -> int:
        """Input sides must be multiples of this: the window at the coarsest level."""
        windows = [_window_and_shift(self.image_size // 2**level, self.window_size)[0] for level in range(len(self.channel_mult))]
        return max(window * 2**level for level, window in enumerate(windows))


class GroupNorm32(nn.GroupNorm):
    """32 groups, computed in float32 and cast back (ResShift's ``normalization``)."""

    def __init__(self, channels: int) -> None:
        super().__init__(32, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).to(x.dtype)


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding, cosines first (guided-diffusion's convention)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, scale-shift by the time embedding, GroupNorm-SiLU-conv, skip."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int | None = None) -> None:
        super().__init__()
        out_channels = out_channels or channels
        self.in_layers = nn.Sequential(GroupNorm32(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels))
        self.out_layers = nn.Sequential(GroupNorm32(out_channels), nn.SiLU(), nn.Dropout(0.0), nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip_connection: nn.Module = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        scale, shift = self.emb_layers(emb).to(h.dtype)[..., None, None].chunk(2, dim=1)
        h = self.out_layers[0](h) * (1 + scale) + shift
        for layer in list(self.out_layers)[1:]:
            h = layer(h)
        return self.skip_connection(x) + h


def _window_and_shift(resolution: int, window: int) -> tuple[int, int]:
    if resolution <= window:
        return resolution, 0
    return window, window // 2


def _relative_position_index(window: int) -> torch.Tensor:
    rows, cols = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    coords = torch.stack([rows.flatten(), cols.flatten()])  # 2, N
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    return relative[..., 0] * (2 * window - 1) + relative[..., 1]


def resshift_window_mask(height: int, width: int, window: int, shift: int) -> torch.Tensor:
    """(windows, N, N) additive mask (0 or -100) of ResShift's shifted-window attention.

    Rows of the (shifted) image get region 0 above ``height - window``, 1 up to ``height - shift``
    and 2 below; because of the transposed token order, token p of a window is assigned the
    region of the row at its in-window *column* p % window. Two tokens of different regions do not
    attend to each other. Only the bottom row of windows ever has two regions."""
    rows = torch.arange(height)
    region = (rows >= height - window).long() + (rows >= height - shift).long()
    grid_h, grid_w = height // window, width // window
    window_rows = torch.arange(grid_h)[:, None] * window + torch.arange(window)[None]  # grid_h, window
    per_window = region[window_rows]  # grid_h, window: region by in-window offset
    token_offset = torch.arange(window * window) % window  # in-window column of each token
    ids = per_window[:, token_offset]  # grid_h, N
    mask = (ids[:, :, None] != ids[:, None, :]).float() * -100.0
    return mask[:, None].expand(grid_h, grid_w, window * window, window * window).reshape(grid_h * grid_w, window * window, window * window)


class WindowAttention(nn.Module):
    relative_position_index: torch.Tensor  # a buffer

    def __init__(self, dim: int, window: int, heads: int) -> None:
        super().__init__()
        self.window, self.heads = window, heads
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        self.register_buffer("relative_position_index", _relative_position_index(window), persistent=False)
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """x: (windows * B, N, C); mask: (windows, N, N) or None."""
        count, tokens, channels = x.shape
        qkv = self.qkv(x).reshape(count, tokens, 3, self.heads, channels // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]
        bias = bias.reshape(tokens, tokens, -1).permute(2, 0, 1).to(q.dtype)  # heads, N, N
        if mask is None:
            additive = bias[None]
        else:
            windows = mask.shape[0]
            additive = (bias[None, None] + mask[None, :, None].to(q.dtype)).expand(count // windows, -1, -1, -1, -1)
            additive = additive.reshape(count, self.heads, tokens, tokens)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=additive)
        return self.proj(out.transpose(1, 2).reshape(count, tokens, channels))


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, dim, 1)


class _Projection(nn.Module):
    """A 1x1 conv under the name ``proj`` (the public checkpoints' layout)."""

    def __init__(self, channels: int, out_channels: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(channels, out_channels, 1)


class SwinBlock(nn.Module):
    def __init__(self, dim: int, heads: int, window: int, shift: int, mlp_ratio: float) -> None:
        super().__init__()
        self.window, self.shift = window, shift
        self.norm1 = GroupNorm32(dim)
        self.attn = WindowAttention(dim, window, heads)
        self.norm2 = GroupNorm32(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = _Mlp(dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        w = self.window
        if height % w or width % w:
            raise ValueError(f"Swin layer input {height}x{width} is not a multiple of its window {w}")
        h = self.norm1(x)
        if self.shift:
            h = torch.roll(h, shifts=(-self.shift, -self.shift), dims=(2, 3))
        windows = h.reshape(batch, channels, height // w, w, width // w, w).permute(0, 2, 4, 3, 5, 1).reshape(-1, w * w, channels)
        mask = resshift_window_mask(height, width, w, self.shift).to(x.device) if self.shift else None
        windows = self.attn(windows, mask)
        h = windows.reshape(batch, height // w, width // w, w, w, channels).permute(0, 5, 1, 3, 2, 4).reshape(batch, channels, height, width)
        if self.shift:
            h = torch.roll(h, shifts=(self.shift, self.shift), dims=(2, 3))
        x = x + h
        return x + self.mlp.fc2(F.gelu(self.mlp.fc1(self.norm2(x))))


class SwinLayer(nn.Module):
    """1x1 conv in, ``depth`` Swin blocks (shift on every second), 1x1 conv out (``BasicLayer``)."""

    def __init__(self, channels: int, config: SwinUNetConfig, resolution: int) -> None:
        super().__init__()
        window, shift = _window_and_shift(resolution, config.window_size)
        heads = config.swin_embed_dim // config.num_head_channels
        self.patch_embed = _Projection(channels, config.swin_embed_dim)
        self.blocks = nn.ModuleList(
            SwinBlock(config.swin_embed_dim, heads, window, 0 if i % 2 == 0 else shift, config.mlp_ratio) for i in range(config.swin_depth)
        )
        self.patch_unembed = _Projection(config.swin_embed_dim, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed.proj(x)
        for block in self.blocks:
            x = block(x)
        return self.patch_unembed.proj(x)


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class _Step(nn.ModuleList):
    """A sequence of layers; ResBlocks also get the time embedding (``TimestepEmbedSequential``)."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class SwinUNet(nn.Module):
    """``net(z_scaled, timesteps, lq)`` -> predicted z0, all (B, C, H, W) with H, W multiples of
    :attr:`SwinUNetConfig.multiple`."""

    def __init__(self, config: SwinUNetConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or SwinUNetConfig()
        mc = config.model_channels
        emb = mc * 4
        self.time_embed = nn.Sequential(nn.Linear(mc, emb), nn.SiLU(), nn.Linear(emb, emb))
        ch = input_ch = config.channel_mult[0] * mc
        self.input_blocks = nn.ModuleList([_Step([nn.Conv2d(config.in_channels + config.lq_channels, ch, 3, padding=1)])])
        skips = [ch]
        resolution = config.image_size
        levels = len(config.channel_mult)
        for level, mult in enumerate(config.channel_mult):
            for index in range(config.num_res_blocks[level]):
                layers: list[nn.Module] = [ResBlock(ch, emb, mult * mc)]
                ch = mult * mc
                if resolution in config.attention_resolutions and index == 0:
                    layers.append(SwinLayer(ch, config, resolution))
                self.input_blocks.append(_Step(layers))
                skips.append(ch)
            if level != levels - 1:
                self.input_blocks.append(_Step([Downsample(ch)]))
                skips.append(ch)
                resolution //= 2
        self.middle_block = _Step([ResBlock(ch, emb), SwinLayer(ch, config, resolution), ResBlock(ch, emb)])
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(config.channel_mult))):
            for index in range(config.num_res_blocks[level] + 1):
                layers = [ResBlock(ch + skips.pop(), emb, mc * mult)]
                ch = mc * mult
                if resolution in config.attention_resolutions and index == 0:
                    layers.append(SwinLayer(ch, config, resolution))
                if level and index == config.num_res_blocks[level]:
                    layers.append(Upsample(ch))
                    resolution *= 2
                self.output_blocks.append(_Step(layers))
        self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(), nn.Conv2d(input_ch, config.out_channels, 3, padding=1))

    def encoder_features(self, x: torch.Tensor, timesteps: torch.Tensor, lq: torch.Tensor) -> list[torch.Tensor]:
        """Multi-scale features of the encoder half: the output of every downsampling block, of the
        last input block and of the middle block (TAD-SR's discriminator features; for the x4
        real-SR config input blocks 3, 6, 9, 11 and the middle block)."""
        dtype = cast(nn.Linear, self.time_embed[0]).weight.dtype
        emb = self.time_embed(timestep_embedding(timesteps, self.config.model_channels).to(dtype))
        h = torch.cat([x, lq], dim=1).to(dtype)
        features = []
        for index, block in enumerate(self.input_blocks):
            h = block(h, emb)
            if isinstance(cast(_Step, block)[0], Downsample) or index == len(self.input_blocks) - 1:
                features.append(h)
        features.append(self.middle_block(h, emb))
        return features

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, lq: torch.Tensor) -> torch.Tensor:
        multiple = self.config.multiple
        if x.shape[-2] % multiple or x.shape[-1] % multiple or lq.shape[-2:] != x.shape[-2:]:
            raise ValueError(f"Swin-UNet inputs must be multiples of {multiple} with lq of the same size; got {tuple(x.shape)} and {tuple(lq.shape)}")
        dtype = cast(nn.Linear, self.time_embed[0]).weight.dtype
        emb = self.time_embed(timestep_embedding(timesteps, self.config.model_channels).to(dtype))
        h = torch.cat([x, lq], dim=1).to(dtype)
        stack = []
        for block in self.input_blocks:
            h = block(h, emb)
            stack.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, stack.pop()], dim=1), emb)
        return self.out(h).float()


def strip_prefixes(state: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in state.items():
        for prefix in ("module.", "_orig_mod."):
            if key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def load_public_state(net: SwinUNet, data: Mapping[str, Any], *, source: str) -> None:
    """Load a public ResShift/SinSR checkpoint's state dict strictly.

    Accepts the dict at the top level or under ``state_dict``, with ``module.`` and/or
    ``_orig_mod.`` prefixes. The derived buffers (``relative_position_index``, ``attn_mask``) must be
    present where the public model has them; ``relative_position_index`` must equal the derived
    one."""
    state = data.get("state_dict", data) if isinstance(data.get("state_dict"), Mapping) else data
    state = strip_prefixes(state)
    own = net.state_dict()
    buffers = {k for k in state if k.endswith(PUBLIC_BUFFERS)}
    expected_buffers = {f"{name}.attn.relative_position_index" for name, m in net.named_modules() if isinstance(m, SwinBlock)}
    expected_buffers |= {f"{name}.attn_mask" for name, m in net.named_modules() if isinstance(m, SwinBlock) and m.shift}
    absent = sorted(expected_buffers - set(state))
    if absent:
        raise IncompatibleWeightsError(f"{source} does not fit the Swin-UNet ({net.config.to_config()}): missing {absent[:6]}"
                                       f"{' ...' if len(absent) > 6 else ''}.")
    check_state(own, state, source=source, what=f"the Swin-UNet ({net.config.to_config()})", ignore=expected_buffers)
    for key in buffers:
        if key.endswith("relative_position_index"):
            module = cast(WindowAttention, net.get_submodule(key.rsplit(".", 1)[0]))
            if not torch.equal(state[key].long(), module.relative_position_index):
                raise IncompatibleWeightsError(f"{source}: `{key}` differs from the Swin relative-position index of window {module.window}.")
    net.load_state_dict({k: state[k].float() for k in own}, strict=True)
