"""The options of an upscale call: what may be given (:class:`UpscaleOptions`) and how each is
checked against a loaded model and resolved to a :class:`RunOptions`."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal, TypedDict, cast

from .colorfix import check_color_fix
from .errors import InvalidInputError
from .families import Family
from .families.base import RunOptions, TilingChoice
from .progress import ProgressCallback
from .student_file import StudentMeta
from .tmap import MAP_KINDS, TMap, TValue, normalize_ts

__all__ = ["MAX_PIXELS", "EncodeMode", "UpscaleOptions", "check_options"]

EncodeMode = Literal["mean", "sample"]


class UpscaleOptions(TypedDict, total=False):
    """Keyword-only options of every ``Upscaler`` entry point (all optional)."""

    scale: float | None
    color_fix: str | None
    knob_steps: int | None
    seed: int | None
    encode: EncodeMode | None
    tiling: str | None
    tile: int | None
    tile_overlap: int | None
    vae_tile: int | None
    memory_budget: float | None
    max_pixels: float | None
    protect_faces: float | None
    on_progress: ProgressCallback | None


MAX_PIXELS = 256e6
"""Default limit on an output's pixel count (``max_pixels``): 256 MP, a 16,000 x 16,000 image."""


def check_options(t: Any, options: Mapping[str, Any], *, family: Family, meta: StudentMeta, name: str) -> tuple[list[TValue] | None, RunOptions]:
    """Validate t and the options of one call against a loaded model, without running anything:
    the t list (numbers and maps) and the resolved options. Errors name the option and the flag."""
    knob = meta.knob
    unknown = set(options) - set(UpscaleOptions.__annotations__)
    if unknown:
        raise InvalidInputError(f"unknown option(s) {sorted(unknown)}; the options are {sorted(UpscaleOptions.__annotations__)}.")
    ts = normalize_ts(t, knob, model=f"model `{name}`")
    ignored = {"knob_steps", "seed", "encode", "tiling", "tile", "tile_overlap", "vae_tile", "memory_budget"} - set(family.options)
    given = sorted(k for k in ignored if options.get(k) is not None)
    if given:
        flags = ", ".join(f"`{k}` (--{k.replace('_', '-')})" for k in given)
        verb, pronoun = ("does", "it") if len(given) == 1 else ("do", "them")
        raise InvalidInputError(f"{flags} {verb} not apply to {meta.family} students like `{name}`; drop {pronoun}.")
    scale = options.get("scale")
    scale = float(meta.scale) if scale is None else scale
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale < 1:
        raise InvalidInputError(f"`scale` must be a number >= 1 (e.g. 2, 2.5, 4), got {scale!r}.")
    steps = options.get("knob_steps")
    steps = knob.steps if steps is None else steps
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InvalidInputError(f"`knob_steps` must be an integer >= 1, got {steps!r}.")
    mode = options.get("encode") or meta.encode
    if mode not in ("mean", "sample"):
        raise InvalidInputError(f"`encode` must be 'mean' or 'sample', got {mode!r}.")
    seed = options.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise InvalidInputError(f"`seed` must be an integer, got {seed!r}.")
    fix = options.get("color_fix")
    fix = check_color_fix(meta.color_fix if fix is None else fix)
    tiling = options.get("tiling") or "auto"
    modes = family.tiling.modes
    if tiling not in modes:
        raise InvalidInputError(f"`tiling` (--tiling) must be one of {list(modes)} for {meta.family} students, got {tiling!r}.")
    for option, least in (("tile", 1), ("tile_overlap", 0), ("vae_tile", 1)):
        value = options.get(option)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
            raise InvalidInputError(f"`{option}` (--{option.replace('_', '-')}) must be an integer >= {least}, got {value!r}.")
    tile, overlap = options.get("tile"), options.get("tile_overlap")
    min_tile = family.tiling.min_tile
    if tile is not None and tile < min_tile:
        raise InvalidInputError(f"`tile` (--tile) must be at least {min_tile} for {meta.family} students, got {tile}.")
    if tile is not None and overlap is not None and not overlap < tile:
        raise InvalidInputError(f"`tile_overlap` (--tile-overlap) must be smaller than `tile` (--tile), got {overlap} and {tile}.")
    if options.get("seed") is not None and mode != "sample" and "encode" in family.options:
        raise InvalidInputError("`seed` (--seed) only applies with `encode='sample'` (--encode sample); drop it or add that.")
    if options.get("knob_steps") is not None and knob.kind != "ctsr-flow":
        raise InvalidInputError(
            f"`knob_steps` (--knob-steps) applies to the Euler steps of a `ctsr-flow` knob; model `{name}` has a "
            f"`{knob.kind}` knob. Drop it."
        )
    vae_tile = options.get("vae_tile")
    if vae_tile is not None and (vae_tile < 64 or vae_tile % 64):
        raise InvalidInputError(f"`vae_tile` must be a multiple of 64 pixels (>= 64), got {vae_tile}.")
    budget = options.get("memory_budget")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, float)) or budget <= 0):
        raise InvalidInputError(f"`memory_budget` must be a positive number of bytes, got {budget!r}.")
    faces = options.get("protect_faces")
    if faces is not None:
        if isinstance(faces, bool) or not isinstance(faces, (int, float)) or not 0.0 <= faces <= 1.0:
            raise InvalidInputError(f"`protect_faces` (--protect-faces) must be a t in [0, 1] for the faces, got {faces!r}.")
        if knob.kind not in MAP_KINDS:
            raise InvalidInputError(f"`protect_faces` (--protect-faces) needs a knob that takes a t map; model `{name}` "
                                    f"has a `{knob.kind}` knob. Drop it or pick another model.")
    if (faces is not None or any(isinstance(v, TMap) for v in ts or ())) and knob.kind == "ctsr-flow" and steps != 1:
        raise InvalidInputError("a t map (or `protect_faces`) on a `ctsr-flow` knob needs `knob_steps` 1: with more Euler "
                                "steps t is not linear in the latent.")
    limit = options.get("max_pixels")
    limit = MAX_PIXELS if limit is None else limit
    if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not limit > 0:
        raise InvalidInputError(f"`max_pixels` must be a positive number of output pixels, got {limit!r}.")
    return ts, RunOptions(scale=float(scale), color_fix=fix, knob_steps=steps, seed=seed, encode=mode,
                          tiling=cast(TilingChoice, tiling),  # one of the family's modes, checked above
                          tile=options.get("tile"), tile_overlap=options.get("tile_overlap"),
                          vae_tile=options.get("vae_tile"), memory_budget=budget, max_pixels=float(limit),
                          protect_faces=None if faces is None else float(faces))

