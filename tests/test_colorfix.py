"""The wavelet colour fix equals OSEDiff's definition (five a-trous passes of the 3x3 binomial kernel,
replicate padding) computed the direct way, for any size, in strips or not, without touching its input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ctsr_infer.colorfix import color_fix


def _direct_low_pass(x: torch.Tensor) -> torch.Tensor:
    kernel = torch.tensor([1.0, 2.0, 1.0])
    kernel = (kernel[:, None] * kernel[None, :] / 16.0).expand(x.shape[1], 1, 3, 3).contiguous()
    for level in range(5):
        d = 2**level
        x = F.conv2d(F.pad(x, (d,) * 4, mode="replicate"), kernel, dilation=d, groups=x.shape[1])
    return x


@pytest.mark.parametrize("shape", [(1, 3, 1, 1), (1, 3, 5, 9), (2, 3, 257, 100), (1, 3, 513, 40), (1, 3, 700, 333)])
def test_wavelet_equals_the_direct_definition(shape: tuple[int, ...]) -> None:
    generator = torch.Generator().manual_seed(sum(shape))
    x, ref = torch.rand(shape, generator=generator), torch.rand(shape, generator=generator)
    before = x.clone()
    expected = ((x - _direct_low_pass(x)) + _direct_low_pass(ref)).clamp(0, 1)
    assert (color_fix(x, ref, "wavelet") - expected).abs().max() <= 1e-6
    assert torch.equal(x, before)


def test_a_flat_reference_gives_its_colour_back() -> None:
    x = torch.full((1, 3, 40, 30), 0.2) + torch.linspace(0, 0.1, 30)
    ref = torch.full((1, 3, 40, 30), 0.6)
    out = color_fix(x, ref, "wavelet")
    assert (out.mean() - (0.6 + (x - _direct_low_pass(x)).mean())).abs() < 1e-5
