"""The project's own restricted unpickler: reads what torch.save writes exactly as torch.load does,
refuses everything else without importing or calling it, and ends hostile structures in a clear error."""

from __future__ import annotations

import io
import os
import pickle
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

from ctsr_infer.errors import IncompatibleWeightsError, UnsafeCheckpointError
from ctsr_infer.safe_pickle import MAX_PICKLE_DEPTH, read_pickled_checkpoint


def _state_dict() -> OrderedDict[str, Any]:
    torch.manual_seed(0)
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    state: OrderedDict[str, Any] = OrderedDict(
        fp32=base,
        view=base.t()[1:5, 1::2],  # shares base's storage: offset 7, stride (1, 12), not contiguous
        fp16=torch.randn(3, 2).half(),
        bf16=torch.randn(5).bfloat16(),
        int64=torch.arange(-3, 4),
        uint16=torch.tensor([0, 1, 65535], dtype=torch.uint16),  # written with _rebuild_tensor_v3 and an untyped storage
        flags=torch.tensor([True, False]),
        param=torch.nn.Parameter(torch.randn(2, 3)),
        nested={"inner": {"t": torch.ones(2, 2), "list": [torch.zeros(1), 3, "s"], "tuple": (1.5, None)}},
    )
    state._metadata = {"": {"version": 1}, "conv": {"version": 2}}  # type: ignore[attr-defined]
    return state


def _assert_same(ours: Any, theirs: Any, where: str = "") -> None:
    assert type(ours) is type(theirs), where
    if isinstance(theirs, torch.Tensor):
        assert torch.equal(ours, theirs), where
        assert (ours.dtype, ours.shape, ours.stride(), ours.storage_offset(), ours.requires_grad) == (
            theirs.dtype, theirs.shape, theirs.stride(), theirs.storage_offset(), theirs.requires_grad), where
    elif isinstance(theirs, dict):
        assert list(ours) == list(theirs), where
        for key in theirs:
            _assert_same(ours[key], theirs[key], f"{where}[{key!r}]")
    elif isinstance(theirs, (list, tuple)):
        assert len(ours) == len(theirs), where
        for index, (mine, other) in enumerate(zip(ours, theirs)):
            _assert_same(mine, other, f"{where}[{index}]")
    else:
        assert ours == theirs, where


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_state_dict_loads_as_torch_load_does(tmp_path: Path, zip_format: bool) -> None:
    path, state = tmp_path / "state.pth", _state_dict()
    torch.save(state, path, _use_new_zipfile_serialization=zip_format)
    ours = read_pickled_checkpoint(path)
    _assert_same(ours, state)
    if not zip_format:  # torch's own legacy reader fails on an untyped storage (uint16): compare without it
        state.pop("uint16")
        torch.save(state, path, _use_new_zipfile_serialization=False)
        ours = read_pickled_checkpoint(path)
    theirs = torch.load(path, map_location="cpu", weights_only=True)
    _assert_same(ours, theirs)
    assert ours["view"].stride() == (1, 12) and ours["view"].storage_offset() == 7
    assert ours["view"].untyped_storage().data_ptr() == ours["fp32"].untyped_storage().data_ptr()  # still shared
    assert type(ours["param"]) is torch.nn.Parameter and ours["param"].requires_grad
    assert ours._metadata == theirs._metadata == {"": {"version": 1}, "conv": {"version": 2}}


def _swap_records(source: Path, target: Path, order: bytes, compress: int = zipfile.ZIP_STORED) -> None:
    """Rewrite a torch.save zip with another byte order (storages swapped to match) or compression."""
    sizes = {"0": 4, "1": 2, "2": 8, "3": 2}  # the element size of each storage, in the order they were saved
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w", compress) as new:
        for info in old.infolist():
            data = old.read(info)
            key = info.filename.rpartition("/data/")[2]
            if info.filename.endswith("/byteorder"):
                data = order
            elif "/data/" in info.filename and order == b"big":
                data = torch.frombuffer(bytearray(data), dtype=torch.uint8).view(-1, sizes[key]).flip(1).numpy().tobytes()
            new.writestr(info.filename, data)


def test_big_endian_zip_is_swapped_to_native_order(tmp_path: Path) -> None:
    tensors = {"f": torch.tensor([1.5, -2.25, 3e8]), "h": torch.tensor([0.5, -7.0]).half(),
               "l": torch.tensor([1, -2, 2**40]), "b": torch.tensor([3.0, 1e-3]).bfloat16()}
    torch.save(tensors, tmp_path / "little.pth")
    _swap_records(tmp_path / "little.pth", tmp_path / "big.pth", b"big")
    ours = read_pickled_checkpoint(tmp_path / "big.pth")
    _assert_same(ours, tensors)
    _assert_same(ours, torch.load(tmp_path / "big.pth", weights_only=True))


def test_plain_pickles_of_containers_read(tmp_path: Path) -> None:
    data = {"a": [1, 2.5, None, True, "s", b"by", b"", (1, (2, 3)), list(range(2500))], 7: {"od": OrderedDict(x=1)}}
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        path = tmp_path / f"plain{protocol}.pkl"
        path.write_bytes(pickle.dumps(data, protocol=protocol))
        assert read_pickled_checkpoint(path) == data
    bomb = tmp_path / "memo.pkl"  # memo index 2**32 - 1: the C unpickler would allocate a 64 GiB memo table
    bomb.write_bytes(b"\x80\x02Nr\xff\xff\xff\xff.")
    assert read_pickled_checkpoint(bomb) is None


class _System:
    command = "true"

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (self.command,))


class _WritesFile:
    marker = "marker"

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("how", ["torch.save", "pickle"])
def test_code_in_a_pickle_is_refused_and_never_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    marker = tmp_path / "pwned"
    monkeypatch.setattr(_System, "command", f"touch {marker}")
    monkeypatch.setattr(_WritesFile, "marker", str(marker))
    for payload, name in ((_System(), f"{os.system.__module__}.system"), (_WritesFile(), f"{open.__module__}.open")):
        path = tmp_path / "evil.pth"
        if how == "torch.save":
            torch.save({"w": torch.ones(2), "payload": payload}, path)
        else:  # no tensor: pickle.dumps writes tensors through torch.storage._load_from_bytes, refused first
            path.write_bytes(pickle.dumps({"w": [1.0], "payload": payload}, protocol=4))
        with pytest.raises(UnsafeCheckpointError, match=rf"refused to load .*`{name}`, which is not on the allow-list"):
            read_pickled_checkpoint(path)
        assert not marker.exists()


def test_a_refused_global_is_never_imported(tmp_path: Path) -> None:
    assert "this" not in sys.modules  # importing `this` prints the Zen of Python: a visible side effect
    path = tmp_path / "import.pkl"
    path.write_bytes(b"\x80\x02cthis\ns\n.")
    with pytest.raises(UnsafeCheckpointError, match="`this.s`"):
        read_pickled_checkpoint(path)
    assert "this" not in sys.modules


class _Recorded:
    calls: ClassVar[list[tuple[Any, ...]]] = []

    def __init__(self, *args: Any) -> None:
        _Recorded.calls.append(args)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_Recorded, ("built",))


def test_torch_safe_globals_do_not_widen_our_allow_list(tmp_path: Path) -> None:
    path = tmp_path / "custom.pth"
    torch.save({"w": torch.ones(1), "custom": _Recorded()}, path)
    _Recorded.calls.clear()
    saved = torch.serialization.get_safe_globals()
    torch.serialization.add_safe_globals([_Recorded])
    try:
        with pytest.raises(UnsafeCheckpointError, match=rf"`{_Recorded.__module__}._Recorded`"):
            read_pickled_checkpoint(path)
        assert _Recorded.calls == []  # never called
        assert isinstance(torch.load(path, weights_only=True)["custom"], _Recorded)  # while torch now builds it
    finally:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(saved)


@pytest.mark.parametrize(("body", "words"), [
    (b"ctorch\nFloatStorage\n\x8a\x06\x00\x00\x00\x00\x00\x01\x85R", "a call of a _StorageKind"),  # 2**40 floats
    (b"ccollections\nOrderedDict\n]\x85R", "unexpected arguments"),  # OrderedDict(iterable)
    (b"ctorch._utils\n_rebuild_parameter\n}X\x0c\x00\x00\x00__defaults__Nsb", "a BUILD of a _Builder"),
    (b"ccollections\nOrderedDict\n)R}X\x05\x00\x00\x00itemsK\x01sb", "a BUILD of a OrderedDict"),  # shadow .items
    (b"}K\x01K\x02\x86K\x03s", "a dictionary key of type tuple"),  # never hashed
    (b"ctorch\nSize\n]\x85R", "unexpected arguments"),
    (b"\x8f", "builds objects or sets"),  # EMPTY_SET
])
def test_allow_listed_names_cannot_be_misused(tmp_path: Path, body: bytes, words: str) -> None:
    path = tmp_path / "misuse.pkl"
    path.write_bytes(b"\x80\x02" + body + b".")
    with pytest.raises(UnsafeCheckpointError, match=words):
        read_pickled_checkpoint(path)


def _shared_lists(levels: int) -> bytes:
    """Each level is a list holding the previous level twice: 2**levels paths, 9 bytes a level."""
    out = [b"\x80\x02]q\x00\x30"]
    for level in range(1, levels + 1):
        get = b"h" + bytes([level - 1])
        out.append(b"(" + get + get + b"lq" + bytes([level]) + b"\x30")
    return b"".join(out) + b"h" + bytes([levels]) + b"."


def test_billion_laughs_of_shared_lists(tmp_path: Path) -> None:
    path = tmp_path / "laughs.pkl"
    path.write_bytes(_shared_lists(MAX_PICKLE_DEPTH - 4))  # within the depth limit: read, each list once
    data = read_pickled_checkpoint(path)
    assert data[0] is data[1]
    path.write_bytes(_shared_lists(220))
    assert path.stat().st_size < 2048
    with pytest.raises(UnsafeCheckpointError, match=f"nested deeper than {MAX_PICKLE_DEPTH} levels"):
        read_pickled_checkpoint(path)


@pytest.mark.parametrize("layout", ["stacked lists", "memoised lists", "tuples as a key", "dicts"])
def test_deeply_nested_pickles_end_in_a_clear_error(tmp_path: Path, layout: str) -> None:
    levels = 100_000
    if layout == "stacked lists":  # every list on the stack, then each appended to the one below
        body = b"]" * levels + b"a" * (levels - 1)
    elif layout == "memoised lists":  # constant stack: each list holds the previous one, fetched from the memo
        body = b"]r\x00\x00\x00\x00\x30" + b"".join(
            b"]j" + (i - 1).to_bytes(4, "little") + b"ar" + i.to_bytes(4, "little") + b"\x30" for i in range(1, levels))
        body += b"j" + (levels - 1).to_bytes(4, "little")
    elif layout == "tuples as a key":  # hashing this key could overflow the C stack
        body = b"})" + b"\x85" * levels + b"Ns"
    else:
        body = b"}" + b"X\x01\x00\x00\x00k}" * levels + b"s" * levels
    path = tmp_path / "deep.pkl"
    path.write_bytes(b"\x80\x02" + body + b".")
    with pytest.raises(UnsafeCheckpointError, match=f"nested deeper than {MAX_PICKLE_DEPTH} levels"):
        read_pickled_checkpoint(path)


def test_malformed_torch_files_are_unreadable(tmp_path: Path) -> None:
    tensors = {"f": torch.ones(3), "h": torch.ones(2).half(), "l": torch.ones(1, dtype=torch.int64),
               "b": torch.ones(1).bfloat16()}
    torch.save(tensors, tmp_path / "ok.pth")
    _swap_records(tmp_path / "ok.pth", tmp_path / "deflated.pth", b"little", zipfile.ZIP_DEFLATED)
    with pytest.raises(IncompatibleWeightsError, match="compressed"):
        read_pickled_checkpoint(tmp_path / "deflated.pth")
    with zipfile.ZipFile(tmp_path / "ok.pth") as old, zipfile.ZipFile(tmp_path / "short.pth", "w") as new:
        for info in old.infolist():
            new.writestr(info.filename, old.read(info)[:-2] if info.filename.endswith("/data/0") else old.read(info))
    with pytest.raises(IncompatibleWeightsError, match="storage `0` holds 10 bytes"):
        read_pickled_checkpoint(tmp_path / "short.pth")
    legacy = io.BytesIO()
    torch.save(tensors, legacy, _use_new_zipfile_serialization=False)
    (tmp_path / "legacy.pth").write_bytes(legacy.getvalue()[:-3])
    with pytest.raises(IncompatibleWeightsError, match="truncated"):
        read_pickled_checkpoint(tmp_path / "legacy.pth")
