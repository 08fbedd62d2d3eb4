"""Framing a network's output into the requested image, the same way for every family: padding the
input to the network's multiple, resizing the result to the target size, and the colour fix."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..colorfix import color_fix
from ..errors import KnobError
from ..image import resize_bicubic
from ..progress import ProgressCallback
from ..tmap import TMap, TValue
from .base import RunOptions

__all__ = ["OutputsByT", "pad_to_multiple", "bicubic", "to_size", "per_t"]


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad bottom/right to a multiple: reflect, or replicate when the image is smaller than the pad."""
    height, width = x.shape[-2:]
    pad_h, pad_w = (-height) % multiple, (-width) % multiple
    if not pad_h and not pad_w:
        return x
    mode = "reflect" if pad_h < height and pad_w < width else "replicate"
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)


def bicubic(frame: torch.Tensor, size: tuple[int, int], *, bit_depth: int = 32) -> torch.Tensor:
    """(3, h, w) float in [0, 1] -> (1, 3, *size) with the image path's bicubic kernel (antialiased when
    shrinking; 8-bit sources resampled as OSEDiff does)."""
    resized = resize_bicubic(frame.permute(1, 2, 0).numpy(), size, bit_depth=bit_depth)
    return torch.from_numpy(np.ascontiguousarray(resized)).permute(2, 0, 1)[None]


def to_size(out: torch.Tensor, lr: torch.Tensor, size: tuple[int, int], options: RunOptions,
            references: list[torch.Tensor | None] | None = None) -> torch.Tensor:
    """A native-scale result (N, 3, h', w') -> (N, 3, *size) in [0, 1]: bicubic-resized where the scale
    differs, then colour-fixed against the bicubic upsample of its input ``lr`` (N, 3, h, w). With a
    colour fix the unclamped output is resized and fixed (clamping first would bias the colour of
    saturated areas; the fix clamps); without one it is clamped before resizing.

    ``references`` caches the colour references per image across calls (one per t)."""
    references = references if references is not None else [None] * lr.shape[0]
    frames = []
    for index, frame in enumerate(out if options.color_fix != "none" else out.clamp(0.0, 1.0)):
        frame = frame[None]
        if tuple(frame.shape[-2:]) != size:
            frame = bicubic(frame[0], size)
        if options.color_fix != "none":
            reference = references[index]
            if reference is None:
                reference = references[index] = bicubic(lr[index], size, bit_depth=options.bit_depth)
            frame = color_fix(frame, reference, options.color_fix, inplace=True)
        frames.append(frame)
    return frames[0] if len(frames) == 1 else torch.cat(frames)


def per_t(values: Sequence[TValue], at: Callable[[float], torch.Tensor], size: tuple[int, int]) -> list[torch.Tensor]:
    """One output per t for knobs whose t acts on the whole image (``native``, ``blend``): a number is
    ``at(t)``; a t map is an output-space blend, the outputs at the map's lowest and highest t mixed
    per pixel by the map resized to ``size`` (exact where the map takes either value)."""
    outputs = []
    for t in values:
        if not isinstance(t, TMap):
            outputs.append(at(t))
            continue
        low, high = at(t.low), at(t.high)
        if t.high == t.low:
            outputs.append(low)
            continue
        weight = (t.resized(*size) - t.low) / (t.high - t.low)
        outputs.append(low + weight * (high - low))
    return outputs


class OutputsByT:
    """A prepared image (:meth:`FamilyModel.prepare`) for knobs whose t acts on the whole image:
    ``compute(t, on_progress)`` (one network run) memoised per t, every render through :func:`per_t`.

    The memo keeps the last :attr:`keep` outputs: enough for a map's two ends and a slider's
    back-and-forth, bounded because each is a full-resolution float32 image."""

    keep = 4

    def __init__(self, compute: Callable[[float, ProgressCallback | None], torch.Tensor], size: tuple[int, int], *,
                 default: float, no_knob: str | None = None) -> None:
        self._compute, self._size, self._default, self._no_knob = compute, size, default, no_knob
        self._done: OrderedDict[float, torch.Tensor] = OrderedDict()

    def at(self, t: float, on_progress: ProgressCallback | None = None) -> torch.Tensor:
        # keyed at float32 precision, the precision every network takes t in: a map's ends are float32
        # values (0.3 from a map is 0.30000001192...), the slider's the float64 of the same number
        key = float(np.float32(t))
        if key in self._done:
            self._done.move_to_end(key)
            return self._done[key]
        out = self._done[key] = self._compute(t, on_progress)
        while len(self._done) > self.keep:
            self._done.popitem(last=False)
        return out

    def render(self, ts: Sequence[TValue] | None, on_progress: ProgressCallback | None = None) -> list[torch.Tensor]:
        """One output per t (``None``: the model's default t; ``no_knob``: the error for any other)."""
        if ts is not None and self._no_knob is not None:
            raise KnobError(self._no_knob)
        return per_t([self._default] if ts is None else ts, lambda t: self.at(t, on_progress), self._size)
