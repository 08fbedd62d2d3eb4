"""The lite family and its training recipe on tiny data."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import ctsr_infer
from ctsr_infer.student_file import load_student
from ctsr_infer.families.lite import LiteNet, LiteStudent
from ctsr_infer.train.lite import LiteConfig, export_lite, split_photos, train_lite


def _photos(folder: Path, count: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for index in range(count):
        yy, xx = np.mgrid[0:160, 0:200]
        base = np.stack([np.sin(xx / (7 + index)) , np.cos(yy / 5), np.sin((xx + yy) / 11)], axis=2) * 0.4 + 0.5
        image = (base + rng.normal(0, 0.03, base.shape)).clip(0, 1)
        Image.fromarray((image * 255).astype(np.uint8)).save(folder / f"photo{index}.png")
    return folder


def _bicubic_teacher(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=4, mode="bicubic", align_corners=False).clamp(0, 1)


@pytest.fixture(scope="module")
def tiny_lite(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, LiteConfig]:
    root = tmp_path_factory.mktemp("lite")
    cfg = LiteConfig(photos=_photos(root / "photos"), work=root / "work", holdout=("photo2",), patch=64, patches_per_image=2,
                     channels=8, blocks=1, batch=2, fidelity_steps=3, stage1_steps=3, stage2_steps=3)
    return train_lite(cfg, teacher=_bicubic_teacher), cfg


def test_recipe_runs_and_exports_a_loadable_student(tiny_lite) -> None:
    path, cfg = tiny_lite
    student = load_student(path)
    assert student.meta.family == "lite" and student.meta.knob.kind == "native"
    assert all(t.dtype == torch.float16 for t in student.tensors.values())
    assert split_photos(cfg.photos, cfg.holdout)[1] == [cfg.photos / "photo2.png"]
    up = ctsr_infer.load(path, device="cpu", dtype="fp32")
    out = up.upscale(np.zeros((5, 7, 3), dtype=np.uint8), t=0.3)
    assert out.shape == (20, 28, 3)
    for name in ("pairs", "teacher_realness", "teacher_fidelity"):
        assert (cfg.work / f"{name}.safetensors").is_file()


def test_runtime_reproduces_the_trained_network(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = LiteNet(channels=8, blocks=2)
    for p in net.parameters():
        p.data.normal_(0, 0.1)
    path = export_lite(net, LiteConfig(photos=tmp_path, work=tmp_path))
    up = ctsr_infer.load(path, device="cpu", dtype="fp32")
    x = torch.rand(1, 3, 12, 10)
    (ours,) = up.upscale_tensor(x, t=0.7, scale=4, color_fix="none")
    net_half = LiteNet(channels=8, blocks=2)
    net_half.load_state_dict({k: v.half().float() for k, v in net.state_dict().items()})
    with torch.no_grad():  # the runtime replicates 8 px of border around the input, then crops
        padded = torch.nn.functional.pad(x, (8,) * 4, mode="replicate")
        expected = net_half(padded, torch.tensor([0.7]))[..., 32:-32, 32:-32].clamp(0, 1)
    assert torch.allclose(ours, expected, atol=1e-5)


def test_t_changes_the_output_and_scales_and_tiles(tmp_path: Path) -> None:
    torch.manual_seed(1)
    net = LiteNet(channels=8, blocks=2)
    for p in net.parameters():
        p.data.normal_(0, 0.2)
    up = ctsr_infer.load(export_lite(net, LiteConfig(photos=tmp_path, work=tmp_path)), device="cpu", dtype="fp32")
    image = np.random.default_rng(0).integers(0, 256, (30, 41, 3), dtype=np.uint8)
    a, b = up.sweep(image, [0.0, 1.0], color_fix="none")
    assert a.shape == (120, 164, 3) and np.abs(a.astype(int) - b.astype(int)).max() > 0
    assert up.upscale(image, scale=2.5).shape == (75, 103, 3)
    assert up.upscale(image, scale=6).shape == (180, 246, 3)
    # with context >= the receptive radius, small tiles give the untiled result
    model: LiteStudent = up.model
    full = up.upscale(image, t=0.5, color_fix="none")
    model.tile, model.overlap, model.context = 12, 4, 12
    try:
        tiled = up.upscale(image, t=0.5, color_fix="none")
    finally:
        model.tile, model.overlap, model.context = LiteStudent.tile, LiteStudent.overlap, LiteStudent.context
    assert np.abs(full.astype(int) - tiled.astype(int)).max() <= 1


def test_sd_only_options_are_refused_for_lite(tmp_path: Path) -> None:
    from ctsr_infer.errors import InvalidInputError

    up = ctsr_infer.load(export_lite(LiteNet(channels=4, blocks=1), LiteConfig(photos=tmp_path, work=tmp_path)), device="cpu")
    with pytest.raises(InvalidInputError, match="knob_steps"):
        up.upscale(np.zeros((4, 4, 3), dtype=np.uint8), knob_steps=2)


def test_untrained_tail_is_checkerboard_free() -> None:
    """ICNR: before training, every 4x4 block of the sub-pixel detail is one value per channel."""
    torch.manual_seed(0)
    net = LiteNet(channels=8, blocks=1)
    features = torch.randn(1, 8, 6, 5)
    detail = F.pixel_shuffle(net.tail(features), 4)
    blocks = detail.unfold(2, 4, 4).unfold(3, 4, 4)  # (1, 3, 6, 5, 4, 4)
    assert float(detail.abs().max()) > 1e-3
    assert float((blocks - blocks[..., :1, :1]).abs().max()) < 1e-6


def test_high_pass_removes_flat_colour_and_keeps_fine_detail() -> None:
    from ctsr_infer.train.lite import high_pass

    flat = torch.full((1, 3, 16, 16), 0.4)
    assert float(high_pass(flat).abs().max()) < 1e-6
    checker = (torch.arange(16)[:, None] + torch.arange(16)[None]) % 2
    fine = checker.float().expand(1, 3, 16, 16)
    kept = high_pass(fine)[..., 4:-4, 4:-4].abs().mean()  # away from the reflect-padded border
    assert 0.4 < float(kept) <= 0.5


def test_online_pairs_are_aligned_8bit_and_seeded(tmp_path: Path) -> None:
    from ctsr_infer.degradations import bicubic_degrade
    from ctsr_infer.train.lite import OnlinePairs

    photos = _photos(tmp_path / "photos")
    files = sorted(photos.iterdir())
    sampler = OnlinePairs(LiteConfig(photos=photos, work=tmp_path, patch=32, bicubic_fraction=1.0), files)
    low, high = sampler(6, np.random.default_rng(0))
    assert low.shape == (6, 3, 8, 8) and high.shape == (6, 3, 32, 32) and low.dtype == torch.float32
    assert torch.equal((low * 255).round() / 255, low)  # 8-bit, as a user's file would be
    for lr, hr in zip(low, high):  # bicubic_fraction = 1: each LR is the x4 reduction of its own HR crop
        assert (lr[None] - bicubic_degrade(hr[None])).abs().max() <= 1.5 / 255
    again, _ = sampler(6, np.random.default_rng(0))
    other, _ = sampler(6, np.random.default_rng(1))
    assert torch.equal(again, low) and not torch.equal(other, low)
    real = OnlinePairs(LiteConfig(photos=photos, work=tmp_path, patch=64, bicubic_fraction=0.0), files)
    degraded, hr = real(4, np.random.default_rng(0))
    assert degraded.shape == (4, 3, 16, 16) and hr.shape == (4, 3, 64, 64)
    assert (degraded - bicubic_degrade(hr[:1])).abs().mean() > 0.01  # blur, noise, JPEG: not the plain reduction


def test_a_second_run_reuses_the_caches_and_gives_the_same_student(tiny_lite) -> None:
    path, cfg = tiny_lite
    first = load_student(path).tensors
    cached = {name: (cfg.work / f"{name}.safetensors").stat().st_mtime_ns for name in ("pairs", "teacher_realness", "teacher_fidelity")}
    again = load_student(train_lite(cfg, teacher=lambda x: pytest.fail("the realness teacher must come from the cache"))).tensors
    assert again.keys() == first.keys()
    for key in first:
        assert torch.equal(again[key], first[key]), key
    assert {name: (cfg.work / f"{name}.safetensors").stat().st_mtime_ns for name in cached} == cached


def test_stage1_is_reused_only_under_the_same_stage1_settings(tiny_lite) -> None:
    _, cfg = tiny_lite
    stage1 = cfg.work / "stage1.safetensors"
    before = stage1.stat().st_mtime_ns
    weights = load_student(stage1).tensors
    train_lite(replace(cfg, stage2_steps=2, lambda_path_rec=0.0), teacher=_bicubic_teacher)
    assert stage1.stat().st_mtime_ns == before  # stage-2 settings alone: stage 1 comes from the file
    train_lite(replace(cfg, lambda_hf=cfg.lambda_hf + 1.0), teacher=_bicubic_teacher)
    retrained = load_student(stage1)
    assert retrained.meta.provenance["config"]["lambda_hf"] == cfg.lambda_hf + 1.0
    assert any(not torch.equal(retrained.tensors[k], weights[k]) for k in weights)
    train_lite(cfg, teacher=_bicubic_teacher)  # leave the fixture's work folder as it was
