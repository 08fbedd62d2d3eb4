"""The root ``ctsr`` app: the consoles, the exit codes, and the one place errors become messages.

Exit codes: 0 all files ok (skipped ones included), 1 some files failed, 2 usage error,
3 missing model or environment problem, 130 interrupted (Ctrl-C; the summary of what finished is printed).
"""

import logging
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from .. import __version__
from ..errors import (
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

__all__ = ["EXIT_ENV", "EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "app", "err", "exit_code", "main", "out"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_ENV, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
out = Console()
err = Console(stderr=True)


def exit_code(exc: BaseException) -> int:
    """The exit code of an error: usage (2) for bad arguments, environment (3) for what is missing
    or refused on this machine, failed (1) for the rest."""
    if isinstance(exc, (InvalidInputError, KnobError, UnknownModelError)):
        return EXIT_USAGE
    if isinstance(exc, (WeightsNotFoundError, DeviceError, IncompatibleWeightsError, UnsafeCheckpointError, MissingDependencyError)):
        return EXIT_ENV
    return EXIT_FAILED


class _Group(typer.core.TyperGroup):
    """Turns any CtsrError of any command (sub-groups included) into its one-line message and exit code."""

    # typer passes its typer.Context; TyperGroup declares the click Context that one subclasses, which
    # recent typer versions vendor (typer._click) and older ones import from click: no one public name
    def invoke(self, ctx: "typer.Context") -> object:  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except CtsrError as exc:
            err.print(f"[bold red]error:[/] {escape(str(exc))}", markup=True, highlight=False, soft_wrap=True)
            raise typer.Exit(exit_code(exc)) from None


app = typer.Typer(cls=_Group, add_completion=False, no_args_is_help=True, help="One-step diffusion super-resolution with a fidelity/realness knob.")


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


def main() -> None:
    """The ``ctsr`` console script."""
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(EXIT_INTERRUPTED)
