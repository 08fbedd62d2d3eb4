"""Animated GIF / APNG / WebP: every frame upscaled, durations, loop and disposal kept."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import ctsr_infer
from ctsr_infer.batch import plan_jobs, run_batch


def _frames(count: int = 3, size: tuple[int, int] = (14, 10)) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(count)]


@pytest.fixture(scope="module")
def lite():
    return ctsr_infer.load("ctsr-lite", device="cpu", dtype="fp32")


@pytest.mark.parametrize(("ext", "fmt"), [("gif", "gif"), ("png", "png"), ("webp", "webp")])
def test_animation_round_trip(tmp_path: Path, lite, ext: str, fmt: str) -> None:
    frames = _frames()
    source = tmp_path / "in" / f"anim.{ext}"
    source.parent.mkdir()
    extra = {"disposal": [2, 1, 2]} if ext in ("gif", "png") else {}
    frames[0].save(source, save_all=True, append_images=frames[1:], duration=[70, 120, 200], loop=3, **extra)
    report = run_batch(lite, plan_jobs([tmp_path / "in"], tmp_path / "out", fmt=fmt))
    assert [i.status for i in report.items] == ["ok"], report.items
    out = tmp_path / "out" / f"anim.{fmt}"
    with Image.open(out) as image:
        assert image.n_frames == 3 and image.size == (56, 40)
        assert image.info.get("loop") == 3
        durations = []
        for index in range(3):
            image.seek(index)
            image.load()  # WebP sets a frame's duration when it is decoded
            durations.append(image.info["duration"])
            if ext == "gif":
                assert image.disposal_method == [2, 1, 2][index]
        assert durations == [70, 120, 200]
        # each frame is the upscale of its own source frame
        with Image.open(source) as original:
            for index in range(3):
                image.seek(index)
                original.seek(index)
                got = np.asarray(image.convert("RGB").resize((14, 10), Image.Resampling.BOX), dtype=float)
                own = np.asarray(original.convert("RGB"), dtype=float)
                other = np.asarray(_frames()[(index + 1) % 3], dtype=float)
                assert np.abs(got - own).mean() < np.abs(got - other).mean()


def test_an_animation_to_a_still_format_is_refused_for_that_file(tmp_path: Path, lite) -> None:
    frames = _frames(2)
    source = tmp_path / "in" / "anim.gif"
    source.parent.mkdir()
    frames[0].save(source, save_all=True, append_images=frames[1:], duration=[50, 50], loop=0)
    _frames(1)[0].save(tmp_path / "in" / "still.png")
    report = run_batch(lite, plan_jobs([tmp_path / "in"], tmp_path / "out", fmt="jpg"))
    assert [i.status for i in report.items] == ["failed", "ok"]
    assert "cannot hold an animation" in report.items[0].error and "--format" in report.items[0].error
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["still.jpg"]  # nothing outside the plan
