"""Contact sheets: one column per t, the whole image on top and a zoomed crop below, labelled."""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

__all__ = ["contact_sheet"]


def contact_sheet(images: Sequence[Image.Image], labels: Sequence[str], *, column: int = 384, crop: int = 128, zoom: int = 3,
                  title: str = "") -> Image.Image:
    """Lay out ``images`` (all the same size) in columns of width ``column``.

    Row 1: each image shrunk to the column width (Lanczos). Row 2: the same ``crop`` x ``crop`` window
    from the centre of each image at full resolution, enlarged ``zoom`` times with nearest neighbour
    so the texture the knob changes is visible. A label (``labels[i]``) above each column.
    """
    first = images[0].convert("RGB")
    width, height = first.size
    scaled_height = max(1, round(height * column / width))
    window = min(crop, width, height)
    left, top = (width - window) // 2, (height - window) // 2
    zoomed = window * zoom
    panel = max(column, zoomed)
    header, gap = 28 if not title else 52, 8
    sheet = Image.new("RGB", (len(images) * (panel + gap) + gap, header + scaled_height + zoomed + 3 * gap), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    if title:
        draw.text((gap, 6), title, fill="black", font=font)
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        x = gap + index * (panel + gap)
        rgb = image.convert("RGB")
        sheet.paste(rgb.resize((column, scaled_height), Image.Resampling.LANCZOS), (x, header))
        piece = rgb.crop((left, top, left + window, top + window)).resize((zoomed, zoomed), Image.Resampling.NEAREST)
        sheet.paste(piece, (x, header + scaled_height + gap))
        draw.text((x, header - 18), label, fill="black", font=font)
    return sheet
