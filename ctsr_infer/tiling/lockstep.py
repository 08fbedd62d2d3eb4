"""The tiled VAE: tiles whose GroupNorms use statistics shared across all tiles and whose mid-block
attention sees keys and values shared across tiles, so tone does not jump between tiles.

:func:`tiled_vae` runs a VAE encoder or decoder over tiles (planned and blended by
:mod:`ctsr_infer.tiling.tiles`) in one of two modes:

- ``exact``: all tiles run in lockstep (one thread each); at each GroupNorm every tile adds the
  sums over its own core region (context excluded, so no pixel counts twice), waits for the
  others, and normalises with the global mean and variance: the untiled statistics exactly. At
  each spatial self-attention (the VAE's mid block) every tile's queries attend to the keys and
  values of all tiles' owned parts, i.e. of the whole image, as untiled. Holds every tile's
  activations at once (like the untiled run), so it is for sizes that fit.
- ``fast``: a few tiles spread over the image run in lockstep as above; the others then run one at
  a time with those GroupNorm statistics and attend to the sampled tiles' keys and values plus
  their own: memory of the sampled tiles, statistics and attention approximate.

OSEDiff's VAEHook averages per-tile statistics that include the padding, and diffusers'
``enable_tiling`` normalises each tile alone (tone jumps); both are what this improves on.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from fractions import Fraction
from typing import TYPE_CHECKING, Literal, cast

import torch
from torch import nn

from ..errors import InvalidInputError
from .tiles import Tile, _blend, blend_window, plan_tiles

if TYPE_CHECKING:
    from diffusers.models.attention_processor import Attention

__all__ = ["TilingMode", "record_group_norm", "shared_group_norm", "tiled_vae"]

TilingMode = Literal["exact", "fast", "off"]


# ---------------------------------------------------------------------------------------------
# GroupNorm statistics shared across tiles


def _norm_with(x: torch.Tensor, norm: nn.GroupNorm, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """GroupNorm of ``x`` with given per-(sample, group) mean and variance (float64 stats)."""
    n, c = x.shape[:2]
    g = norm.num_groups
    shaped = x.reshape(n, g, -1).float()
    out = (shaped - mean.float()[..., None]) * torch.rsqrt(var.float()[..., None] + norm.eps)
    out = out.reshape(x.shape)
    if norm.affine:
        out = out * norm.weight.float().view(1, c, *([1] * (x.dim() - 2))) + norm.bias.float().view(1, c, *([1] * (x.dim() - 2)))
    return out.to(x.dtype)


def _sums(x: torch.Tensor, groups: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    n = x.shape[0]
    flat = x.reshape(n, groups, -1).double()
    return flat.sum(-1), (flat * flat).sum(-1), flat.shape[-1]


@contextmanager
def _patched_norms(module: nn.Module, forward: Callable[[nn.GroupNorm, torch.Tensor], torch.Tensor]) -> Iterator[None]:
    norms = [m for m in module.modules() if isinstance(m, nn.GroupNorm)]
    originals = [m.forward for m in norms]
    for norm in norms:
        norm.forward = (lambda n: (lambda x: forward(n, x)))(norm)  # type: ignore[method-assign]
    try:
        yield
    finally:
        for norm, original in zip(norms, originals):
            norm.forward = original  # type: ignore[method-assign]


@contextmanager
def record_group_norm(module: nn.Module, store: list[tuple[torch.Tensor, torch.Tensor]]) -> Iterator[None]:
    """Run ``module`` normally while appending each GroupNorm call's (mean, var) to ``store``."""

    def forward(norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
        s, s2, count = _sums(x, norm.num_groups)
        mean = s / count
        var = (s2 / count - mean * mean).clamp_min(0)
        store.append((mean, var))
        return _norm_with(x, norm, mean, var)

    with _patched_norms(module, forward):
        yield


@contextmanager
def shared_group_norm(module: nn.Module, stats: list[tuple[torch.Tensor, torch.Tensor]]) -> Iterator[Callable[[], None]]:
    """Run ``module`` with every GroupNorm call normalising with ``stats[k]`` (k = call order within
    one forward). Yields ``restart``: call it before each forward."""
    counter = threading.local()

    def restart() -> None:
        counter.index = 0

    def forward(norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
        index = getattr(counter, "index", 0)
        counter.index = index + 1
        mean, var = stats[index]
        return _norm_with(x, norm, mean.to(x.device), var.to(x.device))

    with _patched_norms(module, forward):
        yield restart


# ---------------------------------------------------------------------------------------------
# tiles in lockstep: shared statistics and shared attention


class _Lockstep:
    """Shared statistics by lockstep: one thread per tile, a barrier at every GroupNorm call; each
    tile adds the sums over the part of the image it owns, so the statistics are those of the union
    of the tiles' owned parts (the whole image when every tile takes part). The statistics used at
    each call are kept in ``stats`` for tiles that run later, alone."""

    def __init__(self, tiles: list[Tile]) -> None:
        self.tiles = tiles
        self.barrier = threading.Barrier(len(tiles))
        self.lock = threading.Lock()
        self.partials: dict[int, list[tuple[torch.Tensor, torch.Tensor, int]]] = {}
        self.stats: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.kv_parts: dict[int, list[tuple[int, torch.Tensor, torch.Tensor]]] = {}
        self.pools: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.local = threading.local()

    def _owned_box(self, height: int, width: int) -> tuple[int, int, int, int]:
        """This thread's owned box in the coordinates of an activation of ``height`` x ``width``."""
        tile: Tile = self.local.tile
        s = Fraction(height, tile.c_bottom - tile.c_top)  # activation pixels per input pixel at this layer
        return (int((tile.o_top - tile.c_top) * s), int((tile.o_bottom - tile.c_top) * s),
                int((tile.o_left - tile.c_left) * s), int((tile.o_right - tile.c_left) * s))

    def _grid(self, x: torch.Tensor) -> torch.Tensor:
        """A (N, C, H*W) activation (attention's GroupNorm) back on its (N, C, H, W) grid."""
        if x.dim() != 3:
            return x
        tile: Tile = self.local.tile
        height, width = tile.c_bottom - tile.c_top, tile.c_right - tile.c_left
        s = Fraction(math.isqrt(x.shape[-1] * height * width), height * width)
        return x.reshape(x.shape[0], x.shape[1], int(height * s), int(width * s))

    def forward(self, norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
        index = self.local.index
        self.local.index += 1
        grid = self._grid(x)
        t, b, l, r = self._owned_box(grid.shape[-2], grid.shape[-1])
        partial = _sums(grid[..., t:b, l:r], norm.num_groups)
        with self.lock:
            self.partials.setdefault(index, []).append(partial)
        self.barrier.wait()
        with self.lock:
            if index not in self.stats:
                parts = self.partials[index]
                total = sum(p[2] for p in parts)
                mean = cast(torch.Tensor, sum(p[0] for p in parts)) / total  # sum() of tensors: a tensor
                self.stats[index] = (mean, (cast(torch.Tensor, sum(p[1] for p in parts)) / total - mean * mean).clamp_min(0))
            mean, var = self.stats[index]
        return _norm_with(x, norm, mean.to(x.device), var.to(x.device))

    def gather(self, keys: torch.Tensor, values: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention keys/values (N, H*W, C) of this tile -> those of every lockstep tile's owned part,
        concatenated (each image position once). Kept in ``pools`` for tiles that run later."""
        index = self.local.attention
        self.local.attention += 1
        t, b, l, r = self._owned_box(height, width)

        def owned(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(x.shape[0], height, width, -1)[:, t:b, l:r].reshape(x.shape[0], -1, x.shape[-1])

        with self.lock:
            self.kv_parts.setdefault(index, []).append((self.local.position, owned(keys), owned(values)))
        self.barrier.wait()
        with self.lock:
            if index not in self.pools:
                parts = sorted(self.kv_parts.pop(index), key=lambda p: p[0])
                self.pools[index] = (torch.cat([p[1] for p in parts], dim=1), torch.cat([p[2] for p in parts], dim=1))
            return self.pools[index]

    def run(self, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> list[torch.Tensor]:
        results: list[torch.Tensor | None] = [None] * len(self.tiles)
        errors: list[BaseException] = []

        def worker(position: int, tile: Tile) -> None:
            self.local.tile, self.local.index, self.local.attention, self.local.position = tile, 0, 0, position
            try:
                with torch.inference_mode():
                    results[position] = fn(x[..., tile.c_top : tile.c_bottom, tile.c_left : tile.c_right]).cpu()
            except threading.BrokenBarrierError:
                pass
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                errors.append(exc)
                self.barrier.abort()

        threads = [threading.Thread(target=worker, args=(i, t), daemon=True) for i, t in enumerate(self.tiles)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
        return [r for r in results if r is not None]


class _SharedAttention:
    """A diffusers attention processor for the VAE's spatial self-attention under tiling: each tile's
    queries attend to the keys and values of the whole image (``exact``: every tile's owned part,
    gathered in lockstep) or of the statistics tiles plus the tile itself (``fast``), rather than
    to the tile's own context only."""

    def __init__(self, lockstep: _Lockstep) -> None:
        self.lockstep = lockstep
        self.alone = threading.local()
        """Set while a tile runs alone (fast mode): keys/values come from the stored pools."""

    def restart(self) -> None:
        self.alone.index = 0

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, *args: object, **kwargs: object) -> torch.Tensor:
        if hidden_states.dim() != 4 or encoder_hidden_states is not None or attention_mask is not None:
            raise InvalidInputError("tiled VAE attention expects spatial self-attention without a mask")
        residual = hidden_states
        batch, channels, height, width = hidden_states.shape
        tokens = hidden_states.reshape(batch, channels, height * width)
        if getattr(attn, "group_norm", None) is not None:
            tokens = attn.group_norm(tokens)
        tokens = tokens.transpose(1, 2)
        query, key, value = attn.to_q(tokens), attn.to_k(tokens), attn.to_v(tokens)
        if getattr(self.alone, "index", None) is None:
            key, value = self.lockstep.gather(key, value, height, width)
        else:
            index = self.alone.index
            self.alone.index += 1
            pool_k, pool_v = self.lockstep.pools[index]
            key, value = torch.cat([pool_k.to(key), key], dim=1), torch.cat([pool_v.to(value), value], dim=1)
        heads = int(attn.heads)

        def split(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(batch, -1, heads, x.shape[-1] // heads).transpose(1, 2)

        out = torch.nn.functional.scaled_dot_product_attention(split(query), split(key), split(value))
        out = out.transpose(1, 2).reshape(batch, -1, query.shape[-1]).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        out = out.transpose(1, 2).reshape(batch, channels, height, width)
        if getattr(attn, "residual_connection", False):
            out = out + residual
        return out / float(getattr(attn, "rescale_output_factor", 1.0))


@contextmanager
def _shared_attention(module: nn.Module, processor: _SharedAttention) -> Iterator[None]:
    layers = [m for m in module.modules() if hasattr(m, "processor") and hasattr(m, "to_q") and hasattr(m, "to_out")]
    saved = [m.processor for m in layers]
    for layer in layers:
        layer.processor = processor  # type: ignore[assignment]  # torch types Module.__setattr__ for tensors and modules only
    try:
        yield
    finally:
        for layer, original in zip(layers, saved):
            layer.processor = original


def _spread(tiles: list[Tile], count: int) -> list[int]:
    """Indices of ``count`` tiles spread evenly over the list (row-major order)."""
    if count >= len(tiles):
        return list(range(len(tiles)))
    return sorted({round(i * (len(tiles) - 1) / (count - 1)) for i in range(count)}) if count > 1 else [len(tiles) // 2]


def tiled_vae(
    fn: Callable[[torch.Tensor], torch.Tensor],
    module: nn.Module,
    x: torch.Tensor,
    *,
    scale: Fraction,
    tile: int,
    overlap: int,
    context: int,
    mode: TilingMode,
    align: int = 8,
    sample_tiles: int = 4,
    on_tile: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Run a VAE encoder (``scale`` 1/8) or decoder (8) ``fn`` over tiles of ``x`` with the
    GroupNorms of ``module`` sharing statistics across tiles.

    ``exact``: every tile in lockstep, statistics of the whole image (memory of the whole image).
    ``fast``: ``sample_tiles`` tiles spread over the image run in lockstep and their statistics are
    used by the others, which then run one at a time (memory of ``sample_tiles`` tiles). Estimating
    from full-resolution tiles avoids the bias of estimating on a downscaled copy, which averages
    texture away and underestimates every variance. ``tile``, ``overlap``, ``context`` are in input
    pixels, multiples of ``align``.
    """
    height, width = x.shape[-2:]
    if mode == "off" or (height <= tile and width <= tile):
        out = fn(x).float().cpu()
        if on_tile is not None:
            on_tile(1, 1)
        return out
    tiles = plan_tiles(height, width, tile=tile, overlap=overlap, context=context, align=align)
    chosen = list(range(len(tiles))) if mode == "exact" else _spread(tiles, sample_tiles)
    lockstep = _Lockstep([tiles[i] for i in chosen])
    attention = _SharedAttention(lockstep)
    with _patched_norms(module, lockstep.forward), _shared_attention(module, attention):
        first = lockstep.run(fn, x)
    if on_tile is not None:
        on_tile(len(chosen), len(tiles))
    done = dict(zip(chosen, first))

    def pieces() -> Iterator[tuple[Tile, torch.Tensor]]:
        stats = [lockstep.stats[k] for k in range(len(lockstep.stats))]
        with shared_group_norm(module, stats) as restart, _shared_attention(module, attention):
            for index, t in enumerate(tiles):
                if index in done:
                    yield t, done.pop(index)
                    continue
                restart()
                attention.restart()
                with torch.inference_mode():
                    yield t, fn(x[..., t.c_top : t.c_bottom, t.c_left : t.c_right]).cpu()
                if on_tile is not None:
                    on_tile(len(chosen) + index + 1 - sum(1 for c in chosen if c <= index), len(tiles))

    return _blend(pieces(), height, width, overlap=overlap, scale=scale, window=blend_window)
