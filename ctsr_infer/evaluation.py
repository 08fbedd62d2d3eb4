"""Measuring a model on one's own images: ``ctsr eval``, with one written protocol.

Protocol (README "Evaluation"):

* ground truth (GT): every image file of a folder (``plan.find_images``), RGB, 8 or 16 bit read as
  floats; cropped at the bottom/right to a multiple of the scale;
* low resolution: the GT degraded on the fly, seeded per image (``seed`` + its index):
  ``clean`` (Pillow's antialiased bicubic ÷scale, 8-bit), ``mild`` (blur, bicubic, noise, JPEG) or
  ``realesrgan`` (Real-ESRGAN's second-order degradation), all quantised to 8 bits as files are;
* each method's output is rounded to 8 bits (what a saved PNG holds) before it is scored;
* PSNR and SSIM on RGB and on Y (BT.601), ``scale`` pixels cropped from each border;
* per image and the mean over images; bicubic and Lanczos upsamplings of the same low-resolution
  image are scored alongside as baselines;
* ``evaluate_folders``: outputs made elsewhere, matched to GT by file stem.

LPIPS and DISTS need pretrained backbones that cannot be downloaded here; the report says so
instead of inventing a number.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from .errors import InvalidInputError
from .image import quantise, read_image, resize_bicubic
from .metrics import psnr, ssim
from .plan import find_images

__all__ = ["Score", "EvalReport", "evaluate", "evaluate_folders", "degrade_for_eval", "plot_curve", "crop_grid", "score", "Degradation"]

Degradation = Literal["clean", "mild", "realesrgan"]
DEGRADATIONS: tuple[str, ...] = ("clean", "mild", "realesrgan")
PERCEPTUAL_NOTE = ("LPIPS/DISTS: not computed — their pretrained backbones (AlexNet/VGG) cannot be downloaded here and no "
                   "package ships them.")


@dataclass(frozen=True)
class Score:
    image: str
    method: str
    """A model's name, or ``bicubic`` / ``lanczos``."""
    t: float | None
    psnr_rgb: float
    psnr_y: float
    ssim_rgb: float
    ssim_y: float


@dataclass
class EvalReport:
    scores: list[Score]
    protocol: dict[str, Any]
    notes: list[str] = field(default_factory=lambda: [PERCEPTUAL_NOTE])
    samples: list[tuple[str, dict[str, np.ndarray]]] = field(default_factory=list)
    """For :func:`crop_grid`: the first images' outputs (8-bit), by label, the ground truth last."""

    def means(self) -> list[dict[str, Any]]:
        """The mean of each metric over images, per (method, t), in first-seen order."""
        groups: dict[tuple[str, float | None], list[Score]] = {}
        for score in self.scores:
            groups.setdefault((score.method, score.t), []).append(score)
        rows = []
        for (method, t), items in groups.items():
            row: dict[str, Any] = {"method": method, "t": t, "images": len(items)}
            for metric in ("psnr_rgb", "psnr_y", "ssim_rgb", "ssim_y"):
                row[metric] = float(np.mean([getattr(s, metric) for s in items]))
            rows.append(row)
        return rows

    def to_json(self) -> str:
        return json.dumps({"protocol": self.protocol, "notes": self.notes, "means": self.means(),
                           "per_image": [asdict(s) for s in self.scores]}, indent=2)


def _quantised(pixels: np.ndarray) -> np.ndarray:
    return np.round(np.clip(pixels, 0.0, 1.0) * 255.0) / 255.0


def degrade_for_eval(gt: np.ndarray, kind: str, scale: int, seed: int) -> np.ndarray:
    """(H, W, 3) float GT (H, W multiples of ``scale``) -> the 8-bit low-resolution image as floats."""
    from .degradations import DegradationConfig, MildConfig, bicubic_degrade, degrade, mild_degrade

    hr = torch.from_numpy(np.ascontiguousarray(gt, dtype=np.float32)).permute(2, 0, 1)[None]
    rng = np.random.default_rng(seed)
    if kind == "clean":
        low = bicubic_degrade(hr, scale)
    elif kind == "mild":
        low = mild_degrade(hr, rng, MildConfig(scale=scale))
    elif kind == "realesrgan":
        if scale != 4:
            raise InvalidInputError(f"`--degrade realesrgan` is Real-ESRGAN's x4 pipeline; use --scale 4, got {scale}.")
        low = degrade(hr, rng, DegradationConfig())
    else:
        raise InvalidInputError(f"`--degrade` must be one of {list(DEGRADATIONS)}, got {kind!r}.")
    return _quantised(low[0].permute(1, 2, 0).numpy())


def _gt(path: Path, scale: int) -> np.ndarray:
    pixels = read_image(path).pixels
    height, width = pixels.shape[0] // scale * scale, pixels.shape[1] // scale * scale
    if height < 4 * scale or width < 4 * scale:
        raise InvalidInputError(f"ground truth `{path}` is {pixels.shape[1]}x{pixels.shape[0]}; it needs at least {4 * scale} px a side.")
    return np.ascontiguousarray(pixels[:height, :width, :3])


def score(image: str, method: str, t: float | None, output: np.ndarray, gt: np.ndarray, crop: int) -> Score:
    """One output scored against its ground truth by the protocol: 8-bit rounding, then PSNR and
    SSIM on RGB and Y with ``crop`` pixels off each border. Arrays (H, W, 3+) float in [0, 1]."""
    out = _quantised(output[..., :3])
    return Score(image, method, t, psnr(out, gt, crop=crop), psnr(out, gt, crop=crop, y=True),
                 ssim(out, gt, crop=crop), ssim(out, gt, crop=crop, y=True))


def _lanczos(low: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    image = Image.fromarray((low * 255.0 + 0.5).astype(np.uint8))
    return np.asarray(image.resize((size[1], size[0]), Image.Resampling.LANCZOS), dtype=np.float32) / 255.0


def evaluate(upscaler: Any, data: str | Path, *, ts: Sequence[float] | None = None, degrade: str = "clean", scale: int | None = None,
             seed: int = 0, on_image: Callable[[str], None] | None = None, samples: int = 4) -> EvalReport:
    """Score ``upscaler`` (and the bicubic and Lanczos baselines) on the GT images of ``data``; the
    outputs of the first ``samples`` images are kept for :func:`crop_grid`."""
    folder = Path(data)
    files = find_images(folder)
    if not files:
        raise InvalidInputError(f"`--data` `{folder}` holds no image files; give a folder of ground-truth images.")
    wanted = upscaler.default_scale if scale is None else scale
    if isinstance(wanted, bool) or not float(wanted).is_integer() or wanted < 1:
        raise InvalidInputError(f"`--scale` must be a whole number >= 1 for evaluation (GT is cropped to its multiple), got {wanted}.")
    scale = int(wanted)
    values: list[float | None] = list(ts) if ts else [None]
    scores: list[Score] = []
    kept: list[tuple[str, dict[str, np.ndarray]]] = []
    for index, path in enumerate(files):
        gt = _gt(path, scale)
        low = degrade_for_eval(gt, degrade, scale, seed + index)
        size = gt.shape[:2]
        outputs = {"bicubic": resize_bicubic(low, size, bit_depth=8), "lanczos": _lanczos(low, size)}
        scores.extend(score(path.name, method, None, output, gt, scale) for method, output in outputs.items())
        results = upscaler.sweep(low, values, scale=scale) if ts else [upscaler.upscale(low, scale=scale)]
        for t, output in zip(values, results, strict=True):
            outputs[upscaler.name if t is None else f"{upscaler.name} t={t:g}"] = np.asarray(output, dtype=np.float32)
            scores.append(score(path.name, upscaler.name, t, np.asarray(output, dtype=np.float32), gt, scale))
        if index < samples:
            kept.append((path.name, {label: _to_u8(o) for label, o in {**outputs, "ground truth": gt}.items()}))
        if on_image is not None:
            on_image(path.name)
    protocol = {"data": str(folder), "images": len(files), "degrade": degrade, "scale": scale, "seed": seed,
                "border_crop": scale, "rounding": "8-bit outputs", "model": upscaler.name, "ts": values}
    return EvalReport(scores, protocol, samples=kept)


def _to_u8(pixels: np.ndarray) -> np.ndarray:
    return quantise(pixels[..., :3], 8)


def crop_grid(samples: Sequence[tuple[str, dict[str, np.ndarray]]], path: str | Path, *, crop: int = 96, zoom: int = 2,
              column: int = 192) -> Path:
    """One contact sheet (:func:`ctsr_infer.sheet.contact_sheet`) per image, stacked: each method's
    output shrunk to a column, then the same ``crop`` window of all at full resolution, enlarged
    ``zoom`` times, where the first and last columns differ most. ``samples`` as in
    :attr:`EvalReport.samples`: (image name, {label: (H, W, 3) uint8}), all of one size per image."""
    from .atomic import atomic_write
    from .sheet import contact_sheet

    if not samples:
        raise InvalidInputError("the crop grid needs at least one image.")
    sheets = [contact_sheet([Image.fromarray(a) for a in outputs.values()], list(outputs), column=column, crop=crop, zoom=zoom,
                            title=name) for name, outputs in samples]
    canvas = Image.new("RGB", (max(s.width for s in sheets), sum(s.height for s in sheets)), "white")
    top = 0
    for sheet in sheets:
        canvas.paste(sheet, (0, top))
        top += sheet.height
    target = Path(path)
    atomic_write(target, writer=lambda tmp: canvas.save(tmp, format="PNG"))
    return target


def evaluate_folders(predictions: str | Path, ground_truth: str | Path, *, scale: int = 4, samples: int = 4) -> EvalReport:
    """Score outputs made elsewhere against GT, matched by file stem (sizes must agree after the GT's
    crop to a multiple of ``scale``)."""
    preds = {p.stem: p for p in find_images(Path(predictions))}
    truths = find_images(Path(ground_truth))
    if not truths:
        raise InvalidInputError(f"`GT_DIR` `{ground_truth}` holds no image files.")
    missing = [p.name for p in truths if p.stem not in preds]
    if missing:
        raise InvalidInputError(f"`PRED_DIR` `{predictions}` has no output for {missing[:5]} (matched by file name without extension).")
    scores = []
    kept: list[tuple[str, dict[str, np.ndarray]]] = []
    for path in truths:
        gt = _gt(path, scale)
        pred = read_image(preds[path.stem]).pixels[..., :3]
        if pred.shape != gt.shape:
            raise InvalidInputError(f"`{preds[path.stem]}` is {pred.shape[1]}x{pred.shape[0]}, its ground truth {gt.shape[1]}x{gt.shape[0]} "
                                    f"(after cropping to a multiple of {scale}).")
        scores.append(score(path.name, Path(predictions).name, None, pred, gt, scale))
        if len(kept) < samples:
            kept.append((path.name, {Path(predictions).name: _to_u8(pred), "ground truth": _to_u8(gt)}))
    return EvalReport(scores, {"predictions": str(predictions), "ground_truth": str(ground_truth), "images": len(truths),
                               "scale": scale, "border_crop": scale, "rounding": "8-bit outputs"}, samples=kept)


def plot_curve(report: EvalReport, path: str | Path, *, metric: str = "psnr_y") -> Path:
    """The knob curve: ``metric`` against t for each model, the baselines as horizontal lines."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        from .errors import MissingDependencyError

        raise MissingDependencyError("`--plot` needs matplotlib: `pip install matplotlib`.") from None
    from .atomic import atomic_write

    rows = report.means()
    figure, axis = plt.subplots(figsize=(6, 4))
    for index, method in enumerate(dict.fromkeys(r["method"] for r in rows)):
        points = [(r["t"], r[metric]) for r in rows if r["method"] == method]
        colour = f"C{index % 10}"  # axhline does not advance the colour cycle: one colour per method
        if all(t is None for t, _ in points):
            axis.axhline(points[0][1], linestyle="--", linewidth=1, label=method, color=colour)
        else:
            points = sorted((t if t is not None else math.nan, v) for t, v in points)
            axis.plot([t for t, _ in points], [v for _, v in points], marker="o", label=method, color=colour)
    axis.set_xlabel("t (0 = realistic, 1 = faithful)")
    axis.set_ylabel(metric.replace("_", " ").upper())
    axis.legend()
    axis.grid(alpha=0.3)
    figure.tight_layout()
    target = Path(path)
    atomic_write(target, writer=lambda tmp: figure.savefig(tmp, format="png", dpi=120))
    plt.close(figure)
    return target
