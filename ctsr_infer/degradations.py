"""Degradations, seeded: the clean bicubic downscale, a "mild" family, and Real-ESRGAN's
second-order degradation (Wang et al., ICCV-W 2021, Sec. 3), in torch. Used by the training recipes
and by ``ctsr eval`` (which degrades ground truth on the fly).

Two rounds of blur -> random resize -> noise -> JPEG, then a final resize to the LR size with an
optional sinc filter, the JPEG and the resize+sinc in random order. Kernels: isotropic and
anisotropic Gaussian, generalized Gaussian, plateau, and 2-D sinc (ringing/overshoot). Every range
and probability lives in :class:`DegradationConfig`; the defaults are Real-ESRGAN's x4plus ones.

Differences, on purpose: JPEG goes through Pillow per image (Real-ESRGAN uses a differentiable
JPEG on the GPU; the result is the same codec family), and Poisson noise uses 255 levels instead
of counting an image's unique values.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

__all__ = ["DegradationConfig", "MildConfig", "random_kernel", "sinc_kernel", "degrade", "bicubic_degrade", "mild_degrade"]

KERNELS = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")


@dataclass(frozen=True)
class DegradationConfig:
    scale: int = 4
    kernel_probs: tuple[float, ...] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    sinc_prob: float = 0.1
    blur_sigma: tuple[float, float] = (0.2, 3.0)
    betag_range: tuple[float, float] = (0.5, 4.0)
    betap_range: tuple[float, float] = (1.0, 2.0)
    resize_prob: tuple[float, float, float] = (0.2, 0.7, 0.1)
    """up, down, keep"""
    resize_range: tuple[float, float] = (0.15, 1.5)
    gaussian_noise_prob: float = 0.5
    noise_range: tuple[float, float] = (1.0, 30.0)
    poisson_scale_range: tuple[float, float] = (0.05, 3.0)
    gray_noise_prob: float = 0.4
    jpeg_range: tuple[int, int] = (30, 95)
    second_blur_prob: float = 0.8
    sinc_prob2: float = 0.1
    blur_sigma2: tuple[float, float] = (0.2, 1.5)
    resize_prob2: tuple[float, float, float] = (0.3, 0.4, 0.3)
    resize_range2: tuple[float, float] = (0.3, 1.2)
    gaussian_noise_prob2: float = 0.5
    noise_range2: tuple[float, float] = (1.0, 25.0)
    poisson_scale_range2: tuple[float, float] = (0.05, 2.5)
    gray_noise_prob2: float = 0.4
    jpeg_range2: tuple[int, int] = (30, 95)
    final_sinc_prob: float = 0.8
    kernel_range: tuple[int, int] = (7, 21)
    """odd kernel sizes, padded to 21"""


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    half = size // 2
    return np.meshgrid(np.arange(-half, half + 1, dtype=np.float64), np.arange(-half, half + 1, dtype=np.float64))


def _pad21(kernel: np.ndarray) -> np.ndarray:
    pad = (21 - kernel.shape[0]) // 2
    return np.pad(kernel, pad)


def sinc_kernel(size: int, omega: float) -> np.ndarray:
    """Circular low-pass (2-D sinc) kernel with cutoff ``omega`` (radians), normalised."""
    xx, yy = _grid(size)
    r = np.sqrt(xx**2 + yy**2)
    r_t = torch.from_numpy(np.where(r == 0, 1.0, r) * omega)
    kernel = omega * torch.special.bessel_j1(r_t).numpy() / (2 * np.pi * np.where(r == 0, 1.0, r))
    kernel[r == 0] = omega**2 / (4 * np.pi)
    return kernel / kernel.sum()


def random_kernel(rng: np.random.Generator, cfg: DegradationConfig, *, sigma: tuple[float, float], sinc_prob: float) -> np.ndarray:
    """One 21x21 blur kernel drawn as Real-ESRGAN draws it."""
    size = int(rng.choice(np.arange(cfg.kernel_range[0], cfg.kernel_range[1] + 1, 2)))
    if rng.random() < sinc_prob:
        omega = rng.uniform(np.pi / 3, np.pi) if size < 13 else rng.uniform(np.pi / 5, np.pi)
        return _pad21(sinc_kernel(size, omega))
    kind = KERNELS[int(rng.choice(len(KERNELS), p=np.asarray(cfg.kernel_probs) / sum(cfg.kernel_probs)))]
    sx = rng.uniform(*sigma)
    sy = sx if kind.endswith("iso") and not kind.endswith("aniso") else rng.uniform(*sigma)
    theta = 0.0 if sy == sx else rng.uniform(-np.pi, np.pi)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    inv = np.linalg.inv(rot @ np.diag([sx**2, sy**2]) @ rot.T)
    xx, yy = _grid(size)
    quad = inv[0, 0] * xx**2 + (inv[0, 1] + inv[1, 0]) * xx * yy + inv[1, 1] * yy**2
    if kind.startswith("generalized"):
        beta = rng.uniform(cfg.betag_range[0], 1.0) if rng.random() < 0.5 else rng.uniform(1.0, cfg.betag_range[1])
        kernel = np.exp(-0.5 * quad**beta)
    elif kind.startswith("plateau"):
        beta = rng.uniform(cfg.betap_range[0], 1.0) if rng.random() < 0.5 else rng.uniform(1.0, cfg.betap_range[1])
        kernel = 1.0 / (quad**beta + 1.0)
    else:
        kernel = np.exp(-0.5 * quad)
    return _pad21(kernel / kernel.sum())


def _filter(image: torch.Tensor, kernel: np.ndarray) -> torch.Tensor:
    k = torch.from_numpy(kernel).to(image)[None, None].expand(image.shape[1], 1, *kernel.shape)
    pad = kernel.shape[0] // 2
    return F.conv2d(F.pad(image, (pad,) * 4, mode="reflect"), k, groups=image.shape[1])


def _resize(image: torch.Tensor, size: tuple[int, int], rng: np.random.Generator) -> torch.Tensor:
    mode = str(rng.choice(["area", "bilinear", "bicubic"]))
    if mode == "area":
        return F.interpolate(image, size=size, mode="area")
    return F.interpolate(image, size=size, mode=mode, align_corners=False)


def _noise(image: torch.Tensor, rng: np.random.Generator, *, prob: float, sigma: tuple[float, float], poisson: tuple[float, float], gray_prob: float) -> torch.Tensor:
    gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
    gray = rng.random() < gray_prob
    if rng.random() < prob:
        std = rng.uniform(*sigma) / 255.0
        shape = (1, 1, *image.shape[2:]) if gray else image.shape
        return image + torch.randn(shape, generator=gen) * std
    scale = rng.uniform(*poisson)
    base = image.mean(1, keepdim=True) if gray else image
    base = base.clamp(0, 1)
    noisy = torch.poisson(base * 255.0, generator=gen) / 255.0
    return image + (noisy - base) * scale


def _jpeg(image: torch.Tensor, quality: int) -> torch.Tensor:
    array = (image[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    back = np.asarray(Image.open(buffer).convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(back.copy()).permute(2, 0, 1)[None]


def _resize_step(image: torch.Tensor, rng: np.random.Generator, probs: tuple[float, float, float], scale_range: tuple[float, float], reference: tuple[int, int] | None = None) -> torch.Tensor:
    kind = int(rng.choice(3, p=np.asarray(probs) / sum(probs)))
    factor = rng.uniform(1.0, scale_range[1]) if kind == 0 else rng.uniform(scale_range[0], 1.0) if kind == 1 else 1.0
    height, width = reference or image.shape[2:]
    return _resize(image, (max(1, int(height * factor)), max(1, int(width * factor))), rng)


def degrade(hr: torch.Tensor, rng: np.random.Generator, cfg: DegradationConfig = DegradationConfig()) -> torch.Tensor:
    """(1, 3, H, W) in [0, 1] -> (1, 3, H/scale, W/scale) in [0, 1], quantised to 8 bits."""
    height, width = hr.shape[2:]
    out_size = (height // cfg.scale, width // cfg.scale)
    # first degradation
    x = _filter(hr, random_kernel(rng, cfg, sigma=cfg.blur_sigma, sinc_prob=cfg.sinc_prob))
    x = _resize_step(x, rng, cfg.resize_prob, cfg.resize_range)
    x = _noise(x, rng, prob=cfg.gaussian_noise_prob, sigma=cfg.noise_range, poisson=cfg.poisson_scale_range, gray_prob=cfg.gray_noise_prob)
    x = _jpeg(x, int(rng.integers(cfg.jpeg_range[0], cfg.jpeg_range[1] + 1)))
    # second degradation
    if rng.random() < cfg.second_blur_prob:
        x = _filter(x, random_kernel(rng, cfg, sigma=cfg.blur_sigma2, sinc_prob=cfg.sinc_prob2))
    x = _resize_step(x, rng, cfg.resize_prob2, cfg.resize_range2, reference=out_size)
    x = _noise(x, rng, prob=cfg.gaussian_noise_prob2, sigma=cfg.noise_range2, poisson=cfg.poisson_scale_range2, gray_prob=cfg.gray_noise_prob2)
    # final: [resize to the LR size + sinc] and JPEG, in random order
    if rng.random() < cfg.final_sinc_prob:
        size = int(rng.choice(np.arange(7, 22, 2)))
        final_kernel = _pad21(sinc_kernel(size, rng.uniform(np.pi / 3, np.pi)))
    else:
        final_kernel = np.zeros((21, 21))
        final_kernel[10, 10] = 1.0
    quality = int(rng.integers(cfg.jpeg_range2[0], cfg.jpeg_range2[1] + 1))
    if rng.random() < 0.5:
        x = _filter(_resize(x, out_size, rng), final_kernel)
        x = _jpeg(x, quality)
    else:
        x = _jpeg(x, quality)
        x = _filter(_resize(x, out_size, rng), final_kernel)
    return (x.clamp(0, 1) * 255.0).round() / 255.0


def bicubic_degrade(hr: torch.Tensor, scale: int = 4) -> torch.Tensor:
    """The classic bicubic x``scale`` downsampling (Pillow's antialiased bicubic), 8-bit."""
    array = (hr[0].permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
    height, width = array.shape[:2]
    small = Image.fromarray(array).resize((width // scale, height // scale), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.asarray(small, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]


@dataclass(frozen=True)
class MildConfig:
    """The "mild" degradation family: Gaussian blur, bicubic x``scale``, Gaussian noise, JPEG."""

    scale: int = 4
    blur_sigma: tuple[float, float] = (0.5, 1.5)
    noise_sigma: tuple[float, float] = (0.0, 5.0)
    """Gaussian noise standard deviation, in 8-bit levels."""
    jpeg_quality: tuple[int, int] = (60, 90)


def mild_degrade(hr: torch.Tensor, rng: np.random.Generator, cfg: MildConfig = MildConfig()) -> torch.Tensor:
    """(1, 3, H, W) in [0, 1] -> (1, 3, H/scale, W/scale): blur (isotropic Gaussian, sigma drawn from
    ``cfg.blur_sigma``), Pillow's bicubic downscale, Gaussian noise, JPEG; quantised to 8 bits."""
    sigma = float(rng.uniform(*cfg.blur_sigma))
    size = 2 * int(math.ceil(3 * sigma)) + 1
    offsets = np.arange(size) - size // 2
    line = np.exp(-(offsets**2) / (2 * sigma**2))
    kernel = np.outer(line, line)
    x = _filter(hr, kernel / kernel.sum())
    x = bicubic_degrade(x.clamp(0, 1), cfg.scale)
    gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
    x = x + torch.randn(x.shape, generator=gen) * (rng.uniform(*cfg.noise_sigma) / 255.0)
    x = _jpeg(x, int(rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1)))
    return (x.clamp(0, 1) * 255.0).round() / 255.0
