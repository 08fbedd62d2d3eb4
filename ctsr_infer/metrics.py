"""Full-reference image metrics as SR papers report them: PSNR and SSIM on RGB or on Y.

Y is ITU-R BT.601 luma in [16, 235] (MATLAB's ``rgb2ycbcr``), SSIM uses an 11x11 Gaussian window
with sigma 1.5 (Wang et al. 2004), and ``crop`` pixels are removed from each border first (the scale,
by convention). Inputs are (H, W, 3) float arrays in [0, 1].
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["psnr", "ssim", "to_y"]


def to_y(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) in [0, 1] -> (H, W, 1) Y in [16/255, 235/255]."""
    return ((16.0 + 65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]) / 255.0)[..., None]


def _prepare(a: np.ndarray, b: np.ndarray, crop: int, y: bool) -> tuple[np.ndarray, np.ndarray]:
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    if crop:
        a, b = a[crop:-crop, crop:-crop], b[crop:-crop, crop:-crop]
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (to_y(a), to_y(b)) if y else (a, b)


def psnr(a: np.ndarray, b: np.ndarray, *, crop: int = 0, y: bool = False) -> float:
    a, b = _prepare(a, b, crop, y)
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(1.0 / mse)


def ssim(a: np.ndarray, b: np.ndarray, *, crop: int = 0, y: bool = False) -> float:
    a, b = _prepare(a, b, crop, y)
    coords = torch.arange(11, dtype=torch.float64) - 5
    g = torch.exp(-(coords**2) / (2 * 1.5**2))
    window = (g[:, None] * g[None, :] / g.sum() ** 2)[None, None]
    x = torch.from_numpy(a).permute(2, 0, 1)[:, None]
    z = torch.from_numpy(b).permute(2, 0, 1)[:, None]
    mu_x, mu_z = F.conv2d(x, window), F.conv2d(z, window)
    sxx = F.conv2d(x * x, window) - mu_x**2
    szz = F.conv2d(z * z, window) - mu_z**2
    sxz = F.conv2d(x * z, window) - mu_x * mu_z
    c1, c2 = 0.01**2, 0.03**2
    value = ((2 * mu_x * mu_z + c1) * (2 * sxz + c2)) / ((mu_x**2 + mu_z**2 + c1) * (sxx + szz + c2))
    return float(value.mean())
