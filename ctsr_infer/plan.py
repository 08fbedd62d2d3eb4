"""Planning a run: input discovery and output naming, unique by construction, checked before any work.

Inputs are files and folders; each input file gets one output path per t value. One input folder
mirrors into the output folder; several inputs mirror each folder into a sub-folder of its own name;
names that would still clash are made unique deterministically; no output may be an input.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath

from .errors import InvalidInputError
from .image import _FORMATS, IMAGE_EXTENSIONS
from .tmap import TMap

__all__ = ["OUTPUT_FORMATS", "Job", "check_plan", "find_images", "format_of", "is_listed", "jobs_for", "plan_jobs", "t_suffix"]

OUTPUT_FORMATS = ("png", "jpg", "webp", "tiff", "gif")
"""``--format`` values of folder outputs."""
_FORMAT_OF = {extension: name.lower().replace("jpeg", "jpg") for extension, name in _FORMATS.items()}
"""Extension -> ``--format`` value (``.jpeg`` -> ``jpg``, ``.tif`` -> ``tiff``)."""


@dataclass(frozen=True)
class Job:
    source: Path
    outputs: tuple[Path, ...]
    """One output per t value (one when there is no t list)."""


def format_of(path: Path) -> str | None:
    """The ``--format`` value of a file name (``x.jpeg`` -> ``jpg``), None for a non-image extension."""
    return _FORMAT_OF.get(path.suffix.lower())


def t_suffix(t: float | TMap) -> str:
    """The name suffix of one t of several: ``_t0.50``, or ``_tmap`` and the map's digest."""
    return f"_tmap{t.digest[:8]}" if isinstance(t, TMap) else f"_t{t:.2f}"


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


def find_images(folder: Path, *, recursive: bool = False) -> list[Path]:
    """The image files of a folder as a folder run finds them (known extensions, hidden files
    skipped, sorted): the one discovery that ``upscale`` and the training recipes share."""
    return [source for source, _ in _discover([Path(folder)], recursive=recursive)] if Path(folder).is_dir() else []


def is_listed(relative: PurePath) -> bool:
    """Whether a folder run takes a file, given its path relative to the folder: an image extension,
    and no hidden part (``.name``: the library's temporary files are hidden too)."""
    return relative.suffix.lower() in IMAGE_EXTENSIONS and not any(part.startswith(".") for part in relative.parts)


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
                if p.is_file() and is_listed(p.relative_to(entry))
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


def _check_naming(fmt: str | None, suffix: str) -> None:
    if fmt is not None and fmt not in OUTPUT_FORMATS:
        raise InvalidInputError(f"`format` must be one of {list(OUTPUT_FORMATS)}, got {fmt!r}.")
    if any(sep in suffix for sep in ("/", "\\")) or suffix in (".", ".."):
        raise InvalidInputError(f"`suffix` must not contain a path separator, got {suffix!r}.")


def plan_jobs(
    inputs: Sequence[str | Path],
    output: str | Path,
    *,
    ts: Sequence[float | TMap] | None = None,
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
    _check_naming(fmt, suffix)
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
        wanted = format_of(output)
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
    return jobs_for(_discover(paths, recursive=recursive, exclude=output), output, ts=ts, fmt=fmt, suffix=suffix)


def jobs_for(
    listed: Sequence[tuple[Path, Path]],
    output: str | Path,
    *,
    ts: Sequence[float | TMap] | None = None,
    fmt: str | None = None,
    suffix: str = "",
) -> list[Job]:
    """The jobs of listed files, each a (source, path relative to the output folder) pair: the folder
    naming of :func:`plan_jobs` (unique stems, ``suffix``, ``_t0.50`` per t of a list, ``fmt``),
    checked with :func:`check_plan`. Used by :func:`plan_jobs` for local folders and by the Ray
    runner for listings of other file systems and for datasets."""
    _check_naming(fmt, suffix)
    output = Path(output)
    fmt = fmt or "png"
    suffixes = [t_suffix(t) for t in ts] if ts and len(ts) > 1 else [""]
    jobs = [
        Job(source, tuple(output / stem.parent / f"{stem.name}{suffix}{s}.{fmt}" for s in suffixes))
        for (source, _), stem in zip(listed, _unique_stems(list(listed)), strict=True)
    ]
    check_plan(jobs)
    return jobs
