"""Reading pickled (``torch.save``) checkpoints without running code from them.

torch's ``weights_only`` unpickler builds only tensors, containers and primitives; the structural
check then walks the result as a graph (each container once, iteratively, with limits on depth and
size), so a hostile file ends in a clear error, never a hang or a ``RecursionError``.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import torch

from .errors import IncompatibleWeightsError, UnsafeCheckpointError, WeightsNotFoundError

__all__ = ["read_pickled_checkpoint", "MAX_PICKLE_DEPTH", "MAX_PICKLE_NODES"]


MAX_PICKLE_DEPTH = 64
"""Deepest container nesting a checkpoint may have (real checkpoints nest a few levels)."""
MAX_PICKLE_NODES = 2_000_000
"""Most container entries the structural check visits (a checkpoint of 10,000 tensors has ~20,000)."""


def _check_plain(value: Any, where: str) -> None:
    """Refuse anything but tensors, containers and primitives, even among the allow-listed types.

    Walks the object as a graph, iteratively, visiting each container once (a pickle can share one
    list from many places, so a tree walk would take exponential time), with limits on depth and on
    the number of entries: a hostile file ends in a clear error, never a hang or a RecursionError."""
    seen: set[int] = set()
    stack: list[tuple[Any, str, int]] = [(value, where, 0)]
    visited = 0
    while stack:
        item, place, depth = stack.pop()
        if isinstance(item, torch.Tensor) or item is None or isinstance(item, (bool, int, float, str, bytes)):
            continue
        if not isinstance(item, (Mapping, list, tuple)):
            raise UnsafeCheckpointError(f"{place}: an object of type {type(item).__name__} is not allowed in a checkpoint.")
        if id(item) in seen:
            continue
        seen.add(id(item))
        if depth >= MAX_PICKLE_DEPTH:
            raise UnsafeCheckpointError(f"{place}: containers nested deeper than {MAX_PICKLE_DEPTH} levels; not a checkpoint.")
        visited += len(item)
        if visited > MAX_PICKLE_NODES:
            raise UnsafeCheckpointError(f"{where}: more than {MAX_PICKLE_NODES:,} container entries; not a checkpoint.")
        if isinstance(item, Mapping):
            for key, child in cast(Mapping[Any, Any], item).items():
                if not isinstance(key, (str, int)):
                    raise UnsafeCheckpointError(f"{place}: dictionary key {key!r} is not a string or integer.")
                stack.append((child, f"{place}[{key!r}]", depth + 1))
        else:
            stack.extend((child, f"{place}[{index}]", depth + 1) for index, child in enumerate(cast(list[Any], item)))


def read_pickled_checkpoint(path: str | os.PathLike[str]) -> Any:
    """Read a ``torch.save`` file with the allow-listed unpickler (never runs code from the file).

    Raises:
        WeightsNotFoundError: missing file.
        UnsafeCheckpointError: the pickle asks for a global outside the allow-list, or holds
            objects other than tensors, dicts, lists, tuples and primitives.
        IncompatibleWeightsError: not a torch checkpoint at all (truncated, wrong format).
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"checkpoint `{path}` does not exist.")
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = next((line.strip() for line in str(exc).splitlines() if "Unsupported" in line or "GLOBAL" in line
                       or "load key" in line), str(exc).splitlines()[0] if str(exc) else "")
        with path.open("rb") as handle:
            head = handle.read(2)
        unsafe = any(word in str(exc) for word in ("GLOBAL", "global", "REDUCE", "BUILD", "NEWOBJ", "Unsupported operand"))
        if not (head[:1] == b"\x80" or head == b"PK") or not unsafe:  # not a pickle, or broken rather than hostile
            raise IncompatibleWeightsError(f"`{path}` is not a readable torch checkpoint (not a pickle: {detail}).") from None
        raise UnsafeCheckpointError(
            f"refused to load `{path}`: it asks for something other than tensors, containers and "
            f"primitives, which could run code. Only load checkpoints you trust; details: {detail}"
        ) from None
    except RecursionError:
        raise UnsafeCheckpointError(f"refused to load `{path}`: its objects are nested too deeply to be a checkpoint.") from None
    except Exception as exc:  # noqa: BLE001 - torch.load fails on garbage in many ways (EOFError, AssertionError, ...)
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise IncompatibleWeightsError(f"`{path}` is not a readable torch checkpoint ({message}).") from None
    _check_plain(data, f"`{path}`")
    return data
