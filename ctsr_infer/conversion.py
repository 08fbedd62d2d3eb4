"""Converting a user's checkpoint file: detect its format from its contents, check what the format
needs (a base model, a companion file), run the family's converter. ``ctsr models convert`` and
``ctsr models import`` both come here."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from .errors import InvalidInputError
from .families import STUDENT_FORMAT, ConvertInputs, detect_format, formats, get_format, is_student_file, read_checkpoint
from .student_file import StudentFile, load_student

__all__ = ["convert_checkpoint"]


def convert_checkpoint(
    path: str | os.PathLike[str],
    *,
    format: str | None = None,
    base: str | os.PathLike[str] | None = None,
    companion: str | os.PathLike[str] | None = None,
    fidelity: str | os.PathLike[str] | None = None,
    prompt: str = "",
    licence: str = "unknown",
    settings: Mapping[str, Any] | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> tuple[str, StudentFile]:
    """Return (the file's format, the student file it gives).

    Args:
        path: the checkpoint: a public format some family converts from, or a ctsr student file
            (returned as read, validated).
        format: the format's name, overriding detection from the contents.
        base: a local diffusers folder of the base model, for formats that need one (prompt embedding).
        companion: the second file of formats that have one (ResShift's ``--vq`` autoencoder).
        fidelity: formats that pair networks (``classic``): the faithful network (t = 1) of a
            ``blend`` knob whose realistic end (t = 0) is ``path``.
        settings: converter settings (e.g. a ResShift ``sampler``/``schedule``).

    Raises:
        InvalidInputError: a missing ``base``/companion, one given to a format without it, or an
            unknown ``format``.
        IncompatibleWeightsError / UnsafeCheckpointError: the file is not a usable checkpoint.
    """
    path = Path(path)
    if format is not None and format != STUDENT_FORMAT and format not in formats():
        raise InvalidInputError(f"`--format` must be one of {[STUDENT_FORMAT, *formats()]}, got {format!r}.")
    given = [flag for flag, value in (("--base", base), ("--vq", companion), ("--fidelity", fidelity), ("--set/--settings", settings))
             if value]
    if format == STUDENT_FORMAT or (format is None and is_student_file(path)):
        _nothing_to_convert(path, given)
        return STUDENT_FORMAT, load_student(path)
    checkpoint = read_checkpoint(path)
    name = format or detect_format(checkpoint)
    if name == STUDENT_FORMAT:
        _nothing_to_convert(path, given)
        return name, load_student(path)
    fmt = get_format(name)
    if fmt.convert is None:
        users = [other for other in formats().values() if other.companion == fmt.name]
        hint = f"; pass it with {users[0].companion_option} when converting {users[0].description}" if users else ""
        raise InvalidInputError(f"`{path}` is {fmt.description}, which is not a model on its own{hint}.")
    if fmt.needs_base and base is None:
        raise InvalidInputError(f"`{path}` is {fmt.description}; converting it needs the base model (for the prompt embedding): "
                                "give a local diffusers folder with --base DIR (Python: `base=`).")
    companion_file = None
    if fmt.companion is None and companion is not None:
        raise InvalidInputError(f"`{path}` is {fmt.description}, which converts without a companion file; drop the companion (--vq).")
    if fmt.companion is not None:
        if companion is None:
            raise InvalidInputError(f"`{path}` is {fmt.description}; converting it also needs {get_format(fmt.companion).description}: "
                                    f"pass it with {fmt.companion_option} FILE.")
        companion_file = read_checkpoint(companion, raw_ok=get_format(fmt.companion).raw_companion)
        if not get_format(fmt.companion).detect(companion_file):
            raise InvalidInputError(f"{fmt.companion_option} `{companion}` is not {get_format(fmt.companion).description}.")
    faithful = None
    if fidelity is not None:
        if not fmt.pairs:
            raise InvalidInputError(f"`{path}` is {fmt.description}, which does not pair with a fidelity network; drop --fidelity.")
        faithful = read_checkpoint(fidelity)
        if not fmt.detect(faithful):
            raise InvalidInputError(f"--fidelity `{fidelity}` is not {fmt.description}.")
    base_dir = Path(base) if base is not None else None
    inputs = ConvertInputs(source=checkpoint, base_dir=base_dir, base_ref={"path": str(base_dir.resolve())} if base_dir else {},
                           companion=companion_file, fidelity=faithful, prompt=prompt, licence=licence, settings=dict(settings or {}),
                           provenance=dict(provenance or {}))
    student = fmt.convert(inputs)
    return name, replace(student, meta=replace(student.meta, licence=licence if licence != "unknown" else student.meta.licence))


def _nothing_to_convert(path: Path, given: list[str]) -> None:
    if given:
        raise InvalidInputError(f"`{path}` is already a ctsr student file: {', '.join(given)} would be ignored; drop it.")
