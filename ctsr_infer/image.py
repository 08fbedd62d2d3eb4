"""Images as users have them, in and out.

Reading applies the EXIF orientation; keeps alpha, bit depth (8 or 16 bit), grayscale-ness and the
ICC profile aside; converts palette, bilevel and CMYK images to RGB. Pixels become a float32
(H, W, 3) array in [0, 1]; alpha a float32 (H, W) array. Writing mirrors what was read: 16-bit
PNG/TIFF in gives 16-bit out, grayscale gives grayscale, the ICC profile is re-attached.

Pillow reads 16-bit RGB PNGs as 8-bit, so 16-bit PNGs go through ``pypng`` and 16-bit TIFFs through
``tifffile``.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import ImageReadError, InputNotFoundError, InvalidInputError

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageData",
    "read_image",
    "to_pil",
    "to_numpy",
    "resize_bicubic",
    "resize_lanczos",
    "fill_transparent",
    "apply_orientation",
]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".gif"})
_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".tif": "TIFF", ".tiff": "TIFF", ".bmp": "BMP", ".gif": "GIF"}
_NO_ALPHA_FORMATS = {"JPEG", "BMP"}
_SIXTEEN_BIT_FORMATS = {"PNG", "TIFF"}
Source = Literal["path", "pil", "numpy"]


@dataclass
class ImageData:
    """An image as the pipeline sees it, plus what is needed to give it back in kind."""

    pixels: np.ndarray
    """float32 (H, W, 3) in [0, 1]; a grayscale image has three equal channels."""
    alpha: np.ndarray | None = None
    """float32 (H, W) in [0, 1], or None."""
    bit_depth: int = 8
    """8 or 16 for integer images, 32 for float arrays."""
    grayscale: bool = False
    icc_profile: bytes | None = None
    source: Source = "pil"
    numpy_layout: tuple[int, ...] = ()
    """For numpy inputs: () for (H, W), else (C,) for (H, W, C)."""
    exif: bytes | None = None
    """The source file's EXIF block (written back only with ``keep_metadata``)."""
    xmp: bytes | None = None
    """The source file's XMP packet (written back only with ``keep_metadata``)."""

    @property
    def size(self) -> tuple[int, int]:
        """(height, width)."""
        return int(self.pixels.shape[0]), int(self.pixels.shape[1])


# ------------------------------------------------------------------------------------------------
# reading


def apply_orientation(array: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1-8) to an (H, W[, C]) array, as Pillow's ``exif_transpose`` does."""
    if orientation == 2:
        array = array[:, ::-1]
    elif orientation == 3:
        array = array[::-1, ::-1]
    elif orientation == 4:
        array = array[::-1, :]
    elif orientation == 5:
        array = array.swapaxes(0, 1)
    elif orientation == 6:
        array = np.rot90(array, k=-1)
    elif orientation == 7:
        array = array.swapaxes(0, 1)[::-1, ::-1]
    elif orientation == 8:
        array = np.rot90(array, k=1)
    return np.ascontiguousarray(array)


def _orientation(image: Image.Image) -> int:
    try:
        value = int(image.getexif().get(0x0112, 1))
    except Exception:  # a broken EXIF block must not make the image unreadable
        return 1
    return value if 1 <= value <= 8 else 1


def _png_bit_depth(path: Path) -> int:
    with path.open("rb") as handle:
        head = handle.read(26)
    return head[24] if len(head) >= 26 and head[:8] == b"\x89PNG\r\n\x1a\n" else 8


def _read_png16(path: Path) -> np.ndarray:
    import png  # pypng

    reader = png.Reader(filename=str(path))
    width, height, rows, info = reader.asDirect()
    planes = int(info["planes"])
    array = np.vstack([np.asarray(row, dtype=np.uint16) for row in rows]).reshape(height, width, planes)
    return array


def _split_channels(array: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, bool]:
    """(H, W[, C]) -> (H, W, 3) colour, optional (H, W) alpha, grayscale flag; dtype unchanged."""
    if array.ndim == 2:
        array = array[:, :, None]
    channels = array.shape[2]
    if channels == 1:
        return np.repeat(array, 3, axis=2), None, True
    if channels == 2:
        return np.repeat(array[:, :, :1], 3, axis=2), array[:, :, 1], True
    if channels == 3:
        return array, None, False
    if channels == 4:
        return array[:, :, :3], array[:, :, 3], False
    raise ImageReadError(f"images must have 1 to 4 channels, got {channels}.")


def _normalise(array: np.ndarray, bit_depth: int) -> np.ndarray:
    scale = {8: 255.0, 16: 65535.0}.get(bit_depth, 1.0)
    return (array.astype(np.float32) / np.float32(scale)).clip(0.0, 1.0)


def _from_integer_array(array: np.ndarray, bit_depth: int, *, icc: bytes | None, source: Source, orientation: int = 1) -> ImageData:
    array = apply_orientation(array, orientation)
    colour, alpha, gray = _split_channels(array)
    return ImageData(
        pixels=_normalise(colour, bit_depth),
        alpha=None if alpha is None else _normalise(alpha, bit_depth),
        bit_depth=bit_depth,
        grayscale=gray,
        icc_profile=icc,
        source=source,
    )


def _from_pil(image: Image.Image, *, path: Path | None = None) -> ImageData:
    source: Source = "path" if path is not None else "pil"
    icc = image.info.get("icc_profile") or None
    orientation = _orientation(image)
    fmt = image.format
    if path is not None and fmt == "PNG" and _png_bit_depth(path) == 16:
        return _from_integer_array(_read_png16(path), 16, icc=icc, source=source, orientation=orientation)
    if path is not None and fmt == "TIFF":
        bits = getattr(image, "tag_v2", {}).get(258)
        bits = bits[0] if isinstance(bits, tuple) else bits
        if bits == 16:
            import tifffile

            array = tifffile.imread(str(path), key=0)  # the first page of a multi-page file
            if array.ndim == 3 and array.shape[0] in (1, 2, 3, 4) and array.shape[-1] not in (1, 2, 3, 4):
                array = np.moveaxis(array, 0, -1)  # planar configuration
            return _from_integer_array(array.astype(np.uint16), 16, icc=icc, source=source, orientation=orientation)
    mode = image.mode
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode == "PA":
        image = image.convert("RGBA")
    elif mode == "1":
        image = image.convert("L")
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        image = image.convert("RGB")
        icc = None  # the profile described the old colour space; it no longer applies
    elif mode == "RGBa":
        image = image.convert("RGBA")
    elif mode == "La":
        image = image.convert("LA")
    mode = image.mode
    if mode in ("L", "LA", "RGB", "RGBA", "RGBX"):
        array = np.asarray(image)
        if mode == "RGBX":
            array = array[:, :, :3]
        return _from_integer_array(array, 8, icc=icc, source=source, orientation=orientation)
    if mode.startswith("I;16") or mode == "I":
        array = np.asarray(image).astype(np.int64).clip(0, 65535).astype(np.uint16)
        return _from_integer_array(array, 16, icc=icc, source=source, orientation=orientation)
    if mode == "F":
        array = np.asarray(image, dtype=np.float32)
        if array.size and (array.min() < 0.0 or array.max() > 1.0):
            raise ImageReadError(
                f"a float (mode F) image must hold values in [0, 1], got [{array.min()}, {array.max()}]."
            )
        data = _from_integer_array(array, 16, icc=icc, source=source, orientation=orientation)
        data.pixels = apply_orientation(np.repeat(array[:, :, None], 3, axis=2), orientation).astype(np.float32)
        return data
    raise ImageReadError(f"image mode {mode!r} is not supported; convert it to RGB or RGBA first.")


def _from_numpy(array: np.ndarray) -> ImageData:
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 2, 3, 4)):
        raise InvalidInputError(
            f"`image` as a numpy array must be (H, W) or (H, W, C) with C in 1..4, got shape {array.shape}."
        )
    layout: tuple[int, ...] = () if array.ndim == 2 else (int(array.shape[2]),)
    if array.dtype == np.uint8:
        data = _from_integer_array(array, 8, icc=None, source="numpy")
    elif array.dtype == np.uint16:
        data = _from_integer_array(array, 16, icc=None, source="numpy")
    elif np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)) or array.min() < 0.0 or array.max() > 1.0:
            raise InvalidInputError(
                "`image` as a float array must hold finite values in [0, 1], got range "
                f"[{np.nanmin(array)}, {np.nanmax(array)}]. Divide by 255 (or 65535) first."
            )
        colour, alpha, gray = _split_channels(array.astype(np.float32))
        data = ImageData(pixels=colour, alpha=alpha, bit_depth=32, grayscale=gray, source="numpy")
    else:
        raise InvalidInputError(
            f"`image` as a numpy array must be uint8, uint16 or float in [0, 1], got dtype {array.dtype}."
        )
    data.numpy_layout = layout
    return data


def read_image(image: Any) -> ImageData:
    """Read a path, a PIL image or a numpy array.

    Raises:
        ImageReadError: a file that is missing, corrupt or not an image.
        InvalidInputError: an argument of the wrong type, or an empty image.
    """
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise InputNotFoundError(f"input image `{path}` does not exist or is not a file.")
        if path.stat().st_size == 0:
            raise ImageReadError(f"input image `{path}` is empty (0 bytes).")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(path) as handle:
                    pages = getattr(handle, "n_frames", 1)
                    if handle.format == "TIFF" and pages > 1:
                        logger.warning("`%s` is a TIFF of %d pages: only the first page is upscaled.", path, pages)
                    handle.load()
                    data = _from_pil(handle, path=path)
                    data.exif = handle.info.get("exif") or None
                    xmp = handle.info.get("xmp") or handle.info.get("XML:com.adobe.xmp")
                    data.xmp = xmp.encode("utf-8") if isinstance(xmp, str) else xmp or None
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
            raise ImageReadError(
                f"`{path}` is larger than Pillow's decompression-bomb limit ({exc}); such inputs are refused "
                "(raise PIL.Image.MAX_IMAGE_PIXELS in Python if the file is trusted)."
            ) from exc
        except UnidentifiedImageError as exc:
            raise ImageReadError(f"cannot read `{path}` as an image: {exc}") from exc
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise ImageReadError(f"`{path}` is corrupt or truncated ({exc}).") from exc
    elif isinstance(image, Image.Image):
        data = _from_pil(image)
    elif isinstance(image, np.ndarray):
        data = _from_numpy(image)
    else:
        raise InvalidInputError(
            f"`image` must be a file path, a PIL.Image.Image or a numpy array, got {type(image).__name__}. "
            "For torch tensors use `Upscaler.upscale_tensor`."
        )
    if min(data.size) < 1:
        raise InvalidInputError(f"`image` is empty: size {data.size[1]}x{data.size[0]}.")
    return data


# ------------------------------------------------------------------------------------------------
# resampling


def resize_bicubic(pixels: np.ndarray, size: tuple[int, int], *, bit_depth: int) -> np.ndarray:
    """Bicubic resize of (H, W, 3) float pixels to ``size`` = (height, width) with Pillow's kernel.

    8-bit images are resized as 8-bit RGB by Pillow, exactly as OSEDiff prepares its input; deeper
    images channel by channel in float (mode F, same kernel). Returns float32 in [0, 1].
    """
    height, width = size
    if (height, width) == pixels.shape[:2]:
        return pixels.copy()
    if bit_depth == 8:
        rgb = Image.fromarray(np.round(pixels * 255.0).astype(np.uint8), "RGB")
        return np.asarray(rgb.resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32) / 255.0
    channels = [
        np.asarray(Image.fromarray(np.ascontiguousarray(pixels[:, :, c]), "F").resize((width, height), Image.Resampling.BICUBIC))
        for c in range(pixels.shape[2])
    ]
    return np.stack(channels, axis=2).clip(0.0, 1.0).astype(np.float32)


def resize_lanczos(channel: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Lanczos resize of one (H, W) float channel to (height, width); clipped to [0, 1]."""
    height, width = size
    out = Image.fromarray(np.ascontiguousarray(channel, dtype=np.float32), "F").resize((width, height), Image.Resampling.LANCZOS)
    return np.asarray(out, dtype=np.float32).clip(0.0, 1.0)


def fill_transparent(pixels: np.ndarray, alpha: np.ndarray, *, threshold: float = 1.0 / 255.0) -> np.ndarray:
    """Replace the colour under fully transparent pixels by the colour of the nearest visible ones.

    Transparent areas often hold black; an SR network smears it into the visible edge, which
    shows as a dark fringe once alpha is re-attached. A push-pull pyramid fills each transparent
    pixel with an alpha-weighted average of its visible neighbourhood instead.
    """
    visible = (alpha > threshold).astype(np.float32)
    if visible.all() or not visible.any():
        return pixels
    levels: list[tuple[np.ndarray, np.ndarray]] = [(pixels * visible[:, :, None], visible)]
    while max(levels[-1][1].shape) > 1:
        colour, weight = levels[-1]
        h, w = weight.shape
        ph, pw = h % 2, w % 2
        colour = np.pad(colour, ((0, ph), (0, pw), (0, 0)))
        weight = np.pad(weight, ((0, ph), (0, pw)))
        colour = colour.reshape(colour.shape[0] // 2, 2, colour.shape[1] // 2, 2, 3).sum(axis=(1, 3))
        weight = weight.reshape(weight.shape[0] // 2, 2, weight.shape[1] // 2, 2).sum(axis=(1, 3))
        levels.append((colour, weight))
    colour, weight = levels[-1]
    filled = colour / np.maximum(weight, 1e-12)[:, :, None]
    for colour, weight in reversed(levels[:-1]):
        h, w = weight.shape
        up = np.repeat(np.repeat(filled, 2, axis=0), 2, axis=1)[:h, :w]
        mean = colour / np.maximum(weight, 1e-12)[:, :, None]
        filled = np.where(weight[:, :, None] > 0, mean, up)
    return np.where(visible[:, :, None] > 0, pixels, filled).astype(np.float32)


# ------------------------------------------------------------------------------------------------
# output


def quantise(array: np.ndarray, bit_depth: int) -> np.ndarray:
    """Float pixels in [0, 1] -> uint8 or uint16 (``bit_depth`` 16), rounded to nearest, clipped."""
    if bit_depth == 16:
        return np.round(array.clip(0.0, 1.0) * 65535.0).astype(np.uint16)
    return np.round(array.clip(0.0, 1.0) * 255.0).astype(np.uint8)


def _luma(pixels: np.ndarray) -> np.ndarray:
    """ITU-R 601-2 luma, the weights Pillow uses for RGB -> L."""
    return (pixels[:, :, 0] * 0.299 + pixels[:, :, 1] * 0.587 + pixels[:, :, 2] * 0.114).astype(np.float32)


def _channels(data: ImageData) -> np.ndarray:
    """(H, W, C) float array in the image's own channel layout (gray/gray+alpha/RGB/RGBA)."""
    colour = _luma(data.pixels)[:, :, None] if data.grayscale else data.pixels
    if data.alpha is not None:
        colour = np.concatenate([colour, data.alpha[:, :, None]], axis=2)
    return colour


def to_numpy(data: ImageData) -> np.ndarray:
    """The image as a numpy array in the layout and dtype of the numpy input it came from."""
    array = _channels(data)
    if data.numpy_layout == (3,) and data.grayscale:
        array = np.repeat(array, 3, axis=2)
    elif data.numpy_layout == ():
        array = array[:, :, 0]
    if data.bit_depth == 32:
        return array.clip(0.0, 1.0).astype(np.float32)
    return quantise(array, data.bit_depth)


def to_pil(data: ImageData) -> Image.Image:
    """The image as a PIL image: RGB/RGBA/L/LA at 8 bits; 16-bit grayscale without alpha as I;16."""
    array = _channels(data)
    if data.grayscale and data.alpha is None and data.bit_depth == 16:
        image = Image.fromarray(quantise(array[:, :, 0], 16), "I;16")
    else:
        mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[array.shape[2]]
        image = Image.fromarray(quantise(array if array.shape[2] > 1 else array[:, :, 0], 8), mode)
    if data.icc_profile:
        image.info["icc_profile"] = data.icc_profile
    return image
