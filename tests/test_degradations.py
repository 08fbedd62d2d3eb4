"""Real-ESRGAN's degradation pipeline: kernels, determinism, sizes, ranges."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ctsr_infer.degradations import DegradationConfig, bicubic_degrade, degrade, random_kernel, sinc_kernel


def test_kernels_are_normalised_and_21x21() -> None:
    rng = np.random.default_rng(0)
    cfg = DegradationConfig()
    for _ in range(50):
        kernel = random_kernel(rng, cfg, sigma=cfg.blur_sigma, sinc_prob=0.3)
        assert kernel.shape == (21, 21) and kernel.sum() == pytest.approx(1.0, abs=1e-6)
    sinc = sinc_kernel(21, np.pi / 3)
    assert sinc.min() < 0  # ringing lobes: what the sinc kernel is for
    assert np.allclose(sinc, sinc.T)


def test_an_isotropic_gaussian_has_the_drawn_spread() -> None:
    cfg = DegradationConfig(kernel_probs=(1, 0, 0, 0, 0, 0), kernel_range=(21, 21))
    kernel = random_kernel(np.random.default_rng(1), cfg, sigma=(2.0, 2.0), sinc_prob=0.0)
    xs = np.arange(-10, 11)
    variance = (kernel.sum(0) * xs**2).sum()
    assert variance == pytest.approx(4.0, rel=0.05)


def test_degrade_is_seeded_and_gives_the_lr_size() -> None:
    hr = torch.rand(1, 3, 96, 128)
    a, b = degrade(hr, np.random.default_rng(3)), degrade(hr, np.random.default_rng(3))
    c = degrade(hr, np.random.default_rng(4))
    assert a.shape == (1, 3, 24, 32) and torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1 and torch.equal((a * 255).round(), a * 255)


def test_bicubic_degrade() -> None:
    hr = torch.full((1, 3, 32, 48), 0.5)
    lr = bicubic_degrade(hr)
    assert lr.shape == (1, 3, 8, 12) and torch.allclose(lr, torch.full_like(lr, 128 / 255))
