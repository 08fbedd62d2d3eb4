"""The ``ctsr`` command: typer + rich. The only module that draws.

Exit codes: 0 all files ok (skipped ones included), 1 some files failed, 2 usage error,
3 missing model or environment problem, 130 interrupted (Ctrl-C; the summary of what finished is printed).

"""

import json
import logging
import sys
from pathlib import Path
from collections.abc import Callable
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from . import __version__
from .errors import (
    CtsrError,
    DeviceError,
    IncompatibleWeightsError,
    InvalidInputError,
    KnobError,
    MissingDependencyError,
    UnknownModelError,
    UnsafeCheckpointError,
    WeightsNotFoundError,
)

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_ENV, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
class _Group(typer.core.TyperGroup):
    """Turns any CtsrError of any command into its message and exit code, in one place."""

    def invoke(self, ctx: "typer.Context") -> object:
        try:
            return super().invoke(ctx)
        except CtsrError as exc:
            raise _fail(exc) from None


app = typer.Typer(cls=_Group, add_completion=False, no_args_is_help=True, help="One-step diffusion super-resolution with a fidelity/realness knob.")
models_app = typer.Typer(no_args_is_help=True, help="List and convert models.")
train_app = typer.Typer(no_args_is_help=True, help="Training recipes (needs `pip install 'ctsr-infer[train]'`).")
app.add_typer(models_app, name="models")
app.add_typer(train_app, name="train")
out = Console()
err = Console(stderr=True)
logger = logging.getLogger("ctsr_infer.cli")


def _exit_code(exc: BaseException) -> int:
    if isinstance(exc, (InvalidInputError, KnobError, UnknownModelError)):
        return EXIT_USAGE
    if isinstance(exc, (WeightsNotFoundError, DeviceError, IncompatibleWeightsError, UnsafeCheckpointError, MissingDependencyError)):
        return EXIT_ENV
    return EXIT_FAILED


def _fail(exc: CtsrError) -> "typer.Exit":
    err.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False, soft_wrap=True)
    return typer.Exit(_exit_code(exc))


def _parse_t(value: Optional[str]) -> Optional[list[float]]:
    if value is None:
        return None
    try:
        ts = [float(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected a number in [0, 1] or a comma-separated list such as 0,0.5,1; got {value!r}") from None
    if not ts or any(not 0.0 <= t <= 1.0 for t in ts):
        raise typer.BadParameter(f"every t must be in [0, 1] (0 = realistic detail, 1 = faithful); got {value!r}")
    return ts


def _version(value: bool) -> None:
    if value:
        out.print(f"ctsr-infer {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log what the library does.")] = False,
) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def _set_threads(threads: Optional[int]) -> None:
    if threads is None:
        return
    if threads < 1:
        raise typer.BadParameter(f"--threads must be >= 1, got {threads}.")
    import torch

    torch.set_num_threads(threads)


@app.command()
def upscale(
    inputs: Annotated[list[Path], typer.Argument(help="Image files and/or folders.", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output file (one input) or folder.")],
    t: Annotated[Optional[str], typer.Option("--t", help="Knob in [0, 1] (0 realistic, 1 faithful), or a list: 0,0.5,1.")] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Model id (`ctsr models list`) or student file.")] = None,
    base: Annotated[Optional[Path], typer.Option("--base", help="Local diffusers folder of the base model.")] = None,
    scale: Annotated[Optional[float], typer.Option("--scale", "-s", help="Upscaling factor, any number >= 1.")] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    dtype: Annotated[str, typer.Option("--dtype", help="auto, fp32, bf16 or fp16.")] = "auto",
    color_fix: Annotated[Optional[str], typer.Option("--color-fix", help="adain, wavelet or none (default: the model's).")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Seed for --encode sample.")] = None,
    encode: Annotated[Optional[str], typer.Option("--encode", help="VAE posterior: mean (deterministic) or sample.")] = None,
    knob_steps: Annotated[Optional[int], typer.Option("--knob-steps", help="Euler steps of the ctsr-flow knob.")] = None,
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Descend into sub-folders, mirroring the tree.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs (default: skip them).")] = False,
    fmt: Annotated[Optional[str], typer.Option("--format", help="Output format in folder mode: png (default), jpg, webp, tiff.")] = None,
    suffix: Annotated[str, typer.Option("--suffix", help="Added to every output name (x.png -> x<suffix>.png), as Real-ESRGAN's --suffix.")] = "",
    tiling: Annotated[str, typer.Option("--tiling", help="auto, exact, fast or off (large images; SD models).")] = "auto",
    tile: Annotated[Optional[int], typer.Option("--tile", help="UNet latent tile (latent px; SD) or input tile (px; lite).")] = None,
    tile_overlap: Annotated[Optional[int], typer.Option("--tile-overlap", help="Overlap of --tile.")] = None,
    vae_tile: Annotated[Optional[int], typer.Option("--vae-tile", help="VAE tile in image pixels (multiple of 64; SD).")] = None,
    memory_budget: Annotated[Optional[float], typer.Option("--memory-budget", help="GB the tiler may plan for (default: half the RAM / 80% of the GPU).")] = None,
    max_pixels: Annotated[Optional[float], typer.Option("--max-pixels", help="Refuse outputs larger than this many pixels (default 256e6 = 256 MP).")] = None,
    threads: Annotated[Optional[int], typer.Option("--threads", help="CPU threads for the networks (default: torch's, one per core).")] = None,
    compile_: Annotated[bool, typer.Option("--compile", help="torch.compile the network (the first image pays tens of seconds; needs a C++ compiler on the CPU).")] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Files read together; small ones of equal size share one network call (lite).")] = 1,
    quality: Annotated[Optional[int], typer.Option("--quality", help="JPEG/WebP quality 1-100 (default 95).")] = None,
    png_level: Annotated[Optional[int], typer.Option("--png-level", help="PNG zlib compression level 0-9 (default 1: fast, ~10% larger than 6).")] = None,
    keep_metadata: Annotated[bool, typer.Option("--keep-metadata", help="Copy the input's EXIF (orientation reset) and XMP into the output.")] = False,
) -> None:
    """Upscale images and folders. Existing outputs are skipped; one bad file never stops the rest."""
    from .batch import BatchItem, plan_jobs, run_batch
    from .cli_output import print_summary, upscale_stdio
    from .pipeline import load
    from .progress import ProgressEvent

    ts = _parse_t(t)
    if batch_size < 1:
        raise typer.BadParameter(f"--batch-size must be >= 1, got {batch_size}.")
    from .encoding import check_encoding

    check_encoding(quality=quality, png_level=png_level)
    stdio = str(output) == "-" or any(str(p) == "-" for p in inputs)
    if stdio:
        if len(inputs) != 1 or (ts is not None and len(ts) > 1) or (str(inputs[0]) != "-" and Path(inputs[0]).is_dir()):
            raise typer.BadParameter("`-` (stdin/stdout) works with exactly one image and one t value.")
        jobs = []
    else:
        jobs = plan_jobs(inputs, output, ts=ts, recursive=recursive, fmt=fmt, suffix=suffix)
    if not jobs and not stdio:
        err.print("[yellow]no image files found in the inputs[/]")
        raise typer.Exit(EXIT_FAILED)
    _set_threads(threads)
    upscaler = load(model, base=base, device=device, dtype=dtype, compile=compile_)
    options = dict(scale=scale, color_fix=color_fix, knob_steps=knob_steps, seed=seed, encode=encode)
    tiling_options = dict(tiling=None if tiling == "auto" else tiling, tile=tile, tile_overlap=tile_overlap, vae_tile=vae_tile,
                          memory_budget=None if memory_budget is None else memory_budget * 1e9, max_pixels=max_pixels)
    options.update({k: v for k, v in tiling_options.items() if v is not None})
    upscaler.check_options(ts if ts is None or len(ts) > 1 else ts[0], **options)
    if stdio:
        upscale_stdio(upscaler, inputs[0], output, t=None if ts is None else ts[0], fmt=fmt, overwrite=overwrite, console=err,
                       encoding={"quality": quality, "png_level": png_level, "keep_metadata": keep_metadata}, options=options)
        raise typer.Exit(EXIT_OK)

    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("eta"),
        TimeRemainingColumn(), console=err, transient=True, disable=not err.is_terminal,
    )
    files = progress.add_task("files", total=len(jobs))
    stage = progress.add_task("", total=1)
    done_items: list[BatchItem] = []

    def on_progress(event: ProgressEvent) -> None:
        if event.stage == "file":
            current = jobs[event.done].source.name if event.done < len(jobs) else ""
            progress.update(files, completed=event.done, description=f"files {current}")
        else:
            progress.update(stage, description=event.stage, completed=event.done, total=max(event.total, 1))

    def on_item(item: BatchItem) -> None:
        done_items.append(item)
        if item.status == "failed":
            progress.console.print(f"[red]failed[/] {item.source}: {item.error}", highlight=False)

    interrupted = False
    try:
        with progress:
            report = run_batch(upscaler, jobs, ts=ts, overwrite=overwrite, on_progress=on_progress, on_item=on_item,
                               batch_size=batch_size, quality=quality, png_level=png_level, keep_metadata=keep_metadata, **options)
    except KeyboardInterrupt:
        from .batch import BatchReport

        interrupted = True
        report = BatchReport(items=list(done_items))
    print_summary(report, title=f"ctsr upscale — {upscaler.name}", console=out)
    if interrupted:
        err.print(f"[yellow]interrupted:[/] {len(report.items)} done, {len(jobs) - len(report.items)} left "
                  "(run the same command again: finished outputs are skipped)")
        raise typer.Exit(EXIT_INTERRUPTED)
    raise typer.Exit(EXIT_FAILED if report.failed else EXIT_OK)


@app.command()
def sweep(
    source: Annotated[Path, typer.Argument(help="One image.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Contact sheet to write (PNG).")],
    t: Annotated[str, typer.Option("--t", help="The t values, comma-separated.")] = "0,0.25,0.5,0.75,1",
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Model id or student file.")] = None,
    base: Annotated[Optional[Path], typer.Option("--base", help="Local diffusers folder of the base model.")] = None,
    scale: Annotated[Optional[float], typer.Option("--scale", "-s", help="Upscaling factor, any number >= 1.")] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    dtype: Annotated[str, typer.Option("--dtype", help="auto, fp32, bf16 or fp16.")] = "auto",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing sheet.")] = False,
) -> None:
    """Write a labelled contact sheet of one image at several t (whole image and a zoomed crop per t)."""
    from .encoding import write_image
    from .image import ImageData, read_image, to_pil
    from .pipeline import load
    from .sheet import contact_sheet

    ts = _parse_t(t) or []
    if source.is_dir():
        raise InvalidInputError(f"`ctsr sweep` takes one image, and `{source}` is a folder; name one image file in it.")
    if output.exists() and not overwrite:
        err.print(f"[red]error:[/] `{output}` exists; pass --overwrite to replace it.")
        raise typer.Exit(EXIT_USAGE)
    upscaler = load(model, base=base, device=device, dtype=dtype)
    outputs = upscaler.process(read_image(source), t=ts, scale=scale)
    sheet = contact_sheet([to_pil(o) for o in outputs], [f"t = {value:g}" for value in ts],
                          title=f"{source.name} - {upscaler.name} - 0 realistic ... 1 faithful")
    import numpy as np

    write_image(ImageData(pixels=np.asarray(sheet, dtype=np.float32) / 255.0), output, overwrite=overwrite)
    out.print(f"wrote {output}")


def _size(spec: "ModelSpec") -> str:  # noqa: F821 - imported lazily
    return f"{spec.file.size / 1e6:.1f} MB" if spec.file.size else "?"


@models_app.command("list")
def models_list() -> None:
    """List the models: family, knob, size, licence and whether they are on this machine."""
    from .hub import file_status
    from .manifest import load_manifest

    manifest = load_manifest()
    table = Table()
    for column in ("id", "family", "knob", "size", "licence", "on this machine"):
        table.add_column(column)
    for model_id in sorted(manifest.models):
        spec = manifest.models[model_id]
        status = file_status(spec)
        present = status.file or status.converted or (status.base if status.needs_base else None)
        here = "yes" if status.ready else ("partly: missing " + ", ".join(status.missing()) if present else "no")
        licence = spec.licence + ("" if spec.commercial_use else " [non-commercial]")
        name = model_id + (" (default)" if model_id == manifest.default else "") + (" (imported)" if spec.user else "")
        table.add_row(name, spec.family, spec.knob.kind, _size(spec), licence, here)
    out.print(table)


@models_app.command("info")
def models_info(model_id: Annotated[str, typer.Argument(help="Model id.")]) -> None:
    """Everything the manifest says about a model, and what of it is on this machine."""
    from .hub import file_status, recorded_hash
    from .manifest import get_spec

    spec = get_spec(model_id)
    status = file_status(spec)
    rows = [
        ("id", spec.id), ("family", spec.family), ("knob", f"{spec.knob.kind}" + (f" (default t {spec.knob.default_t})" if spec.knob.default_t is not None else "")),
        ("scale", f"{spec.scale:g}"), ("licence", spec.licence + ("" if spec.commercial_use else " - NON-COMMERCIAL")),
        ("file", f"{spec.file.filename} ({spec.file.format}, {_size(spec)})"),
        ("sources", "; ".join(s.describe() for s in spec.file.sources)),
        ("sha256", spec.file.sha256 or f"unknown in advance; recorded: {recorded_hash(spec.id, spec.file.filename) or 'not yet'}"),
        ("base", ("; ".join(s.get("repo_id", s.get("path", "?")) for s in spec.base.sources) + f" ({spec.base.licence})") if spec.base else "none"),
        ("local file", str(status.file or "not downloaded")), ("converted", str(status.converted or "-")),
        ("local base", str(status.base or ("-" if not spec.base else "not downloaded"))),
        ("missing", ", ".join(status.missing()) or "nothing"), ("notes", spec.notes),
    ]
    table = Table(show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    for key, value in rows:
        table.add_row(key, value)
    out.print(table)


@models_app.command("download")
def models_download(
    model_id: Annotated[str, typer.Argument(help="Model id.")],
    base: Annotated[Optional[Path], typer.Option("--base", help="Use this local base-model folder instead of downloading one.")] = None,
) -> None:
    """Fetch (and verify, and convert) everything a model needs, so it later runs offline."""
    from .hub import ensure_student
    from .manifest import get_spec

    student, base_dir = ensure_student(get_spec(model_id), base_dir=base)
    out.print(f"{model_id}: student {student}" + (f", base {base_dir}" if base_dir else ""))


@models_app.command("verify")
def models_verify(model_id: Annotated[Optional[str], typer.Argument(help="Model id (default: every model on this machine).")] = None) -> None:
    """Check the sha256 of every downloaded model file against the manifest or the recorded hash."""
    from .hub import local_file, verify_file
    from .manifest import load_manifest

    manifest = load_manifest()
    specs = [manifest.get(model_id)] if model_id else [manifest.models[k] for k in sorted(manifest.models)]
    bad = 0
    for spec in specs:
        path = local_file(spec)
        if path is None:
            out.print(f"{spec.id}: not downloaded")
            bad += model_id is not None
            continue
        try:
            digest = verify_file(spec, path)
            out.print(f"{spec.id}: ok ({digest[:16]}...) {path}")
        except CtsrError as exc:
            bad += 1
            out.print(f"[red]{spec.id}: {exc}[/]", highlight=False)
    raise typer.Exit(EXIT_FAILED if bad else EXIT_OK)


@models_app.command("import")
def models_import(
    path: Annotated[Path, typer.Argument(help="A student file (.safetensors) or an OSEDiff checkpoint (.pkl).")],
    model_id: Annotated[str, typer.Option("--id", help="The id to register it under (kebab-case).")],
    base: Annotated[Optional[Path], typer.Option("--base", help="Base-model folder (needed to convert a .pkl).")] = None,
    prompt: Annotated[str, typer.Option("--prompt", help="Fixed prompt for a converted OSEDiff checkpoint.")] = "",
    licence: Annotated[str, typer.Option("--licence", help="Licence of the weights.")] = "unknown (user-supplied)",
) -> None:
    """Register a user-supplied checkpoint: converted and copied into the cache, then usable by id."""
    from .registry import import_model

    spec = import_model(path, model_id=model_id, base=base, prompt=prompt, licence=licence)
    out.print(f"imported `{spec.id}` ({spec.family}, knob {spec.knob.kind}); use it with --model {spec.id}")


@models_app.command("remove")
def models_remove(model_id: Annotated[str, typer.Argument(help="Model id.")]) -> None:
    """Delete a model's downloaded and converted files from ctsr's cache (and unregister an import)."""
    from .registry import remove_model

    removed = remove_model(model_id)
    out.print("\n".join(f"removed {p}" for p in removed) or f"{model_id}: nothing of it in ctsr's cache")


@app.command()
def doctor() -> None:
    """Versions, devices, precision support, cache, offline state, and what each model is missing."""
    from .registry import diagnose

    for section, rows in diagnose().items():
        table = Table(title=section, show_header=False, title_justify="left")
        table.add_column("item", style="bold")
        table.add_column("value")
        for key, value in rows:
            table.add_row(key, value)
        out.print(table)


@app.command()
def bench(
    model: Annotated[str, typer.Option("--model", help="sd-onestep, resshift-onestep or lite (full-size architecture, random weights), or a model id / student file.")] = "lite",
    size: Annotated[list[int], typer.Option("--size", help="Output side in pixels; repeat for several.")] = [512],  # noqa: B006
    dtype: Annotated[list[str], typer.Option("--dtype", help="fp32, bf16, fp16 or auto (what `ctsr upscale` picks); repeat to compare (the first one is the reference).")] = ["fp32"],  # noqa: B006
    channels_last: Annotated[bool, typer.Option("--channels-last/--no-channels-last", help="Also run each dtype in channels-last memory format.")] = False,
    runs: Annotated[int, typer.Option("--runs", help="Measured runs per configuration (the median is reported).")] = 3,
    warmup: Annotated[int, typer.Option("--warmup", help="Unmeasured runs first.")] = 1,
    device: Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:N.")] = "cpu",
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Also write the results here.")] = None,
    compile_: Annotated[bool, typer.Option("--compile", help="Also run each configuration with the network under torch.compile (warm-up >= 1 takes the compilation).")] = False,
    threads: Annotated[Optional[int], typer.Option("--threads", help="torch threads in each run (default: torch's).")] = None,
) -> None:
    """Per-stage wall time (median after warm-up) and peak memory, one fresh process per configuration.

    With several dtypes / layouts the outputs are compared with the first configuration (PSNR)."""
    from dataclasses import asdict

    from .benchmark import BenchResult, run_compared

    if runs < 1 or warmup < 0:
        raise typer.BadParameter("--runs must be >= 1 and --warmup >= 0")
    if threads is not None and threads < 1:
        raise typer.BadParameter(f"--threads must be >= 1, got {threads}.")
    layouts: list[bool | None] = [False, True] if channels_last else [False]
    configs = [dict(dtype=name, channels_last=layout, compile=compiled) for name in dtype
               for layout in ([None] if name == "auto" else layouts) for compiled in ([False, True] if compile_ else [False])]

    def show(result: BenchResult) -> None:
        stages = "  ".join(f"{k} {v:.2f}" for k, v in result.stages.items())
        quality = "" if result.psnr_vs_fp32 is None else f"  PSNR vs first {result.psnr_vs_fp32:.1f} dB"
        out.print(f"{model} {result.size}px {result.dtype} ({result.placement}{', compiled' if result.compiled else ''}): "
                  f"{result.seconds:.2f} s (load {result.load_seconds:.1f} s), peak RSS {result.peak_rss_gb:.2f} GB{quality}\n    {stages}")

    results = []
    for side in size:
        try:
            results += run_compared(model, size=side, configs=configs, on_result=show, runs=runs, warmup=warmup, device=device,
                                    threads=threads)
        except RuntimeError as exc:
            err.print(f"[red]error:[/] {exc}")
            raise typer.Exit(EXIT_ENV) from None
    if json_path is not None:
        json_path.write_text(json.dumps([asdict(r) for r in results], indent=2))
        out.print(f"wrote {json_path}")


@models_app.command("convert")
def models_convert(
    source: Annotated[Path, typer.Argument(help="Public checkpoint: osediff.pkl, or a ResShift/SinSR .pth (with --vq).")],
    target: Annotated[Path, typer.Argument(help="Student file to write (.safetensors).")],
    base: Annotated[Optional[Path], typer.Option("--base", help="OSEDiff: local diffusers folder of SD 2.1-base (for the prompt embedding).")] = None,
    prompt: Annotated[str, typer.Option("--prompt", help="OSEDiff: fixed prompt carried in the student.")] = "",
    vq: Annotated[Optional[Path], typer.Option("--vq", help="ResShift family: the autoencoder_vq_f4.pth file.")] = None,
    sampler: Annotated[str, typer.Option("--sampler", help="ResShift family: onestep (SinSR, TAD-SR, co-learning students), posterior or ddim (the ResShift teacher).")] = "onestep",
    steps: Annotated[int, typer.Option("--steps", help="ResShift family: diffusion steps of the schedule (15 for v1 and SinSR, 4 for v3).")] = 15,
    min_noise_level: Annotated[float, typer.Option("--min-noise-level", help="ResShift family: 0.04 for v1 and SinSR, 0.2 for v3.")] = 0.04,
    licence: Annotated[str, typer.Option("--licence", help="ResShift family: licence written into the student file.")] = "unknown",
    net_config: Annotated[Optional[Path], typer.Option("--net-config", help="ResShift family: JSON with `unet`, `vq` and/or `schedule` settings that differ from the x4 real-SR defaults.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing target.")] = False,
) -> None:
    """Convert a public checkpoint into a student file (pickles go through the allow-listed unpickler)."""
    from .checkpoints import convert_osediff, convert_resshift, save_student

    if target.suffix != ".safetensors":
        raise typer.BadParameter(f"TARGET must end in .safetensors, got {target.name!r}")
    if target.exists() and not overwrite:
        err.print(f"[red]error:[/] `{target}` exists; pass --overwrite to replace it.")
        raise typer.Exit(EXIT_USAGE)
    if vq is None and base is None:
        raise typer.BadParameter("pass --base DIR (OSEDiff checkpoints) or --vq autoencoder_vq_f4.pth (ResShift, SinSR, TAD-SR).")
    if sampler not in ("onestep", "posterior", "ddim"):
        raise typer.BadParameter(f"--sampler must be onestep, posterior or ddim, got {sampler!r}")
    try:
        if vq is not None:
            settings_json: dict = {}
            if net_config is not None:
                try:
                    settings_json = json.loads(net_config.read_text())
                except (OSError, ValueError) as exc:
                    raise typer.BadParameter(f"--net-config `{net_config}` is not a readable JSON file: {exc}") from None
            schedule = {"steps": steps, "min_noise_level": min_noise_level, **settings_json.get("schedule", {})}
            student = convert_resshift(source, vq, sampler=sampler, schedule=schedule, unet=settings_json.get("unet"),
                                       vq=settings_json.get("vq"), licence=licence)
        else:
            from .families.sd_onestep import encode_prompt

            assert base is not None
            try:
                embeds = encode_prompt(base, prompt)
            except OSError as exc:
                err.print(f"[red]error:[/] cannot read the base model's text encoder in `{base}`: {exc}")
                raise typer.Exit(EXIT_ENV) from None
            student = convert_osediff(source, prompt_embeds=embeds, base={"path": str(base.resolve())}, prompt=prompt)
        save_student(student, target)
    except CtsrError as exc:
        raise _fail(exc) from None
    adapters = ", ".join(a.name for a in student.meta.adapters) or "none"
    out.print(f"wrote {target} ({student.meta.family}, {len(student.tensors)} tensors, adapters: {adapters})")


@train_app.command("lite")
def train_lite_command(
    photos: Annotated[Path, typer.Option("--photos", help="Folder of photographs (scripts/fetch_photos.sh DEST -> DEST/raw).")],
    work: Annotated[Path, typer.Option("--work", help="Cache and output folder.")],
    fidelity_steps: Annotated[Optional[int], typer.Option(help="Steps of the fidelity teacher.")] = None,
    stage1_steps: Annotated[Optional[int], typer.Option(help="Steps of stage 1 (dual-teacher).")] = None,
    stage2_steps: Annotated[Optional[int], typer.Option(help="Steps of stage 2 (the t path).")] = None,
    batch: Annotated[Optional[int], typer.Option(help="Patches per step.")] = None,
    patches_per_image: Annotated[Optional[int], typer.Option(help="HR patches cut from each training photo.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of data, degradations and initialisation.")] = None,
) -> None:
    """Distil Real-ESRGAN x4plus (realness) and an MSE-trained network (fidelity) into ctsr-lite.

    The defaults are the recipe of the shipped model (see the README's model card)."""
    try:
        from .train.lite import LiteConfig, train_lite
    except ImportError as exc:
        err.print(f"[red]error:[/] the train extra is missing ({exc}); run `pip install 'ctsr-infer[train]'`.")
        raise typer.Exit(EXIT_ENV) from None
    logging.getLogger("ctsr_infer").setLevel(logging.INFO)
    given = dict(fidelity_steps=fidelity_steps, stage1_steps=stage1_steps, stage2_steps=stage2_steps, batch=batch,
                 patches_per_image=patches_per_image, seed=seed)
    config = LiteConfig(photos=photos, work=work, **{k: v for k, v in given.items() if v is not None})
    try:
        path = train_lite(config)
    except (CtsrError, FileNotFoundError) as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(EXIT_ENV) from None
    out.print(f"wrote {path}")


def _run_recipe(name: str, trainer: Any, make_batches: Callable[[int], Any], checkpoint: Optional[Path], output: Path,
                loss: str | None) -> None:
    """Resume, train with a progress bar, checkpoint and export; under ``accelerate launch`` every
    process draws its own data and only the main one draws the bar and writes files."""
    engine = trainer.engine
    if checkpoint is not None and checkpoint.is_file():
        trainer.load_checkpoint(checkpoint)
        if engine.is_main:
            err.print(f"resumed from {checkpoint} at step {trainer.step}")
    batches = make_batches(engine.process_seed(trainer.config.seed + trainer.step))
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err,
                   disable=not (err.is_terminal and engine.is_main))

    def report(step: int, terms: dict[str, float]) -> None:
        bar.update(task, completed=step, description=name if loss is None else f"{name} loss {terms[loss]:.4g}")
        if step % 50 == 0 or step == trainer.config.steps:
            logger.info("%s step %d: %s", name, step, " ".join(f"{k} {v:.4g}" for k, v in terms.items()))

    with bar:
        task = bar.add_task(name, total=trainer.config.steps, completed=trainer.step)
        trainer.train(batches, checkpoint=checkpoint, on_step=report)
    if checkpoint is not None:
        trainer.save_checkpoint(checkpoint)
    if engine.is_main:
        out.print(f"wrote {trainer.export(output)}")
    engine.wait()


@train_app.command("ctsr-stage1")
def train_ctsr_stage1(
    student: Annotated[Path, typer.Option("--student", help="Initial student file (a converted OSEDiff = the realness teacher).")],
    base: Annotated[Path, typer.Option("--base", help="Local diffusers folder of SD 2.1-base.")],
    fidelity: Annotated[Path, typer.Option("--fidelity", help="Fidelity teacher: a resshift-onestep student file (e.g. `ctsr models download resshift-x4-s15`).")],
    photos: Annotated[Path, typer.Option("--photos", help="Folder of high-resolution photographs.")],
    output: Annotated[Path, typer.Option("--out", help="Student file to write (.safetensors).")],
    config: Annotated[Optional[Path], typer.Option("--config", help="Stage-1 settings (.toml, .json, .yaml); flags override it.")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Optimiser steps (paper: 20,000).")] = None,
    lr: Annotated[Optional[float], typer.Option(help="AdamW learning rate (paper: 5e-5).")] = None,
    perceptual: Annotated[Optional[str], typer.Option(help="lpips-vgg (the paper's; needs the lpips package) or untrained-features (explicit opt-out).")] = None,
    crop: Annotated[int, typer.Option(help="High-resolution crop side (paper: 512).")] = 512,
    seed: Annotated[Optional[int], typer.Option(help="Seed of data, timesteps and noise.")] = None,
    checkpoint: Annotated[Optional[Path], typer.Option("--checkpoint", help="Checkpoint file: written every `checkpoint_every` steps, resumed from when present.")] = None,
) -> None:
    """CTSR stage 1: distil a realness (OSEDiff) and a fidelity (ResShift) teacher into the student's LoRA."""
    from .train.config import load_config
    from .train.ctsr_stage1 import Stage1Config, Stage1Trainer, paired_batches

    files = sorted(p for p in photos.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")) if photos.is_dir() else []
    if not files:
        raise typer.BadParameter(f"--photos `{photos}` holds no .jpg/.png photographs (scripts/fetch_photos.sh fetches some).")
    try:
        settings_ = load_config(Stage1Config, config, steps=steps, lr=lr, perceptual=perceptual, seed=seed)
        trainer = Stage1Trainer(student, base, fidelity, settings_)
    except CtsrError as exc:
        raise _fail(exc) from None
    _run_recipe("stage 1", trainer, lambda seed_: paired_batches(files, crop=crop, seed=seed_), checkpoint, output, "total")


def _train_resshift_recipe(recipe: str, teacher: Path, photos: Path, output: Path, config: Optional[Path], overrides: dict,
                           checkpoint: Optional[Path]) -> None:
    from .train.config import load_config
    from .train.ctsr_stage1 import paired_batches, stacked

    if recipe == "tadsr":
        from .train.tadsr import TadsrConfig as Config, TadsrTrainer as Trainer
    else:
        from .train.colearn import ColearnConfig as Config, ColearnTrainer as Trainer  # type: ignore[assignment]
    files = sorted(p for p in photos.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")) if photos.is_dir() else []
    if not files:
        raise typer.BadParameter(f"--photos `{photos}` holds no .jpg/.png photographs (scripts/fetch_photos.sh fetches some).")
    try:
        settings_ = load_config(Config, config, **overrides)
        trainer = Trainer(teacher, settings_)  # type: ignore[arg-type]
    except CtsrError as exc:
        raise _fail(exc) from None
    _run_recipe(recipe, trainer, lambda seed_: stacked(paired_batches(files, crop=settings_.crop, seed=seed_), settings_.batch),
                checkpoint, output, "total" if recipe == "tadsr" else "student")


@train_app.command("tadsr")
def train_tadsr(
    teacher: Annotated[Path, typer.Option("--teacher", help="ResShift teacher as a resshift-onestep file (`ctsr models download resshift-x4-s15`).")],
    photos: Annotated[Path, typer.Option("--photos", help="Folder of high-resolution photographs.")],
    output: Annotated[Path, typer.Option("--out", help="Student file to write (.safetensors).")],
    config: Annotated[Optional[Path], typer.Option("--config", help="TAD-SR settings (.toml, .json, .yaml); flags override it.")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Optimiser steps (paper: 30,000).")] = None,
    batch: Annotated[Optional[int], typer.Option(help="Pairs per step (paper: 8).")] = None,
    crop: Annotated[Optional[int], typer.Option(help="HR crop side (paper: 256).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of data and noise.")] = None,
    checkpoint: Annotated[Optional[Path], typer.Option("--checkpoint", help="Checkpoint file, resumed from when present.")] = None,
) -> None:
    """TAD-SR: distil the ResShift teacher into a one-step student (distillation + HSD + time-aware GAN)."""
    _train_resshift_recipe("tadsr", teacher, photos, output, config, dict(steps=steps, batch=batch, crop=crop, seed=seed), checkpoint)


@train_app.command("colearn")
def train_colearn(
    teacher: Annotated[Path, typer.Option("--teacher", help="ResShift teacher as a resshift-onestep file (`ctsr models download resshift-x4-s15`).")],
    photos: Annotated[Path, typer.Option("--photos", help="Folder of high-resolution photographs.")],
    output: Annotated[Path, typer.Option("--out", help="Student file to write (.safetensors).")],
    config: Annotated[Optional[Path], typer.Option("--config", help="Co-learning settings (.toml, .json, .yaml); flags override it.")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Optimiser steps (paper: 20,000).")] = None,
    batch: Annotated[Optional[int], typer.Option(help="Pairs per step (not given by the paper).")] = None,
    crop: Annotated[Optional[int], typer.Option(help="HR crop side (paper: 256).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of data and noise.")] = None,
    checkpoint: Annotated[Optional[Path], typer.Option("--checkpoint", help="Checkpoint file, resumed from when present.")] = None,
) -> None:
    """Co-learning: a one-step upsampler with a learnable downsampler and two discriminators."""
    _train_resshift_recipe("colearn", teacher, photos, output, config, dict(steps=steps, batch=batch, crop=crop, seed=seed), checkpoint)


@train_app.command("ctsr-stage2")
def train_ctsr_stage2(
    stage1: Annotated[Path, typer.Option("--stage1", help="The stage-1 student file (e.g. a converted OSEDiff, or stage 1's export).")],
    base: Annotated[Path, typer.Option("--base", help="Local diffusers folder of SD 2.1-base.")],
    images: Annotated[Path, typer.Option("--images", help="Folder of low-resolution training images.")],
    output: Annotated[Path, typer.Option("--out", help="Student file to write (.safetensors), knob ctsr-flow.")],
    config: Annotated[Optional[Path], typer.Option("--config", help="Stage-2 settings (.toml, .json, .yaml); flags override it.")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Optimiser steps (paper: 50,000).")] = None,
    lr: Annotated[Optional[float], typer.Option(help="AdamW learning rate (paper: 5e-5).")] = None,
    rank: Annotated[Optional[int], typer.Option(help="Rank of the ctrl LoRA (paper: 4; alpha = rank).")] = None,
    tau_start: Annotated[Optional[int], typer.Option(help="UNet timestep at t = 0.")] = None,
    tau_end: Annotated[Optional[int], typer.Option(help="UNet timestep at t = 1.")] = None,
    crop: Annotated[int, typer.Option(help="Low-resolution crop side per sample.")] = 128,
    seed: Annotated[Optional[int], typer.Option(help="Seed of crops, (t, t') draws and initialisation.")] = None,
    checkpoint: Annotated[Optional[Path], typer.Option("--checkpoint", help="Checkpoint file: written every `checkpoint_every` steps, resumed from when present.")] = None,
) -> None:
    """CTSR stage 2: distil the fidelity path of the stage-1 student into a ctrl LoRA (Eq. 8)."""
    import numpy as np

    from .image import IMAGE_EXTENSIONS, read_image
    from .train.config import load_config
    from .train.ctsr_stage2 import Stage2Config, Stage2Trainer, lr_batches

    files = sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS) if images.is_dir() else []
    if not files:
        raise typer.BadParameter(f"--images `{images}` holds no images ({' '.join(sorted(IMAGE_EXTENSIONS))}).")
    pixels = [np.asarray(read_image(f).pixels, dtype=np.float32)[..., :3] for f in files]
    try:
        settings_ = load_config(Stage2Config, config, steps=steps, lr=lr, rank=rank, alpha=None if rank is None else float(rank),
                                tau_start=tau_start, tau_end=tau_end, seed=seed)
        trainer = Stage2Trainer(stage1, base, settings_)
    except CtsrError as exc:
        raise _fail(exc) from None
    _run_recipe("stage 2", trainer, lambda seed_: lr_batches(pixels, batch=settings_.batch, crop=crop, seed=seed_), checkpoint, output, "ctrl")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
