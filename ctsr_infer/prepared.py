"""One image made ready for many t values: what a slider needs (``ctsr serve``, notebooks).

:meth:`ctsr_infer.Upscaler.prepare` runs the part of the work every t shares once (reading, the
pre-upsample, the encoder) and keeps what the knob needs as it is computed; :meth:`PreparedImage.render`
then gives the output at any t, equal to ``Upscaler.upscale`` with the same arguments:

- ``ctsr-flow``: z0 and the one-step velocity are kept; a new t is z0 + t·v and one VAE decode.
- ``dual-lora`` (PiSA-SR): both branch outputs are kept; a new t is their mix and one decode.
- ``blend`` pairs (classic): both networks' outputs are kept; a new t is their mix, no network run.
- ``native`` (lite) and interpolated-weight pairs: t is an input of the whole network, so a new t
  is one network run.

Outputs already rendered are kept too (least recently used first out, within :attr:`PreparedImage.cache_bytes`),
so going back to a t costs nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from .device import NonFinite
from .errors import InvalidInputError
from .image import ImageData, fill_transparent, resize_lanczos, to_numpy, to_pil
from .options import UpscaleOptions
from .progress import ProgressCallback
from .tmap import TMap, TValue, is_map_like

if TYPE_CHECKING:
    from .faces import Face
    from .families import Prepared
    from .pipeline import Upscaler

__all__ = ["PreparedImage", "RenderTiming"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RenderTiming:
    """Seconds spent by the last :meth:`PreparedImage.render` (``cached``: nothing ran)."""

    t: float | str
    seconds: float
    cached: bool


class PreparedImage:
    """An image made ready for many t values by :meth:`ctsr_infer.Upscaler.prepare`.

    Thread-safe: renders of one prepared image take turns, and take the upscaler's lock for their
    network part. Memory: the rendered outputs kept (:attr:`cache_bytes`) plus what the family keeps
    (for ``native``/``blend``: up to 4 full-size float32 network outputs; for SD students the latents and
    the full-size upsampled input)."""

    cache_bytes = 512 * 2**20
    """Rendered outputs kept for going back to a t (float32 pixels; at least the last one is kept)."""

    def __init__(self, upscaler: Upscaler, data: ImageData, options: UpscaleOptions) -> None:
        from .pipeline import _check_pixels, target_size

        self.upscaler = upscaler
        self.data = data
        self._options: dict[str, Any] = {k: v for k, v in options.items() if k != "on_progress"}
        _, run = upscaler.check_options(None, **self._options)
        self._run = replace(run, bit_depth=data.bit_depth)
        self.size = target_size(*data.size, self._run.scale)
        """Output (height, width)."""
        _check_pixels(self.size, self._run)
        pixels = data.pixels if data.alpha is None else fill_transparent(data.pixels, data.alpha)
        self._alpha = None if data.alpha is None else resize_lanczos(data.alpha, self.size)
        self._lr = torch.from_numpy(np.ascontiguousarray(pixels[None])).permute(0, 3, 1, 2)
        self._rendered: OrderedDict[Any, list[ImageData]] = OrderedDict()
        self._state: Prepared | None = None
        self._faces: list[Face] | None = None
        self._lock = threading.RLock()
        """Renders of one prepared image take turns (its caches are not shared-safe)."""
        start = time.perf_counter()
        try:
            with upscaler._lock, torch.inference_mode():
                self._state = upscaler.model.prepare(self._lr, size=self.size, options=self._run,
                                                     on_progress=options.get("on_progress"))
        except NonFinite as error:  # the NaN retry lives in the full path: every render takes it
            logger.warning("%s contains NaN or Inf while preparing; each t will run the whole model", error)
        self.prepare_seconds = time.perf_counter() - start
        """Seconds :meth:`ctsr_infer.Upscaler.prepare` took (reading not included)."""
        self.last: RenderTiming | None = None
        """Timing of the last render."""

    def render(self, t: float | TMap | np.ndarray | None = None, *,
               on_progress: ProgressCallback | None = None) -> Image.Image | np.ndarray:
        """The output at ``t`` (a number, a t map or None for the model's default), as
        :meth:`ctsr_infer.Upscaler.upscale` returns it for this image and these options."""
        if t is not None and not is_map_like(t) and (isinstance(t, bool) or not isinstance(t, (int, float))):
            raise InvalidInputError(f"`t` for `render` must be one number or one t map; for several use `render_data`. Got {t!r}.")
        (out,) = self.render_data(t, on_progress=on_progress)
        return to_numpy(out) if self.data.source == "numpy" else to_pil(out)

    def render_data(self, t: Any = None, *, on_progress: ProgressCallback | None = None) -> list[ImageData]:
        """Low-level: one :class:`ImageData` per t (``t`` may be a list), bit depth kept. The results
        are the kept ones: read them, do not modify them in place."""
        with self._lock:
            return self._render_data(t, on_progress)

    def _render_data(self, t: Any, on_progress: ProgressCallback | None) -> list[ImageData]:
        start = time.perf_counter()
        upscaler = self.upscaler
        ts, _ = upscaler.check_options(t, **self._options)
        key = None if ts is None else tuple(v.digest if isinstance(v, TMap) else v for v in ts)
        label = "default" if ts is None else ", ".join(f"map {v.digest[:8]}" if isinstance(v, TMap) else f"{v:g}" for v in ts)
        if key in self._rendered:
            self._rendered.move_to_end(key)
            self.last = RenderTiming(label, time.perf_counter() - start, True)
            return self._rendered[key]
        image_ts = self._image_ts(ts)
        outputs = self._outputs(image_ts, on_progress)
        result = [replace(self.data, pixels=out[0].permute(1, 2, 0).numpy().astype(np.float32, copy=False), alpha=self._alpha)
                  for out in outputs]
        self._keep(key, result)
        self.last = RenderTiming(label, time.perf_counter() - start, False)
        return result

    def _image_ts(self, ts: list[TValue] | None) -> list[TValue] | None:
        """As ``Upscaler._image_ts`` (maps checked, faces pinned), the faces detected once per image."""
        checked = self.upscaler._image_ts(self.data.pixels, ts, replace(self._run, protect_faces=None))
        if checked is None or self._run.protect_faces is None:
            return checked
        from .faces import detect_faces, protected

        if self._faces is None:
            self._faces = detect_faces(self.data.pixels)
        return protected(checked, self.data.pixels, self._run.protect_faces, found=self._faces)

    def _outputs(self, ts: list[TValue] | None, on_progress: ProgressCallback | None) -> list[torch.Tensor]:
        upscaler = self.upscaler
        if self._state is not None:
            try:
                with upscaler._lock, torch.inference_mode():
                    return self._state.render(ts, on_progress)
            except NonFinite as error:
                logger.warning("%s contains NaN or Inf; this image now runs the whole model for each t", error)
                self._state = None
        return upscaler._forward_with_retry(self._lr, self.size, ts, self._run, on_progress)

    def _keep(self, key: Any, result: list[ImageData]) -> None:
        self._rendered[key] = result

        def size(entry: list[ImageData]) -> int:
            return sum(d.pixels.nbytes + (d.alpha.nbytes if d.alpha is not None else 0) for d in entry)

        total = sum(size(entry) for entry in self._rendered.values())
        while len(self._rendered) > 1 and total > self.cache_bytes:
            _, dropped = self._rendered.popitem(last=False)
            total -= size(dropped)
