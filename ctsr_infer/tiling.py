"""One tile planner for every stage: tiles with overlap, the last tile snapped to the border, and
blend weights that sum to exactly one everywhere.

``plan_axis`` splits one axis; ``blend_window`` gives a tile's weights (a linear ramp over the
overlap on interior sides, flat on image borders); ``tiled_apply`` runs a size-changing function
(output = ``scale`` x input) tile by tile and blends the results, normalising by the summed weights.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .errors import InvalidInputError

__all__ = ["plan_axis", "blend_window", "tiled_apply"]


def plan_axis(length: int, tile: int, overlap: int, *, align: int = 1) -> list[tuple[int, int]]:
    """Split [0, length) into tiles of ``tile`` samples overlapping by at least ``overlap``.

    Tile starts are multiples of ``align`` where possible; the last tile ends exactly at ``length``
    (it is shifted back rather than cut short). One tile when ``tile >= length``.
    """
    if tile <= 0 or overlap < 0 or overlap >= tile:
        raise InvalidInputError(f"`tile` must be > `overlap` >= 0, got tile {tile}, overlap {overlap}.")
    if length <= tile:
        return [(0, length)]
    stride = max(align, (tile - overlap) // align * align)
    starts = list(range(0, length - tile, stride)) + [length - tile]
    return [(s, s + tile) for s in sorted(set(starts))]


def blend_window(size: int, start: int, end: int, length: int, overlap: int) -> torch.Tensor:
    """1-D weights of a tile [start, end) of an axis of ``length``.

    On a side that touches another tile the first quarter of the overlap gets weight 0 (a network
    sees zero padding there, so those pixels are wrong; the neighbour covers them) and the rest of
    the overlap ramps linearly up to 1. Sides on the image border get 1 throughout."""
    weights = torch.ones(size, dtype=torch.float64)
    ramp = min(overlap, size // 2)
    if ramp > 0:
        margin = ramp // 4
        rise = torch.zeros(ramp, dtype=torch.float64)
        rise[margin:] = (torch.arange(ramp - margin, dtype=torch.float64) + 1) / (ramp - margin + 1)
        if start > 0:
            weights[:ramp] = rise
        if end < length:
            weights[size - ramp :] = rise.flip(0)
    return weights


def tiled_apply(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    *,
    tile: int,
    overlap: int,
    scale: int = 1,
    context: int = 0,
    on_tile: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Apply ``fn`` ((N, C, h, w) -> (N, C', h*scale, w*scale)) over tiles of ``x`` and blend.

    Each tile's input is extended by ``context`` pixels of real image on every side that has image
    (the extra output is cropped off), so a network whose receptive radius is at most ``context``
    gives the untiled result; the overlap then only feathers float noise. The output equals
    ``fn(x)`` exactly for pointwise functions. Tiles run one at a time; the result is float32.
    """
    height, width = x.shape[-2:]
    rows, cols = plan_axis(height, tile, overlap), plan_axis(width, tile, overlap)
    if len(rows) == 1 and len(cols) == 1:
        return fn(x).float()
    out: torch.Tensor | None = None
    total = torch.zeros(1, 1, height * scale, width * scale, dtype=torch.float64)
    count, done = len(rows) * len(cols), 0
    for top, bottom in rows:
        wy = blend_window((bottom - top) * scale, top * scale, bottom * scale, height * scale, overlap * scale)
        for left, right in cols:
            wx = blend_window((right - left) * scale, left * scale, right * scale, width * scale, overlap * scale)
            c_top, c_left = max(0, top - context), max(0, left - context)
            c_bottom, c_right = min(height, bottom + context), min(width, right + context)
            piece = fn(x[..., c_top:c_bottom, c_left:c_right]).float()
            oy, ox = (top - c_top) * scale, (left - c_left) * scale
            piece = piece[..., oy : oy + (bottom - top) * scale, ox : ox + (right - left) * scale]
            if out is None:
                out = torch.zeros(piece.shape[0], piece.shape[1], height * scale, width * scale)
            weight = (wy[:, None] * wx[None, :]).float()
            out[..., top * scale : bottom * scale, left * scale : right * scale] += piece * weight
            total[..., top * scale : bottom * scale, left * scale : right * scale] += weight.double()
            done += 1
            if on_tile is not None:
                on_tile(done, count)
    assert out is not None
    return out / total.float()
