"""Planning a distributed run: the jobs (sources and output names) of a local folder, a URI or
file system pyarrow/fsspec opens, or a Ray Dataset, with the folder runner's naming rules."""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath
from typing import Any

from ..batch import Job
from ..errors import InvalidInputError
from ..plan import is_listed, jobs_for, plan_jobs
from ..tmap import TMap


def _is_uri(value: object) -> bool:
    """A URI (``s3://bucket/x``), also after ``Path`` folded its ``//`` (``s3:/bucket/x``)."""
    return isinstance(value, str) and re.match(r"^[A-Za-z][A-Za-z0-9+.-]+:/", value) is not None and not Path(value).exists()


def _for_workers(source: Path, filesystem: Any) -> str:
    """A source path as workers see it: absolute for local files, as planned on another file system."""
    return str(source) if filesystem is not None else str(source.absolute())


def _pyarrow_filesystem(filesystem: Any) -> Any:
    """A pyarrow FileSystem from a pyarrow or an fsspec file system."""
    import pyarrow.fs as pafs  # type: ignore[import-untyped,import-not-found,unused-ignore]

    if isinstance(filesystem, pafs.FileSystem):
        return filesystem
    if hasattr(filesystem, "open") and hasattr(filesystem, "ls"):  # fsspec
        return pafs.PyFileSystem(pafs.FSSpecHandler(filesystem))
    raise InvalidInputError(f"`filesystem` must be a pyarrow.fs.FileSystem or an fsspec file system, got {type(filesystem).__name__}.")


def _plan_filesystem(source: str, filesystem: Any, output: Path, *, ts: Any, recursive: bool, fmt: str | None,
                     suffix: str) -> tuple[list[Job], Any]:
    """Jobs for a folder or file on another file system (``s3://bucket/folder``, or a path in
    ``filesystem``): listed and named as a local folder run would, read by the actors."""
    import pyarrow.fs as pafs  # type: ignore[import-untyped,import-not-found,unused-ignore]

    if filesystem is None:
        try:
            filesystem, root = pafs.FileSystem.from_uri(source)
        except (ValueError, OSError) as exc:
            raise InvalidInputError(f"`source` {source!r} is not a folder pyarrow can open ({exc}).") from None
    else:
        filesystem, root = _pyarrow_filesystem(filesystem), source
    info = filesystem.get_file_info(root)
    if info.type == pafs.FileType.File:
        listed = [(Path(root), Path(PurePosixPath(root).name))]
    elif info.type == pafs.FileType.Directory:
        found = filesystem.get_file_info(pafs.FileSelector(root, recursive=recursive))
        top = PurePosixPath(root)
        relative = sorted((str(PurePosixPath(i.path).relative_to(top)), i.path) for i in found if i.type == pafs.FileType.File)
        listed = [(Path(path), Path(rel)) for rel, path in relative if is_listed(PurePosixPath(rel))]
    else:
        raise InvalidInputError(f"`source` {source!r} does not exist.")
    return jobs_for(listed, output, ts=ts, fmt=fmt, suffix=suffix), filesystem


def _plan_dataset(dataset: Any, output: Path, *, ts: Any, fmt: str | None, suffix: str) -> list[Job]:
    """Jobs for a Ray Dataset of encoded files: named after its ``path`` column, mirrored from the
    paths' common folder (as a recursive folder run would). Reading the paths runs the dataset once."""
    columns = set(dataset.columns() or [])
    if not {"path", "bytes"} <= columns:
        raise InvalidInputError(
            f"a Dataset `source` needs a `path` and a `bytes` column (the encoded file), got {sorted(columns)}; "
            "make it with ray.data.read_binary_files(paths, include_paths=True)."
        )
    paths = [str(row["path"]) for row in dataset.select_columns(["path"]).iter_rows()]
    if len(set(paths)) != len(paths):
        twice = sorted({p for p in paths if paths.count(p) > 1})
        raise InvalidInputError(f"the Dataset `source` lists `{twice[0]}` more than once; each file once, please.")
    if not paths:
        return []
    top = PurePosixPath(os.path.commonpath([str(PurePosixPath(p).parent) for p in paths]))
    listed = sorted((str(PurePosixPath(p).relative_to(top)), p) for p in paths)
    return jobs_for([(Path(p), Path(rel)) for rel, p in listed], output, ts=ts, fmt=fmt, suffix=suffix)



def _plan(ray: Any, source: Any, output: Path, *, filesystem: Any, ts: list[float | TMap] | None, recursive: bool,
          fmt: str | None, suffix: str) -> tuple[list[Job], Any, Any]:
    """(jobs, the file system the actors read from or None, the Dataset source or None)."""
    if isinstance(source, ray.data.Dataset):
        return _plan_dataset(source, output, ts=ts, fmt=fmt, suffix=suffix), None, source
    if filesystem is not None or _is_uri(source):
        if not isinstance(source, (str, os.PathLike)):
            raise InvalidInputError("with `filesystem` (or a URI) `source` is one folder or file, not a list.")
        jobs, fs = _plan_filesystem(str(source), filesystem, output, ts=ts, recursive=recursive, fmt=fmt, suffix=suffix)
        return jobs, fs, None
    inputs = [Path(source)] if isinstance(source, (str, os.PathLike)) else [Path(p) for p in source]
    return plan_jobs(inputs, output, ts=ts, recursive=recursive, fmt=fmt, suffix=suffix), None, None
