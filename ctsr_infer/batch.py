"""Folders and file lists: input discovery, output naming, skip-existing, per-file failures.

No global state and no UI: a worker of a distributed engine can call :func:`run_batch` as is.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .errors import InvalidInputError
from .image import IMAGE_EXTENSIONS, read_image, write_image
from .progress import ProgressCallback, emit

__all__ = ["Job", "BatchItem", "BatchReport", "plan_jobs", "run_batch", "t_suffix"]

logger = logging.getLogger(__name__)
Status = Literal["ok", "skipped", "failed"]
OUTPUT_FORMATS = ("png", "jpg", "webp", "tiff")


@dataclass(frozen=True)
class Job:
    source: Path
    outputs: tuple[Path, ...]
    """One output per t value (one when there is no t list)."""


@dataclass(frozen=True)
class BatchItem:
    source: Path
    outputs: tuple[Path, ...]
    status: Status
    error: str | None = None
    seconds: float = 0.0


@dataclass
class BatchReport:
    items: list[BatchItem] = field(default_factory=list)

    def count(self, status: Status) -> int:
        return sum(1 for item in self.items if item.status == status)

    @property
    def failed(self) -> list[BatchItem]:
        return [item for item in self.items if item.status == "failed"]


def t_suffix(t: float) -> str:
    return f"_t{t:.2f}"


def _discover(inputs: Sequence[Path], *, recursive: bool) -> list[tuple[Path, Path]]:
    """(source, path relative to the output root) for every input; folders give image files only."""
    found: list[tuple[Path, Path]] = []
    for entry in inputs:
        if entry.is_dir():
            pattern = entry.rglob("*") if recursive else entry.glob("*")
            files = sorted(
                p for p in pattern
                if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                and not any(part.startswith(".") for part in p.relative_to(entry).parts)
            )
            found.extend((p, p.relative_to(entry)) for p in files)
        else:
            found.append((entry, Path(entry.name)))  # a missing or bad file fails on its own later
    return found


def plan_jobs(
    inputs: Sequence[str | Path],
    output: str | Path,
    *,
    ts: Sequence[float] | None = None,
    recursive: bool = False,
    fmt: str = "png",
) -> list[Job]:
    """Map inputs to output paths.

    A single input file with ``output`` ending in an image extension writes exactly there; otherwise
    ``output`` is a folder, mirroring the input tree when ``recursive``. Several t values add a
    ``_t0.50`` suffix. Two inputs that would share an output name (``a.jpg``, ``a.png``) keep their
    source extension in the name (``a_jpg.png``) instead of overwriting each other.
    """
    if fmt not in OUTPUT_FORMATS:
        raise InvalidInputError(f"`format` must be one of {list(OUTPUT_FORMATS)}, got {fmt!r}.")
    paths = [Path(p) for p in inputs]
    if not paths:
        raise InvalidInputError("no input given: name image files or folders.")
    output = Path(output)
    suffixes = [t_suffix(t) for t in ts] if ts and len(ts) > 1 else [""]
    single_file = len(paths) == 1 and not paths[0].is_dir() and output.suffix.lower() in IMAGE_EXTENSIONS
    if single_file:
        return [Job(paths[0], tuple(output.with_name(f"{output.stem}{s}{output.suffix}") for s in suffixes))]
    if output.suffix.lower() in IMAGE_EXTENSIONS:
        raise InvalidInputError(
            f"`output` {str(output)!r} looks like a file, but there are several inputs or a folder; give a folder."
        )
    discovered = _discover(paths, recursive=recursive)
    stems: dict[Path, int] = {}
    for _, rel in discovered:
        key = rel.with_suffix("")
        stems[key] = stems.get(key, 0) + 1
    jobs: list[Job] = []
    for source, rel in discovered:
        stem = rel.with_suffix("")
        if stems[stem] > 1:
            stem = stem.with_name(f"{stem.name}_{rel.suffix.lstrip('.').lower() or 'noext'}")
        jobs.append(Job(source, tuple(output / stem.parent / f"{stem.name}{s}.{fmt}" for s in suffixes)))
    return jobs


def run_batch(
    upscaler: Any,
    jobs: Sequence[Job],
    *,
    ts: Sequence[float] | None = None,
    overwrite: bool = False,
    on_progress: ProgressCallback | None = None,
    on_item: Callable[[BatchItem], None] | None = None,
    **options: Any,
) -> BatchReport:
    """Run ``upscaler.process`` over ``jobs``. A failing file is recorded and the rest go on.

    Existing outputs are skipped unless ``overwrite``; outputs are written atomically.
    ``options`` go to ``Upscaler.process`` (scale, color_fix, knob_steps, seed, encode).
    """
    report = BatchReport()
    t_arg: Any = list(ts) if ts is not None and len(ts) > 1 else (ts[0] if ts else None)
    for index, job in enumerate(jobs):
        emit(on_progress, "file", index, len(jobs))
        start = time.perf_counter()
        if not overwrite and all(p.exists() for p in job.outputs):
            item = BatchItem(job.source, job.outputs, "skipped", "output exists (use --overwrite)")
        else:
            try:
                data = read_image(job.source)
                results = upscaler.process(data, t=t_arg, on_progress=on_progress, **options)
                for result, path in zip(results, job.outputs, strict=True):
                    if overwrite or not path.exists():
                        write_image(result, path, overwrite=overwrite)
                item = BatchItem(job.source, job.outputs, "ok", seconds=time.perf_counter() - start)
            except (KeyboardInterrupt, MemoryError):
                raise
            except Exception as exc:  # one bad file must not stop the batch; it is reported
                logger.debug("failed on %s", job.source, exc_info=True)
                item = BatchItem(job.source, job.outputs, "failed", f"{type(exc).__name__}: {exc}", time.perf_counter() - start)
        report.items.append(item)
        if on_item is not None:
            on_item(item)
    emit(on_progress, "file", len(jobs), len(jobs))
    return report
