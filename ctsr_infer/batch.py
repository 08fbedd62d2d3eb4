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
from .image import IMAGE_EXTENSIONS, read_image
from .progress import ProgressCallback, emit

__all__ = ["Job", "BatchItem", "BatchReport", "plan_jobs", "check_plan", "run_batch", "t_suffix"]

logger = logging.getLogger(__name__)
Status = Literal["ok", "skipped", "failed"]
OUTPUT_FORMATS = ("png", "jpg", "webp", "tiff", "gif")
_FORMAT_OF = {".png": "png", ".jpg": "jpg", ".jpeg": "jpg", ".webp": "webp", ".tif": "tiff", ".tiff": "tiff", ".bmp": "bmp", ".gif": "gif"}


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


def t_suffix(t: float) -> str:
    return f"_t{t:.2f}"


def _roots(inputs: Sequence[Path]) -> dict[int, Path]:
    """With several inputs, the sub-folder of the output each input folder mirrors into: its own name,
    with ``-2``, ``-3``... for repeated names (``in1/a`` and ``in2/a`` -> ``a`` and ``a-2``)."""
    if len(inputs) < 2:
        return {}
    roots: dict[int, Path] = {}
    taken: set[str] = set()
    for index, entry in enumerate(inputs):
        if not entry.is_dir():
            continue
        name = entry.resolve().name or "root"
        candidate, n = name, 1
        while candidate.casefold() in taken:
            n += 1
            candidate = f"{name}-{n}"
        taken.add(candidate.casefold())
        roots[index] = Path(candidate)
    return roots


def _discover(inputs: Sequence[Path], *, recursive: bool, exclude: Path | None = None) -> list[tuple[Path, Path]]:
    """(source, path relative to the output root) for every input; folders give image files only.
    One folder mirrors into the output itself; several inputs mirror each folder into a sub-folder of
    its name (see :func:`_roots`), so files of two folders never share an output name."""
    found: list[tuple[Path, Path]] = []
    roots = _roots(inputs)
    for index, entry in enumerate(inputs):
        if entry.is_dir():
            pattern = entry.rglob("*") if recursive else entry.glob("*")
            skip = exclude.resolve() if exclude is not None else None
            files = sorted(
                p for p in pattern
                if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                and not any(part.startswith(".") for part in p.relative_to(entry).parts)
                and not (skip is not None and skip != entry.resolve() and skip in p.resolve().parents)  # earlier outputs
            )
            prefix = roots.get(index, Path())
            found.extend((p, prefix / p.relative_to(entry)) for p in files)
        else:
            found.append((entry, Path(entry.name)))  # a missing or bad file fails on its own later
    return found


def _unique_stems(discovered: list[tuple[Path, Path]]) -> list[Path]:
    """One output stem (relative path without extension) per input, unique ignoring case: inputs that
    would share one keep their source extension (``a_jpg``, ``a_png``); any clash left after that
    gets ``-2``, ``-3``... in input order. Deterministic: the same inputs give the same names."""
    stems = [rel.with_suffix("") for _, rel in discovered]

    def key(stem: Path) -> str:
        return stem.as_posix().casefold()

    counts: dict[str, int] = {}
    for stem in stems:
        counts[key(stem)] = counts.get(key(stem), 0) + 1
    stems = [
        stem.with_name(f"{stem.name}_{rel.suffix.lstrip('.').lower() or 'noext'}") if counts[key(stem)] > 1 else stem
        for stem, (_, rel) in zip(stems, discovered, strict=True)
    ]
    seen: set[str] = set()
    unique: list[Path] = []
    for stem in stems:
        candidate, n = stem, 1
        while key(candidate) in seen:
            n += 1
            candidate = stem.with_name(f"{stem.name}-{n}")
        seen.add(key(candidate))
        unique.append(candidate)
    return unique


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return a.samefile(b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def check_plan(jobs: Sequence[Job]) -> None:
    """Refuse a plan in which two outputs share a path (ignoring case) or an output is an input."""
    seen: dict[str, Path] = {}
    for job in jobs:
        for path in job.outputs:
            key = str(path.resolve()).casefold()
            if key in seen:
                raise InvalidInputError(f"outputs of `{seen[key]}` and `{job.source}` would both be written to `{path}`; "
                                        "rename one input or run them separately.")
            seen[key] = job.source
    sources = {str(job.source.resolve()).casefold(): job.source for job in jobs}
    for job in jobs:
        for path in job.outputs:
            source = sources.get(str(path.resolve()).casefold())
            if source is not None and _same_file(source, path):
                raise InvalidInputError(
                    f"`output` would replace the input `{source}` (an input is never overwritten, not even with "
                    "--overwrite); choose another output file or folder, or another --format or --suffix."
                )


def plan_jobs(
    inputs: Sequence[str | Path],
    output: str | Path,
    *,
    ts: Sequence[float] | None = None,
    recursive: bool = False,
    fmt: str | None = None,
    suffix: str = "",
) -> list[Job]:
    """Map inputs to output paths, each output unique and never an input (checked before any work).

    A single input file with ``output`` ending in an image extension writes exactly there; otherwise
    ``output`` is a folder. One input folder mirrors into it (its tree when ``recursive``); with
    several inputs each folder mirrors into a sub-folder of its own name. ``suffix`` is added to every
    output name (Real-ESRGAN's ``--suffix``); several t values add ``_t0.50``. Inputs that would share
    an output name keep their source extension in it (``a_jpg.png``), then get ``-2``...
    ``fmt`` is the folder outputs' format (default png); with one output file it must match that
    file's extension (or be None).
    """
    if fmt is not None and fmt not in OUTPUT_FORMATS:
        raise InvalidInputError(f"`format` must be one of {list(OUTPUT_FORMATS)}, got {fmt!r}.")
    if any(sep in suffix for sep in ("/", "\\")) or suffix in (".", ".."):
        raise InvalidInputError(f"`suffix` must not contain a path separator, got {suffix!r}.")
    paths = [Path(p) for p in inputs]
    if not paths:
        raise InvalidInputError("no input given: name image files or folders.")
    output = Path(output)
    suffixes = [t_suffix(t) for t in ts] if ts and len(ts) > 1 else [""]
    single_file = len(paths) == 1 and not paths[0].is_dir() and output.suffix.lower() in IMAGE_EXTENSIONS
    if output.suffix and output.suffix.lower() not in IMAGE_EXTENSIONS and not output.is_dir():
        raise InvalidInputError(
            f"`output` {str(output)!r} ends in {output.suffix!r}, which is not an image format ({', '.join(OUTPUT_FORMATS)}); "
            "give a file name with one of those extensions, or an existing folder."
        )
    if single_file:
        wanted = _FORMAT_OF.get(output.suffix.lower())
        if fmt is not None and fmt != wanted:
            raise InvalidInputError(
                f"`format` {fmt!r} does not match the output file {str(output)!r}; drop --format or name the file *.{fmt}."
            )
        if output.is_dir():
            raise InvalidInputError(f"`output` {str(output)!r} is a folder; name a file or drop the extension.")
        jobs = [Job(paths[0], tuple(output.with_name(f"{output.stem}{suffix}{s}{output.suffix}") for s in suffixes))]
        check_plan(jobs)
        return jobs
    if output.suffix.lower() in IMAGE_EXTENSIONS:
        raise InvalidInputError(
            f"`output` {str(output)!r} looks like a file, but there are several inputs or a folder; give a folder."
        )
    if output.exists() and not output.is_dir():
        raise InvalidInputError(f"`output` {str(output)!r} is an existing file, but a folder is needed here; give a folder.")
    fmt = fmt or "png"
    discovered = _discover(paths, recursive=recursive, exclude=output)
    jobs = [
        Job(source, tuple(output / stem.parent / f"{stem.name}{suffix}{s}.{fmt}" for s in suffixes))
        for (source, _), stem in zip(discovered, _unique_stems(discovered), strict=True)
    ]
    check_plan(jobs)
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

    t_values: list[float | None] = list(ts) if ts and len(ts) > 1 else [ts[0] if ts else None]
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

        try:
            run_all()
        except KeyboardInterrupt:
            settle()  # the writes already under way finish and are reported; nothing else starts
            raise
        settle()
    emit(on_progress, "file", len(jobs), len(jobs))
    return report
