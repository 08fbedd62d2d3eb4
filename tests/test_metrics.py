from __future__ import annotations

import numpy as np
import pytest

from ctsr_infer.metrics import psnr, ssim, to_y


def test_psnr_of_a_known_error() -> None:
    a = np.zeros((8, 8, 3))
    assert psnr(a, a + 0.1) == pytest.approx(20.0)
    assert psnr(a, a) == float("inf")
    assert psnr(a, a + 0.1, y=True) == pytest.approx(20 - 20 * np.log10((65.481 + 128.553 + 24.966) / 255), abs=1e-9)


def test_ssim_is_one_for_equal_images_and_drops_with_noise() -> None:
    rng = np.random.default_rng(0)
    a = rng.random((40, 40, 3))
    assert ssim(a, a) == pytest.approx(1.0)
    noisy = (a + rng.normal(0, 0.1, a.shape)).clip(0, 1)
    assert 0 < ssim(a, noisy) < 0.95
    assert to_y(np.ones((1, 1, 3)))[0, 0, 0] == pytest.approx(235 / 255)
