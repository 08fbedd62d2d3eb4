"""Reading pickled (``torch.save``) checkpoints without running code from them.

Our own restricted unpickler, independent of torch's ``weights_only`` list (what other code adds with
``torch.serialization.add_safe_globals`` widens nothing here):

* ``find_class`` never imports: ``module.name`` must be in :data:`_ALLOWED`, else an
  :class:`UnsafeCheckpointError` names it. The list is what ``torch.save`` writes for CPU tensors:
  ``torch._utils._rebuild_tensor_v2``/``_v3``/``_rebuild_parameter`` (answered by our own builders,
  which check their arguments), storage classes (dtype tokens, not callable), ``OrderedDict``,
  ``torch.Size``, dtypes, and ``_codecs.encode``/``bytes`` (bytes under protocol 2).
* It is the pure-Python ``pickle._Unpickler`` with opcodes replaced; the C one cannot be bounded
  (a 9-byte ``LONG_BINPUT 2**32-1`` makes it allocate a 64 GiB memo; it hashes any key, and hashing a
  deeply nested tuple crashes CPython). Here the memo is a dict, keys must be ``str``/``int``, sets
  and ``INST``/``OBJ``/``NEWOBJ``/``EXT*`` are refused, ``REDUCE`` calls only our builders, ``BUILD``
  only sets plain attributes of an ``OrderedDict`` (a state dict's ``_metadata``), and nesting is
  counted as containers fill, stopping at :data:`MAX_PICKLE_DEPTH`. Stack and memo gain at most one
  entry per opcode, so the file size bounds them.
* The result is walked as a graph (each container once, iteratively, limited in depth and size), so
  shared references ("billion laughs") end quickly.

Formats: the zip container ``torch.save`` writes by default (stored records, ``byteorder`` honoured,
every location mapped to CPU); the legacy stream of ``_use_new_zipfile_serialization=False``, which
is supported (the same pickles, then length-prefixed little-endian storages, checked against the
file size before allocating); a plain pickle of dicts, lists and primitives. Not torch's pre-0.4 tar.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import sys
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, ClassVar, cast

import torch

from .errors import IncompatibleWeightsError, UnsafeCheckpointError, WeightsNotFoundError

__all__ = ["MAX_PICKLE_DEPTH", "MAX_PICKLE_NODES", "read_pickled_checkpoint"]

MAX_PICKLE_DEPTH = 64
"""Deepest container nesting a checkpoint may have (real checkpoints nest a few levels)."""
MAX_PICKLE_NODES = 2_000_000
"""Most container entries the structural check visits (a checkpoint of 10,000 tensors has ~20,000)."""
_LEGACY_MAGIC, _LEGACY_PROTOCOL = 0x1950A86A20F9469CFC6C, 1001
_LEAVES = (torch.Tensor, torch.dtype, str, bytes, int, float, type(None))  # bool is an int
_TOO_DEEP = f"containers nested deeper than {MAX_PICKLE_DEPTH} levels; not a checkpoint."


@dataclass(frozen=True, slots=True)
class _StorageKind:  # what find_class answers for a storage class: a dtype, not callable
    dtype: torch.dtype


@dataclass(frozen=True, slots=True)
class _Storage:  # a storage read from the file: bytes on CPU and the dtype it was saved as
    data: torch.UntypedStorage
    dtype: torch.dtype


@dataclass(frozen=True, slots=True)
class _Builder:  # what find_class answers for an allow-listed callable; REDUCE calls nothing else
    build: Callable[..., Any]
    ok: Callable[..., bool] = lambda *args: True

    def __call__(self, *args: Any) -> Any:
        _expect(self.ok(*args), "an allow-listed call with unexpected arguments")
        return self.build(*args)


def _expect(ok: bool, what: str) -> None:
    if not ok:
        raise UnsafeCheckpointError(f"it holds {what}, which torch.save does not write.")


def _no_hooks(hooks: Any) -> bool:  # torch.save writes an empty OrderedDict of backward hooks
    return hooks is None or (type(hooks) is OrderedDict and not hooks)


def _dims(value: Any) -> bool:
    return type(value) in (tuple, torch.Size) and all(type(v) is int and v >= 0 for v in value)


def _tensor(storage: Any, dtype: Any, offset: Any, size: Any, stride: Any, grad: Any, hooks: Any, meta: Any = None) -> Any:
    _expect(isinstance(storage, _Storage) and isinstance(dtype, torch.dtype) and type(offset) is int and offset >= 0
            and _dims(size) and _dims(stride) and len(size) == len(stride) and type(grad) is bool and _no_hooks(hooks)
            and (not meta or (type(meta) is dict and all(type(v) is bool for v in meta.values()))), "a malformed tensor")
    tensor = torch.empty(0, dtype=dtype).set_(storage.data, offset, size, stride)  # torch checks the bounds
    if meta:  # the conj/neg bits
        torch._utils.set_tensor_metadata(tensor, meta)
    return tensor.requires_grad_(grad)


_STORAGES = {"Double": torch.float64, "Float": torch.float32, "Half": torch.float16, "BFloat16": torch.bfloat16,
             "Long": torch.int64, "Int": torch.int32, "Short": torch.int16, "Char": torch.int8, "Byte": torch.uint8,
             "Bool": torch.bool, "ComplexFloat": torch.complex64, "ComplexDouble": torch.complex128}
_DTYPES = [*_STORAGES.values(), torch.uint16, torch.uint32, torch.uint64, torch.float8_e4m3fn, torch.float8_e5m2]
_ALLOWED: dict[tuple[str, str], object] = {
    ("torch._utils", "_rebuild_tensor_v2"): _Builder(lambda s, *rest: _tensor(s, getattr(s, "dtype", None), *rest)),
    ("torch._utils", "_rebuild_tensor_v3"): _Builder(lambda s, o, z, t, g, h, d, m=None: _tensor(s, d, o, z, t, g, h, m)),
    ("torch._utils", "_rebuild_parameter"): _Builder(
        lambda data, grad, hooks: torch.nn.Parameter(data, grad),
        lambda data, grad, hooks: type(data) is torch.Tensor and type(grad) is bool and _no_hooks(hooks)),
    ("collections", "OrderedDict"): _Builder(OrderedDict, lambda *args: not args),
    ("torch", "Size"): _Builder(torch.Size, _dims),
    ("_codecs", "encode"): _Builder(str.encode, lambda text, codec: type(text) is str and codec == "latin1"),
    ("__builtin__", "bytes"): _Builder(bytes, lambda *args: not args),
    ("builtins", "bytes"): _Builder(bytes, lambda *args: not args),
    ("torch.storage", "UntypedStorage"): _StorageKind(torch.uint8),
    **{("torch", f"{name}Storage"): _StorageKind(dtype) for name, dtype in _STORAGES.items()},
    **{("torch", str(dtype).removeprefix("torch.")): dtype for dtype in _DTYPES},
}


class _RestrictedUnpickler(pickle._Unpickler):  # the pure-Python one: the C one cannot be bounded
    """Builds only what :data:`_ALLOWED` names; storages come from ``storage`` (none in a plain pickle)."""

    dispatch: ClassVar[dict[int, Callable[[Any], None]]] = dict(pickle._Unpickler.dispatch)
    # Set up by pickle._Unpickler.load() (undocumented, so typeshed does not declare them).
    stack: list[Any]
    append: Callable[[Any], None]
    pop_mark: Callable[[], list[Any]]

    def __init__(self, file: IO[bytes], storage: Callable[[Any], _Storage] | None = None) -> None:
        super().__init__(file)
        self._storage = storage
        self._depths: dict[int, tuple[Any, int]] = {}  # id -> (the container, kept alive; its nesting so far)

    def find_class(self, module: str, name: str) -> object:
        found = _ALLOWED.get((module, name))
        if found is None:
            raise UnsafeCheckpointError(f"it asks for `{module}.{name}`, which is not on the allow-list of tensors, "
                                        "containers and primitives (building it could run code).")
        return found

    def persistent_load(self, pid: Any) -> _Storage:
        _expect(self._storage is not None, "a storage reference outside a torch checkpoint")
        return cast(Callable[[Any], _Storage], self._storage)(pid)

    def _fill(self, container: Any, items: list[Any]) -> Any:
        """Note that ``container`` now holds ``items``; refuse nesting deeper than the limit."""
        depth = 1 + max((self._depths[id(item)][1] for item in items if id(item) in self._depths), default=0)
        if depth > self._depths.get(id(container), (None, 0))[1]:
            if depth > MAX_PICKLE_DEPTH:
                raise UnsafeCheckpointError(_TOO_DEEP)
            self._depths[id(container)] = (container, depth)
        return container

    def _items(self, items: list[Any], target: Any = None) -> Any:  # SETITEM(S), DICT
        target = self.stack[-1] if target is None else target
        _expect(isinstance(target, dict), f"items set on a {type(target).__name__}")
        bad = next((key for key in items[0::2] if type(key) not in (str, int, bool)), None)  # never hash anything else
        _expect(bad is None, f"a dictionary key of type {type(bad).__name__}")
        target.update(zip(items[0::2], items[1::2]))
        return self._fill(target, items[1::2])

    def _extend(self, items: list[Any]) -> None:  # APPEND(S)
        _expect(type(self.stack[-1]) is list, f"items appended to a {type(self.stack[-1]).__name__}")
        self._fill(self.stack[-1], items).extend(items)

    def _collect(self, size: int | None, kind: type = tuple) -> None:  # TUPLE*, LIST, DICT
        items = self.pop_mark() if size is None else [self.stack.pop() for _ in range(size)][::-1]
        self.append(self._items(items, {}) if kind is dict else self._fill(kind(items), items))

    def _reduce(self) -> None:
        args, func = self.stack.pop(), self.stack[-1]
        _expect(isinstance(func, _Builder) and type(args) is tuple, f"a call of a {type(func).__name__}")
        self.stack[-1] = func(*args)

    def _build(self) -> None:
        state, inst = self.stack.pop(), self.stack[-1]
        _expect(type(inst) is OrderedDict and type(state) is dict and all(type(k) is str and not hasattr(OrderedDict, k)
                for k in state), f"a BUILD of a {type(inst).__name__}")
        vars(self._fill(inst, [state])).update(state)

    dispatch.update({pickle.REDUCE[0]: _reduce, pickle.BUILD[0]: _build,
                     pickle.SETITEM[0]: lambda self: self._items([self.stack.pop(-2), self.stack.pop()]),
                     pickle.SETITEMS[0]: lambda self: self._items(self.pop_mark()),
                     pickle.DICT[0]: lambda self: self._collect(None, dict),
                     pickle.APPEND[0]: lambda self: self._extend([self.stack.pop()]),
                     pickle.APPENDS[0]: lambda self: self._extend(self.pop_mark()),
                     pickle.LIST[0]: lambda self: self._collect(None, list), pickle.TUPLE[0]: lambda self: self._collect(None),
                     pickle.TUPLE1[0]: lambda self: self._collect(1), pickle.TUPLE2[0]: lambda self: self._collect(2),
                     pickle.TUPLE3[0]: lambda self: self._collect(3)})
    dispatch.update(dict.fromkeys(b"io\x81\x92\x82\x83\x84\x8f\x90\x91",  # INST OBJ NEWOBJ(_EX) EXT1-4 *SET*
                                  lambda self: _expect(False, "a pickle opcode that builds objects or sets")))


def _storage_id(pid: Any, size: int) -> tuple[torch.dtype, str, int]:
    """Check a persistent id ``('storage', kind, key, location, numel[, None])``; any location means CPU."""
    _expect(type(pid) is tuple and len(pid) == size and pid[0] == "storage" and isinstance(pid[1], _StorageKind)
            and type(pid[2]) is str and type(pid[3]) is str and type(pid[4]) is int and pid[4] >= 0
            and pid[5:] in ((), (None,)), "a malformed storage reference")
    return pid[1].dtype, pid[2], pid[4]


def _read_zip(archive: zipfile.ZipFile) -> Any:
    pickles = [name for name in archive.namelist() if name.endswith("/data.pkl") and name.count("/") == 1]
    if len(pickles) != 1:
        raise IncompatibleWeightsError("a zip file without exactly one `<name>/data.pkl` record")
    prefix, loaded = pickles[0].removesuffix("data.pkl"), dict[str, _Storage]()

    def record(name: str) -> bytes:
        info = archive.getinfo(prefix + name)
        if info.compress_type != zipfile.ZIP_STORED:  # so no record is larger than the file
            raise IncompatibleWeightsError(f"record `{name}` is compressed, which torch.save never does")
        return archive.read(info)

    order = record("byteorder").decode() if prefix + "byteorder" in archive.namelist() else "little"
    if order not in ("little", "big"):
        raise IncompatibleWeightsError(f"an unknown byte order {order[:20]!r}")

    def storage(pid: Any) -> _Storage:
        dtype, key, numel = _storage_id(pid, 5)
        if key not in loaded:
            data = record(f"data/{key}")
            if len(data) != numel * dtype.itemsize:
                raise IncompatibleWeightsError(f"storage `{key}` holds {len(data)} bytes, not {numel} x {dtype}")
            untyped = torch.UntypedStorage.from_buffer(data, dtype=torch.uint8) if data else torch.UntypedStorage(0)
            if order != sys.byteorder:
                untyped.byteswap(dtype)
            loaded[key] = _Storage(untyped, dtype)
        return loaded[key]

    return _RestrictedUnpickler(io.BytesIO(record("data.pkl")), storage).load()


def _read_legacy(handle: IO[bytes], budget: int) -> Any:
    """After the magic number: protocol, system info, the object, its storage keys, then the storages."""
    if _RestrictedUnpickler(handle).load() != _LEGACY_PROTOCOL:
        raise IncompatibleWeightsError("a legacy torch.save file of an unknown protocol version")
    _RestrictedUnpickler(handle).load()  # system info; the storages are little-endian whatever it says
    storages: dict[str, _Storage] = {}

    def storage(pid: Any) -> _Storage:
        nonlocal budget
        dtype, key, numel = _storage_id(pid, 6)
        if key not in storages:
            budget -= numel * dtype.itemsize
            if budget < 0:  # checked before allocating: the bytes must all be in the file
                raise IncompatibleWeightsError("its storages are larger than the file")
            storages[key] = _Storage(torch.UntypedStorage(numel * dtype.itemsize), dtype)
        return storages[key]

    result = _RestrictedUnpickler(handle, storage).load()
    keys = _RestrictedUnpickler(handle).load()
    if type(keys) is not list or sorted(keys) != sorted(storages):
        raise IncompatibleWeightsError("its storage list does not match the storages its tensors use")
    for key in keys:
        target, (head, size) = storages[key], (handle.read(8), storages[key].data.nbytes())
        data = handle.read(size)
        if len(head) != 8 or struct.unpack("<q", head)[0] * target.dtype.itemsize != size or len(data) != size:
            raise IncompatibleWeightsError(f"storage `{key}` is truncated or of the wrong size")
        if size:
            target.data.copy_(torch.UntypedStorage.from_buffer(data, dtype=torch.uint8))
            if sys.byteorder != "little":
                target.data.byteswap(target.dtype)
    return result


def _place(where: str, path: Any) -> str:
    """Render a path kept as ``(parent, key)`` links, long keys cut short."""
    labels: list[str] = []
    while path is not None:
        path, key = path
        labels.append(repr(key[:40]) if isinstance(key, str) else str(key) if abs(key) < 10**18 else "...")
    return where + "".join(f"[{label}]" for label in reversed(labels))


def _check_plain(value: Any, where: str) -> None:
    """Refuse anything but tensors, containers and primitives, even among the allow-listed types.

    Walks the object as a graph, iteratively, visiting each container once (a pickle can share one
    list from many places, so a tree walk would take exponential time), with limits on depth and on
    the number of entries: a hostile file ends in a clear error, never a hang or a RecursionError."""
    seen: set[int] = set()
    stack: list[tuple[Any, Any, int]] = [(value, None, 0)]
    visited = 0
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, _LEAVES):
            continue
        if not isinstance(item, (Mapping, list, tuple)):
            raise UnsafeCheckpointError(f"{_place(where, path)}: an object of type {type(item).__name__} is not allowed.")
        if id(item) in seen:
            continue
        seen.add(id(item))
        if depth >= MAX_PICKLE_DEPTH:
            raise UnsafeCheckpointError(f"{_place(where, path)}: {_TOO_DEEP}")
        visited += len(item)
        if visited > MAX_PICKLE_NODES:
            raise UnsafeCheckpointError(f"{where}: more than {MAX_PICKLE_NODES:,} container entries; not a checkpoint.")
        if isinstance(item, Mapping):
            children = list(dict.items(item)) if isinstance(item, dict) else []  # never an `items` set by the file
            children += [("__dict__", vars(item))] if type(item) is OrderedDict and vars(item) else []
            if any(not isinstance(key, (str, int)) for key, _ in children):
                raise UnsafeCheckpointError(f"{_place(where, path)}: a dictionary key is not a string or integer.")
        else:
            children = list(enumerate(cast(list[Any], item)))
        stack.extend((child, (path, key), depth + 1) for key, child in children if not isinstance(child, _LEAVES))


def _read(path: Path) -> Any:
    with path.open("rb") as handle:
        if handle.read(4) == b"PK\x03\x04":
            with zipfile.ZipFile(handle) as archive:
                return _read_zip(archive)
        handle.seek(0)
        first = _RestrictedUnpickler(handle).load()
        legacy = type(first) is int and first == _LEGACY_MAGIC
        return _read_legacy(handle, path.stat().st_size) if legacy else first


def read_pickled_checkpoint(path: str | os.PathLike[str]) -> Any:
    """Read a ``torch.save`` file (zip or legacy) or a plain pickle; tensors come back on CPU.

    Nothing named in the file is imported or called, only the allow-listed builders.

    Raises:
        WeightsNotFoundError: missing file.
        UnsafeCheckpointError: the pickle asks for a global outside the allow-list, uses an opcode
            that builds other objects, holds something other than tensors, dicts, lists, tuples and
            primitives, or is nested too deeply or too large.
        IncompatibleWeightsError: not a torch checkpoint or a pickle at all (truncated, wrong format).
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"checkpoint `{path}` does not exist.")
    try:
        data = _read(path)
    except UnsafeCheckpointError as exc:
        raise UnsafeCheckpointError(f"refused to load `{path}`: {exc} Only load checkpoints you trust.") from None
    except Exception as exc:  # noqa: BLE001 - garbage fails in many ways (EOFError, UnpicklingError, BadZipFile, torch)
        message = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise IncompatibleWeightsError(f"`{path}` is not a readable torch checkpoint ({message}).") from None
    _check_plain(data, f"`{path}`")
    return data
