"""Options several ``ctsr`` commands share, each flag and help text written once (``Annotated``
aliases, as huggingface_hub's ``cli/_cli_utils.py`` does), and the checks of their values.

Defaults stay in each command's signature, so a command can default ``--device`` to ``cpu``.
"""

from pathlib import Path
from typing import Annotated

import typer

__all__ = [
    "BaseOption",
    "CheckpointOption",
    "ConfigOption",
    "DeviceOption",
    "DtypeOption",
    "ModelOption",
    "OverwriteOption",
    "PhotosOption",
    "RequiredBaseOption",
    "ScaleOption",
    "StudentOutOption",
    "TOption",
    "ThreadsOption",
    "check_threads",
    "parse_t",
    "set_threads",
]

_BASE_HELP = "Local diffusers folder of the base model (SD 2.1-base)."

# -- running models -----------------------------------------------------------------------------

ModelOption = Annotated[str | None, typer.Option("--model", "-m", help="Model id (`ctsr models list`) or student file.")]
BaseOption = Annotated[Path | None, typer.Option("--base", help=_BASE_HELP)]
RequiredBaseOption = Annotated[Path, typer.Option("--base", help=_BASE_HELP)]
TOption = Annotated[str | None, typer.Option("--t", help="Knob in [0, 1] (0 realistic, 1 faithful), or a list: 0,0.5,1.")]
ScaleOption = Annotated[float | None, typer.Option("--scale", "-s", help="Upscaling factor, any number >= 1.")]
DeviceOption = Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")]
DtypeOption = Annotated[str, typer.Option("--dtype", help="auto, fp32, bf16 or fp16.")]
OverwriteOption = Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs (default: keep them; folder runs skip them).")]
ThreadsOption = Annotated[int | None, typer.Option("--threads", help="CPU threads for the networks (default: torch's, one per core).")]

# -- training -----------------------------------------------------------------------------------

PhotosOption = Annotated[Path, typer.Option("--photos", help="Folder of high-resolution photographs (scripts/fetch_photos.sh DEST -> DEST/raw).")]
StudentOutOption = Annotated[Path, typer.Option("--out", help="Student file to write (.safetensors).")]
ConfigOption = Annotated[Path | None, typer.Option("--config", help="Recipe settings (.toml, .json, .yaml); flags override it.")]
CheckpointOption = Annotated[Path | None, typer.Option("--checkpoint", help="Checkpoint file: written every `checkpoint_every` steps, resumed from when present.")]


def parse_t(value: str | None) -> list[float] | None:
    """``--t``: one value or a comma-separated list, each in [0, 1]; None when not given."""
    if value is None:
        return None
    try:
        ts = [float(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected a number in [0, 1] or a comma-separated list such as 0,0.5,1; got {value!r}") from None
    if not ts or any(not 0.0 <= t <= 1.0 for t in ts):
        raise typer.BadParameter(f"every t must be in [0, 1] (0 = realistic detail, 1 = faithful); got {value!r}")
    return ts


def check_threads(threads: int | None) -> None:
    if threads is not None and threads < 1:
        raise typer.BadParameter(f"--threads must be >= 1, got {threads}.")


def set_threads(threads: int | None) -> None:
    """``--threads`` for the networks of this process (torch's default when None)."""
    check_threads(threads)
    if threads is None:
        return
    import torch

    torch.set_num_threads(threads)
