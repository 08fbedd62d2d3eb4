"""CLI habits of Real-ESRGAN / Upscayl users: --suffix, --quality, --png-level, --keep-metadata,
stdin/stdout, a summary that never cuts paths, Ctrl-C, options refused where they do not apply."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import ctsr_infer
from ctsr_infer.cli import app
from ctsr_infer.encoding import read_comment
from ctsr_infer.errors import InvalidInputError

runner = CliRunner()


def _photo(path: Path, size: tuple[int, int] = (12, 10), seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(array).save(path)
    return path


def _run(*args: str, **kwargs):
    return runner.invoke(app, list(args), catch_exceptions=False, **kwargs)


def test_suffix_and_quality(tmp_path: Path) -> None:
    _photo(tmp_path / "in" / "a.png")
    result = _run("upscale", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--suffix", "_x4", "--format", "jpg", "--quality", "40")
    assert result.exit_code == 0, result.output
    low = (tmp_path / "out" / "a_x4.jpg")
    result = _run("upscale", str(tmp_path / "in"), "-o", str(tmp_path / "out2"), "--suffix", "_x4", "--format", "jpg", "--quality", "98")
    high = (tmp_path / "out2" / "a_x4.jpg")
    assert low.stat().st_size < high.stat().st_size
    assert _run("upscale", str(tmp_path / "in"), "-o", str(tmp_path / "o3"), "--quality", "101").exit_code == 2
    assert _run("upscale", str(tmp_path / "in"), "-o", str(tmp_path / "o3"), "--png-level", "10").exit_code == 2
    assert not (tmp_path / "o3").exists()


def test_png_level_changes_size_not_pixels(tmp_path: Path) -> None:
    _photo(tmp_path / "a.png", (40, 30))
    for level in ("0", "9"):
        assert _run("upscale", str(tmp_path / "a.png"), "-o", str(tmp_path / f"l{level}.png"), "--png-level", level).exit_code == 0
    assert (tmp_path / "l0.png").stat().st_size > (tmp_path / "l9.png").stat().st_size
    assert np.array_equal(np.asarray(Image.open(tmp_path / "l0.png")), np.asarray(Image.open(tmp_path / "l9.png")))


def test_keep_metadata_copies_exif_and_xmp_with_orientation_reset(tmp_path: Path) -> None:
    source = tmp_path / "in.jpg"
    exif = Image.Exif()
    exif[0x010F] = "ACME"  # Make
    exif[0x0112] = 6  # rotated: the reader turns the pixels upright
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(source, exif=exif.tobytes(), xmp=b"<x:xmpmeta>ctsr-test</x:xmpmeta>")
    assert _run("upscale", str(source), "-o", str(tmp_path / "plain.jpg")).exit_code == 0
    assert _run("upscale", str(source), "-o", str(tmp_path / "kept.jpg"), "--keep-metadata").exit_code == 0
    with Image.open(tmp_path / "plain.jpg") as plain:
        assert plain.getexif().get(0x010F) is None and not plain.info.get("xmp")
    with Image.open(tmp_path / "kept.jpg") as kept:
        assert kept.getexif().get(0x010F) == "ACME" and kept.getexif().get(0x0112) == 1
        assert b"ctsr-test" in kept.info["xmp"]
        assert kept.size == (40, 48)  # upright (10 x 12 rotated), x4
    assert json.loads(read_comment(tmp_path / "kept.jpg") or "{}")["model"] == "ctsr-lite"  # the settings record stays


def test_stdin_to_stdout(tmp_path: Path) -> None:
    source = _photo(tmp_path / "a.png", (9, 7))
    result = runner.invoke(app, ["upscale", "-", "-o", "-", "--t", "0.3"], input=source.read_bytes(), catch_exceptions=False)
    assert result.exit_code == 0
    image = Image.open(io.BytesIO(result.stdout_bytes))
    assert image.format == "PNG" and image.size == (36, 28)
    expected = ctsr_infer.load("ctsr-lite").upscale(str(source), t=0.3)
    assert np.abs(np.asarray(image).astype(int) - np.asarray(expected).astype(int)).max() <= 1
    result = runner.invoke(app, ["upscale", "-", "-o", str(tmp_path / "out.webp")], input=source.read_bytes(), catch_exceptions=False)
    assert result.exit_code == 0 and Image.open(tmp_path / "out.webp").size == (36, 28)
    empty = runner.invoke(app, ["upscale", "-", "-o", "-"], input=b"", catch_exceptions=False)
    assert empty.exit_code == 2 and "0 bytes" in empty.output
    assert _run("upscale", str(tmp_path), "-o", "-").exit_code == 2  # a folder cannot go to stdout


def test_summary_lines_keep_long_paths_whole_when_piped(tmp_path: Path) -> None:
    deep = tmp_path / ("a-very-long-folder-name-" * 4) / "in"
    _photo(deep / "picture-with-a-long-name.png")
    out = tmp_path / ("another-long-output-folder-" * 4)
    result = _run("upscale", str(deep), "-o", str(out))
    assert result.exit_code == 0
    line = next(line for line in result.stdout.splitlines() if line.startswith("ok\t"))
    status, source, output, seconds = line.split("\t")
    assert Path(source) == deep / "picture-with-a-long-name.png" and Path(output) == out / "picture-with-a-long-name.png"


def test_ctrl_c_prints_what_finished_and_exits_130(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for index in range(3):
        _photo(tmp_path / "in" / f"{index}.png", seed=index)
    from ctsr_infer import pipeline

    calls = {"n": 0}
    real = pipeline.Upscaler._run_group

    def interrupt_on_third(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pipeline.Upscaler, "_run_group", interrupt_on_third)
    result = _run("upscale", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--batch-size", "1")
    assert result.exit_code == 130
    assert "interrupted: 2 done, 1 left" in result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["0.png", "1.png"]  # no partial file


@pytest.mark.parametrize(("args", "flag"), [
    (("--seed", "3"), "--seed"),
    (("--knob-steps", "2"), "--knob-steps"),
    (("--tile", "0"), "--tile"),
    (("--tile", "7"), "--tile"),
    (("--tile", "32", "--tile-overlap", "32"), "--tile-overlap"),
    (("--tiling", "exact"), "--tiling"),
])
def test_options_that_do_not_apply_are_one_usage_error(tmp_path: Path, args: tuple[str, ...], flag: str) -> None:
    _photo(tmp_path / "in" / "a.png")
    _photo(tmp_path / "in" / "b.png", seed=1)
    result = _run("upscale", str(tmp_path / "in"), "-o", str(tmp_path / "out"), *args)
    assert result.exit_code == 2, result.output
    assert flag in result.output and "failed" not in result.output
    assert not (tmp_path / "out").exists()


def test_tiling_off_works_for_the_default_model() -> None:
    up = ctsr_infer.load("ctsr-lite", device="cpu", dtype="fp32")
    image = np.random.default_rng(0).integers(0, 256, (300, 280, 3), dtype=np.uint8)
    tiled, untiled = up.upscale(image, t=0.5), up.upscale(image, t=0.5, tiling="off")
    assert np.abs(tiled.astype(int) - untiled.astype(int)).max() <= 1


def test_seed_with_mean_encoding_is_refused_in_the_api(upscaler) -> None:
    with pytest.raises(InvalidInputError, match="encode='sample'"):
        upscaler.upscale(np.zeros((8, 8, 3), np.uint8), seed=3, encode="mean")
    upscaler.upscale(np.zeros((8, 8, 3), np.uint8), seed=3, encode="sample", scale=1)


def test_every_stage_reaches_its_total() -> None:
    up = ctsr_infer.load("ctsr-lite", device="cpu", dtype="fp32")
    events = []
    up.upscale(np.zeros((300, 40, 3), np.uint8), on_progress=events.append)  # two tiles
    last = {}
    for event in events:
        last[event.stage] = event
    assert set(last) >= {"preprocess", "network"}
    assert all(event.done == event.total for event in last.values()), last
