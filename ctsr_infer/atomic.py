"""One way to write a file: a unique temporary file in the target folder, fsync'd, then renamed.

Every file the library writes (images, downloads, student files, the registry, hash records, caches)
goes through :func:`atomic_write`, so a crash leaves either the old file or the new one, never half a
file, and two processes writing into one folder never share a temporary name.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = ["atomic_write", "publish", "fsync_dir", "temporary_beside", "TMP_MARK"]

TMP_MARK = ".ctsr-tmp"

_UMASK = os.umask(0)
os.umask(_UMASK)  # read once at import (os.umask can only be read by setting it)
"""Temporary files are named ``.<name>.<random>.ctsr-tmp`` (hidden, and ignored by folder runs)."""


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


@contextlib.contextmanager
def temporary_beside(path: Path) -> Iterator[Path]:
    """A fresh, uniquely named empty file in ``path``'s folder, removed on exit if still there."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_MARK)
    try:
        os.fchmod(handle, 0o666 & ~_UMASK)  # mkstemp makes it owner-only; a written file gets the usual mode
    except (AttributeError, OSError):  # no fchmod (Windows)
        pass
    os.close(handle)
    tmp = Path(name)
    try:
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


def publish(tmp: Path, path: Path, *, overwrite: bool = True) -> None:
    """Move a finished file ``tmp`` (in ``path``'s folder) to ``path``: fsync it, rename (or link
    when ``overwrite`` is False), fsync the folder."""
    with tmp.open("rb+") as handle:
        os.fsync(handle.fileno())
    _publish(tmp, path, overwrite=overwrite)
    fsync_dir(path.parent)


def _publish(tmp: Path, path: Path, *, overwrite: bool) -> None:
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # atomic, and fails if `path` exists
    except FileExistsError:
        raise FileExistsError(f"`{path}` exists; it was not replaced (pass overwrite=True to replace it).") from None
    except OSError:  # file systems without hard links
        if path.exists():
            raise FileExistsError(f"`{path}` exists; it was not replaced (pass overwrite=True to replace it).") from None
        os.replace(tmp, path)


def atomic_write(path: str | os.PathLike[str], data: bytes | str | None = None, *,
                 writer: Callable[[Path], object] | None = None, overwrite: bool = True) -> Path:
    """Write ``data`` (bytes or text, UTF-8) or whatever ``writer(tmp_path)`` writes to ``path``, atomically.

    The content goes to a unique temporary file in the same folder, which is fsync'd and then renamed
    over ``path`` (``overwrite=True``) or linked to it only if ``path`` does not exist yet
    (``overwrite=False``: ``FileExistsError`` otherwise, even when another process created it a moment
    ago). The folder is fsync'd after the rename. Returns ``path``.
    """
    if (data is None) == (writer is None):
        raise TypeError("atomic_write takes exactly one of `data` and `writer`.")
    path = Path(path)
    with temporary_beside(path) as tmp:
        if writer is not None:
            writer(tmp)
        elif data is not None:  # always, given the check above
            tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
        publish(tmp, path, overwrite=overwrite)
    return path
