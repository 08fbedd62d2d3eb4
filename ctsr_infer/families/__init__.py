"""The family registry: every family the library runs, listed once, and format detection.

Adding a family is one folder (``families/<name>/`` exporting a :class:`Family` as ``FAMILY``), one
line in :data:`FAMILIES`, a manifest entry and tests (CONTRIBUTING.md, "Adding a family").
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import IncompatibleWeightsError, WeightsNotFoundError
from .family import Checkpoint, CheckpointFormat, ConvertInputs, CpuFastPath, Family, FamilyModel, LoadContext, Prepared, TilingPolicy
from .classic import FAMILY as CLASSIC
from .lite import FAMILY as LITE
from .resshift import FAMILY as RESSHIFT
from .sd_onestep import FAMILY as SD_ONESTEP

__all__ = [
    "FAMILIES",
    "STUDENT_FORMAT",
    "Checkpoint",
    "CheckpointFormat",
    "ConvertInputs",
    "CpuFastPath",
    "Family",
    "FamilyModel",
    "LoadContext",
    "Prepared",
    "TilingPolicy",
    "detect_format",
    "formats",
    "get_family",
    "get_format",
    "is_student_file",
    "read_checkpoint",
]

FAMILIES: dict[str, Family] = {family.name: family for family in (LITE, SD_ONESTEP, RESSHIFT, CLASSIC)}
"""Every family, by name, in the order ``ctsr models`` lists them."""
STUDENT_FORMAT = "ctsr-student"
"""The format of ctsr's own student files (safetensors with a ``ctsr.meta`` record)."""


def get_family(name: str, *, model: str = "") -> Family:
    family = FAMILIES.get(name)
    if family is None:
        what = f"`{model}` is a {name!r} student" if model else f"unknown family {name!r}"
        raise IncompatibleWeightsError(f"{what}; this version runs {', '.join(FAMILIES)}. A newer ctsr-infer may run it.")
    return family


def formats() -> dict[str, CheckpointFormat]:
    """Every public checkpoint format some family converts from (or uses as a companion), by name."""
    return {fmt.name: fmt for family in FAMILIES.values() for fmt in family.formats}


def get_format(name: str) -> CheckpointFormat:
    known = formats()
    if name not in known:
        raise IncompatibleWeightsError(f"unknown checkpoint format {name!r}; known: {', '.join([STUDENT_FORMAT, *known])}.")
    return known[name]


def family_of_format(name: str) -> Family:
    for family in FAMILIES.values():
        if any(fmt.name == name for fmt in family.formats):
            return family
    raise IncompatibleWeightsError(f"no family converts from {name!r}.")


def is_student_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a safetensors file with a ``ctsr.meta`` record (reads the header only)."""
    from safetensors import SafetensorError, safe_open

    from ..student_file import META_KEY

    try:
        with safe_open(str(path), framework="pt", device="cpu") as reader:
            return META_KEY in (reader.metadata() or {})
    except (SafetensorError, OSError, ValueError):
        return False


def read_checkpoint(path: str | os.PathLike[str], *, raw_ok: bool = False) -> Checkpoint:
    """Read a weights file once for detection: safetensors (header and tensors) when it is one, a
    format's own container when a family reads one (ncnn's ``.param``), else a pickle through the
    restricted unpickler. ``raw_ok``: a file that is none of these is returned as raw bytes (a
    companion such as ncnn weights) instead of refused."""
    from safetensors import SafetensorError, safe_open

    from ..safe_pickle import read_pickled_checkpoint

    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"checkpoint `{path}` does not exist.")
    with path.open("rb") as handle:
        head = handle.read(8)
    # a safetensors file starts with the header length (u64 little-endian) and then '{'
    if len(head) == 8 and 2 <= int.from_bytes(head, "little") < path.stat().st_size:
        try:
            with safe_open(str(path), framework="pt", device="cpu") as reader:
                header = dict(reader.metadata() or {})
                tensors = {key: reader.get_tensor(key) for key in reader.keys()}
            return Checkpoint(path, "safetensors", header, tensors)
        except (SafetensorError, OSError, ValueError):
            pass
    for fmt in formats().values():
        if fmt.reader is not None and (own := fmt.reader(path)) is not None:
            return own
    try:
        return Checkpoint(path, "pickle", {}, read_pickled_checkpoint(path))
    except IncompatibleWeightsError:
        if raw_ok:
            return Checkpoint(path, "raw")
        raise


def _detects(fmt: CheckpointFormat, checkpoint: Checkpoint) -> bool:
    """A detector that trips on an unusual file (integer keys, odd nesting) does not match it."""
    from ..errors import MissingDependencyError

    try:
        return bool(fmt.detect(checkpoint))
    except MissingDependencyError:
        return False
    except Exception:  # noqa: BLE001 - detection reads arbitrary user data; any failure is "not this format"
        return False


def detect_format(checkpoint: Checkpoint) -> str:
    """The format of a file from its contents: ``ctsr-student`` or a family's format name.

    Raises:
        IncompatibleWeightsError: no format matches; the message lists what was tried.
    """
    from ..student_file import META_KEY

    if checkpoint.container == "safetensors" and META_KEY in checkpoint.header:
        return STUDENT_FORMAT
    found = [fmt for fmt in formats().values() if _detects(fmt, checkpoint)]
    matches = [fmt.name for fmt in found if not fmt.generic] or [fmt.name for fmt in found]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise IncompatibleWeightsError(f"`{checkpoint.path}` matches several formats ({', '.join(matches)}); pick one with --format.")
    tried = "; ".join(f"{fmt.name}: {fmt.description}" for fmt in formats().values())
    import importlib.util

    if importlib.util.find_spec("spandrel") is None:
        tried += " (classic networks need the `classic` extra: `pip install 'ctsr-infer[classic]'`, which is not installed)"
    keys = sorted(map(str, checkpoint.state or {}))[:5] if checkpoint.state is not None else type(checkpoint.data).__name__
    raise IncompatibleWeightsError(
        f"`{checkpoint.path}` ({checkpoint.container}) is not a format this version converts (found {keys}). "
        f"Known: {STUDENT_FORMAT}: a ctsr student file; {tried}."
    )
