"""Animated inputs (GIF, APNG, animated WebP): every frame is upscaled; the timing is kept.

An animated input is read as full frames (Pillow composites each frame onto the previous ones, so
every frame stands alone) with each frame's duration, the loop count and each frame's disposal. It
is written back animated; an output format that cannot animate (JPEG, TIFF, BMP) is refused for
that file, since frames as separate files would be outputs the run's plan does not know about. Multi-page TIFFs are documents, not animations: the reader
takes their first page (:func:`ctsr_infer.image.read_image`).
"""

from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from .atomic import atomic_write
from .encoding import metadata_options, output_format
from .errors import ImageReadError, InvalidInputError
from .image import ImageData, read_image, to_pil

__all__ = ["Animation", "is_animated", "read_animation", "write_animation", "ANIMATED_FORMATS"]

logger = logging.getLogger(__name__)

ANIMATED_FORMATS = frozenset({"GIF", "PNG", "WEBP"})
"""Output formats that hold an animation (PNG as APNG)."""


@dataclass
class Animation:
    """The frames of an animated image and their timing."""

    frames: list[ImageData]
    durations: list[int]
    """Milliseconds each frame shows."""
    loop: int = 0
    """0: forever; n: n more times."""
    disposals: list[int] = field(default_factory=list)
    """Per frame, as the source format numbers them (empty when the source has none)."""
    source_format: str = "GIF"

    @property
    def size(self) -> tuple[int, int]:
        return self.frames[0].size

    @property
    def bit_depth(self) -> int:
        return self.frames[0].bit_depth


def is_animated(path: str | os.PathLike[str]) -> bool:
    """True for a GIF, APNG or WebP file with more than one frame (False for anything unreadable)."""
    try:
        with Image.open(path) as handle:
            return handle.format in ANIMATED_FORMATS and getattr(handle, "n_frames", 1) > 1
    except Exception:  # noqa: BLE001 - the normal reader reports unreadable files
        return False


def read_animation(path: str | os.PathLike[str]) -> Animation:
    """Every frame of an animated GIF/APNG/WebP as full RGBA (or RGB) frames, with their timing."""
    path = Path(path)
    frames: list[ImageData] = []
    durations: list[int] = []
    disposals: list[int] = []
    try:
        with Image.open(path) as handle:
            fmt = handle.format or "GIF"
            loop = int(handle.info.get("loop", 0) or 0)
            for index in range(getattr(handle, "n_frames", 1)):  # as is_animated: a plugin attribute
                handle.seek(index)
                handle.load()  # WebP sets a frame's duration when it is decoded
                durations.append(int(handle.info.get("duration", 100) or 100))
                disposal = getattr(handle, "disposal_method", None) if fmt == "GIF" else handle.info.get("disposal")
                if disposal is not None:
                    disposals.append(int(disposal))
                frame = handle.convert("RGBA") if handle.mode in ("P", "PA", "RGBA", "LA") or "transparency" in handle.info else handle.convert("RGB")
                frames.append(read_image(frame.copy()))
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageReadError(f"`{path}` is a corrupt or truncated animation ({exc}).") from exc
    if len(disposals) != len(frames):
        disposals = []
    return Animation(frames, durations, loop, disposals, fmt)


def write_animation(animation: Animation, frames: list[ImageData], path: Path, *, overwrite: bool, comment: str | None,
                    **encoding: object) -> list[Path]:
    """Write the upscaled ``frames`` with ``animation``'s timing to ``path`` (GIF, PNG as APNG or WebP),
    atomically, never replacing a file unless ``overwrite``. Returns the paths written."""
    fmt = output_format(path)
    if fmt not in ANIMATED_FORMATS:
        raise InvalidInputError(f"`{path.name}` cannot hold an animation; write it as .png (APNG), .gif or .webp.")
    images = [to_pil(frame) for frame in frames]
    if fmt == "GIF":
        images = [image.convert("RGBA").quantize(256) if image.mode == "RGBA" else image.convert("RGB").quantize(256) for image in images]
    options: dict[str, object] = {"save_all": True, "append_images": images[1:], "duration": animation.durations,
                                  "loop": animation.loop}
    if animation.disposals and fmt in ("GIF", "PNG") and fmt == animation.source_format:
        options["disposal"] = animation.disposals
    options.update(metadata_options(fmt, comment=comment))
    if fmt == "WEBP":
        options["lossless"] = encoding.get("quality") is None
        if encoding.get("quality") is not None:
            options["quality"] = encoding["quality"]
    buffer = io.BytesIO()
    images[0].save(buffer, format=fmt, **options)
    return [atomic_write(path, buffer.getvalue(), overwrite=overwrite)]
