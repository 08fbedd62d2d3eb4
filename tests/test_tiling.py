"""The tile planner: coverage, snapping, weights summing to one, tiled == untiled where it must."""

from __future__ import annotations

import pytest
import torch

from ctsr_infer.errors import InvalidInputError
from ctsr_infer.tiling import blend_window, plan_axis, tiled_apply


@pytest.mark.parametrize("length,tile,overlap", [(1, 8, 2), (7, 8, 2), (8, 8, 2), (9, 8, 2), (100, 32, 8), (513, 64, 16), (1000, 96, 32)])
def test_plan_covers_the_axis_and_snaps_the_last_tile(length: int, tile: int, overlap: int) -> None:
    tiles = plan_axis(length, tile, overlap)
    assert tiles[0][0] == 0 and tiles[-1][1] == length
    covered = torch.zeros(length, dtype=torch.bool)
    for start, end in tiles:
        assert end - start == min(tile, length)  # never a partial tile
        covered[start:end] = True
    assert covered.all()
    for (s0, e0), (s1, _) in zip(tiles, tiles[1:]):
        assert e0 - s1 >= overlap  # neighbours overlap at least by `overlap`


def test_plan_alignment_and_bad_arguments() -> None:
    assert all(start % 8 == 0 for start, _ in plan_axis(1000, 128, 20, align=8)[:-1])
    with pytest.raises(InvalidInputError, match="`tile`"):
        plan_axis(10, 4, 4)


@pytest.mark.parametrize("height,width,scale", [(37, 53, 1), (50, 41, 4), (16, 16, 2)])
def test_weights_sum_to_one_and_pointwise_functions_are_exact(height: int, width: int, scale: int) -> None:
    x = torch.rand(1, 3, height, width)

    def pointwise(t: torch.Tensor) -> torch.Tensor:
        return torch.repeat_interleave(torch.repeat_interleave(t.sin() * 2, scale, 2), scale, 3)

    out = tiled_apply(pointwise, x, tile=16, overlap=5, scale=scale)
    assert torch.allclose(out, pointwise(x), atol=1e-6)
    ones = tiled_apply(lambda t: torch.ones(1, 1, t.shape[2] * scale, t.shape[3] * scale), x, tile=16, overlap=5, scale=scale)
    assert torch.allclose(ones, torch.ones_like(ones), atol=1e-6)


def test_window_ramps_only_between_tiles() -> None:
    w = blend_window(16, 0, 16, 40, 8)
    assert w[0] == 1 and w[-1] == 0 and w[-2] == 0 and (w[:-2] > 0).all()  # a 2-px context margin
    assert torch.all(blend_window(10, 0, 10, 10, 4) == 1)


def test_convolution_through_tiles_matches_within_the_overlap() -> None:
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 3, 5, padding=2)
    x = torch.rand(1, 3, 40, 70)
    with torch.no_grad():
        full, tiled = conv(x), tiled_apply(conv, x, tile=24, overlap=8)
    # a 5x5 conv is wrong on the 2 px next to a tile edge; the 2-px zero-weight margin of an 8-px
    # overlap discards exactly those, so the tiled result is the untiled one
    assert torch.allclose(full, tiled, atol=1e-5)


def test_gaussian_window_blending_is_exact_for_pointwise_functions() -> None:
    from ctsr_infer.tiling import gaussian_window

    x = torch.rand(1, 4, 37, 53)
    out = tiled_apply(lambda t: t * 3 - 1, x, tile=16, overlap=6, window=gaussian_window, batch=3)
    assert torch.allclose(out, x * 3 - 1, atol=1e-5)
