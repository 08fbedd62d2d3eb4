"""Folders and file lists: input discovery, output naming, skip-existing, per-file failures.

No global state and no UI: a worker of a distributed engine can call :func:`run_batch` as is.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
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
    pipelined: bool = True,
    **options: Any,
) -> BatchReport:
    """Run ``upscaler.process`` over ``jobs``. A failing file is recorded and the rest go on.

    Existing outputs are skipped unless ``overwrite``; outputs are written atomically.
    ``options`` go to ``Upscaler.process`` (scale, color_fix, knob_steps, seed, encode).
    ``pipelined``: the next file is decoded and the previous one encoded and written on a worker
    thread while the current one is computed (image codecs release the GIL); items are still
    reported in order, each once its outputs are on disk.
    """
    report = BatchReport()
    t_arg: Any = list(ts) if ts is not None and len(ts) > 1 else (ts[0] if ts else None)

    def skipped(job: Job) -> bool:
        return not overwrite and all(p.exists() for p in job.outputs)

    def write(results: list[Any], job: Job) -> None:
        for result, path in zip(results, job.outputs, strict=True):
            if overwrite or not path.exists():
                write_image(result, path, overwrite=overwrite)

    def finish(item: BatchItem) -> None:
        report.items.append(item)
        if on_item is not None:
            on_item(item)

    def failed(job: Job, exc: BaseException, start: float) -> BatchItem:
        logger.debug("failed on %s", job.source, exc_info=exc)
        return BatchItem(job.source, job.outputs, "failed", f"{type(exc).__name__}: {exc}", time.perf_counter() - start)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ctsr-io") as io:
        def read(index: int) -> Future[Any] | None:
            if index >= len(jobs) or skipped(jobs[index]):
                return None
            if pipelined:
                return io.submit(read_image, jobs[index].source)
            done: Future[Any] = Future()
            try:
                done.set_result(read_image(jobs[index].source))
            except Exception as exc:  # noqa: BLE001 - reported with the file
                done.set_exception(exc)
            return done

        pending: tuple[Job, float, Future[None]] | None = None  # the previous file's write

        def settle() -> None:
            nonlocal pending
            if pending is None:
                return
            job, start, future = pending
            pending = None
            try:
                future.result()
                finish(BatchItem(job.source, job.outputs, "ok", seconds=time.perf_counter() - start))
            except (KeyboardInterrupt, MemoryError):
                raise
            except Exception as exc:  # noqa: BLE001 - one bad file must not stop the batch
                finish(failed(job, exc, start))

        upcoming = read(0)
        for index, job in enumerate(jobs):
            emit(on_progress, "file", index, len(jobs))
            start = time.perf_counter()
            current, upcoming = upcoming, None
            if current is None:
                upcoming = read(index + 1)
                settle()
                finish(BatchItem(job.source, job.outputs, "skipped", "output exists (use --overwrite)"))
                continue
            try:
                data = current.result()
                upcoming = read(index + 1)
                results = upscaler.process(data, t=t_arg, on_progress=on_progress, **options)
            except (KeyboardInterrupt, MemoryError):
                raise
            except Exception as exc:  # noqa: BLE001 - one bad file must not stop the batch; it is reported
                if upcoming is None:
                    upcoming = read(index + 1)
                settle()
                finish(failed(job, exc, start))
                continue
            settle()
            if pipelined:
                pending = (job, start, io.submit(write, results, job))
            else:
                try:
                    write(results, job)
                    finish(BatchItem(job.source, job.outputs, "ok", seconds=time.perf_counter() - start))
                except (KeyboardInterrupt, MemoryError):
                    raise
                except Exception as exc:  # noqa: BLE001
                    finish(failed(job, exc, start))
        settle()
    emit(on_progress, "file", len(jobs), len(jobs))
    return report
