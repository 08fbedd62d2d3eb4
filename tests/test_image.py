"""Images as users have them: modes, orientation, bit depth, ICC, alpha, corrupt files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms, ImageOps

from ctsr_infer.errors import ImageReadError, InvalidInputError
from ctsr_infer.encoding import write_image
from ctsr_infer.image import apply_orientation, fill_transparent, read_image


def _gradient(h: int, w: int, channels: int = 3, dtype=np.uint8) -> np.ndarray:
    top = np.iinfo(dtype).max
    yy, xx = np.mgrid[0:h, 0:w]
    planes = [(yy * 7 + xx * 3 + 37 * c) % (top + 1) for c in range(channels)]
    return np.stack(planes, axis=2).astype(dtype)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow(tmp_path: Path, orientation: int) -> None:
    image = Image.fromarray(_gradient(5, 9))
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "o.png"
    image.save(path, exif=exif)
    ours = read_image(path)
    with Image.open(path) as handle:
        expected = np.asarray(ImageOps.exif_transpose(handle)).astype(np.float32) / 255
    assert ours.pixels.shape == expected.shape
    assert np.array_equal(ours.pixels, expected)
    assert np.array_equal(apply_orientation(np.arange(6).reshape(2, 3), 1), np.arange(6).reshape(2, 3))


@pytest.mark.parametrize(
    "mode,ext",
    [("RGB", ".png"), ("RGBA", ".png"), ("L", ".png"), ("LA", ".png"), ("RGB", ".tiff"), ("RGBA", ".webp"), ("L", ".tiff")],
)
def test_8bit_modes_round_trip(tmp_path: Path, mode: str, ext: str) -> None:
    channels = len(mode)
    array = _gradient(6, 11, channels)
    source = tmp_path / f"in{ext}"
    Image.fromarray(array if channels > 1 else array[:, :, 0], mode).save(source, **({"lossless": True} if ext == ".webp" else {}))
    data = read_image(source)
    assert data.grayscale == mode.startswith("L") and (data.alpha is not None) == mode.endswith("A")
    out = write_image(data, tmp_path / f"out{ext}")
    with Image.open(out) as handle:
        assert handle.mode == mode
        back = np.asarray(handle).reshape(array.shape).astype(int)
    # PNG and TIFF are lossless; WebP is written lossy at quality 95
    assert np.abs(back - array).max() <= (0 if ext != ".webp" else 6)


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_16bit_png_keeps_16_bits(tmp_path: Path, channels: int) -> None:
    import png

    array = _gradient(7, 13, channels, np.uint16) * 3 + 1  # values that are not multiples of 257
    source = tmp_path / "in.png"
    png.Writer(width=13, height=7, greyscale=channels < 3, alpha=channels in (2, 4), bitdepth=16).write(
        source.open("wb"), array.reshape(7, -1)
    )
    data = read_image(source)
    assert data.bit_depth == 16
    out = write_image(data, tmp_path / "out.png")
    _, _, rows, info = png.Reader(filename=str(out)).asDirect()
    back = np.vstack([np.asarray(r, dtype=np.uint16) for r in rows]).reshape(array.shape)
    assert info["bitdepth"] == 16 and info["planes"] == channels
    assert np.array_equal(back, array)


def test_16bit_tiff_keeps_16_bits(tmp_path: Path) -> None:
    import tifffile

    array = _gradient(5, 8, 3, np.uint16) * 5 + 3
    tifffile.imwrite(tmp_path / "in.tiff", array, photometric="rgb")
    data = read_image(tmp_path / "in.tiff")
    assert data.bit_depth == 16
    write_image(data, tmp_path / "out.tiff")
    assert np.array_equal(tifffile.imread(tmp_path / "out.tiff"), array)


def test_icc_profile_is_kept_at_8_and_16_bits(tmp_path: Path) -> None:
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.fromarray(_gradient(4, 4)).save(tmp_path / "in.png", icc_profile=icc)
    data = read_image(tmp_path / "in.png")
    assert data.icc_profile == icc
    for depth in (8, 16):
        data.bit_depth = depth
        out = write_image(data, tmp_path / f"out{depth}.png")
        with Image.open(out) as handle:
            assert handle.info.get("icc_profile") == icc


def test_palette_bilevel_and_cmyk_become_rgb(tmp_path: Path) -> None:
    rgb = Image.fromarray(_gradient(6, 6))
    palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    palette.info["transparency"] = 0
    assert read_image(palette).alpha is not None
    assert read_image(rgb.convert("P")).alpha is None
    assert read_image(rgb.convert("1")).grayscale
    cmyk = read_image(rgb.convert("CMYK"))
    assert cmyk.pixels.shape == (6, 6, 3) and not cmyk.grayscale and cmyk.icc_profile is None


def test_corrupt_missing_and_non_image_files_fail_clearly(tmp_path: Path) -> None:
    Image.fromarray(_gradient(64, 64)).save(tmp_path / "good.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "good.png").read_bytes()[:120])
    (tmp_path / "text.jpg").write_text("not an image")
    for name in ("cut.png", "text.jpg", "missing.png"):
        with pytest.raises(ImageReadError, match=name.split(".")[0]):
            read_image(tmp_path / name)
    with pytest.raises(InvalidInputError, match="`image`"):
        read_image(12)
    with pytest.raises(InvalidInputError, match=r"\[0, 1\]"):
        read_image(np.full((4, 4, 3), 2.0, dtype=np.float32))
    with pytest.raises(InvalidInputError, match="shape"):
        read_image(np.zeros((4, 4, 5), dtype=np.uint8))


def test_transparent_colour_is_filled_from_visible_neighbours() -> None:
    pixels = np.zeros((16, 16, 3), dtype=np.float32)
    alpha = np.zeros((16, 16), dtype=np.float32)
    pixels[4:12, 4:12] = [1.0, 0.0, 0.0]
    alpha[4:12, 4:12] = 1.0
    filled = fill_transparent(pixels, alpha)
    assert np.array_equal(filled[4:12, 4:12], pixels[4:12, 4:12])
    assert np.allclose(filled[alpha == 0], [1.0, 0.0, 0.0])


def test_write_is_atomic_and_never_clobbers(tmp_path: Path) -> None:
    data = read_image(_gradient(4, 4))
    target = tmp_path / "out.png"
    target.write_bytes(b"user file")
    with pytest.raises(FileExistsError):
        write_image(data, target)
    assert target.read_bytes() == b"user file"
    write_image(data, target, overwrite=True)
    assert Image.open(target).size == (4, 4)
    assert [p.name for p in tmp_path.iterdir() if p.name != "tmp"] == ["out.png"]  # tmp: the test's TMPDIR
    with pytest.raises(InvalidInputError, match="extension"):
        write_image(data, tmp_path / "out.xyz")


def test_sweep_zoom_goes_where_the_ends_differ() -> None:
    from ctsr_infer.sheet import busiest_window, contact_sheet

    base = np.full((120, 200, 3), 128, dtype=np.uint8)
    changed = base.copy()
    changed[70:100, 150:185] = 200  # the knob changed only this patch
    first, last = Image.fromarray(base), Image.fromarray(changed)
    left, top = busiest_window(first, last, 40)
    assert left <= 150 and left + 40 >= 185 and top <= 70 and top + 40 >= 100
    assert busiest_window(first, first, 40) == (80, 40)  # nothing differs: the centre
    sheet = np.asarray(contact_sheet([first, last], ["a", "b"], column=200, crop=40, zoom=2))
    zoom_row = sheet[28 + 120 + 8 : 28 + 120 + 8 + 80]
    assert (zoom_row[:, 208 + 8 : 208 + 8 + 80] == 200).mean() > 0.5  # the second column's zoom shows the patch
