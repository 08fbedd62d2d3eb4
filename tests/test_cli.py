"""The `ctsr` command: exit codes, folders, skip-existing, atomic writes, a corrupt file in a batch."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import ctsr_infer
from ctsr_infer.cli import app

runner = CliRunner()


def _photo(path: Path, size: tuple[int, int] = (12, 10), mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = len(mode)
    array = np.random.default_rng(len(path.name)).integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    Image.fromarray(array if channels > 1 else array[:, :, 0], mode).save(path)
    return path


def _run(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_version_and_models_list() -> None:
    result = _run("--version")
    assert result.exit_code == 0 and ctsr_infer.__version__ in result.output
    result = _run("models", "list")
    assert result.exit_code == 0 and "osediff" in result.output


def test_single_file_with_scale(tmp_path: Path, student_path: Path) -> None:
    source = _photo(tmp_path / "in.jpg", (13, 7))
    result = _run("upscale", str(source), "-o", str(tmp_path / "out.png"), "--model", str(student_path), "--scale", "2.5", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "out.png").size == (33, 18)
    assert "1 ok, 0 skipped, 0 failed" in result.output


def test_folder_with_mixed_files_continues_past_a_corrupt_one(tmp_path: Path, student_path: Path) -> None:
    folder = tmp_path / "in"
    _photo(folder / "a.png")
    _photo(folder / "b.jpg", (9, 9))
    _photo(folder / "c.png", (8, 6), "RGBA")
    _photo(folder / "d.tiff", (5, 7), "L")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (folder / "notes.txt").write_text("not an image")
    (folder / ".DS_Store").write_bytes(b"\0\0")
    _photo(folder / "sub" / "deep.png")
    out = tmp_path / "out"
    result = _run("upscale", str(folder), "-o", str(out), "--model", str(student_path), "--scale", "2")
    assert result.exit_code == 1, result.output  # one file failed
    assert "4 ok, 0 skipped, 1 failed" in result.output and "broken.png" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png", "c.png", "d.png"]  # no recursion by default
    assert Image.open(out / "b.png").size == (18, 18)
    assert Image.open(out / "c.png").mode == "RGBA" and Image.open(out / "d.png").mode == "L"
    assert not [p for p in out.rglob("*") if "tmp" in p.name]


def test_skip_existing_then_overwrite(tmp_path: Path, student_path: Path) -> None:
    folder = tmp_path / "in"
    _photo(folder / "a.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.png").write_bytes(b"the user's own file")
    args = ("upscale", str(folder), "-o", str(out), "--model", str(student_path), "--scale", "1")
    result = _run(*args)
    # a file the run did not make is reported, never taken for a finished output, and left alone
    assert result.exit_code == 1 and "0 ok, 0 skipped, 1 failed" in result.output
    assert "without a record of its settings" in result.output and "--overwrite" in result.output
    assert (out / "a.png").read_bytes() == b"the user's own file"
    result = _run(*args, "--overwrite")
    assert result.exit_code == 0 and "1 ok" in result.output
    assert Image.open(out / "a.png").size == (12, 10)
    result = _run(*args)  # made with these settings: skipped
    assert result.exit_code == 0 and "0 ok, 1 skipped, 0 failed" in result.output


def test_recursive_mirrors_the_tree_and_keeps_colliding_names_apart(tmp_path: Path, student_path: Path) -> None:
    folder = tmp_path / "in"
    _photo(folder / "x" / "y" / "p.png")
    _photo(folder / "q.png")
    _photo(folder / "q.jpg")
    out = tmp_path / "out"
    result = _run("upscale", str(folder), "-o", str(out), "--model", str(student_path), "--scale", "1", "--recursive")
    assert result.exit_code == 0, result.output
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.png")) == ["q_jpg.png", "q_png.png", "x/y/p.png"]


def test_t_list_writes_one_file_per_t(tmp_path: Path, ctsr_student_path: Path) -> None:
    source = _photo(tmp_path / "in.png")
    result = _run("upscale", str(source), "-o", str(tmp_path / "out.png"), "--model", str(ctsr_student_path), "--t", "0,0.5,1", "--scale", "1")
    assert result.exit_code == 0, result.output
    outs = [np.asarray(Image.open(tmp_path / f"out_t{t:.2f}.png")).astype(int) for t in (0, 0.5, 1)]
    assert np.abs(outs[0] - outs[2]).max() > 0


@pytest.mark.parametrize(
    "extra,code,message",
    [
        (["--t", "2"], 2, "[0, 1]"),
        (["--t", "abc"], 2, "comma-separated"),
        (["--model", "osedif"], 2, "Did you mean 'osediff'"),
        (["--scale", "0.5"], 2, "`scale`"),
        (["--device", "tpu"], 2, "`device`"),
        (["--t", "0.5"], 2, "no fidelity/realness knob"),
        (["--model", "/nowhere/student.safetensors"], 3, "does not exist"),
        (["--device", "cuda"], 3, "CUDA"),
    ],
)
def test_exit_codes(tmp_path: Path, student_path: Path, extra: list[str], code: int, message: str) -> None:
    source = _photo(tmp_path / "in.png")
    args = ["upscale", str(source), "-o", str(tmp_path / "out.png"), "--model", str(student_path), *extra]
    result = _run(*args)
    assert result.exit_code == code, result.output
    assert message in " ".join(result.output.split())
    assert not (tmp_path / "out.png").exists()


def test_missing_model_offline_is_an_environment_error(tmp_path: Path) -> None:
    source = _photo(tmp_path / "in.png")
    result = _run("upscale", str(source), "-o", str(tmp_path / "out.png"), "--model", "osediff")
    assert result.exit_code == 3
    assert "offline" in result.output


def test_models_convert(tmp_path: Path, osediff_pkl: Path, base_dir: Path) -> None:
    target = tmp_path / "converted.safetensors"
    result = _run("models", "convert", str(osediff_pkl), str(target), "--base", str(base_dir))
    assert result.exit_code == 0, result.output
    up = ctsr_infer.load(target, device="cpu", dtype="fp32")
    assert up.model.prompt_embeds.shape == (1, 77, 32)
    assert _run("models", "convert", str(osediff_pkl), str(target), "--base", str(base_dir)).exit_code == 2
    evil = tmp_path / "evil.pkl"
    import torch

    torch.save({"x": _Evil()}, evil)
    result = _run("models", "convert", str(evil), str(tmp_path / "e.safetensors"), "--base", str(base_dir))
    assert result.exit_code == 3 and "refused" in result.output


class _Evil:
    def __reduce__(self):
        return (os.system, ("true",))


def test_sweep_writes_a_labelled_contact_sheet(tmp_path: Path, ctsr_student_path: Path, student_path: Path) -> None:
    source = _photo(tmp_path / "in.png", (40, 30))
    sheet = tmp_path / "sheet.png"
    result = _run("sweep", str(source), "-o", str(sheet), "--model", str(ctsr_student_path), "--t", "0,0.5,1", "--scale", "2")
    assert result.exit_code == 0, result.output
    image = np.asarray(Image.open(sheet).convert("RGB")).astype(int)
    assert image.shape[1] > 3 * 384  # three columns
    # the columns differ: the knob changes the picture
    columns = [image[60:200, 8 + i * 392 : 8 + i * 392 + 384] for i in range(3)]
    assert np.abs(columns[0] - columns[2]).max() > 0
    assert _run("sweep", str(source), "-o", str(sheet), "--model", str(ctsr_student_path)).exit_code == 2  # exists
    assert _run("sweep", str(source), "-o", str(tmp_path / "s2.png"), "--model", str(student_path)).exit_code == 2  # no knob


def test_tiling_flags_reach_the_pipeline(tmp_path: Path, student_path: Path) -> None:
    source = _photo(tmp_path / "in.png", (40, 32))
    result = _run("upscale", str(source), "-o", str(tmp_path / "o.png"), "--model", str(student_path), "--scale", "2",
                  "--tiling", "exact", "--vae-tile", "64", "--tile", "16", "--tile-overlap", "4", "--memory-budget", "2")
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "o.png").size == (80, 64)
    result = _run("upscale", str(source), "-o", str(tmp_path / "p.png"), "--model", str(student_path), "--vae-tile", "100")
    assert result.exit_code == 2 and "multiple of 64" in result.output
    result = _run("upscale", str(source), "-o", str(tmp_path / "q.png"), "--model", str(student_path), "--tiling", "sideways")
    assert result.exit_code == 2 and "`tiling`" in result.output


def test_batch_size_flag(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for index in range(3):
        _photo(folder / f"p{index}.png", (12, 10))
    result = _run("upscale", str(folder), "-o", str(tmp_path / "out"), "--batch-size", "3")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["p0.png", "p1.png", "p2.png"]
    assert all(Image.open(p).size == (48, 40) for p in (tmp_path / "out").iterdir())
    result = _run("upscale", str(folder), "-o", str(tmp_path / "out2"), "--batch-size", "0")
    assert result.exit_code == 2 and "--batch-size" in result.output
