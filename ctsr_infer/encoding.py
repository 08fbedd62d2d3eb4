"""Writing images: encoding to each format, the settings record, metadata, atomic writes."""

from __future__ import annotations

import io
import logging
import os
import zlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, PngImagePlugin, TiffImagePlugin

from .atomic import atomic_write
from .errors import InvalidInputError
from .image import _FORMATS, _NO_ALPHA_FORMATS, _SIXTEEN_BIT_FORMATS, ImageData, _channels, quantise, to_pil

__all__ = ["output_format", "check_encoding", "metadata_options", "encode_image", "write_image", "read_comment", "holds_comment", "PNG_COMPRESS_LEVEL",
           "STAMP_KEY"]

logger = logging.getLogger(__name__)

def output_format(path: Path) -> str:
    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise InvalidInputError(
            f"output `{path}` has extension {path.suffix!r}; use one of {sorted(_FORMATS)}."
        )
    return fmt


PNG_COMPRESS_LEVEL = 1
"""zlib level of 8-bit PNG outputs: 1 (OpenCV's default, so Real-ESRGAN's) encodes a 1.3 MP photo in
0.10 s instead of Pillow's level 6 in 0.34 s, for files about 10% larger; on a CPU the encode was a
third of a ctsr-lite folder run."""


STAMP_KEY = "ctsr"
"""PNG text key (and prefix of the JPEG/WebP EXIF UserComment and TIFF ImageDescription) under which
an output records the settings that produced it."""
_EXIF_IFD, _USER_COMMENT, _IMAGE_DESCRIPTION, _ORIENTATION = 0x8769, 0x9286, 270, 0x0112


def _encode_png16(array: np.ndarray, icc: bytes | None, comment: str | None = None) -> bytes:
    import png  # pypng

    height, width, planes = array.shape
    writer = png.Writer(width=width, height=height, greyscale=planes in (1, 2), alpha=planes in (2, 4), bitdepth=16)
    buffer = io.BytesIO()
    writer.write(buffer, array.reshape(height, width * planes))
    if not icc and not comment:
        return buffer.getvalue()
    chunks = list(png.Reader(bytes=buffer.getvalue()).chunks())
    if icc:
        chunks.insert(1, (b"iCCP", b"ICC profile\x00\x00" + zlib.compress(icc)))
    if comment:
        chunks.insert(1, (b"tEXt", STAMP_KEY.encode("latin-1") + b"\x00" + comment.encode("latin-1", "replace")))
    out = io.BytesIO()
    png.write_chunks(out, chunks)
    return out.getvalue()


_JPEG_EXIF_LIMIT = 65_533
"""Bytes an EXIF block may have in a JPEG (one APP1 segment)."""


def _exif_block(source: bytes | None, comment: str | None, fmt: str) -> bytes | None:
    """The EXIF bytes to write: the source's block (orientation reset) when kept, plus the settings
    record. A source block that cannot be parsed, or that would not fit a JPEG, is dropped with a
    warning: the image is never lost for its metadata."""
    exif = Image.Exif()
    if source:
        try:
            exif.load(source)
            if _ORIENTATION in exif:
                exif[_ORIENTATION] = 1
        except Exception as exc:  # noqa: BLE001 - malformed EXIF from the source file
            logger.warning("the input's EXIF cannot be read (%s); it is not copied", exc)
            exif = Image.Exif()
    if comment:
        exif.get_ifd(_EXIF_IFD)[_USER_COMMENT] = b"ASCII\x00\x00\x00" + comment.encode("ascii", "replace")
    if not len(exif):
        return None
    try:
        block = exif.tobytes()
    except Exception as exc:  # noqa: BLE001 - an entry Pillow cannot write back
        logger.warning("the input's EXIF cannot be written (%s); it is not copied", exc)
        return _exif_block(None, comment, fmt)
    if fmt == "JPEG" and len(block) > _JPEG_EXIF_LIMIT and source:
        logger.warning("the input's EXIF (%d bytes) does not fit a JPEG; it is not copied", len(block))
        return _exif_block(None, comment, fmt)
    return block


def metadata_options(fmt: str, *, comment: str | None, exif: bytes | None = None, xmp: bytes | None = None) -> dict[str, Any]:
    """Pillow ``save`` options that store the settings record ``comment`` (PNG tEXt, JPEG/WebP EXIF
    UserComment, TIFF ImageDescription, GIF comment) and, where given, the source's EXIF and XMP
    (JPEG, WebP, PNG). Shared by still and animated outputs."""
    options: dict[str, Any] = {}
    block = _exif_block(exif if fmt in ("JPEG", "WEBP", "PNG") else None, comment if fmt in ("JPEG", "WEBP") else None, fmt)
    if block:
        options["exif"] = block
    if xmp and fmt in ("JPEG", "WEBP"):
        options["xmp"] = xmp
    if fmt == "PNG" and (comment or xmp):
        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        if comment:
            info.add_text(STAMP_KEY, comment)
        if xmp:
            info.add_itxt("XML:com.adobe.xmp", xmp.decode("utf-8", "replace"))
        options["pnginfo"] = info
    if comment and fmt == "TIFF":
        options["tiffinfo"] = {_IMAGE_DESCRIPTION: comment}
    if comment and fmt == "GIF":
        options["comment"] = comment
    return options


def check_encoding(*, quality: int | None = None, png_level: int | None = None) -> None:
    """Validate the encoder options (before any work)."""
    if quality is not None and (isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100):
        raise InvalidInputError(f"`quality` (--quality) must be an integer in 1..100, got {quality!r}.")
    if png_level is not None and (isinstance(png_level, bool) or not isinstance(png_level, int) or not 0 <= png_level <= 9):
        raise InvalidInputError(f"`png_level` (--png-level) must be an integer in 0..9, got {png_level!r}.")


def encode_image(data: ImageData, fmt: str, *, comment: str | None = None, quality: int | None = None,
                 png_level: int | None = None, keep_metadata: bool = False) -> bytes:
    """Encode to the bytes of a file of format ``fmt`` (PNG, JPEG, WEBP, TIFF, BMP).

    ``comment`` (ASCII text) goes into the file's metadata: a PNG ``tEXt`` chunk keyed ``ctsr``, the
    EXIF UserComment of JPEG and WebP, the TIFF ImageDescription (BMP has no place for it).
    ``quality``: JPEG/WebP quality 1-100 (default 95); ``png_level``: zlib level 0-9 of 8-bit PNGs
    (default :data:`PNG_COMPRESS_LEVEL`). ``keep_metadata``: the source's EXIF (orientation reset to 1:
    the pixels are already upright) and XMP go into JPEG, WebP and PNG outputs."""
    check_encoding(quality=quality, png_level=png_level)
    if data.alpha is not None and fmt in _NO_ALPHA_FORMATS:
        logger.warning("%s cannot store transparency: the image is flattened onto white.", fmt)
        a = data.alpha[:, :, None]
        data = replace(data, pixels=data.pixels * a + (1.0 - a), alpha=None)
    bit_depth = data.bit_depth if data.bit_depth in (8, 16) else 16
    if bit_depth == 16 and fmt not in _SIXTEEN_BIT_FORMATS:
        logger.warning("%s holds 8 bits per channel: the 16-bit result is written at 8 bits.", fmt)
        bit_depth = 8
    if bit_depth == 16:
        array = quantise(_channels(data), 16)
        if fmt == "PNG":
            return _encode_png16(array, data.icc_profile, comment)
        import tifffile

        buffer = io.BytesIO()
        squeezed = array[:, :, 0] if array.shape[2] == 1 else array
        extra: dict[str, Any] = {"iccprofile": data.icc_profile} if data.icc_profile else {}
        if comment:
            extra["description"] = comment
        tifffile.imwrite(buffer, squeezed, photometric="minisblack" if data.grayscale else "rgb", compression="zlib", **extra)
        return buffer.getvalue()
    image = to_pil(replace(data, bit_depth=8))
    options: dict[str, Any] = {}
    if data.icc_profile:
        options["icc_profile"] = data.icc_profile
    if fmt == "PNG":
        options.update(compress_level=PNG_COMPRESS_LEVEL if png_level is None else png_level)
    elif fmt == "JPEG":
        options.update(quality=95 if quality is None else quality, subsampling=0 if (quality or 95) >= 90 else 2)
    elif fmt == "WEBP":
        options.update(quality=95 if quality is None else quality)
    elif fmt == "TIFF":
        options.update(compression="tiff_deflate")
    options.update(metadata_options(fmt, comment=comment, exif=data.exif if keep_metadata else None,
                                    xmp=data.xmp if keep_metadata else None))
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def holds_comment(path: Path) -> bool:
    """Whether files of ``path``'s format can hold the settings record (BMP cannot)."""
    return output_format(path) != "BMP"


def read_comment(path: str | os.PathLike[str]) -> str | None:
    """The ``comment`` :func:`encode_image` stored in a file, or None (no comment, or unreadable)."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            if isinstance(image, PngImagePlugin.PngImageFile):
                return image.text.get(STAMP_KEY)
            if image.format == "GIF":
                raw = image.info.get("comment")
                return raw.decode("ascii", "replace") if isinstance(raw, bytes) else raw
            if image.format in ("JPEG", "WEBP"):
                raw = image.getexif().get_ifd(_EXIF_IFD).get(_USER_COMMENT)
                if isinstance(raw, bytes):
                    return raw[8:].decode("ascii", "replace") if raw.startswith(b"ASCII\x00\x00\x00") else raw.decode("ascii", "replace")
                return raw if isinstance(raw, str) else None
            if isinstance(image, TiffImagePlugin.TiffImageFile):
                value = image.tag_v2.get(_IMAGE_DESCRIPTION)
                return str(value) if value is not None else None
    except Exception:  # noqa: BLE001 - Pillow cannot open it (e.g. a 16-bit RGB TIFF): try tifffile
        pass
    if path.suffix.lower() in (".tif", ".tiff"):
        try:
            import tifffile

            with tifffile.TiffFile(path) as handle:
                return handle.pages[0].description or None
        except Exception:  # noqa: BLE001 - unreadable: no comment
            return None
    return None


def write_image(data: ImageData, path: str | os.PathLike[str], *, overwrite: bool = False, comment: str | None = None,
                **encoding: Any) -> Path:
    """Encode in memory, then write atomically (:func:`ctsr_infer.atomic.atomic_write`).

    With ``overwrite=False`` an existing file is never replaced (FileExistsError). ``comment`` and
    ``encoding`` (``quality``, ``png_level``, ``keep_metadata``) as for :func:`encode_image`.
    """
    path = Path(path)
    payload = encode_image(data, output_format(path), comment=comment, **encoding)
    return atomic_write(path, payload, overwrite=overwrite)
