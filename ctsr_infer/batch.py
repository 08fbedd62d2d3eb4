"""Folders and file lists: input discovery, output naming, skip-existing, per-file failures.

No global state and no UI: a worker of a distributed engine can call :func:`run_batch` as is.
"""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .errors import InvalidInputError
from .animation import ANIMATED_FORMATS, Animation, is_animated, read_animation, write_animation
from .encoding import check_encoding, holds_comment, output_format, read_comment, write_image
from .image import read_image
from .plan import OUTPUT_FORMATS, Job, check_plan, plan_jobs, t_suffix
from .progress import ProgressCallback, emit
from .tmap import TMap

__all__ = ["Job", "BatchItem", "BatchReport", "plan_jobs", "check_plan", "run_batch", "t_suffix", "OUTPUT_FORMATS"]

logger = logging.getLogger(__name__)
Status = Literal["ok", "skipped", "failed"]


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


@dataclass(frozen=True)
class _Animated:
    """An animation's upscaled frames: ``frames[i]`` holds frame i's output per t."""

    source: Animation
    frames: list[list[Any]]


def _read_input(path: Path) -> Any:
    """An :class:`Animation` for an animated GIF/APNG/WebP, else the :class:`ImageData` of the file."""
    return read_animation(path) if is_animated(path) else read_image(path)


def _settings_differ(path: Path, stamp: dict[str, Any] | None) -> str:
    """'' when ``path`` records the settings ``stamp`` (or its format cannot hold a record: BMP, where
    an existing file is skipped as before); else what differs, for the message."""
    if not holds_comment(path):
        return ""
    comment = read_comment(path)
    try:
        found = json.loads(comment) if comment else None
    except ValueError:
        found = None
    if not isinstance(found, dict):
        return "made without a record of its settings" if stamp is not None else ""
    if stamp is None or found == stamp:
        return ""
    keys = sorted(k for k in found.keys() | stamp.keys() if found.get(k) != stamp.get(k))
    return ", ".join(f"{k} {found.get(k)!r} there, {stamp.get(k)!r} now" for k in keys)


def run_batch(
    upscaler: Any,
    jobs: Sequence[Job],
    *,
    ts: Sequence[float | TMap] | None = None,
    overwrite: bool = False,
    on_progress: ProgressCallback | None = None,
    on_item: Callable[[BatchItem], None] | None = None,
    pipelined: bool = True,
    batch_size: int = 1,
    quality: int | None = None,
    png_level: int | None = None,
    keep_metadata: bool = False,
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
    ``quality``, ``png_level``, ``keep_metadata``: how outputs are encoded (:func:`~ctsr_infer.encoding.encode_image`).
    """
    check_encoding(quality=quality, png_level=png_level)
    encoding = {"quality": quality, "png_level": png_level, "keep_metadata": keep_metadata}
    wanted = len(ts) if ts and len(ts) > 1 else 1
    mismatched = [job for job in jobs if len(job.outputs) != wanted]
    if mismatched:
        raise InvalidInputError(f"`jobs` were planned for {len(mismatched[0].outputs)} t value(s) but `ts` has {wanted}; "
                                "plan them with the same `ts` (plan_jobs(..., ts=ts)).")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidInputError(f"`batch_size` must be an integer >= 1, got {batch_size!r}.")
    report = BatchReport()
    t_arg: Any = list(ts) if ts is not None and len(ts) > 1 else (ts[0] if ts else None)
    chunks = [list(jobs[i : i + batch_size]) for i in range(0, len(jobs), batch_size)]

    t_values: list[float | TMap | None] = list(ts) if ts and len(ts) > 1 else [ts[0] if ts else None]
    settings = getattr(upscaler, "settings", None)
    stamps: list[dict[str, Any] | None] = [settings(t, **options) if settings else None for t in t_values]
    comments = [None if stamp is None else json.dumps(stamp, sort_keys=True) for stamp in stamps]
    todo: dict[Job, list[bool]] = {}
    """Per job, which of its outputs to write (the others exist, made with the same settings)."""

    def triage(job: Job) -> BatchItem | None:
        """A final item for a job that does not run (all outputs there with these settings, or one
        there with other settings); None when it runs."""
        needed: list[bool] = []
        for path, stamp in zip(job.outputs, stamps, strict=True):
            if overwrite or not path.exists():
                needed.append(True)
                continue
            differs = _settings_differ(path, stamp)
            if differs:
                return BatchItem(job.source, job.outputs, "failed",
                                 f"`{path}` exists with other settings ({differs}); pass --overwrite to replace it, "
                                 "or choose another output folder or --suffix")
            needed.append(False)
        if not any(needed):
            return BatchItem(job.source, job.outputs, "skipped", "output exists with the same settings (use --overwrite to redo)")
        todo[job] = needed
        return None

    def write(results: list[Any] | _Animated, job: Job) -> None:
        if isinstance(results, _Animated):
            still = [path for path in job.outputs if output_format(path) not in ANIMATED_FORMATS]
            if still:
                raise InvalidInputError(f"`{job.source}` is animated, and `{still[0].name}` cannot hold an animation; "
                                        "write it as .png (APNG), .gif or .webp (--format png|gif|webp).")
            for index, (path, comment, needed) in enumerate(zip(job.outputs, comments, todo[job], strict=True)):
                if needed:
                    frames = [per_frame[index] for per_frame in results.frames]
                    write_animation(results.source, frames, path, overwrite=overwrite, comment=comment, **encoding)
            return
        for result, path, comment, needed in zip(results, job.outputs, comments, todo[job], strict=True):
            if needed:  # overwrite=False: an output that appeared meanwhile is an error, never silently kept
                write_image(result, path, overwrite=overwrite, comment=comment, **encoding)

    def failed(job: Job, exc: BaseException, start: float) -> BatchItem:
        logger.debug("failed on %s", job.source, exc_info=exc)
        return BatchItem(job.source, job.outputs, "failed", f"{type(exc).__name__}: {exc}", time.perf_counter() - start)

    def compute(group: list[Any]) -> list[list[Any] | _Animated | BaseException]:
        """One network call for the group when it can share one; one call per file otherwise or on failure.
        An animation is a group of its own: its frames run one by one."""
        if isinstance(group[0], Animation):
            try:
                return [_Animated(group[0], [upscaler.process(frame, t=t_arg, on_progress=on_progress, **options)
                                             for frame in group[0].frames])]
            except (KeyboardInterrupt, MemoryError):
                raise
            except Exception as exc:  # noqa: BLE001 - reported with the file
                return [exc]
        if len(group) > 1:
            try:
                return list(upscaler.process_batch(group, t=t_arg, on_progress=on_progress, **options))
            except (KeyboardInterrupt, MemoryError):
                raise
            except Exception:  # noqa: BLE001 - find the bad file by running them one by one
                logger.debug("a batch of %d failed; running its files one by one", len(group), exc_info=True)
        results: list[list[Any] | _Animated | BaseException] = []
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
        while pending:  # removed once reported: an interrupt mid-way never reports an item twice or loses one
            entry = pending[0]
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
            pending.pop(0)
            if on_item is not None:
                on_item(item)

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

        def read(chunk_index: int) -> list[Future[Any] | BatchItem]:
            if chunk_index >= len(chunks):
                return []
            return [triage(job) or io_call(_read_input, job.source) for job in chunks[chunk_index]]

        def run_all() -> None:
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
                    if isinstance(future, BatchItem):
                        entries[index] = future
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
                    key = ("animation", index) if isinstance(data, Animation) else (data.size, data.bit_depth)
                    groups.setdefault(key, []).append(index)
                outputs: dict[int, list[Any] | _Animated | BaseException] = {}
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

        try:
            run_all()
        except KeyboardInterrupt:
            settle()  # the writes already under way finish and are reported; nothing else starts
            raise
        settle()
    emit(on_progress, "file", len(jobs), len(jobs))
    return report
