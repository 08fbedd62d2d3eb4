"""What ``ctsr upscale`` prints and pipes: the run's summary, and one image through stdin/stdout.
The consoles come from :mod:`.app`."""

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from ..batch import BatchReport
from ..encoding import encode_image, output_format, write_image
from ..errors import InvalidInputError
from ..image import read_image
from ..plan import format_of

__all__ = ["print_summary", "upscale_stdio"]


def upscale_stdio(upscaler: Any, source: Path, output: Path, *, t: float | None, fmt: str | None, overwrite: bool,
                  encoding: dict[str, Any], options: dict[str, Any], console: Console) -> None:
    """One image from a file or stdin (``-``) to a file or stdout (``-``, format from --format, PNG by default)."""
    if str(source) == "-":
        payload = sys.stdin.buffer.read()
        if not payload:
            raise InvalidInputError("standard input is empty (0 bytes); pipe an image into `ctsr upscale - -o ...`.")
        with tempfile.TemporaryDirectory(prefix="ctsr-stdin-") as folder:  # a file keeps 16-bit PNG/TIFF intact
            path = Path(folder) / "stdin"
            path.write_bytes(payload)
            data = read_image(path)
    else:
        data = read_image(source)
    [result] = upscaler.process(data, t=t, **options)
    comment = json.dumps(upscaler.settings(t, **options), sort_keys=True)
    if str(output) == "-":
        sys.stdout.buffer.write(encode_image(result, output_format(Path(f"stdout.{fmt or 'png'}")), comment=comment, **encoding))
        sys.stdout.buffer.flush()
        return
    if fmt is not None and format_of(output) != fmt:
        raise InvalidInputError(f"`format` {fmt!r} does not match the output file {str(output)!r}.")
    write_image(result, output, overwrite=overwrite, comment=comment, **encoding)
    console.print(f"wrote {output}")


def print_summary(report: BatchReport, *, title: str, console: Console) -> None:
    """A table on a terminal; tab-separated lines (paths never cut) when the output is a pipe or file."""
    summary = f"{report.count('ok')} ok, {report.count('skipped')} skipped, {report.count('failed')} failed"
    if console.is_terminal:
        table = Table(title=title, show_lines=False)
        for column in ("status", "input", "output", "seconds"):
            table.add_column(column, overflow="fold")
        for item in report.items:
            colour = {"ok": "green", "skipped": "yellow", "failed": "red"}[item.status]
            table.add_row(f"[{colour}]{item.status}[/]", str(item.source), ", ".join(str(p) for p in item.outputs), f"{item.seconds:.1f}")
        console.print(table)
        console.print(summary)
        return
    for item in report.items:
        line = "\t".join([item.status, str(item.source), ", ".join(str(p) for p in item.outputs), f"{item.seconds:.1f}"])
        print(line + (f"\t{item.error}" if item.error and item.status == "failed" else ""))
    print(summary)
