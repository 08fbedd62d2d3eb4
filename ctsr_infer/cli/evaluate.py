"""``ctsr eval``: a model (and the bicubic and Lanczos baselines) on a folder of ground truth, or
outputs made elsewhere against their ground truth; the protocol is :mod:`ctsr_infer.evaluation`'s."""

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from .app import app, err, out
from .options import BaseOption, DeviceOption, DtypeOption, ModelOption, TOption, parse_t

__all__ = ["evaluate"]


@app.command("eval")
def evaluate(
    folders: Annotated[list[Path] | None, typer.Argument(help="PRED_DIR GT_DIR: score outputs made elsewhere (matched by file name).",
                                                         show_default=False)] = None,
    model: ModelOption = None,
    data: Annotated[Path | None, typer.Option("--data", help="Folder of ground-truth images, degraded on the fly (seeded).")] = None,
    t: TOption = None,
    degrade: Annotated[str, typer.Option("--degrade", help="clean (bicubic), mild (blur, noise, JPEG) or realesrgan (second order).")] = "clean",
    scale: Annotated[int | None, typer.Option("--scale", "-s", help="Whole-number scale (default: the model's; 4 for PRED_DIR GT_DIR).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the degradations (image i uses seed + i).")] = 0,
    base: BaseOption = None,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the report (protocol, per image, means) here.")] = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="Write the knob curve (PSNR-Y against t, baselines as lines) here.")] = None,
    grid: Annotated[Path | None, typer.Option("--grid", help="Write a crop grid (each method and t on the first 4 images) here (PNG).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing --json/--plot/--grid files.")] = False,
) -> None:
    """PSNR and SSIM (RGB and Y, border = scale, 8-bit outputs) per image and on average."""
    from ..atomic import atomic_write
    from ..errors import InvalidInputError
    from ..evaluation import crop_grid, evaluate as run, evaluate_folders, plot_curve

    existing = [f"{flag} {path}" for flag, path in (("--json", json_path), ("--plot", plot), ("--grid", grid))
                if path is not None and path.exists()]
    if existing and not overwrite:  # refused before the run, not after it
        raise InvalidInputError(f"{', '.join(existing)} already exist(s); pick other names or add --overwrite.")

    if folders:
        if len(folders) != 2 or data is not None or model is not None or t is not None:
            raise typer.BadParameter("give PRED_DIR GT_DIR, or --model M --data DIR [--t ...], not both.")
        report = evaluate_folders(folders[0], folders[1], scale=scale or 4)
    else:
        if data is None:
            raise typer.BadParameter("give --data DIR (ground-truth images) with --model, or PRED_DIR GT_DIR.")
        from ..pipeline import load

        upscaler = load(model, base=base, device=device, dtype=dtype)
        report = run(upscaler, data, ts=parse_t(t), degrade=degrade, scale=scale, seed=seed,
                     on_image=lambda name: err.print(f"scored {name}", highlight=False))
    table = Table(title=f"{report.protocol['images']} images, x{report.protocol['scale']}, border {report.protocol['border_crop']} px")
    for column in ("method", "t", "PSNR RGB", "PSNR Y", "SSIM RGB", "SSIM Y"):
        table.add_column(column)
    for row in report.means():
        table.add_row(str(row["method"]), "-" if row["t"] is None else f"{row['t']:.2f}", f"{row['psnr_rgb']:.2f}", f"{row['psnr_y']:.2f}",
                      f"{row['ssim_rgb']:.4f}", f"{row['ssim_y']:.4f}")
    out.print(table)
    for note in report.notes:
        err.print(note, highlight=False)
    if json_path is not None:
        atomic_write(json_path, report.to_json())
    if plot is not None:
        plot_curve(report, plot)
    if grid is not None:
        crop_grid(report.samples, grid)
