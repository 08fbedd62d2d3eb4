"""Tiling that users cannot see: one planner for every stage, blending that sums to one, and a VAE
tiler whose GroupNorms use statistics shared across all tiles.

* :mod:`.tiles`: planning tiles (:func:`plan_axis`, :func:`plan_tiles`), blending windows and
  :func:`tiled_apply`.
* :mod:`.lockstep`: :func:`tiled_vae`, the VAE in lockstep tiles with shared GroupNorm statistics
  and shared mid-block attention (``exact`` and ``fast`` modes).
* :mod:`.oom`: the out-of-memory retry policy; :func:`with_oom_retry` halves the tile down to a floor.
* :mod:`.budget`: the tiling policy of the SD stages (memory budget, bytes per pixel, ``TilePlan``).
"""

from __future__ import annotations

from .lockstep import TilingMode, record_group_norm, shared_group_norm, tiled_vae

# private, re-exported because tests/test_sd_tiling.py drives the lockstep directly
from .lockstep import _Lockstep as _Lockstep
from .lockstep import _patched_norms as _patched_norms
from .oom import is_out_of_memory, with_oom_retry
from .tiles import Tile, blend_window, gaussian_window, plan_axis, plan_tiles, tiled_apply

__all__ = [
    "Tile", "TilingMode", "blend_window", "gaussian_window", "is_out_of_memory", "plan_axis", "plan_tiles",
    "record_group_norm", "shared_group_norm", "tiled_apply", "tiled_vae", "with_oom_retry",
]
