"""Pieces the GAN-based recipes share: EMA, hinge / non-saturating losses, and TAD-SR's time-aware
discriminator heads on a frozen denoiser's encoder features (arXiv 2408.07476 Eq. 9-12)."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import spectral_norm

from ..families.resshift.swin_unet import GroupNorm32, timestep_embedding

__all__ = ["EMA", "hinge_d_loss", "hinge_g_loss", "TimeAwareDiscriminator"]


class EMA:
    """Exponential moving average of a module's parameters (decay 0.999 in TAD-SR)."""

    def __init__(self, module: nn.Module, decay: float = 0.999) -> None:
        self.decay = decay
        self.shadow = copy.deepcopy(module).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        for ema, live in zip(self.shadow.parameters(), module.parameters()):
            ema.lerp_(live.detach(), 1.0 - self.decay)


def hinge_d_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """max(0, 1 - D(real)) + max(0, 1 + D(fake)), averaged (Eq. 12)."""
    return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()


def hinge_g_loss(fake: torch.Tensor) -> torch.Tensor:
    """-D(fake), averaged (Eq. 11)."""
    return -fake.mean()


class _Head(nn.Module):
    """One scale: time-modulated GroupNorm (Eq. 10), a zero-initialised 3x3 conv, then 1-D spectral-norm
    convolutions over the flattened positions (projected-GAN style) to ``c_dim`` logits per position."""

    def __init__(self, channels: int, embed_dim: int, c_dim: int) -> None:
        super().__init__()
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(embed_dim, 2 * channels))
        self.norm = GroupNorm32(channels)
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        assert self.conv.bias is not None
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)
        groups = 4 if channels % 4 == 0 else 1
        self.block1 = nn.Sequential(spectral_norm(nn.Conv1d(channels, channels, 1)), nn.GroupNorm(groups, channels), nn.LeakyReLU(0.2))
        self.block2 = nn.Sequential(spectral_norm(nn.Conv1d(channels, channels, 9, padding=4, padding_mode="circular")),
                                    nn.GroupNorm(groups, channels), nn.LeakyReLU(0.2))
        self.out = spectral_norm(nn.Conv1d(channels, c_dim, 1))

    def forward(self, feature: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        scale, shift = self.modulation(emb)[..., None, None].chunk(2, dim=1)
        h = self.conv(F.silu(self.norm(feature) * (1 + scale) + shift))
        h = self.block1(h.flatten(2))
        h = h + self.block2(h)
        return self.out(h).flatten(1)


class TimeAwareDiscriminator(nn.Module):
    """Heads on the frozen teacher's multi-scale encoder features, modulated by the timestep; returns
    all heads' logits concatenated (B, N): one mean over them weights heads by their positions, as
    TAD-SR's code does."""

    def __init__(self, channels: list[int], *, embed_dim: int = 160, c_dim: int = 64) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.heads = nn.ModuleList(_Head(c, embed_dim, c_dim) for c in channels)

    def forward(self, features: list[torch.Tensor], timesteps: torch.Tensor) -> torch.Tensor:
        emb = timestep_embedding(timesteps, self.embed_dim).to(features[0].dtype)
        return torch.cat([head(f, emb) for head, f in zip(self.heads, features)], dim=1)
