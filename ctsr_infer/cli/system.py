"""``ctsr doctor`` (what this machine has and lacks) and ``ctsr bench`` (per-stage timings)."""

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from .app import EXIT_ENV, app, err, out
from .options import DeviceOption, ThreadsOption, check_threads

__all__ = ["bench", "doctor"]


@app.command()
def doctor() -> None:
    """Versions, devices, precision support, cache, offline state, and what each model is missing."""
    from ..registry import diagnose

    for section, rows in diagnose().items():
        table = Table(title=section, show_header=False, title_justify="left")
        table.add_column("item", style="bold")
        table.add_column("value")
        for key, value in rows:
            table.add_row(key, value)
        out.print(table)


@app.command()
def bench(
    model: Annotated[str | None, typer.Option("--model", help="A family name (`ctsr models families`: its full-size architecture with random weights), or a model id / student file (default: the default model).")] = None,
    size: Annotated[list[int], typer.Option("--size", help="Output side in pixels; repeat for several.")] = [512],  # noqa: B006
    dtype: Annotated[list[str], typer.Option("--dtype", help="fp32, bf16, fp16 or auto (what `ctsr upscale` picks); repeat to compare (the first one is the reference).")] = ["fp32"],  # noqa: B006
    channels_last: Annotated[bool, typer.Option("--channels-last/--no-channels-last", help="Also run each dtype in channels-last memory format.")] = False,
    runs: Annotated[int, typer.Option("--runs", help="Measured runs per configuration (the median is reported).")] = 3,
    warmup: Annotated[int, typer.Option("--warmup", help="Unmeasured runs first.")] = 1,
    device: DeviceOption = "cpu",
    json_path: Annotated[Path | None, typer.Option("--json", help="Also write the results here.")] = None,
    compile_: Annotated[bool, typer.Option("--compile", help="Also run each configuration with the network under torch.compile (warm-up >= 1 takes the compilation).")] = False,
    threads: ThreadsOption = None,
) -> None:
    """Per-stage wall time (median after warm-up) and peak memory, one fresh process per configuration.

    With several dtypes / layouts the outputs are compared with the first configuration (PSNR)."""
    from dataclasses import asdict

    from ..benchmark import BenchResult, run_compared

    if runs < 1 or warmup < 0:
        raise typer.BadParameter("--runs must be >= 1 and --warmup >= 0")
    check_threads(threads)
    if model is None:
        from ..manifest import load_manifest

        model = load_manifest().default
    layouts: list[bool | None] = [False, True] if channels_last else [False]
    auto_layouts: list[bool | None] = [None]
    configs: list[dict[str, Any]] = [{"dtype": name, "channels_last": layout, "compile": compiled} for name in dtype
                                     for layout in (auto_layouts if name == "auto" else layouts)
                                     for compiled in ([False, True] if compile_ else [False])]

    def show(result: BenchResult) -> None:
        stages = "  ".join(f"{k} {v:.2f}" for k, v in result.stages.items())
        quality = "" if result.psnr_vs_fp32 is None else f"  PSNR vs first {result.psnr_vs_fp32:.1f} dB"
        out.print(f"{model} {result.size}px {result.dtype} ({result.placement}{', compiled' if result.compiled else ''}): "
                  f"{result.seconds:.2f} s (load {result.load_seconds:.1f} s), peak RSS {result.peak_rss_gb:.2f} GB{quality}\n    {stages}")

    results = []
    for side in size:
        try:  # a benchmark subprocess that dies is reported as a RuntimeError, not a CtsrError
            results += run_compared(model, size=side, configs=configs, on_result=show, runs=runs, warmup=warmup, device=device,
                                    threads=threads)
        except RuntimeError as exc:
            err.print(f"[red]error:[/] {escape(str(exc))}")
            raise typer.Exit(EXIT_ENV) from None
    if json_path is not None:
        json_path.write_text(json.dumps([asdict(r) for r in results], indent=2))
        out.print(f"wrote {json_path}")
