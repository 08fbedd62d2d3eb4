"""Several threads may call one Upscaler (web servers and Ray actors do): results equal one-by-one calls."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [(rng.random((h, w, 3)) * 255).astype(np.uint8) for h, w in ((40, 48), (48, 40), (44, 44), (36, 52))]


def test_four_threads_on_one_tiled_sd_model_match_one_by_one(upscaler) -> None:
    # exact VAE tiling swaps GroupNorm/attention on the shared modules for the duration of a call
    options = dict(scale=2, tiling="exact", vae_tile=64)
    images = _images()
    expected = [upscaler.upscale(image, **options) for image in images]
    for _ in range(2):
        with ThreadPoolExecutor(4) as pool:
            got = list(pool.map(lambda image: upscaler.upscale(image, **options), images))
        for a, b in zip(expected, got, strict=True):
            assert a.shape == b.shape
            assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_four_threads_on_the_lite_model_match_one_by_one() -> None:
    import ctsr_infer

    up = ctsr_infer.load("ctsr-lite", device="cpu", dtype="fp32")
    images = _images()
    expected = [up.upscale(image, t=0.3) for image in images]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda image: up.upscale(image, t=0.3), images))
    for a, b in zip(expected, got, strict=True):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
