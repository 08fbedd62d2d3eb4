"""Recipe v5 of ctsr-lite (one stage, GAN + teacher features at t = 0, MSE at t = 1, the path):
the data stream, the degradation families, a few training steps with a tiny teacher, the export."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import ctsr_infer
from ctsr_infer.degradations import MildConfig, mild_degrade
from ctsr_infer.train.lite_gan import HOLDOUT, VALIDATION, LiteGanConfig, PairStream, Variant, train_lite_gan, training_files
from ctsr_infer.train.teachers import RRDBNet


def _photos(folder: Path) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("train-a", "train-b", HOLDOUT[0], VALIDATION[0]):
        Image.fromarray(rng.integers(0, 256, (96, 120, 3), dtype=np.uint8)).save(folder / f"{name}.png")
    return folder


def test_held_out_and_validation_photos_are_never_trained_on(tmp_path: Path) -> None:
    cfg = LiteGanConfig(photos=_photos(tmp_path / "photos"), work=tmp_path / "work")
    assert [p.stem for p in training_files(cfg)] == ["train-a", "train-b"]
    assert not set(HOLDOUT) & set(VALIDATION)


def test_pairs_cover_every_family_with_the_right_shapes(tmp_path: Path) -> None:
    cfg = replace(LiteGanConfig(photos=_photos(tmp_path / "photos"), work=tmp_path / "w"), patch=64, long_sides=(120,), p_flat=0.2)
    stream = PairStream(cfg, training_files(cfg))
    rng = np.random.default_rng(0)
    kinds = set()
    for _ in range(60):
        low, high, kind = stream.pair(rng)
        assert low.shape == (3, 16, 16) and high.shape == (3, 64, 64) and low.dtype == high.dtype == torch.uint8
        if kind == 3:  # a flat colour stays flat through the "degradation"
            assert int(high.flatten(1).float().std(1).max()) == 0 and torch.equal(low[:, 0, 0], high[:, 0, 0])
        kinds.add(kind)
    assert kinds == {0, 1, 2, 3}


def test_mild_degradation_is_seeded_and_within_its_ranges() -> None:
    hr = torch.rand(1, 3, 64, 64)
    a = mild_degrade(hr, np.random.default_rng(3))
    b = mild_degrade(hr, np.random.default_rng(3))
    assert a.shape == (1, 3, 16, 16) and torch.equal(a, b)
    clean = mild_degrade(hr, np.random.default_rng(3), MildConfig(blur_sigma=(0.5, 0.5), noise_sigma=(0, 0), jpeg_quality=(100, 100)))
    assert (clean - a).abs().mean() < 0.1  # noise and JPEG are small at these levels
    assert torch.equal((a * 255).round() / 255, a)  # 8-bit


def test_a_few_steps_train_every_term_and_export_a_runnable_student(tmp_path: Path) -> None:
    cfg = replace(LiteGanConfig(photos=_photos(tmp_path / "photos"), work=tmp_path / "work"), patch=64, long_sides=(120,),
                  batch=2, channels=8, blocks=2, steps=3, gan_start=0.0, device="cpu", log_every=1,
                  variants=(Variant("gan", 0.5, 0.01), Variant("plain", 0.5, 0.0)))
    teacher = RRDBNet(features=8, growth=4, blocks=2)
    paths = train_lite_gan(cfg, teacher=teacher)
    assert set(paths) == {"gan", "plain"}
    log = (cfg.work / "train_log.jsonl").read_text()
    assert '"gan/d"' in log and '"plain/gan": 0.0' in log
    up = ctsr_infer.load(paths["gan"], device="cpu", dtype="fp32")
    out = up.sweep(np.zeros((10, 12, 3), np.uint8), [0.0, 1.0])
    assert [o.shape for o in out] == [(40, 48, 3)] * 2
    assert up.meta.provenance["recipe"] == "ctsr_infer.train.lite_gan" and up.meta.provenance["steps"] == 3
    # continuing from the export starts from its weights
    again = train_lite_gan(replace(cfg, init=paths["plain"], steps=1, work=tmp_path / "work2", variants=(Variant("plain", 0.5, 0.0),)),
                           teacher=teacher)
    assert again["plain"].is_file()
