"""Folders and file lists: input discovery, output naming, skip-existing, per-file failures.

No global state and no UI. The steps each file goes through are :class:`FileSteps`, driven over a
list of jobs by :func:`run_steps`: :func:`run_batch` on one machine, and the Ray actors of
:mod:`ctsr_infer.distributed` on each batch of a dataset, so both write the same files by one code.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .animation import ANIMATED_FORMATS, Animation, is_animated, read_animation, write_animation
from .atomic import atomic_write
from .encoding import check_encoding, holds_comment, output_format, read_comment, write_image
from .errors import InvalidInputError, MissingDependencyError
from .image import read_image
from .plan import OUTPUT_FORMATS, Job, check_plan, plan_jobs, t_suffix
from .progress import ProgressCallback, emit
from .tmap import TMap

__all__ = [
    "check_report_path",
    "OUTPUT_FORMATS",
    "BatchItem",
    "BatchReport",
    "FileSteps",
    "Job",
    "check_plan",
    "plan_jobs",
    "read_input",
    "run_batch",
    "run_steps",
    "size_groups",
    "t_suffix",
]

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
    model: str | None = None
    """The name of the model that ran, when the runner knows it (the Ray runner, whose model loads on the workers)."""

    def count(self, status: Status) -> int:
        return sum(1 for item in self.items if item.status == status)

    @property
    def failed(self) -> list[BatchItem]:
        return [item for item in self.items if item.status == "failed"]

    def rows(self) -> list[dict[str, Any]]:
        """One row per input, in run order: ``source``, ``outputs`` (a list), ``status``, ``error``
        (None unless failed or skipped), ``seconds``."""
        return [{"source": str(item.source), "outputs": [str(path) for path in item.outputs], "status": item.status,
                 "error": item.error, "seconds": round(item.seconds, 4)} for item in self.items]

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Write the report atomically: JSON (``.json``: the counts and the rows) or Parquet
        (``.parquet``: the rows; needs pyarrow, which the ``ray`` extra installs). Returns the path."""
        path = Path(path)
        kind = path.suffix.lower()
        if kind == ".json":
            counts = {status: self.count(status) for status in ("ok", "skipped", "failed")}
            return atomic_write(path, json.dumps({**counts, "items": self.rows()}, indent=1) + "\n")
        if kind != ".parquet":
            raise InvalidInputError(f"`report` must end in .json or .parquet, got {str(path)!r}.")
        try:
            import pyarrow as pa  # type: ignore[import-untyped,import-not-found,unused-ignore]
            import pyarrow.parquet as pq  # type: ignore[import-untyped,import-not-found,unused-ignore]
        except ImportError:
            raise MissingDependencyError("a Parquet report needs the `pyarrow` package; install it with "
                                         "`pip install 'ctsr-infer[ray]'`, or write the report as .json.") from None
        schema = pa.schema([("source", pa.string()), ("outputs", pa.list_(pa.string())), ("status", pa.string()),
                            ("error", pa.string()), ("seconds", pa.float64())])
        table = pa.Table.from_pylist(self.rows(), schema=schema)
        return atomic_write(path, writer=lambda tmp: pq.write_table(table, tmp))


def check_report_path(path: str | os.PathLike[str], *, overwrite: bool = False) -> None:
    """Refuse a report path before a run rather than after it: a suffix other than ``.json`` or
    ``.parquet``, Parquet without pyarrow, or an existing file that is not an earlier report (a rerun
    replaces its own report; any other file only with ``overwrite``)."""
    path = Path(path)
    kind = path.suffix.lower()
    if kind not in (".json", ".parquet"):
        raise InvalidInputError(f"`report` (--report) must end in .json or .parquet, got {str(path)!r}.")
    if kind == ".parquet":
        try:
            import pyarrow.parquet as pq  # type: ignore[import-untyped,import-not-found,unused-ignore]
        except ImportError:
            raise MissingDependencyError("a Parquet report needs the `pyarrow` package; install it with "
                                         "`pip install 'ctsr-infer[ray]'`, or write the report as .json.") from None
    if overwrite or not path.exists():
        return
    try:
        if kind == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            earlier = isinstance(data, dict) and {"ok", "skipped", "failed", "items"} <= set(data)
        else:
            earlier = {"source", "outputs", "status", "error", "seconds"} <= set(pq.read_schema(path).names)
    except Exception:  # noqa: BLE001 - unreadable as a report: not one
        earlier = False
    if not earlier:
        raise InvalidInputError(f"`report` (--report) {str(path)!r} exists and is not an earlier report; pick another name "
                                "or add --overwrite.")


_Entry = BatchItem | tuple[Job, float, Future]
"""A file of a chunk: its final BatchItem, or its write in flight (job, start time, future)."""


@dataclass(frozen=True)
class _Animated:
    """An animation's upscaled frames: ``frames[i]`` holds frame i's output per t."""

    source: Animation
    frames: list[list[Any]]


def read_input(path: Path) -> Any:
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


class FileSteps:
    """The steps each file of a run goes through, whichever runner drives them (:func:`run_batch` on
    one machine, the Ray actors of :mod:`ctsr_infer.distributed` on many): one implementation of the
    skip-existing and settings check, the decoding, the network call (equal sizes together), the
    atomic write and the file's :class:`BatchItem`.

    Built once per run (the settings record of each t is computed here), then called per file. It
    keeps no per-file state, so one instance serves any number of chunks, in any order.
    """

    def __init__(
        self,
        upscaler: Any,
        *,
        ts: Sequence[float | TMap] | None = None,
        overwrite: bool = False,
        on_progress: ProgressCallback | None = None,
        quality: int | None = None,
        png_level: int | None = None,
        keep_metadata: bool = False,
        read: Callable[[Job], Any] | None = None,
        **options: Any,
    ) -> None:
        """``read``: how a job's input is decoded (default: the file at ``job.source``, an
        :class:`Animation` for an animated one); the Ray runner decodes bytes from other file systems."""
        check_encoding(quality=quality, png_level=png_level)
        self.upscaler = upscaler
        self.overwrite = overwrite
        self.on_progress = on_progress
        self.options = options
        self.encoding: dict[str, Any] = {"quality": quality, "png_level": png_level, "keep_metadata": keep_metadata}
        self._read = read
        self.wanted = len(ts) if ts and len(ts) > 1 else 1
        """Outputs per job: one per t of a t list, else one."""
        self.t_arg: Any = list(ts) if ts is not None and len(ts) > 1 else (ts[0] if ts else None)
        t_values: list[float | TMap | None] = list(ts) if ts and len(ts) > 1 else [ts[0] if ts else None]
        settings = getattr(upscaler, "settings", None)
        self.stamps: list[dict[str, Any] | None] = [settings(t, **options) if settings else None for t in t_values]
        """The settings record of each t (what an existing output must record to be skipped)."""
        self.comments = [None if stamp is None else json.dumps(stamp, sort_keys=True) for stamp in self.stamps]

    def check_jobs(self, jobs: Sequence[Job]) -> None:
        """Refuse jobs planned for another number of t values than this run's."""
        mismatched = [job for job in jobs if len(job.outputs) != self.wanted]
        if mismatched:
            raise InvalidInputError(f"`jobs` were planned for {len(mismatched[0].outputs)} t value(s) but `ts` has {self.wanted}; "
                                    "plan them with the same `ts` (plan_jobs(..., ts=ts)).")

    def triage(self, job: Job) -> BatchItem | tuple[bool, ...]:
        """Which of the job's outputs to write (the others exist, made with the same settings); or
        the job's final item when it does not run: all outputs there with these settings (skipped),
        or one there with other settings (failed, naming --overwrite)."""
        needed: list[bool] = []
        for path, stamp in zip(job.outputs, self.stamps, strict=True):
            if self.overwrite or not path.exists():
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
        return tuple(needed)

    def read(self, job: Job) -> Any:
        """The decoded input of a job: an :class:`ImageData`, or an :class:`Animation`."""
        return self._read(job) if self._read is not None else read_input(job.source)

    def compute(self, group: list[Any]) -> list[list[Any] | _Animated | BaseException]:
        """The outputs of decoded inputs of one size and bit depth (or one animation), or the error of
        each that failed: one network call for the group when it can share one; one call per file
        otherwise or on failure (so only the bad file fails). An animation's frames run one by one."""
        upscaler, t_arg, on_progress, options = self.upscaler, self.t_arg, self.on_progress, self.options
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
            except Exception:
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

    def write(self, results: list[Any] | _Animated, job: Job, needed: Sequence[bool]) -> None:
        """Write the ``needed`` outputs of a job atomically, each with its settings record. Without
        ``overwrite``, an output that appeared meanwhile is an error, never silently kept or replaced."""
        overwrite, encoding = self.overwrite, self.encoding
        if isinstance(results, _Animated):
            still = [path for path in job.outputs if output_format(path) not in ANIMATED_FORMATS]
            if still:
                raise InvalidInputError(f"`{job.source}` is animated, and `{still[0].name}` cannot hold an animation; "
                                        "write it as .png (APNG), .gif or .webp (--format png|gif|webp).")
            for index, (path, comment, wanted) in enumerate(zip(job.outputs, self.comments, needed, strict=True)):
                if wanted:
                    frames = [per_frame[index] for per_frame in results.frames]
                    write_animation(results.source, frames, path, overwrite=overwrite, comment=comment, **encoding)
            return
        for result, path, comment, wanted in zip(results, job.outputs, self.comments, needed, strict=True):
            if wanted:
                write_image(result, path, overwrite=overwrite, comment=comment, **encoding)

    @staticmethod
    def done(job: Job, start: float) -> BatchItem:
        """The item of a job whose outputs are on disk."""
        return BatchItem(job.source, job.outputs, "ok", seconds=time.perf_counter() - start)

    @staticmethod
    def failed(job: Job, exc: BaseException, start: float) -> BatchItem:
        """The item of a job that failed, with the error's type and message."""
        logger.debug("failed on %s", job.source, exc_info=exc)
        return BatchItem(job.source, job.outputs, "failed", f"{type(exc).__name__}: {exc}", time.perf_counter() - start)


def size_groups(loaded: dict[int, Any]) -> list[list[int]]:
    """The keys of decoded inputs grouped by (size, bit depth), in first-seen order; an animation
    alone. Each group can share one network call (:meth:`FileSteps.compute`)."""
    groups: dict[Any, list[int]] = {}
    for index, data in loaded.items():
        key = ("animation", index) if isinstance(data, Animation) else (data.size, data.bit_depth)
        groups.setdefault(key, []).append(index)
    return list(groups.values())


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
    steps = FileSteps(upscaler, ts=ts, overwrite=overwrite, on_progress=on_progress, quality=quality,
                      png_level=png_level, keep_metadata=keep_metadata, **options)
    return run_steps(steps, jobs, on_item=on_item, pipelined=pipelined, batch_size=batch_size)


def run_steps(
    steps: FileSteps,
    jobs: Sequence[Job],
    *,
    on_item: Callable[[BatchItem], None] | None = None,
    pipelined: bool = True,
    batch_size: int = 1,
) -> BatchReport:
    """Drive :class:`FileSteps` over ``jobs`` in chunks of ``batch_size`` (see :func:`run_batch`):
    the loop both runners share (a Ray actor runs it on each batch it is given)."""
    steps.check_jobs(jobs)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidInputError(f"`batch_size` must be an integer >= 1, got {batch_size!r}.")
    on_progress = steps.on_progress
    report = BatchReport()
    chunks = [list(jobs[i : i + batch_size]) for i in range(0, len(jobs), batch_size)]
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
                    item = steps.done(job, start)
                except (KeyboardInterrupt, MemoryError):
                    raise
                except Exception as exc:  # noqa: BLE001 - one bad file must not stop the batch
                    item = steps.failed(job, exc, start)
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

        def read(chunk_index: int) -> list[tuple[Future[Any], tuple[bool, ...]] | BatchItem]:
            if chunk_index >= len(chunks):
                return []
            reads: list[tuple[Future[Any], tuple[bool, ...]] | BatchItem] = []
            for job in chunks[chunk_index]:
                needed = steps.triage(job)
                reads.append(needed if isinstance(needed, BatchItem) else (io_call(steps.read, job), needed))
            return reads

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
                needs: dict[int, tuple[bool, ...]] = {}
                for index, (job, state) in enumerate(zip(chunk, current, strict=True)):
                    if isinstance(state, BatchItem):
                        entries[index] = state
                        continue
                    future, needs[index] = state
                    try:
                        loaded[index] = future.result()
                    except (KeyboardInterrupt, MemoryError):
                        raise
                    except Exception as exc:  # noqa: BLE001 - an unreadable file is reported, the rest go on
                        entries[index] = steps.failed(job, exc, start)
                upcoming = read(chunk_index + 1)
                outputs: dict[int, list[Any] | _Animated | BaseException] = {}
                for members in size_groups(loaded):
                    outputs.update(zip(members, steps.compute([loaded[i] for i in members]), strict=True))
                settle()
                for index, result in sorted(outputs.items()):
                    job = chunk[index]
                    if isinstance(result, BaseException):
                        entries[index] = steps.failed(job, result, start)
                    else:
                        entries[index] = (job, start, io_call(steps.write, result, job, needs[index]))
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
