"""What the ``ctsr serve`` page does, without the page: the models on this machine, one prepared
image per (image, model, options), the two sides of the comparison, the zoom, the painted t map, the
full-resolution download, the upload limits and the time of each step.

Kept free of Gradio so it is tested without a browser; :mod:`ctsr_infer.demo.page` only lays it out.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from ..encoding import write_image
from ..errors import InvalidInputError
from ..image import ImageData, quantise, read_image, resize_bicubic
from ..pipeline import Upscaler, load
from ..prepared import PreparedImage
from ..progress import ProgressCallback
from ..tmap import MAP_KINDS

__all__ = ["DISPLAY_SIDE", "FORMATS", "Limits", "View", "Workbench", "available_models", "display", "mask_from_layers", "paint_map"]

logger = logging.getLogger(__name__)

DISPLAY_SIDE = 1024
"""Longest side of the images the page shows (larger outputs are shown reduced; the zoom and the
download are at full resolution)."""
ZOOM_SIDE = 192
"""Side of the zoomed region, in output pixels."""
FORMATS = ("png", "jpg", "webp", "tiff")
"""Download formats."""
Compare = Literal["bicubic", "t"]


@dataclass(frozen=True)
class Limits:
    """Upload limits of the page (a server for others must bound the work one request can cause)."""

    max_upload_bytes: int = 25 * 2**20
    max_input_pixels: int = 1_000_000

    def check_file(self, path: Path) -> None:
        size = path.stat().st_size
        if size > self.max_upload_bytes:
            raise InvalidInputError(
                f"the uploaded file is {size / 2**20:.1f} MB, over this server's limit of {self.max_upload_bytes / 2**20:.1f} MB "
                "(`ctsr serve --max-upload-mb`)."
            )

    def check_image(self, data: ImageData) -> None:
        height, width = data.size
        if height * width > self.max_input_pixels:
            raise InvalidInputError(
                f"the image is {width}x{height} = {height * width / 1e6:.1f} MP, over this server's limit of "
                f"{self.max_input_pixels / 1e6:.1f} MP (`ctsr serve --max-input-mp`); downscale it or raise the limit."
            )


@dataclass(frozen=True)
class View:
    """What the page shows for one request: the two sides at display size, the zoom's two sides, the
    t map used (None without one) and a line with the time of each step."""

    before: np.ndarray
    after: np.ndarray
    zoom_before: np.ndarray
    zoom_after: np.ndarray
    t_map: np.ndarray | None
    timing: str


def available_models() -> list[str]:
    """Manifest models whose files are on this machine (the embedded default always is), looked up
    without network access; the default first."""
    from ..hub import file_status
    from ..manifest import load_manifest

    manifest = load_manifest()
    found = []
    for model_id in sorted(manifest.models):
        status = file_status(manifest.models[model_id])
        if (status.file or status.converted) and (status.base or not status.needs_base):
            found.append(model_id)
    return sorted(found, key=lambda m: m != manifest.default)


def _u8(pixels: np.ndarray) -> np.ndarray:
    return quantise(pixels, 8)


def display(data: ImageData, *, side: int = DISPLAY_SIDE) -> np.ndarray:
    """8-bit RGB for the page: the pixels as ``upscale`` quantises them for an 8-bit image, reduced
    (Lanczos) when the longest side is over ``side``."""
    pixels = _u8(data.pixels)
    height, width = pixels.shape[:2]
    if max(height, width) <= side:
        return pixels
    factor = side / max(height, width)
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    return np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.LANCZOS))


def _zoom(pixels: np.ndarray, centre: tuple[float, float]) -> np.ndarray:
    """The :data:`ZOOM_SIDE` square of output pixels around ``centre`` (fractions of width, height)."""
    height, width = pixels.shape[:2]
    side_h, side_w = min(ZOOM_SIDE, height), min(ZOOM_SIDE, width)
    top = int(round(np.clip(centre[1] * height - side_h / 2, 0, height - side_h)))
    left = int(round(np.clip(centre[0] * width - side_w / 2, 0, width - side_w)))
    return pixels[top:top + side_h, left:left + side_w]


def paint_map(mask: np.ndarray | None, t: float, painted_t: float) -> np.ndarray | None:
    """The t map of a painted mask ((H, W) bool, True where painted): ``painted_t`` there, ``t``
    elsewhere; None when nothing is painted."""
    if mask is None or not mask.any():
        return None
    return np.where(mask, np.float32(painted_t), np.float32(t)).astype(np.float32)


class Workbench:
    """The page's state and work: models loaded on first use, prepared images kept for the slider.

    Args:
        upscaler: a loaded model to start with (others from ``models`` load when picked).
        models: model ids the page offers (default: :func:`available_models`).
        limits: upload limits.
        device, dtype: for models loaded here.
        outputs: folder for full-resolution downloads.
    """

    keep_prepared = 2
    """Prepared images kept (each holds its network outputs): the current one and the one before."""
    keep_models = 2
    """Models kept loaded (an SD model holds ~5 GB)."""

    def __init__(self, upscaler: Upscaler | None = None, *, models: Sequence[str] | None = None, limits: Limits = Limits(),
                 device: str = "auto", dtype: str = "auto", outputs: Path) -> None:
        self.limits, self.device, self.dtype, self.outputs = limits, device, dtype, outputs
        self._models: OrderedDict[str, Upscaler] = OrderedDict()
        self._pinned = None if upscaler is None else upscaler.name
        """The model given loaded (perhaps from a file path): never unloaded."""
        if upscaler is not None:
            self._models[upscaler.name] = upscaler
        offered = list(models) if models is not None else available_models()
        self.models = ([upscaler.name] if upscaler is not None else []) + [m for m in offered if upscaler is None or m != upscaler.name]
        if not self.models:
            raise InvalidInputError("`models` is empty: give the page at least one model.")
        self._prepared: OrderedDict[tuple[object, ...], PreparedImage] = OrderedDict()
        self._bicubic: dict[tuple[object, ...], ImageData] = {}
        self._lock = threading.Lock()
        self._loading = threading.Lock()
        """Held while a model loads: two requests never load one model twice."""

    # -- models --------------------------------------------------------------------------------

    def upscaler(self, name: str) -> Upscaler:
        if name not in self.models:
            raise InvalidInputError(f"`model` {name!r} is not offered by this page; pick one of {self.models}.")
        with self._loading:
            with self._lock:
                if name in self._models:
                    self._models.move_to_end(name)
                    return self._models[name]
            loaded = load(name, device=self.device, dtype=self.dtype)
            with self._lock:
                self._models[name] = loaded
                for old in [m for m in self._models if m not in (name, self._pinned)][: max(0, len(self._models) - self.keep_models)]:
                    del self._models[old]
                    for key in [k for k in self._prepared if k[3] == old]:  # they hold the model: let it go
                        self._drop(key)
            return loaded

    def _drop(self, key: tuple[object, ...]) -> None:
        del self._prepared[key]
        self._bicubic.pop(key, None)

    def knob_note(self, name: str) -> str:
        """One line on the model's knob for the page: what t does, and how a painted map applies."""
        up = self.upscaler(name)
        kind = up.knob.kind
        if kind == "none":
            return f"`{name}` has no t knob: the slider does nothing for it."
        how = ("per latent position" if kind in ("ctsr-flow", "dual-lora")
               else "as an output-space blend of the outputs at the map's lowest and highest t")
        return f"`{name}`: knob `{kind}`, default t = {up.knob.default_t}. A painted map applies {how}."

    def takes_map(self, name: str) -> bool:
        """Whether painted maps and protected faces apply: a knob that takes t maps (``ctsr-flow``
        with one Euler step)."""
        knob = self.upscaler(name).knob
        return knob.kind in MAP_KINDS and not (knob.kind == "ctsr-flow" and knob.steps != 1)

    # -- images --------------------------------------------------------------------------------

    def read(self, path: str | Path) -> ImageData:
        path = Path(path)
        try:
            self.limits.check_file(path)
        except OSError:
            raise _gone() from None
        data = read_image(path)
        self.limits.check_image(data)
        return data

    def prepared(self, path: str | Path, model: str, *, faces: bool = False,
                 on_progress: ProgressCallback | None = None) -> PreparedImage:
        """The prepared image for this input, model and options (made on first use; the file is read once)."""
        key = self._key(path, model, faces)
        with self._lock:
            if key in self._prepared:
                self._prepared.move_to_end(key)
                return self._prepared[key]
        data = self.read(path)
        up = self.upscaler(model)
        ready = up.prepare(data, on_progress=on_progress, protect_faces=1.0 if faces else None)
        with self._lock:
            self._prepared[key] = ready
            while len(self._prepared) > self.keep_prepared:
                self._drop(next(iter(self._prepared)))
        return ready

    def bicubic(self, path: str | Path, model: str, *, faces: bool = False) -> ImageData:
        """The bicubic upsampling of the prepared input to the output size (the comparison's left side), kept."""
        key = self._key(path, model, faces)
        ready = self.prepared(path, model, faces=faces)
        with self._lock:
            found = self._bicubic.get(key)
        if found is None:
            found = replace(ready.data, pixels=resize_bicubic(ready.data.pixels, ready.size, bit_depth=ready.data.bit_depth), alpha=None)
            with self._lock:
                if key in self._prepared:
                    self._bicubic[key] = found
        return found

    def _key(self, path: str | Path, model: str, faces: bool) -> tuple[object, ...]:
        path = Path(path)
        try:
            stat = path.stat()
        except OSError:
            raise _gone() from None
        return (str(path), stat.st_size, stat.st_mtime_ns, model, faces)

    def view(self, path: str | Path, model: str, *, t: float | None, compare: Compare = "bicubic", t_other: float = 1.0,
             mask: np.ndarray | None = None, painted_on: np.ndarray | None = None, painted_t: float = 1.0, faces: bool = False,
             zoom: tuple[float, float] = (0.5, 0.5), on_progress: ProgressCallback | None = None) -> View:
        """Everything the page shows for these controls. ``mask`` (h, w) bool marks painted pixels, at the
        image's size or another of its aspect ratio (one of another aspect ratio is a stale painting: ignored)."""
        start = time.perf_counter()
        up = self.upscaler(model)
        knob = up.knob.kind != "none"
        faces = faces and self.takes_map(model)  # a checkbox left on from a model that takes maps
        ready = self.prepared(path, model, faces=faces, on_progress=on_progress)
        first = ready.last is None  # nothing rendered from it yet: its preparation is this request's
        prepare_s = ready.prepare_seconds if first else 0.0
        t_value: float | np.ndarray | None = t if knob else None
        mask = _current(mask, ready.data, painted_on)
        t_map = paint_map(mask, float(t), painted_t) if knob and t is not None and mask is not None else None
        if t_map is not None:
            if not self.takes_map(model):
                raise InvalidInputError(f"model `{model}` has a `{up.knob.kind}` knob, which takes no t map; clear the painting.")
            t_value = t_map
        (after,) = ready.render_data(t_value, on_progress=on_progress)
        timing = ready.last
        if compare == "t" and knob:
            (before,) = ready.render_data(t_other, on_progress=on_progress)
        else:
            before = self.bicubic(path, model, faces=faces)
        shown = time.perf_counter()
        after_px, before_px = display(after), display(before)
        zoom_after, zoom_before = (_u8(_zoom(side.pixels, zoom)) for side in (after, before))
        map_image = None if t_map is None else np.round(t_map * 255).astype(np.uint8)
        done = time.perf_counter()
        parts = []
        if first:
            parts.append(f"prepare {prepare_s:.2f} s (once per image and model)")
        if timing is not None:
            parts.append(f"render t = {timing.t}: {timing.seconds:.2f} s" + (" (kept from before)" if timing.cached else ""))
        parts.append(f"page images {done - shown:.2f} s")
        parts.append(f"total {done - start:.2f} s")
        return View(before_px, after_px, zoom_before, zoom_after, map_image, " · ".join(parts))

    def save(self, path: str | Path, model: str, *, t: float | None, mask: np.ndarray | None = None,
             painted_on: np.ndarray | None = None, painted_t: float = 1.0, faces: bool = False, fmt: str = "png") -> Path:
        """Write the full-resolution output (bit depth, alpha and ICC kept) in ``fmt``; a new file
        each time (never replaces one)."""
        if fmt not in FORMATS:
            raise InvalidInputError(f"`format` must be one of {list(FORMATS)}, got {fmt!r}.")
        up = self.upscaler(model)
        faces = faces and self.takes_map(model)
        ready = self.prepared(path, model, faces=faces)
        knob = up.knob.kind != "none"
        t = (float(up.knob.default_t or 0.0) if t is None else t) if knob else None
        mask = _current(mask, ready.data, painted_on)
        t_map = paint_map(mask, t, painted_t) if t is not None else None
        (out,) = ready.render_data(t_map if t_map is not None else t)
        label = "" if t is None else ("_tmap" if t_map is not None else f"_t{t:.2f}")
        self.outputs.mkdir(parents=True, exist_ok=True)
        stem = f"{Path(path).stem}_{model}{label}"
        for index in range(10_000):
            target = self.outputs / f"{stem}{'' if index == 0 else f'_{index}'}.{fmt}"
            if target.exists():  # checked before encoding; write_image refuses a file that appears meanwhile
                continue
            try:
                return write_image(out, target, overwrite=False)
            except FileExistsError:
                continue
        raise InvalidInputError(f"too many downloads named {stem} in {self.outputs}; clear that folder.")


def _gone() -> InvalidInputError:
    return InvalidInputError("the uploaded image is no longer on the server (uploads are kept for an hour); upload it again.")


def mask_from_layers(layers: Sequence[np.ndarray] | None) -> np.ndarray | None:
    """Painted pixels of an image editor's layers (RGBA, alpha > 0) at the editor's resolution (the
    image's; a t map is resized to the grid it acts on anyway); None if nothing is painted."""
    if not layers:
        return None
    mask = np.zeros(layers[0].shape[:2], bool)
    for layer in layers:
        if layer is not None and layer.ndim == 3 and layer.shape[2] == 4 and layer.shape[:2] == mask.shape:
            mask |= layer[..., 3] > 0
    return mask if mask.any() else None


def _current(mask: np.ndarray | None, data: ImageData, painted_on: np.ndarray | None = None) -> np.ndarray | None:
    """``mask`` if it was painted on this image, else None: the editor may still hold the previous
    image's painting when a new image's first request runs. ``painted_on``: the editor's background
    (8-bit, the image as the page gave it to the editor), compared with the image when given; the
    mask's aspect ratio is checked in any case."""
    if mask is None:
        return None
    if painted_on is not None:
        shown = _u8(data.pixels)
        if painted_on.shape[:2] != shown.shape[:2] or np.abs(painted_on[..., :3].astype(np.int16) - shown).mean() > 1.0:
            logger.info("ignoring a mask painted on another image")
            return None
    height, width = data.size
    if abs(mask.shape[0] * width - mask.shape[1] * height) > max(height, width, *mask.shape) * 1.0:
        logger.info("ignoring a painted mask of %s for an image of %s", mask.shape, data.size)
        return None
    return mask
