"""Contact sheets: one column per t, the whole image on top and a zoomed crop below, labelled."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["contact_sheet", "busiest_window"]


def busiest_window(first: Image.Image, last: Image.Image, window: int) -> tuple[int, int]:
    """(left, top) of the ``window`` x ``window`` square where ``first`` and ``last`` differ most (sum of
    absolute differences, searched on a grid of window/4 steps); the centre when they are equal.

    A sweep's zoomed crop goes where the knob changes the picture, not where the sky is flat."""
    width, height = first.size
    centre = ((width - window) // 2, (height - window) // 2)
    difference = np.abs(np.asarray(first.convert("L"), dtype=np.float64) - np.asarray(last.convert("L"), dtype=np.float64))
    if not difference.any():
        return centre
    table = np.pad(difference.cumsum(0).cumsum(1), ((1, 0), (1, 0)))  # summed-area table
    stride = max(1, window // 4)
    tops = np.unique(np.append(np.arange(0, height - window + 1, stride), height - window))
    lefts = np.unique(np.append(np.arange(0, width - window + 1, stride), width - window))
    bottom, right = tops[:, None] + window, lefts[None, :] + window
    sums = table[bottom, right] - table[tops[:, None], right] - table[bottom, lefts[None, :]] + table[tops[:, None], lefts[None, :]]
    row, column = np.unravel_index(int(np.argmax(sums)), sums.shape)
    return int(lefts[column]), int(tops[row])


def contact_sheet(images: Sequence[Image.Image], labels: Sequence[str], *, column: int = 384, crop: int = 128, zoom: int = 3,
                  title: str = "") -> Image.Image:
    """Lay out ``images`` (all the same size) in columns of width ``column``.

    Row 1: each image shrunk to the column width (Lanczos), the zoomed window outlined in red on the
    first. Row 2: the same ``crop`` x ``crop`` window of each image at full resolution, enlarged
    ``zoom`` times with nearest neighbour, placed where the first and last images differ most
    (:func:`busiest_window`) so the texture the knob changes is visible. A label (``labels[i]``)
    above each column.
    """
    first = images[0].convert("RGB")
    width, height = first.size
    scaled_height = max(1, round(height * column / width))
    window = min(crop, width, height)
    left, top = busiest_window(first, images[-1], window)
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
        if index == 0:
            factor = column / width
            draw.rectangle((x + left * factor, header + top * factor, x + (left + window) * factor, header + (top + window) * factor),
                           outline=(255, 0, 0))
        piece = rgb.crop((left, top, left + window, top + window)).resize((zoomed, zoomed), Image.Resampling.NEAREST)
        sheet.paste(piece, (x, header + scaled_height + gap))
        draw.text((x, header - 18), label, fill="black", font=font)
    return sheet
