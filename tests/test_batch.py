"""The batch runner: pipelined I/O gives the same files and statuses as the plain loop, in order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import ctsr_infer
from ctsr_infer.batch import plan_jobs, run_batch


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    for name, size in (("a.png", (20, 24)), ("b.jpg", (16, 16)), ("c.png", (12, 30)), ("e.png", (18, 18))):
        Image.fromarray((rng.random((*size, 3)) * 255).astype(np.uint8)).save(src / name)
    (src / "d.png").write_bytes(b"not an image")
    return src


def test_pipelined_batch_equals_the_plain_loop(folder: Path, tmp_path: Path) -> None:
    up = ctsr_infer.load("ctsr-lite")
    outputs = {}
    for pipelined in (False, True):
        out = tmp_path / f"out-{pipelined}"
        seen: list[str] = []
        report = run_batch(up, plan_jobs([folder], out), pipelined=pipelined, on_item=lambda item: seen.append(item.source.name))
        assert seen == ["a.png", "b.jpg", "c.png", "d.png", "e.png"]  # in order, each once
        assert [i.status for i in report.items] == ["ok", "ok", "ok", "failed", "ok"]
        assert "d.png" in str(report.items[3].source) and report.items[3].error
        outputs[pipelined] = {p.name: np.asarray(Image.open(p)) for p in sorted(out.iterdir())}
    assert outputs[False].keys() == outputs[True].keys() == {"a.png", "b.png", "c.png", "e.png"}
    for name in outputs[False]:
        assert np.array_equal(outputs[False][name], outputs[True][name])
    # a second pipelined run skips everything and touches nothing
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out-True").iterdir()}
    again = run_batch(up, plan_jobs([folder], tmp_path / "out-True"))
    assert [i.status for i in again.items] == ["skipped", "skipped", "skipped", "failed", "skipped"]
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out-True").iterdir()} == before
