"""The tile planner and blending: one planner for every stage, weights that sum to one.

* :func:`plan_axis` splits an axis into equal tiles (the last one snapped to the border).
* :func:`plan_tiles` makes 2-D tiles with real-image context around each (cropped off afterwards).
* :func:`blend_window` / :func:`gaussian_window` weight a tile; :func:`tiled_apply` runs a function
  tile by tile and normalises by the summed weights, so the weights sum to one everywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction

import torch

from ..errors import InvalidInputError

__all__ = ["Tile", "Window", "blend_window", "gaussian_window", "plan_axis", "plan_tiles", "tiled_apply"]


def plan_axis(length: int, tile: int, overlap: int, *, align: int = 1) -> list[tuple[int, int]]:
    """Split [0, length) into tiles of ``tile`` samples overlapping by at least ``overlap``.

    Tile starts are multiples of ``align`` (the last tile too when ``length`` is); the last tile ends
    exactly at ``length`` (shifted back rather than cut short). One tile when ``tile >= length``.
    """
    if tile <= 0 or overlap < 0 or overlap >= tile:
        raise InvalidInputError(f"`tile` must be > `overlap` >= 0, got tile {tile}, overlap {overlap}.")
    if length <= tile:
        return [(0, length)]
    stride = max(align, (tile - overlap) // align * align)
    starts = list(range(0, length - tile, stride)) + [length - tile]
    return [(s, s + tile) for s in sorted(set(starts))]


@dataclass(frozen=True)
class Tile:
    """A tile: its box [top, bottom) x [left, right); its context box (the box plus real image
    around it, what the network sees); and the part of the image it owns (the tiles' owned parts
    partition the image, split in the middle of each overlap: statistics count every pixel once)."""

    top: int
    bottom: int
    left: int
    right: int
    c_top: int
    c_bottom: int
    c_left: int
    c_right: int
    o_top: int
    o_bottom: int
    o_left: int
    o_right: int


def _owned(spans: list[tuple[int, int]], align: int) -> list[tuple[int, int]]:
    cuts = [0] + [((end + start) // 2) // align * align for (_, end), (start, _) in zip(spans, spans[1:])] + [spans[-1][1]]
    return list(zip(cuts, cuts[1:]))


def plan_tiles(height: int, width: int, *, tile: int, overlap: int, context: int = 0, align: int = 1) -> list[Tile]:
    """2-D tiles of at most ``tile`` x ``tile`` with ``context`` pixels of real image around each."""
    rows, cols = plan_axis(height, tile, overlap, align=align), plan_axis(width, tile, overlap, align=align)
    tiles = []
    for (top, bottom), (o_top, o_bottom) in zip(rows, _owned(rows, align)):
        for (left, right), (o_left, o_right) in zip(cols, _owned(cols, align)):
            tiles.append(Tile(top, bottom, left, right, max(0, top - context), min(height, bottom + context),
                              max(0, left - context), min(width, right + context), o_top, o_bottom, o_left, o_right))
    return tiles


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


def gaussian_window(size: int, start: int, end: int, length: int, overlap: int) -> torch.Tensor:
    """OSEDiff's latent-tile weights: a Gaussian with sigma 0.1 * size centred at (size - 1) / 2 (the
    symmetric centre PiSA-SR uses). Never zero, so any coverage normalises."""
    x = torch.arange(size, dtype=torch.float64)
    mid = (size - 1) / 2
    return torch.exp(-((x - mid) ** 2) / (2 * (0.1 * size) ** 2)) + 1e-12


Window = Callable[[int, int, int, int, int], torch.Tensor]


def _scaled(value: int, scale: Fraction, what: str) -> int:
    out = value * scale
    if out.denominator != 1:
        raise InvalidInputError(f"{what} {value} is not a multiple of {scale.denominator}; align the tiles.")
    return int(out)


def _blend(pieces: Iterator[tuple[Tile, torch.Tensor]], height: int, width: int, *, overlap: int, scale: Fraction,
           window: Window) -> torch.Tensor:
    out_h, out_w = _scaled(height, scale, "height"), _scaled(width, scale, "width")
    out: torch.Tensor | None = None
    total = torch.zeros(1, 1, out_h, out_w, dtype=torch.float64)
    ov = max(0, int(overlap * scale))
    for tile, piece in pieces:
        t, b, l, r = (_scaled(v, scale, "tile edge") for v in (tile.top, tile.bottom, tile.left, tile.right))
        oy, ox = _scaled(tile.top - tile.c_top, scale, "context"), _scaled(tile.left - tile.c_left, scale, "context")
        piece = piece[..., oy : oy + (b - t), ox : ox + (r - l)].float()
        if out is None:
            out = torch.zeros(piece.shape[0], piece.shape[1], out_h, out_w)
        weight = window(b - t, t, b, out_h, ov)[:, None] * window(r - l, l, r, out_w, ov)[None, :]
        out[..., t:b, l:r] += piece.cpu() * weight.float()
        total[..., t:b, l:r] += weight
    if out is None:
        raise InvalidInputError("nothing to tile: the image is empty.")
    return out / total.float()


def tiled_apply(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    *,
    tile: int,
    overlap: int,
    scale: int | Fraction = 1,
    context: int = 0,
    align: int = 1,
    window: Window = blend_window,
    batch: int = 1,
    on_tile: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Apply ``fn`` ((N, C, h, w) -> (N, C', h*scale, w*scale)) over tiles of ``x`` and blend.

    Each tile's input is extended by ``context`` pixels of real image on every side that has image
    (the extra output is cropped off), so a network whose receptive radius is at most ``context``
    gives the untiled result; the overlap then only feathers. Equal-sized tiles are passed to ``fn``
    ``batch`` at a time (concatenated on dim 0; only for N = 1). Pointwise functions come out exactly.
    The result is float32 on the CPU; one tile (or batch) lives on the device at a time.
    """
    scale = Fraction(scale)
    height, width = x.shape[-2:]
    tiles = plan_tiles(height, width, tile=tile, overlap=overlap, context=context, align=align)
    if len(tiles) == 1:
        out = fn(x).float().cpu()
        if on_tile is not None:
            on_tile(1, 1)
        return out

    def pieces() -> Iterator[tuple[Tile, torch.Tensor]]:
        groups: dict[tuple[int, int], list[Tile]] = {}
        for t in tiles:
            groups.setdefault((t.c_bottom - t.c_top, t.c_right - t.c_left), []).append(t)
        done = 0
        for members in groups.values():
            step = batch if x.shape[0] == 1 else 1
            for start in range(0, len(members), step):
                chunk = members[start : start + step]
                inputs = torch.cat([x[..., t.c_top : t.c_bottom, t.c_left : t.c_right] for t in chunk])
                outputs = fn(inputs)
                for index, t in enumerate(chunk):
                    done += 1
                    if on_tile is not None:
                        on_tile(done, len(tiles))
                    yield t, outputs[index : index + 1] if len(chunk) > 1 else outputs

    return _blend(pieces(), height, width, overlap=overlap, scale=scale, window=window)
