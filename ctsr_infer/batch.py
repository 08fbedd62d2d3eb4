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


_Entry = BatchItem | tuple[Job, float, Future]
"""A file of a chunk: its final BatchItem, or its write in flight (job, start time, future)."""


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
    batch_size: int = 1,
    **options: Any,
) -> BatchReport:
    """Run ``upscaler.process`` over ``jobs``. A failing file is recorded and the rest go on.

    Existing outputs are skipped unless ``overwrite``; outputs are written atomically.
    ``options`` go to ``Upscaler.process`` (scale, color_fix, knob_steps, seed, encode).
    ``pipelined``: the next files are decoded and the previous ones encoded and written on a worker
    thread while the current ones are computed (image codecs release the GIL).
    ``batch_size``: up to this many consecutive files are read together, and those of equal size
    and bit depth go through the network in one call (``Upscaler.process_batch``; small images of
    a family that supports it, see ``Upscaler.batchable``). If such a group fails, its files are
    retried one by one, so only the bad file is reported failed. The files written are the same
    for every ``batch_size`` and ``pipelined`` up to float rounding (conv kernels may sum in another
    order for a batch: at most one 8-bit level); items are reported in job order, each once its
    outputs are on disk. Memory: up to ``batch_size`` decoded inputs and their outputs at once.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidInputError(f"`batch_size` must be an integer >= 1, got {batch_size!r}.")
    report = BatchReport()
    t_arg: Any = list(ts) if ts is not None and len(ts) > 1 else (ts[0] if ts else None)
    chunks = [list(jobs[i : i + batch_size]) for i in range(0, len(jobs), batch_size)]

    def skipped(job: Job) -> bool:
        return not overwrite and all(p.exists() for p in job.outputs)

    def write(results: list[Any], job: Job) -> None:
        for result, path in zip(results, job.outputs, strict=True):
            if overwrite or not path.exists():
                write_image(result, path, overwrite=overwrite)

    def failed(job: Job, exc: BaseException, start: float) -> BatchItem:
        logger.debug("failed on %s", job.source, exc_info=exc)
        return BatchItem(job.source, job.outputs, "failed", f"{type(exc).__name__}: {exc}", time.perf_counter() - start)

    def compute(group: list[Any]) -> list[list[Any] | BaseException]:
        """One network call for the group when it can share one; one call per file otherwise or on failure."""
        if len(group) > 1:
            try:
                return list(upscaler.process_batch(group, t=t_arg, on_progress=on_progress, **options))
            except (KeyboardInterrupt, MemoryError):
                raise
            except Exception:  # noqa: BLE001 - find the bad file by running them one by one
                logger.debug("a batch of %d failed; running its files one by one", len(group), exc_info=True)
        results: list[list[Any] | BaseException] = []
        for data in group:
            try:
                results.append(upscaler.process(data, t=t_arg, on_progress=on_progress, **options))
            except (KeyboardInterrupt, MemoryError):
                raise
            except Exception as exc:  # noqa: BLE001 - one bad file must not stop the batch; it is reported
                results.append(exc)
        return results

    pending: list[_Entry] = []

    def settle() -> None:
        """Report the previous chunk's files in order, waiting for their writes."""
        for entry in pending:
            if isinstance(entry, BatchItem):
                item = entry
            else:
                job, start, future = entry
                try:
                    future.result()
                    item = BatchItem(job.source, job.outputs, "ok", seconds=time.perf_counter() - start)
                except (KeyboardInterrupt, MemoryError):
                    raise
                except Exception as exc:  # noqa: BLE001 - one bad file must not stop the batch
                    item = failed(job, exc, start)
            report.items.append(item)
            if on_item is not None:
                on_item(item)
        pending.clear()

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ctsr-io") as io:
        def io_call(fn: Callable[..., Any], *args: Any) -> Future[Any]:
            """On the I/O thread when pipelined; else now, its result or error held the same way."""
            if pipelined:
                return io.submit(fn, *args)
            done: Future[Any] = Future()
            try:
                done.set_result(fn(*args))
            except Exception as exc:  # noqa: BLE001 - reported with the file
                done.set_exception(exc)
            return done

        def read(chunk_index: int) -> list[Future[Any] | None]:
            if chunk_index >= len(chunks):
                return []
            return [None if skipped(job) else io_call(read_image, job.source) for job in chunks[chunk_index]]

        upcoming = read(0)
        position = 0
        for chunk_index, chunk in enumerate(chunks):
            emit(on_progress, "file", position, len(jobs))
            position += len(chunk)
            start = time.perf_counter()
            current, upcoming = upcoming, []
            entries: list[_Entry | None] = [None] * len(chunk)
            loaded: dict[int, Any] = {}
            for index, (job, future) in enumerate(zip(chunk, current, strict=True)):
                if future is None:
                    entries[index] = BatchItem(job.source, job.outputs, "skipped", "output exists (use --overwrite)")
                    continue
                try:
                    loaded[index] = future.result()
                except (KeyboardInterrupt, MemoryError):
                    raise
                except Exception as exc:  # noqa: BLE001 - an unreadable file is reported, the rest go on
                    entries[index] = failed(job, exc, start)
            upcoming = read(chunk_index + 1)
            groups: dict[Any, list[int]] = {}
            for index, data in loaded.items():
                groups.setdefault((data.size, data.bit_depth), []).append(index)
            outputs: dict[int, list[Any] | BaseException] = {}
            for members in groups.values():
                outputs.update(zip(members, compute([loaded[i] for i in members]), strict=True))
            settle()
            for index, result in sorted(outputs.items()):
                job = chunk[index]
                if isinstance(result, BaseException):
                    entries[index] = failed(job, result, start)
                else:
                    entries[index] = (job, start, io_call(write, result, job))
            pending.extend(entry for entry in entries if entry is not None)
            if not pipelined:  # written already: report now
                settle()
        settle()
    emit(on_progress, "file", len(jobs), len(jobs))
    return report
