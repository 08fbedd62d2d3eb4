"""``ctsr upscale`` (files, folders, stdin/stdout) and ``ctsr sweep`` (one image at several t)."""

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..errors import CtsrError, InvalidInputError
from .app import EXIT_ENV, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, app, err, out
from .options import (
    BaseOption,
    DeviceOption,
    DtypeOption,
    ModelOption,
    OverwriteOption,
    ScaleOption,
    ThreadsOption,
    TOption,
    parse_t,
    set_threads,
)

__all__ = ["sweep", "upscale"]


@app.command()
def upscale(
    inputs: Annotated[list[Path], typer.Argument(help="Image files and/or folders.", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output file (one input) or folder.")],
    t: TOption = None,
    model: ModelOption = None,
    base: BaseOption = None,
    scale: ScaleOption = None,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    color_fix: Annotated[str | None, typer.Option("--color-fix", help="adain, wavelet or none (default: the model's).")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed for --encode sample.")] = None,
    encode: Annotated[str | None, typer.Option("--encode", help="VAE posterior: mean (deterministic) or sample.")] = None,
    knob_steps: Annotated[int | None, typer.Option("--knob-steps", help="Euler steps of the ctsr-flow knob.")] = None,
    t_map: Annotated[Path | None, typer.Option("--t-map", help="A grayscale image of t per position (black 0 = realistic, white 1 = faithful; the image's aspect ratio, any size); instead of --t.")] = None,
    protect_faces: Annotated[float | None, typer.Option("--protect-faces", help="A t for the faces found in each image (e.g. 1: faithful faces); needs the `faces` extra.")] = None,
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Descend into sub-folders, mirroring the tree.")] = False,
    overwrite: OverwriteOption = False,
    fmt: Annotated[str | None, typer.Option("--format", help="Output format in folder mode: png (default), jpg, webp, tiff.")] = None,
    suffix: Annotated[str, typer.Option("--suffix", help="Added to every output name (x.png -> x<suffix>.png), as Real-ESRGAN's --suffix.")] = "",
    tiling: Annotated[str, typer.Option("--tiling", help="auto, exact, fast or off (large images; SD models).")] = "auto",
    tile: Annotated[int | None, typer.Option("--tile", help="UNet latent tile (latent px; SD) or input tile (px; lite).")] = None,
    tile_overlap: Annotated[int | None, typer.Option("--tile-overlap", help="Overlap of --tile.")] = None,
    vae_tile: Annotated[int | None, typer.Option("--vae-tile", help="VAE tile in image pixels (multiple of 64; SD).")] = None,
    memory_budget: Annotated[float | None, typer.Option("--memory-budget", help="GB the tiler may plan for (default: half the RAM / 80% of the GPU).")] = None,
    max_pixels: Annotated[float | None, typer.Option("--max-pixels", help="Refuse outputs larger than this many pixels (default 256e6 = 256 MP).")] = None,
    threads: ThreadsOption = None,
    compile_: Annotated[bool, typer.Option("--compile", help="torch.compile the network (the first image pays tens of seconds; needs a C++ compiler on the CPU).")] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Files read together; small ones of equal size share one network call (lite).")] = 1,
    quality: Annotated[int | None, typer.Option("--quality", help="JPEG/WebP quality 1-100 (default 95).")] = None,
    png_level: Annotated[int | None, typer.Option("--png-level", help="PNG zlib compression level 0-9 (default 1: fast, ~10% larger than 6).")] = None,
    keep_metadata: Annotated[bool, typer.Option("--keep-metadata", help="Copy the input's EXIF (orientation reset) and XMP into the output.")] = False,
    report_file: Annotated[Path | None, typer.Option("--report", help="Also write the per-file report: FILE.json or FILE.parquet (status, output, seconds, error).")] = None,
    ray_run: Annotated[bool, typer.Option("--ray", help="Run on a Ray cluster (the `ray` extra): a local one, or --ray-address.")] = False,
    ray_address: Annotated[str | None, typer.Option("--ray-address", help="With --ray: `auto` (a running cluster) or ray://HOST:10001 (default: RAY_ADDRESS, else a local cluster for this run).")] = None,
    workers: Annotated[int | None, typer.Option("--workers", help="With --ray: model workers (actors); default one per GPU, else one per node.")] = None,
    gpus_per_worker: Annotated[float | None, typer.Option("--gpus-per-worker", help="With --ray: GPUs per worker (default 1 on a cluster with GPUs, else 0: CPU workers).")] = None,
) -> None:
    """Upscale images and folders. Existing outputs are skipped; one bad file never stops the rest."""
    from ..batch import plan_jobs, run_batch
    from ..encoding import check_encoding
    from ..pipeline import load
    from .output import upscale_stdio

    # 1. check the arguments and plan the outputs before loading anything
    ts: list[Any] | None = parse_t(t)
    if t_map is not None:
        if ts is not None:
            raise typer.BadParameter("give --t or --t-map, not both (a map holds a t per position).")
        from ..tmap import as_tmap

        ts = [as_tmap(t_map, argument="--t-map")]
    if batch_size < 1:
        raise typer.BadParameter(f"--batch-size must be >= 1, got {batch_size}.")
    check_encoding(quality=quality, png_level=png_level)
    _check_ray_flags(ray_run, ray_address=ray_address, workers=workers, gpus_per_worker=gpus_per_worker)
    if report_file is not None:
        from ..batch import check_report_path

        check_report_path(report_file, overwrite=overwrite)
    stdio = str(output) == "-" or any(str(p) == "-" for p in inputs)
    if stdio and ray_run:
        raise typer.BadParameter("--ray runs files and folders, not `-` (stdin/stdout).")
    if stdio and report_file is not None:
        raise typer.BadParameter("--report is for files and folders, not `-` (stdin/stdout).")
    if stdio:
        if len(inputs) != 1 or (ts is not None and len(ts) > 1) or (str(inputs[0]) != "-" and Path(inputs[0]).is_dir()):
            raise typer.BadParameter("`-` (stdin/stdout) works with exactly one image and one t value.")
        jobs = []
    else:
        jobs = plan_jobs(inputs, output, ts=ts, recursive=recursive, fmt=fmt, suffix=suffix)
    if not jobs and not stdio:
        err.print("[yellow]no image files found in the inputs[/]")
        raise typer.Exit(EXIT_FAILED)
    # 2. load the model and check the options against it
    options: dict[str, Any] = {"scale": scale, "color_fix": color_fix, "knob_steps": knob_steps, "seed": seed, "encode": encode}
    if protect_faces is not None:
        options["protect_faces"] = protect_faces
    tiling_options = {"tiling": None if tiling == "auto" else tiling, "tile": tile, "tile_overlap": tile_overlap, "vae_tile": vae_tile,
                          "memory_budget": None if memory_budget is None else memory_budget * 1e9, "max_pixels": max_pixels}
    options.update({k: v for k, v in tiling_options.items() if v is not None})
    if ray_run:  # the model loads on the workers; the options are checked there before any file is touched
        from ..distributed import quiet_ray_logs, upscale_dataset

        quiet_ray_logs()
        run_ray = partial(upscale_dataset, inputs, output, model=model, t=ts, base=base, device=device, dtype=dtype,
                          compile=compile_, threads=threads, recursive=recursive, fmt=fmt, suffix=suffix, overwrite=overwrite,
                          quality=quality, png_level=png_level, keep_metadata=keep_metadata, num_workers=workers,
                          num_gpus_per_worker=gpus_per_worker, batch_size=batch_size, address=ray_address, **options)
        _run_files(jobs, report_file, name=str(model or "the default model"), in_order=False,
                   run=lambda on_progress, on_item: _ray_errors(lambda: run_ray(on_progress=on_progress, on_item=on_item)))
    set_threads(threads)
    upscaler = load(model, base=base, device=device, dtype=dtype, compile=compile_)
    upscaler.check_options(ts if ts is None or len(ts) > 1 else ts[0], **options)
    if stdio:
        upscale_stdio(upscaler, inputs[0], output, t=None if ts is None else ts[0], fmt=fmt, overwrite=overwrite, console=err,
                      encoding={"quality": quality, "png_level": png_level, "keep_metadata": keep_metadata}, options=options)
        raise typer.Exit(EXIT_OK)
    # 3. run the files, drawing progress; Ctrl-C still prints what finished
    _run_files(jobs, report_file, name=upscaler.name, in_order=True, run=lambda on_progress, on_item: run_batch(
        upscaler, jobs, ts=ts, overwrite=overwrite, on_progress=on_progress, on_item=on_item, batch_size=batch_size,
        quality=quality, png_level=png_level, keep_metadata=keep_metadata, **options))


def _ray_errors(run: Callable[[], Any]) -> Any:
    """``run()``, with a failure of Ray itself (a cluster that cannot be reached, workers that keep
    dying) as one line and exit code 3 instead of a traceback; per-file errors are in the report."""
    try:
        return run()
    except CtsrError:
        raise
    except Exception as exc:
        if not type(exc).__module__.startswith("ray") and not isinstance(exc, ConnectionError):
            raise
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        err.print(f"[bold red]error:[/] the Ray run failed ({type(exc).__name__}): {escape(first)}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_ENV) from None


def _check_ray_flags(ray_run: bool, *, ray_address: str | None, workers: int | None, gpus_per_worker: float | None) -> None:
    """The --ray flags: only with --ray, and in range."""
    given = [flag for flag, value in (("--ray-address", ray_address), ("--workers", workers), ("--gpus-per-worker", gpus_per_worker))
             if value is not None]
    if given and not ray_run:
        raise typer.BadParameter(f"{given[0]} is an option of --ray runs; add --ray (or drop {given[0]}).")
    if workers is not None and workers < 1:
        raise typer.BadParameter(f"--workers must be >= 1, got {workers}.")
    if gpus_per_worker is not None and gpus_per_worker < 0:
        raise typer.BadParameter(f"--gpus-per-worker must be >= 0, got {gpus_per_worker:g}.")


def _run_files(jobs: "list[Any]", report_file: Path | None, *, name: str, in_order: bool,
               run: "Callable[[Callable[[Any], None], Callable[[Any], None]], Any]") -> NoReturn:
    """Run the planned files with ``run(on_progress, on_item)`` (the local runner or the Ray one),
    drawing progress; then the summary, the report file, and the exit code. Ctrl-C still prints
    what finished. ``in_order``: files finish in plan order (locally), so progress names the next one."""
    from ..batch import BatchItem, BatchReport
    from ..progress import ProgressEvent
    from .output import print_summary

    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("eta"),
        TimeRemainingColumn(), console=err, transient=True, disable=not err.is_terminal,
    )
    files = progress.add_task("files", total=len(jobs))
    stage = progress.add_task("", total=1)
    done_items: list[BatchItem] = []

    def on_progress(event: ProgressEvent) -> None:
        if event.stage == "file":
            if in_order:
                current = jobs[event.done].source.name if event.done < len(jobs) else ""
            else:
                current = done_items[-1].source.name if done_items else ""
            progress.update(files, completed=event.done, description=f"files {current}")
        else:
            progress.update(stage, description=event.stage, completed=event.done, total=max(event.total, 1))

    def on_item(item: BatchItem) -> None:
        done_items.append(item)
        if item.status == "failed":
            progress.console.print(f"[red]failed[/] {escape(str(item.source))}: {escape(str(item.error))}", highlight=False)

    interrupted = False
    try:
        with progress:
            report: BatchReport = run(on_progress, on_item)
    except KeyboardInterrupt:
        interrupted = True
        report = BatchReport(items=list(done_items))
    print_summary(report, title=f"ctsr upscale — {report.model or name}", console=out)
    if report_file is not None:
        report.write(report_file)
    if interrupted:
        err.print(f"[yellow]interrupted:[/] {len(report.items)} done, {len(jobs) - len(report.items)} left "
                  "(run the same command again: finished outputs are skipped)")
        raise typer.Exit(EXIT_INTERRUPTED)
    raise typer.Exit(EXIT_FAILED if report.failed else EXIT_OK)


@app.command()
def sweep(
    source: Annotated[Path, typer.Argument(help="One image.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Contact sheet to write (PNG).")],
    t: TOption = "0,0.25,0.5,0.75,1",
    model: ModelOption = None,
    base: BaseOption = None,
    scale: ScaleOption = None,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    overwrite: OverwriteOption = False,
) -> None:
    """Write a labelled contact sheet of one image at several t (whole image and a zoomed crop per t)."""
    import numpy as np

    from ..encoding import write_image
    from ..image import ImageData, read_image, to_pil
    from ..pipeline import load
    from ..sheet import contact_sheet

    ts = parse_t(t) or []
    if source.is_dir():
        raise InvalidInputError(f"`ctsr sweep` takes one image, and `{source}` is a folder; name one image file in it.")
    if output.exists() and not overwrite:
        raise InvalidInputError(f"`{output}` exists; pass --overwrite to replace it.")
    upscaler = load(model, base=base, device=device, dtype=dtype)
    outputs = upscaler.process(read_image(source), t=ts, scale=scale)
    sheet = contact_sheet([to_pil(o) for o in outputs], [f"t = {value:g}" for value in ts],
                          title=f"{source.name} - {upscaler.name} - 0 realistic ... 1 faithful")
    write_image(ImageData(pixels=np.asarray(sheet, dtype=np.float32) / 255.0), output, overwrite=overwrite)
    out.print(f"wrote {output}")
