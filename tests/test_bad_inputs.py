"""A corpus of bad inputs: images, pickles, student files, manifests, CLI arguments and concurrent
runs. Each gives a clear error (exit code, a message naming the argument or file) or a correct
output; never a traceback; the inputs are never modified."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from typer.testing import CliRunner

import ctsr_infer
from ctsr_infer.student_file import load_student
from ctsr_infer.safe_pickle import read_pickled_checkpoint
from ctsr_infer.cli import app

runner = CliRunner()


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


class _Result:
    """A CliRunner result whose ``output`` is one line (the console wraps long messages)."""

    def __init__(self, result) -> None:
        self.exit_code = result.exit_code
        self.output = " ".join(result.output.split())


def _invoke(*args: str, input: bytes | None = None) -> _Result:
    result = runner.invoke(app, list(args), input=input)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    return _Result(result)


def _rgb(size=(12, 10), seed=0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (a decompression bomb's shape) with no real data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def _truncated(fmt: str) -> bytes:
    import io

    buffer = io.BytesIO()
    _rgb((64, 64)).save(buffer, format=fmt)
    return buffer.getvalue()[: len(buffer.getvalue()) // 2]


# --------------------------------------------------------------------------------------------
# images: (file name, how to write it, expected status, words the message must contain)

def _write_bytes(data: bytes):
    return lambda path: path.write_bytes(data)


def _save(image_factory, **kwargs):
    return lambda path: image_factory().save(path, **kwargs)


IMAGES = [
    ("empty.png", _write_bytes(b""), "failed", "0 bytes"),
    ("text.png", _write_bytes(b"hello, not an image"), "failed", "cannot read"),
    ("truncated.png", _write_bytes(_truncated("PNG")), "failed", "truncated"),
    ("truncated.jpg", _write_bytes(_truncated("JPEG")), "failed", "truncated"),
    ("random.webp", _write_bytes(b"RIFF" + np.random.default_rng(1).bytes(300)), "failed", "cannot read"),
    ("bomb.png", _write_bytes(_png_header(40000, 40000)), "failed", "decompression-bomb"),
    ("png_named.jpg", _save(_rgb, format="PNG"), "ok", ""),
    ("tiny.png", _save(lambda: _rgb((1, 1))), "ok", ""),
    ("gray16.png", lambda p: Image.fromarray((np.arange(120, dtype=np.uint16).reshape(10, 12) * 500)).save(p), "ok", ""),
    ("cmyk.jpg", _save(lambda: _rgb().convert("CMYK")), "ok", ""),
    ("palette.png", _save(lambda: _rgb().convert("P"), transparency=0), "ok", ""),
    ("la.png", _save(lambda: _rgb().convert("LA")), "ok", ""),
    ("bilevel.png", _save(lambda: _rgb().convert("1")), "ok", ""),
    ("bitmap.bmp", _save(_rgb), "ok", ""),
    ("still.gif", _save(_rgb), "ok", ""),
    ("float.tif", lambda p: Image.fromarray(np.full((10, 12), 3.0, np.float32), "F").save(p), "failed", "[0, 1]"),
    ("rgba.webp", _save(lambda: _rgb().convert("RGBA")), "ok", ""),
]


@pytest.mark.parametrize(("name", "write", "status", "words"), IMAGES, ids=[c[0] for c in IMAGES])
def test_bad_and_odd_images(tmp_path: Path, name: str, write, status: str, words: str) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    write(folder / name)
    before = _digest(folder)
    result = _invoke("upscale", str(folder), "-o", str(tmp_path / "out"), "--scale", "2")
    assert result.exit_code == (0 if status == "ok" else 1), result.output
    assert status in result.output and words in result.output
    assert _digest(folder) == before


def test_a_missing_input_and_a_dangling_link(tmp_path: Path) -> None:
    (tmp_path / "link.png").symlink_to(tmp_path / "nowhere.png")
    for source in (tmp_path / "missing.png", tmp_path / "link.png"):
        result = _invoke("upscale", str(source), "-o", str(tmp_path / "o.png"))
        assert result.exit_code == 1 and "does not exist" in result.output


# --------------------------------------------------------------------------------------------
# pickles

def _pickle_cases(tmp_path: Path) -> list[tuple[Path, type, str]]:
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    cases = []
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": Evil()}, evil)
    cases.append((evil, ctsr_infer.UnsafeCheckpointError, "refused"))
    rng = np.random.default_rng(0)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00" + rng.bytes(511))
    cases.append((garbage, ctsr_infer.IncompatibleWeightsError, "not a readable torch checkpoint"))
    for seed in range(20):  # garbage behind a pickle's PROTO opcode: refused or unreadable, never a traceback
        noisy = tmp_path / f"noisy{seed}.pth"
        noisy.write_bytes(b"\x80\x02" + np.random.default_rng(seed).bytes(300))
        cases.append((noisy, ctsr_infer.CtsrError, ""))
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    cases.append((empty, ctsr_infer.IncompatibleWeightsError, "not a readable"))
    half = tmp_path / "half.pth"
    torch.save({"w": torch.zeros(100)}, half)
    half.write_bytes(half.read_bytes()[:200])
    cases.append((half, ctsr_infer.IncompatibleWeightsError, "not a readable"))
    module = tmp_path / "module.pth"
    torch.save(torch.nn.Linear(2, 2), module)
    cases.append((module, ctsr_infer.UnsafeCheckpointError, "refused"))
    cases.append((tmp_path / "absent.pth", ctsr_infer.WeightsNotFoundError, "does not exist"))
    return cases


def test_pickles_are_refused_without_running_code(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    cases = _pickle_cases(tmp_path)
    assert len(cases) == 26
    for path, error, words in cases:
        before = path.read_bytes() if path.exists() else None
        with pytest.raises(error, match=words):
            read_pickled_checkpoint(path)
        assert (path.read_bytes() if path.exists() else None) == before
    assert "pwned" not in capfd.readouterr().out


# --------------------------------------------------------------------------------------------
# student files

def _lite_tensors() -> dict[str, torch.Tensor]:
    from ctsr_infer.families.lite import LiteNet

    return {f"net.{k}": v.half() for k, v in LiteNet(channels=8, blocks=1).state_dict().items()}


def _meta(**changes) -> str:
    meta = {"family": "lite", "knob": {"kind": "native", "default_t": 0.5}, "scale": 4.0, "color_fix": "none",
            "config": {"channels": 8, "blocks": 1, "scale": 4, "embed": 16}}
    meta.update(changes)
    return json.dumps(meta)


STUDENTS = [
    ("random bytes", lambda p: p.write_bytes(np.random.default_rng(2).bytes(256)), "safetensors"),
    ("no ctsr.meta", lambda p: save_file(_lite_tensors(), str(p)), "ctsr.meta"),
    ("meta not JSON", lambda p: save_file(_lite_tensors(), str(p), metadata={"ctsr.meta": "{oops"}), "not JSON"),
    ("unknown family", lambda p: save_file(_lite_tensors(), str(p), metadata={"ctsr.meta": _meta(family="banana")}), "'banana' student"),
    ("default_t 7", lambda p: save_file(_lite_tensors(), str(p), metadata={"ctsr.meta": _meta(knob={"kind": "native", "default_t": 7})}), "default_t"),
    ("wrong shapes", lambda p: save_file(_lite_tensors(), str(p), metadata={"ctsr.meta": _meta(config={"channels": 16, "blocks": 1, "scale": 4, "embed": 16})}), "channels"),
    ("missing tensors", lambda p: save_file({k: v for k, v in list(_lite_tensors().items())[:3]}, str(p), metadata={"ctsr.meta": _meta()}), "no tensor"),
    ("integer tensor", lambda p: save_file({**_lite_tensors(), "net.extra": torch.zeros(2, dtype=torch.int64)}, str(p), metadata={"ctsr.meta": _meta()}), "dtype"),
    ("truncated", lambda p: (save_file(_lite_tensors(), str(p), metadata={"ctsr.meta": _meta()}), p.write_bytes(p.read_bytes()[:-100])), "safetensors"),
]


@pytest.mark.parametrize(("label", "write", "words"), STUDENTS, ids=[c[0] for c in STUDENTS])
def test_bad_student_files(tmp_path: Path, label: str, write, words: str) -> None:
    path = tmp_path / "student.safetensors"
    write(path)
    before = path.read_bytes()
    with pytest.raises(ctsr_infer.CtsrError) as info:
        ctsr_infer.load(path, device="cpu")
    assert words.lower() in str(info.value).lower(), str(info.value)
    result = _invoke("upscale", str(tmp_path / "nowhere.png"), "-o", str(tmp_path / "o.png"), "--model", str(path))
    assert result.exit_code in (2, 3) and "error" in result.output
    assert path.read_bytes() == before


def test_a_student_with_non_finite_weights_fails_clearly(tmp_path: Path) -> None:
    tensors = _lite_tensors()
    tensors["net.tail.bias"] = torch.full_like(tensors["net.tail.bias"], float("nan"))
    path = tmp_path / "nan.safetensors"
    save_file(tensors, str(path), metadata={"ctsr.meta": _meta()})
    up = ctsr_infer.load(path, device="cpu")
    with pytest.raises(ctsr_infer.NumericalError, match="NaN"):
        up.upscale(np.zeros((8, 8, 3), np.uint8))
    assert load_student(path).meta.family == "lite"


def test_model_paths_that_are_not_files(tmp_path: Path) -> None:
    (tmp_path / "in.png").write_bytes(b"")
    _rgb().save(tmp_path / "in.png")
    folder_model = tmp_path / "model.safetensors"
    folder_model.mkdir()
    for model, code, words in ((str(folder_model), 3, "model.safetensors"), (str(tmp_path / "absent.safetensors"), 3, "absent"),
                               ("osedif", 2, "osediff")):
        result = _invoke("upscale", str(tmp_path / "in.png"), "-o", str(tmp_path / "o.png"), "--model", model)
        assert result.exit_code in (code, 2) and words in result.output, result.output


# --------------------------------------------------------------------------------------------
# manifests: the user's registry of imported models

MANIFESTS = [
    ("not JSON", "{", "user_models.json"),
    ("a list", "[]", "object"),
    ("bad sha256", json.dumps({"m": {"family": "lite", "file": {"filename": "m.safetensors", "format": "ctsr-student", "sha256": "xyz",
                                                               "sources": [{"url": "file:///nowhere"}]}}}), "sha256"),
    ("unknown format", json.dumps({"m": {"family": "lite", "file": {"filename": "m.bin", "format": "banana",
                                                                   "sources": [{"url": "file:///nowhere"}]}}}), "format"),
    ("no file", json.dumps({"m": {"family": "lite"}}), "file"),
    ("unknown family", json.dumps({"m": {"family": "zzz", "file": {"filename": "m.safetensors", "format": "ctsr-student",
                                                                  "sources": [{"url": "file:///nowhere"}]}}}), "family"),
]


@pytest.mark.parametrize(("label", "text", "words"), MANIFESTS, ids=[c[0] for c in MANIFESTS])
def test_bad_user_registries(label: str, text: str, words: str) -> None:
    from ctsr_infer.manifest import load_manifest, user_registry_path

    path = user_registry_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    with pytest.raises(ctsr_infer.CtsrError) as info:
        load_manifest()
    assert words.lower() in str(info.value).lower(), str(info.value)
    result = _invoke("models", "list")
    assert result.exit_code in (2, 3) and "error" in result.output
    assert path.read_text() == text


# --------------------------------------------------------------------------------------------
# CLI arguments: every one a usage error (exit 2) before any work, naming the flag

ARGUMENTS = [
    (("--t", "1.5"), "t"),
    (("--t", "abc"), "t"),
    (("--t", ","), "t"),
    (("--scale", "0.5"), "scale"),
    (("--scale", "nan"), "scale"),
    (("--batch-size", "0"), "batch-size"),
    (("--threads", "0"), "threads"),
    (("--format", "bmpx"), "format"),
    (("--quality", "0"), "quality"),
    (("--png-level", "-1"), "png-level"),
    (("--max-pixels", "0"), "max_pixels"),
    (("--memory-budget", "-1"), "memory_budget"),
    (("--vae-tile", "64"), "vae-tile"),
    (("--color-fix", "banana"), "color_fix"),
    (("--dtype", "fp8"), "dtype"),
    (("--device", "banana"), "device"),
    (("--suffix", "a/b"), "suffix"),
    (("--encode", "sample"), "encode"),
    (("--tile", "-3"), "tile"),
]


@pytest.mark.parametrize(("args", "flag"), ARGUMENTS, ids=[" ".join(a) for a, _ in ARGUMENTS])
def test_bad_arguments_are_usage_errors(tmp_path: Path, args: tuple[str, ...], flag: str) -> None:
    (tmp_path / "in").mkdir()
    _rgb().save(tmp_path / "in" / "a.png")
    before = _digest(tmp_path / "in")
    result = _invoke("upscale", str(tmp_path / "in"), "-o", str(tmp_path / "out"), *args)
    assert result.exit_code == 2, result.output
    assert flag in result.output, result.output
    assert not (tmp_path / "out").exists()
    assert _digest(tmp_path / "in") == before


def test_output_paths_that_cannot_work(tmp_path: Path) -> None:
    _rgb().save(tmp_path / "a.png")
    (tmp_path / "file.txt").write_text("x")
    for output, words in ((tmp_path / "a.png", "looks like a file"), (tmp_path / "out.xyz", "not an image format"),
                          (tmp_path / "file.txt", "not an image format"), (tmp_path, "replace the input")):
        result = _invoke("upscale", str(tmp_path), "-o", str(output))
        assert result.exit_code == 2 and words in result.output, result.output
    assert _invoke("upscale", str(tmp_path / "a.png"), "-o", str(tmp_path / "a.png"), "--overwrite").exit_code == 2
    assert _invoke("sweep", str(tmp_path), "-o", str(tmp_path / "s.png")).exit_code == 2
    assert _invoke("sweep", str(tmp_path / "a.png"), "-o", str(tmp_path / "s.png"), "--t", "2").exit_code == 2
    assert (tmp_path / "file.txt").read_text() == "x"


# --------------------------------------------------------------------------------------------
# concurrent runs

def test_two_processes_on_one_folder_never_corrupt_an_output(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for index in range(6):
        _rgb((24, 20), seed=index).save(folder / f"{index}.png")
    env = {**os.environ, "CTSR_OFFLINE": "1"}
    command = [sys.executable, "-m", "ctsr_infer.cli", "upscale", str(folder), "-o", str(tmp_path / "out")]
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env) for _ in range(2)]
    outputs = [run.communicate(timeout=240) for run in runs]
    for run, (stdout, stderr) in zip(runs, outputs, strict=True):
        assert run.returncode in (0, 1), stderr.decode()
        assert b"Traceback" not in stdout + stderr
    written = sorted((tmp_path / "out").iterdir())
    assert [p.name for p in written] == [f"{i}.png" for i in range(6)]  # no temporary file left behind
    for path in written:
        with Image.open(path) as image:
            image.load()
            assert image.size == (96, 80)
    # every file is reported by both runs: ok by the one that wrote it, skipped or "exists" by the other
    text = b"".join(out for out, _ in outputs).decode()
    assert text.count("\nok\t") + text.startswith("ok\t") >= 6


def test_hostile_pickle_structures_end_quickly(tmp_path: Path) -> None:
    import time

    shared: list = [torch.zeros(1)]
    for _ in range(60):  # each level refers to the previous one twice: 2^60 paths for a tree walk, 2 KB on disk
        shared = [shared, shared]
    path = tmp_path / "shared.pth"
    torch.save({"w": shared}, path)
    assert path.stat().st_size < 4096
    start = time.perf_counter()
    read_pickled_checkpoint(path)  # plain data, visited once per container: no hang
    assert time.perf_counter() - start < 5.0  # generous for a loaded CI machine; ~0.01 s here
    deep: list = []
    for _ in range(150):  # deeper than the limit (64); torch.save itself recurses, so not much deeper
        deep = [deep]
    path = tmp_path / "deep.pth"
    torch.save({"w": deep}, path)
    start = time.perf_counter()
    with pytest.raises(ctsr_infer.UnsafeCheckpointError, match="nested deeper"):
        read_pickled_checkpoint(path)
    assert time.perf_counter() - start < 5.0
