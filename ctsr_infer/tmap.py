"""t as a map: a t value per position, for knobs that can use one.

A map is an (H, W) array of t values in [0, 1] (or a grayscale image: black = 0, white = 1) with the
input image's aspect ratio. It is resized with anti-aliasing to the grid it acts on:

* knobs that are linear in latent space (``dual-lora``; ``ctsr-flow`` with one Euler step) apply it
  to the latent, position by position: a map is exactly the same as running each t and taking each
  latent position from its own t;
* the ``native`` knob (lite) takes t as a network input for the whole image, so a map is an
  **output-space blend**: the outputs at the map's lowest and highest t, mixed per pixel by the map
  (exact where the map takes those two values, an interpolation in between).

Maps act after the network's own tiling (on the whole latent or output), so tiled and untiled runs
apply them identically and there is no seam at tile borders.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .errors import InvalidInputError
from .knob import Knob, normalize_t

__all__ = ["ASPECT_TOLERANCE", "MAP_KINDS", "TMap", "TValue", "as_tmap", "constant", "normalize_ts"]

ASPECT_TOLERANCE = 0.02
"""Largest relative difference between a map's aspect ratio and the image's (beyond one pixel of rounding)."""


@dataclass(frozen=True, eq=False)
class TMap:
    """t per position: ``values`` is float32 (H, W) in [0, 1]."""

    values: np.ndarray
    name: str = "array"
    """Where the map came from (a file name, ``array``, ``faces``), for messages."""
    digest: str = field(init=False)
    """sha256 of the values (first 16 hex digits): what the settings record of an output names."""

    def __post_init__(self) -> None:
        values = np.asarray(self.values)
        if values.ndim != 2 or min(values.shape) < 1 or not np.issubdtype(values.dtype, np.floating):
            raise InvalidInputError(f"a t map's `values` must be a 2-D float array (H, W), got {values.dtype} {values.shape}; "
                                    "build one from an array or image with `as_tmap`.")
        if not np.isfinite(values).all() or values.min() < 0.0 or values.max() > 1.0:
            raise InvalidInputError("a t map's values must be finite and in [0, 1] (0 = realistic, 1 = faithful).")
        object.__setattr__(self, "values", values.astype(np.float32, copy=False))
        object.__setattr__(self, "digest", hashlib.sha256(np.ascontiguousarray(self.values, dtype=np.float32).tobytes()
                                                          + repr(self.values.shape).encode()).hexdigest()[:16])

    @property
    def low(self) -> float:
        return float(self.values.min())

    @property
    def high(self) -> float:
        return float(self.values.max())

    def check_aspect(self, height: int, width: int, *, argument: str = "t_map") -> None:
        """Refuse a map whose aspect ratio is not the image's (it would be stretched)."""
        h, w = self.values.shape
        if abs(h * width - w * height) > max(h, w, height, width) + ASPECT_TOLERANCE * h * width:
            raise InvalidInputError(
                f"`{argument}` ({self.name}) is {w}x{h} but the image is {width}x{height}: the map must have the image's "
                "aspect ratio (any size: it is resized). Resize or pad the map to the image's shape."
            )

    def resized(self, height: int, width: int) -> torch.Tensor:
        """The map on a (height, width) grid as a (1, 1, height, width) float32 tensor, resized with
        anti-aliasing (Pillow's bilinear filter widens its support when shrinking)."""
        if self.values.shape == (height, width):
            values = self.values
        else:
            image = Image.fromarray(np.ascontiguousarray(self.values, dtype=np.float32), mode="F")
            values = np.asarray(image.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)
        return torch.from_numpy(np.clip(values, 0.0, 1.0).copy())[None, None]

    def combined(self, mask: np.ndarray, value: float) -> TMap:
        """This map with ``value`` wherever ``mask`` (same shape, in [0, 1]) is 1, blended where it is between."""
        mixed = self.values * (1.0 - mask) + value * mask
        return TMap(mixed.astype(np.float32), name=f"{self.name} + faces")


def _from_array(array: np.ndarray, name: str) -> TMap:
    if array.ndim == 3 and array.shape[-1] in (1, 2, 3, 4):
        if array.shape[-1] in (3, 4) and not np.array_equal(array[..., 0], array[..., 1]):
            raise InvalidInputError(f"`t_map` ({name}) has colour channels; give a grayscale map (one value per pixel).")
        array = array[..., 0]
    if array.ndim != 2 or min(array.shape) < 1:
        raise InvalidInputError(f"`t_map` ({name}) must be a 2-D array (H, W) or a grayscale image, got shape {array.shape}.")
    if np.issubdtype(array.dtype, np.integer):
        top = 65535 if array.max(initial=0) > 255 or array.dtype == np.uint16 else 255
        values = array.astype(np.float32) / top
    elif np.issubdtype(array.dtype, np.floating) or array.dtype == np.bool_:
        values = array.astype(np.float32)
    else:
        raise InvalidInputError(f"`t_map` ({name}) has dtype {array.dtype}; give floats in [0, 1] or an 8/16-bit image.")
    if not np.isfinite(values).all() or values.min() < 0.0 or values.max() > 1.0:
        raise InvalidInputError(f"`t_map` ({name}) values must be finite and in [0, 1] (0 = realistic, 1 = faithful).")
    return TMap(values, name=name)


def as_tmap(value: Any, *, argument: str = "t_map") -> TMap:
    """A :class:`TMap` from a TMap, a numpy array (floats in [0, 1], or 8/16-bit integers), a PIL
    image or the path of a grayscale image file."""
    if isinstance(value, TMap):
        return value
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return _from_array(value, "array")
    if isinstance(value, Image.Image):
        image = value.convert("I;16") if value.mode in ("I", "I;16", "I;16B") else value
        if image.mode not in ("L", "I;16", "F", "1", "LA", "RGB", "RGBA", "P"):
            image = image.convert("L")
        if image.mode in ("P", "1", "LA"):
            image = image.convert("L")
        return _from_array(np.asarray(image), "image")
    if isinstance(value, (str, os.PathLike)):
        path = Path(value)
        if not path.is_file():
            raise InvalidInputError(f"`{argument}` file `{path}` does not exist.")
        try:
            with Image.open(path) as handle:
                handle.load()
                mapped = as_tmap(handle, argument=argument)
        except (OSError, ValueError) as exc:
            if isinstance(exc, InvalidInputError):
                raise InvalidInputError(str(exc).replace("(image)", f"(`{path.name}`)")) from None
            raise InvalidInputError(f"`{argument}` file `{path}` is not a readable image ({exc}).") from None
        return TMap(mapped.values, name=path.name)
    raise InvalidInputError(f"`{argument}` must be an (H, W) array, a grayscale image or its path, got {type(value).__name__}.")


TValue = float | TMap
"""One t: a number for the whole image, or a map."""

MAP_KINDS = ("ctsr-flow", "dual-lora", "native", "blend")
"""Knob kinds that take a t map (``ctsr-flow`` with one Euler step)."""


def is_map_like(value: Any) -> bool:
    return isinstance(value, (TMap, np.ndarray, Image.Image, torch.Tensor))


def normalize_ts(t: Any, knob: Knob, *, model: str) -> list[TValue] | None:
    """:func:`ctsr_infer.knob.normalize_t` for t values that may also be maps: numbers are checked
    there; a map is checked for its values and for a knob that takes maps."""
    values = t if isinstance(t, (list, tuple)) else None if t is None else [t]
    if values is None:
        return normalize_t(None, knob, model=model)  # type: ignore[return-value]
    numbers = normalize_t([0.5 if is_map_like(v) else v for v in values], knob, model=model) or []
    out: list[TValue] = []
    for value, number in zip(values, numbers, strict=True):
        if not is_map_like(value):
            out.append(number)
            continue
        if knob.kind not in MAP_KINDS:
            raise InvalidInputError(f"{model} has a `{knob.kind}` knob, which takes one t per image, not a t map.")
        out.append(as_tmap(value))
    return out


def constant(value: float, height: int, width: int) -> TMap:
    """A map of one value (what a number t is, where a map is needed)."""
    return TMap(np.full((height, width), value, dtype=np.float32), name=f"t={value:g}")
