"""``Upscaler``: one loaded student, called many times. ``upscale(image, t)`` as numbered steps.

1. Check inputs (t, scale, options).                    5. Denoise: one UNet call, z0 in closed form;
2. Image in: orientation, alpha, depth, ICC kept aside.     knob phase 2 when t > 0.
3. Bicubic pre-upsample to round(H*s) x round(W*s).    6. Decode, crop the padding, clamp.
4. Reflect-pad to a multiple of 8; encode.             7. Colour fix on the whole image; alpha back.

A NaN or Inf in the latents or the image triggers one retry in float32 (with a warning), then a
:class:`NumericalError`: never a silently black image.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, overload

import numpy as np
import torch
from PIL import Image
from typing_extensions import Unpack

from .device import NonFinite, Placement, resolve
from .errors import InvalidInputError, NumericalError
from .families import STUDENT_FORMAT, Family, FamilyModel, LoadContext, get_family
from .families.base import RunOptions
from .image import ImageData, fill_transparent, read_image, resize_lanczos, to_numpy, to_pil
from .knob import Knob
from .prepared import PreparedImage
from .options import UpscaleOptions, check_options
from .progress import ProgressCallback, emit
from .student_file import StudentFile
from .tmap import TMap, TValue, is_map_like

__all__ = ["UpscaleOptions", "Upscaler", "load", "target_size"]

logger = logging.getLogger(__name__)


TArgument = float | TMap | np.ndarray | Sequence[float | TMap | np.ndarray] | None
"""What ``t`` may be: one number, one map, or a list of them (see :mod:`ctsr_infer.tmap`)."""

BATCH_MAX_PIXELS = 512 * 512
"""Largest input (pixels) that :meth:`Upscaler.process_batch` stacks with others into one network call."""


def target_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """Output size for a scale: round(H * s) x round(W * s), halves rounded up, at least 1."""
    return max(1, math.floor(height * scale + 0.5)), max(1, math.floor(width * scale + 0.5))


def _check_pixels(size: tuple[int, int], run: RunOptions) -> None:
    if size[0] * size[1] > run.max_pixels:
        raise InvalidInputError(
            f"the output would be {size[1]}x{size[0]} = {size[0] * size[1] / 1e6:.0f} MP, over the limit of "
            f"{run.max_pixels / 1e6:.0f} MP; lower `scale`, or raise the limit with --max-pixels / `max_pixels`."
        )


class Upscaler:
    """A loaded one-step SR student. Load once, call many times.

    Example:
        >>> up = ctsr_infer.load("osediff")            # doctest: +SKIP
        >>> up.upscale("photo.jpg", scale=4).save("out.png")  # doctest: +SKIP
    """

    def __init__(self, model: FamilyModel, *, name: str, family: Family | None = None) -> None:
        self.model = model
        self.name = name
        self.meta = model.meta
        self.family = family or get_family(model.meta.family, model=name)
        """The family's descriptor: its options, tiling policy and fast paths."""
        self._lock = threading.RLock()
        """Held for each network call. Calls from several threads (a web server, a Ray actor) are
        correct: the fp32 retry casts the shared weights and the tiled VAE swaps the GroupNorm and
        attention of shared modules for the duration of a call, so calls on one model take turns
        (their reading, pre- and post-processing still overlap). Two models run in parallel."""

    @property
    def knob(self) -> Knob:
        return self.meta.knob

    @property
    def default_scale(self) -> float:
        return float(self.meta.scale)

    @property
    def placement(self) -> Placement:
        return self.model.placement

    def __repr__(self) -> str:
        return f"Upscaler({self.name!r}, family={self.meta.family!r}, knob={self.knob.kind!r}, device={self.placement.device})"

    # -- public entry points -------------------------------------------------------------------

    @overload
    def upscale(self, image: np.ndarray, *, t: float | TMap | np.ndarray | None = ..., **options: Unpack[UpscaleOptions]) -> np.ndarray: ...
    @overload
    def upscale(self, image: Image.Image | str | os.PathLike[str], *, t: float | TMap | np.ndarray | None = ...,
                **options: Unpack[UpscaleOptions]) -> Image.Image: ...

    def upscale(self, image: Image.Image | np.ndarray | str | os.PathLike[str], *, t: float | TMap | np.ndarray | None = None,
                **options: Unpack[UpscaleOptions]) -> Image.Image | np.ndarray:
        """Upscale one image.

        Args:
            image: a path, a PIL image, or a numpy array (H, W[, C]) of uint8, uint16 or float in [0, 1].
            t: the knob in [0, 1] (0 = realistic detail, 1 = faithful); None uses the model's default.
                A model without a knob rejects an explicit t. Or a t map: an (H, W) array in [0, 1] (or
                a :class:`~ctsr_infer.tmap.TMap`) with the image's aspect ratio, a t per position
                (:mod:`ctsr_infer.tmap` says how each knob applies it).
            **options: keyword-only, all optional (see :class:`UpscaleOptions`):
                ``scale`` any float >= 1, the output being round(H * scale) x round(W * scale) (default:
                the model's); ``color_fix`` ``adain``, ``wavelet`` or ``none`` (default: the model's);
                ``knob_steps`` Euler steps of the ctsr-flow knob; ``seed`` for ``encode="sample"``;
                ``encode`` ``mean`` (deterministic) or ``sample`` (OSEDiff's behaviour); ``protect_faces``
                a t in [0, 1] for the faces found in the image (the ``faces`` extra); ``on_progress``
                a callback receiving :class:`ProgressEvent` objects.

        Returns:
            A PIL image for path and PIL inputs (8-bit; 16-bit grayscale as ``I;16``), a numpy array of
            the input's dtype and layout for numpy inputs. Use :meth:`process` + ``write_image`` to keep
            16-bit RGB.
        """
        if t is not None and not is_map_like(t) and (isinstance(t, bool) or not isinstance(t, (int, float))):
            raise InvalidInputError(f"`t` for `upscale` must be one number or one t map; for several use `sweep`. Got {t!r}.")
        data = read_image(image)
        (out,) = self.process(data, t=t, **options)
        return to_numpy(out) if data.source == "numpy" else to_pil(out)

    __call__ = upscale

    def sweep(self, image: Image.Image | np.ndarray | str | os.PathLike[str], ts: Sequence[float | TMap | np.ndarray],
              **options: Unpack[UpscaleOptions]) -> list[Image.Image | np.ndarray]:
        """Upscale one image at several t values; the SR step runs once (one-step knob: one velocity)."""
        data = read_image(image)
        outs = self.process(data, t=list(ts), **options)
        return [to_numpy(o) if data.source == "numpy" else to_pil(o) for o in outs]

    def prepare(self, image: Image.Image | np.ndarray | str | os.PathLike[str] | ImageData,
                **options: Unpack[UpscaleOptions]) -> PreparedImage:
        """Make one image ready for many t values (a slider): the work every t shares runs now, what
        the knob needs is kept (:mod:`ctsr_infer.prepared` says what, per knob), and
        ``prepared.render(t)`` equals ``upscale(image, t=t, **options)``.

        Example:
            >>> ready = up.prepare("photo.jpg", scale=4)          # doctest: +SKIP
            >>> frames = [ready.render(t) for t in (0.0, 0.5, 1.0)]  # doctest: +SKIP
        """
        return PreparedImage(self, image if isinstance(image, ImageData) else read_image(image), options)

    def upscale_tensor(self, x: torch.Tensor, *, t: TArgument = None,
                       **options: Unpack[UpscaleOptions]) -> list[torch.Tensor]:
        """Tensor path for apps: (N, 3, H, W) float in [0, 1] -> one (N, 3, H', W') float32 CPU tensor
        in [0, 1] per t value. The pre-upsample uses the same bicubic kernel as the image path."""
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != 3 or not x.is_floating_point():
            raise InvalidInputError(
                f"`x` must be a float tensor of shape (N, 3, H, W) in [0, 1], got "
                f"{getattr(x, 'shape', type(x).__name__)} {getattr(x, 'dtype', '')}."
            )
        if not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1:
            raise InvalidInputError("`x` must hold finite values in [0, 1].")
        ts, run = self.check_options(t, **options)
        size = target_size(x.shape[-2], x.shape[-1], run.scale)
        _check_pixels(size, run)
        progress = options.get("on_progress")
        frames = x.detach().float().cpu()
        if self.batchable(frames.shape[-2], frames.shape[-1]) and run.protect_faces is None:  # no faces to find per frame
            return self._forward_with_retry(frames, size, self._image_ts(frames[0].permute(1, 2, 0).numpy(), ts, run), run, progress)
        outputs = [self._forward_with_retry(frame[None], size, self._image_ts(frame.permute(1, 2, 0).numpy(), ts, run), run, progress)
                   for frame in frames]
        return [torch.cat(per_t) for per_t in zip(*outputs)]

    def batchable(self, height: int, width: int) -> bool:
        """Whether several (height, width) images go through the network in one call: the family
        supports it (``lite``) and the input is at most :data:`BATCH_MAX_PIXELS` (larger images are
        tiled, and the tiles already fill the device)."""
        return self.family.tiling.batchable and height * width <= BATCH_MAX_PIXELS

    def process(self, data: ImageData, *, t: TArgument = None,
                **options: Unpack[UpscaleOptions]) -> list[ImageData]:
        """Low-level: an :class:`ImageData` in, one :class:`ImageData` per t out (bit depth kept)."""
        ts, run = self.check_options(t, **options)
        return self._run_group([data], ts, run, options.get("on_progress"))[0]

    def process_batch(self, items: Sequence[ImageData], *, t: TArgument = None,
                      **options: Unpack[UpscaleOptions]) -> list[list[ImageData]]:
        """Low-level: several images of one size, one list of outputs per image (as :meth:`process`
        gives for each). Where the family supports it (:meth:`batchable`) the images share one network
        call, with the result of one call each up to float rounding; otherwise they run one by one."""
        sizes = sorted({(data.size, data.bit_depth) for data in items})
        if len(sizes) > 1:
            raise InvalidInputError(
                f"`items` of `process_batch` must share one size and bit depth, got {sizes}; "
                "group them by size first (the batch runner does)."
            )
        ts, run = self.check_options(t, **options)
        progress = options.get("on_progress")
        if items and self.batchable(*items[0].size) and run.protect_faces is None:  # the images share their t values
            return self._run_group(list(items), ts, run, progress)
        return [self._run_group([data], ts, run, progress)[0] for data in items]

    def settings(self, t: float | TMap | None = None, **options: Unpack[UpscaleOptions]) -> dict[str, Any]:
        """What determines an output's pixels for one t (options resolved to their values): recorded
        in written files so a folder run skips an output only if the same settings made it."""
        from . import __version__

        ts, run = self.check_options(t, **options)
        value = ts[0] if ts else None
        record: dict[str, Any] = {"ctsr": __version__, "model": self.name, "family": self.meta.family,
                                  "t": {"map": value.digest} if isinstance(value, TMap) else value,
                                  "scale": run.scale, "color_fix": run.color_fix}
        if run.protect_faces is not None:
            record["protect_faces"] = run.protect_faces
        used = set(self.family.options)
        for name in ("knob_steps", "seed", "encode"):
            if name in used:
                record[name] = getattr(run, name)
        return record

    def check_options(self, t: Any = None, **options: Unpack[UpscaleOptions]) -> tuple[list[TValue] | None, RunOptions]:
        """Validate t and options without running anything; returns the t list and resolved options."""
        return check_options(t, options, family=self.family, meta=self.meta, name=self.name)

    # -- internals -----------------------------------------------------------------------------

    def _image_ts(self, pixels: np.ndarray, ts: list[TValue] | None, run: RunOptions) -> list[TValue] | None:
        """The t values for one image: its maps checked against its shape, its faces pinned."""
        if ts is None:
            return None
        height, width = pixels.shape[:2]
        for value in ts:
            if isinstance(value, TMap):
                value.check_aspect(height, width)
        if run.protect_faces is None:
            return ts
        from .faces import protected

        return protected(ts, pixels, run.protect_faces)

    def _run_group(self, items: list[ImageData], ts: list[TValue] | None, run: RunOptions,
                   progress: ProgressCallback | None) -> list[list[ImageData]]:
        """Images of one size and bit depth through one network call (N = len(items))."""
        run = replace(run, bit_depth=items[0].bit_depth)
        size = target_size(*items[0].size, run.scale)
        _check_pixels(size, run)
        ts = self._image_ts(items[0].pixels, ts, run)  # one image, or a batch that shares them
        # 1. image in: transparent colour filled, alpha upscaled on its own
        emit(progress, "preprocess", 0, 1)
        pixels = [data.pixels if data.alpha is None else fill_transparent(data.pixels, data.alpha) for data in items]
        alphas = [None if data.alpha is None else resize_lanczos(data.alpha, size) for data in items]
        lr = torch.from_numpy(np.ascontiguousarray(np.stack(pixels))).permute(0, 3, 1, 2)
        emit(progress, "preprocess", 1, 1)
        # 2.-6. the family's network path (pre-upsample, encode, UNet, knob, decode, colour fix)
        outputs = self._forward_with_retry(lr, size, ts, run, progress)
        return [
            [replace(data, pixels=out[index].permute(1, 2, 0).numpy().astype(np.float32, copy=False), alpha=alpha) for out in outputs]
            for index, (data, alpha) in enumerate(zip(items, alphas, strict=True))
        ]

    def _forward_with_retry(self, lr: torch.Tensor, size: tuple[int, int], ts: list[TValue] | None, options: RunOptions,
                            on_progress: ProgressCallback | None) -> list[torch.Tensor]:
        with self._lock:
            return self._forward_locked(lr, size, ts, options, on_progress)

    def _forward_locked(self, lr: torch.Tensor, size: tuple[int, int], ts: list[TValue] | None, options: RunOptions,
                        on_progress: ProgressCallback | None) -> list[torch.Tensor]:
        try:
            return self.model.forward(lr, size=size, ts=ts, options=options, on_progress=on_progress)
        except NonFinite as first:
            if self.placement.dtype == torch.float32 and self.placement.vae_dtype == torch.float32:
                raise NumericalError(
                    f"{first} contains NaN or Inf in float32; the input or the weights are broken "
                    f"(model `{self.name}`)."
                ) from None
            logger.warning("%s contains NaN or Inf in %s; retrying this image in float32", first, self.placement.dtype)
            with self.model.in_fp32():
                try:
                    return self.model.forward(lr, size=size, ts=ts, options=options, on_progress=on_progress)
                except NonFinite as second:
                    raise NumericalError(
                        f"{second} contains NaN or Inf even in float32 (model `{self.name}`)."
                    ) from None


def load(
    model: str | os.PathLike[str] | None = None,
    *,
    base: str | os.PathLike[str] | None = None,
    device: str = "auto",
    dtype: str = "auto",
    channels_last: bool | None = None,
    compile: bool = False,
) -> Upscaler:
    """Load a student by manifest id or student-file path.

    Args:
        model: a model id from ``list_models()`` (default: the manifest's default), the path of a
            student file (``.safetensors``), or of a checkpoint that converts from the file alone (a
            classic network's ``.pth``/``.safetensors``: converted in memory). Checkpoints that need a
            base model or a companion file are converted once with ``ctsr models convert``.
        base: a local diffusers folder for the base model, overriding the file's/manifest's reference.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        dtype: ``auto``, ``fp32``, ``bf16`` or ``fp16``. ``auto``: bf16 with an fp32 VAE on CUDA; on a
            CPU with native bf16 the family's measured fast path (``Family.cpu_fast_path``), else fp32.
        channels_last: run convolutions in channels-last memory format; None: as ``auto`` picks.
        compile: ``torch.compile`` the denoising network (opt-in: the first image pays the
            compilation, tens of seconds; needs a C++ compiler on the CPU).
    """
    from .hub import ensure_student, resolve_base
    from .manifest import BaseSpec, load_manifest
    from .student_file import load_student

    resolve(device, dtype)  # names checked before anything is downloaded
    manifest = load_manifest()
    model = manifest.default if model is None else model
    base_dir: Path | None = Path(base) if base is not None else None
    as_path = Path(model)
    student = None
    if as_path.suffix.lower() in (".pkl", ".pth", ".pt", ".ckpt") or as_path.is_file():
        student, name = _unconverted(as_path), as_path.name
        student_path = as_path
    elif as_path.suffix.lower() == ".safetensors":
        student_path, name = as_path, as_path.name
    else:
        spec = manifest.get(str(model))
        student_path, base_dir = ensure_student(spec, base_dir=base_dir)
        name = spec.id
    student = student or load_student(student_path)
    family = get_family(student.meta.family, model=name)
    family.check_config(student.meta.config)
    if family.needs_base and base_dir is None:
        reference = dict(student.meta.base)
        if "path" in reference:
            base_dir = Path(reference["path"])
        elif "repo_id" in reference:
            base_dir = resolve_base(BaseSpec(id=reference["repo_id"], sources=(reference,)), for_model=name)
    placement = resolve(device, dtype, channels_last=channels_last, fast_path=family.cpu_fast_path)
    upscaler = Upscaler(family.build(student, placement, LoadContext(name=name, base_dir=base_dir)), name=name, family=family)
    if compile:
        from .families.base import compile_denoiser

        logger.info("compiling the %s of %s", compile_denoiser(upscaler.model), name)
    return upscaler


def _unconverted(path: Path) -> StudentFile | None:
    """A weights file given as ``model``: None for a student file (loaded as such); a student made in
    memory for a format that converts from the file alone (a classic network's ``.pth``); otherwise
    an error saying what the file is and how to convert it."""
    from .errors import IncompatibleWeightsError
    from .families import ConvertInputs, detect_format, get_format, is_student_file, read_checkpoint

    if not path.is_file():
        raise InvalidInputError(f"`model` {str(path)!r} does not exist (a pickled checkpoint is converted first: "
                                f"`ctsr models convert {path} OUT.safetensors`).")
    if is_student_file(path):  # the header says so: load it once, as a student file
        return None
    try:
        checkpoint = read_checkpoint(path)
        fmt = detect_format(checkpoint)
    except IncompatibleWeightsError:  # not a format we know: load_student says what it is not
        return None
    if fmt == STUDENT_FORMAT:
        return None
    convert = get_format(fmt)
    if convert.convert is not None and not convert.needs_base and convert.companion is None:
        return convert.convert(ConvertInputs(source=checkpoint, provenance={"loaded_from": path.name}))
    raise InvalidInputError(
            f"`model` {str(path)!r} is a {fmt} checkpoint, not a student file; convert it once with "
            f"`ctsr models convert {path} OUT.safetensors` (or register it: `ctsr models import {path} --id NAME`) and load the result."
        )
