"""The batch runner: pipelined I/O gives the same files and statuses as the plain loop, in order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
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


@pytest.fixture
def equal_sizes(tmp_path: Path) -> Path:
    """Seven files, five of one size (8-bit RGB, RGBA, grayscale), one 16-bit and one of another size."""
    src = tmp_path / "same"
    src.mkdir()
    rng = np.random.default_rng(1)

    def noise(*shape: int) -> np.ndarray:
        return (rng.random(shape) * 255).astype(np.uint8)

    Image.fromarray(noise(16, 20, 3)).save(src / "a.png")
    Image.fromarray(noise(16, 20, 3)).save(src / "b.png")
    Image.fromarray(noise(16, 20, 4)).save(src / "c.png")  # alpha: filled, then upscaled on its own
    Image.fromarray(noise(16, 20)).save(src / "d.png")  # grayscale
    Image.fromarray((rng.random((16, 20)) * 65535).astype(np.uint16)).save(src / "e.png")  # 16-bit: its own group
    Image.fromarray(noise(12, 12, 3)).save(src / "f.png")
    Image.fromarray(noise(16, 20, 3)).save(src / "g.png")
    return src


def test_batching_equal_sizes_writes_the_same_files(equal_sizes: Path, tmp_path: Path) -> None:
    up = ctsr_infer.load("ctsr-lite")
    calls: list[int] = []
    hook = up.model.net.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    outputs = {}
    try:
        for pipelined, batch_size in ((False, 1), (True, 1), (True, 4), (False, 8)):
            calls.clear()
            out = tmp_path / f"out-{pipelined}-{batch_size}"
            seen: list[str] = []
            report = run_batch(up, plan_jobs([equal_sizes], out), pipelined=pipelined, batch_size=batch_size,
                               on_item=lambda item: seen.append(item.source.name))
            assert seen == ["a.png", "b.png", "c.png", "d.png", "e.png", "f.png", "g.png"]
            assert [i.status for i in report.items] == ["ok"] * 7
            if batch_size == 1:
                assert calls == [1] * 7
            elif batch_size == 4:  # [a b c d] -> one call of 4; [e f g]: three sizes/depths -> three calls
                assert calls == [4, 1, 1, 1]
            else:  # all seven read together: a b c d g share a call; e (16-bit) and f (12x12) alone
                assert sorted(calls) == [1, 1, 5]
            outputs[(pipelined, batch_size)] = {p.name: np.asarray(Image.open(p)) for p in sorted(out.iterdir())}
    finally:
        hook.remove()
    reference = outputs[(False, 1)]
    assert len(reference) == 7 and reference["c.png"].shape == (64, 80, 4) and reference["e.png"].dtype == np.uint16
    for key, files in outputs.items():
        assert files.keys() == reference.keys(), key
        for name in files:  # equal up to float rounding: the conv kernels may sum in another order for N > 1
            difference = np.abs(files[name].astype(np.int64) - reference[name].astype(np.int64))
            one_level = 257 if reference[name].dtype == np.uint16 else 1
            assert difference.max() <= one_level and (difference > 0).mean() < 0.01, (key, name, difference.max())


class _FailsOnBright:
    """The real upscaler, except that an image whose mean is above 0.9 fails: a stand-in for a file
    that only fails inside the network (hard to make on purpose with a healthy model)."""

    def __init__(self, upscaler: ctsr_infer.Upscaler) -> None:
        self.upscaler = upscaler
        self.batch_calls = 0

    def _check(self, data: object) -> None:
        if float(np.mean(data.pixels)) > 0.9:  # type: ignore[attr-defined]
            raise ctsr_infer.NumericalError("the network output contains NaN or Inf even in float32")

    def process(self, data: object, **kwargs: object) -> object:
        self._check(data)
        return self.upscaler.process(data, **kwargs)  # type: ignore[arg-type]

    def process_batch(self, items: list[object], **kwargs: object) -> object:
        self.batch_calls += 1
        for data in items:
            self._check(data)
        return self.upscaler.process_batch(items, **kwargs)  # type: ignore[arg-type]


def test_a_failing_batch_is_retried_file_by_file(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(2)
    for name in ("a", "b", "c"):
        Image.fromarray((rng.random((16, 16, 3)) * 200).astype(np.uint8)).save(src / f"{name}.png")
    Image.fromarray(np.full((16, 16, 3), 250, np.uint8)).save(src / "b2.png")
    runner = _FailsOnBright(ctsr_infer.load("ctsr-lite"))
    report = run_batch(runner, plan_jobs([src], tmp_path / "out"), batch_size=4)
    assert runner.batch_calls == 1
    assert [(i.source.name, i.status) for i in report.items] == [("a.png", "ok"), ("b.png", "ok"), ("b2.png", "failed"), ("c.png", "ok")]
    assert "NumericalError" in report.items[2].error
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "b.png", "c.png"]


def test_process_batch_and_upscale_tensor_match_one_by_one() -> None:
    up = ctsr_infer.load("ctsr-lite")
    rng = np.random.default_rng(3)
    frames = torch.from_numpy(rng.random((3, 3, 14, 18), dtype=np.float32))
    together = up.upscale_tensor(frames, t=[0.0, 1.0], color_fix="adain")
    alone = [up.upscale_tensor(frame[None], t=[0.0, 1.0], color_fix="adain") for frame in frames]
    for index, per_t in enumerate(together):
        assert per_t.shape == (3, 3, 56, 72)
        assert torch.allclose(per_t, torch.cat([a[index] for a in alone]), atol=1e-5)
    assert not torch.allclose(together[0], together[1], atol=1e-2)  # t moves it
    from ctsr_infer.image import read_image

    with pytest.raises(ctsr_infer.InvalidInputError, match="`items`"):
        up.process_batch([read_image(np.zeros((8, 8, 3), np.uint8)), read_image(np.zeros((8, 9, 3), np.uint8))])
    with pytest.raises(ctsr_infer.InvalidInputError, match="`batch_size`"):
        run_batch(up, [], batch_size=0)


def test_large_images_are_not_stacked(monkeypatch: pytest.MonkeyPatch) -> None:
    import ctsr_infer.pipeline as pipeline
    from ctsr_infer.image import read_image

    up = ctsr_infer.load("ctsr-lite")
    calls: list[int] = []
    hook = up.model.net.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    items = [read_image((np.random.default_rng(i).random((10, 10, 3)) * 255).astype(np.uint8)) for i in range(3)]
    try:
        up.process_batch(items)
        monkeypatch.setattr(pipeline, "BATCH_MAX_PIXELS", 99)
        up.process_batch(items)
    finally:
        hook.remove()
    assert calls == [3, 1, 1, 1]
