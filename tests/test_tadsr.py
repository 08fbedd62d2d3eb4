"""TAD-SR on tiny models: teachers stay frozen, the discriminator is time-aware and learns, HSD vanishes
when student and teacher agree, the loss falls on a fixed batch, resume and export round-trip."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import torchrun
import torch.nn.functional as F

import ctsr_infer
from ctsr_infer.train.gan import hinge_d_loss
from ctsr_infer.train.tadsr import TadsrConfig, TadsrTrainer
from tests.tiny import straight_and_resumed, tiny_pair, write_resshift_teacher

CONFIG = TadsrConfig(steps=4, lr=2e-4, warmup=1, checkpoint_every=2, disc_embed=32, disc_c_dim=8)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_resshift_teacher(tmp_path_factory.mktemp("teacher"), seed=21, steps=4, min_noise_level=0.2)


def _pair(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    return tiny_pair(seed)



def test_teacher_frozen_and_the_loss_falls(teacher: Path) -> None:
    trainer = TadsrTrainer(teacher, CONFIG)
    lr, hr = _pair()
    lq, z_y, _ = trainer.latents(lr, hr)
    noise = torch.randn(z_y.shape, generator=torch.Generator().manual_seed(0))
    z0_tch = trainer.teacher_sample(z_y, lq, noise)

    def distill() -> float:
        with torch.no_grad():
            return float(F.mse_loss(trainer.one_step(trainer.student, z_y, lq, noise), z0_tch))

    before = distill()
    for _ in range(4):
        trainer.rng.seed(9)  # one fixed batch: same noise draws every step
        trainer.train_step((lr, hr))
        assert all(p.grad is None for p in [*trainer.teacher.net.parameters(), *trainer.teacher.vq.parameters()])
    assert distill() < before


def test_hsd_vanishes_when_outputs_coincide(teacher: Path) -> None:
    trainer = TadsrTrainer(teacher, CONFIG)
    lr, hr = _pair()
    lq, z_y, z_gt = trainer.latents(lr, hr)
    noise = torch.randn(z_y.shape)
    z0 = z_gt.clone().requires_grad_(True)
    assert float(trainer.hsd(z0, z_gt, z_y, lq, 1, noise)) == 0.0
    other = (z_gt + 0.3 * torch.randn(z_gt.shape)).requires_grad_(True)
    value = trainer.hsd(other, z_gt, z_y, lq, 1, noise)
    value.backward()
    assert other.grad is not None and other.grad.abs().sum() > 0


def test_discriminator_is_time_aware_and_separates(teacher: Path) -> None:
    trainer = TadsrTrainer(teacher, CONFIG)
    lr, hr = _pair()
    lq, z_y, z_gt = trainer.latents(lr, hr)
    noise = torch.randn(z_y.shape, generator=torch.Generator().manual_seed(1))
    fake_z0 = F.avg_pool2d(z_gt, 3, 1, 1)  # a blurred "student output"
    t = 1
    with torch.no_grad():
        real = trainer.features(trainer.schedule.q_sample(z_gt, z_y, t, noise), t, lq)
        fake = trainer.features(trainer.schedule.q_sample(fake_z0, z_y, t, noise), t, lq)
    steps = torch.full((2,), t)
    for _ in range(30):
        loss = hinge_d_loss(trainer.disc(real, steps), trainer.disc(fake, steps))
        trainer.opt_d.zero_grad()
        loss.backward()
        trainer.opt_d.step()
    with torch.no_grad():
        assert trainer.disc(real, steps).mean() > trainer.disc(fake, steps).mean()
        assert not torch.allclose(trainer.disc(real, steps), trainer.disc(real, torch.full((2,), 3)))


def test_resume_and_export_round_trip(teacher: Path, tmp_path: Path) -> None:
    straight, resumed = straight_and_resumed(lambda: TadsrTrainer(teacher, CONFIG), itertools.repeat(_pair()), tmp_path / "ckpt.pt")
    for a, b in zip(straight.student.parameters(), resumed.student.parameters()):
        assert torch.equal(a, b)
    path = resumed.export(tmp_path / "tadsr.safetensors")
    up = ctsr_infer.load(str(path))
    assert up.model.sampler == "onestep" and up.meta.provenance["tadsr"]["trained_steps"] == 2
    lr = torch.from_numpy(np.random.default_rng(3).random((1, 3, 16, 16), dtype=np.float32))
    [runtime] = up.upscale_tensor(lr, seed=7, color_fix="none")
    # the trained model's one step, computed from the trainer's own pieces
    lq, z_y, _ = resumed.latents(lr, torch.zeros(1, 3, 64, 64))
    noise = torch.randn(z_y.shape, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        z0 = resumed.one_step(resumed.ema.shadow, z_y, lq, noise)
        image = ((resumed.teacher.decode(z0) + 1) / 2).clamp(0, 1)
    assert (runtime - image).abs().max() <= 1e-5


def test_bf16_with_accumulation_trains_and_the_discriminator_stays_clean(teacher: Path) -> None:
    """Mixed precision and two micro-batches per step: 2 steps use 4 batches, the EMA moves once per
    step, the weights stay fp32 and finite, and the generator's loss leaves no gradient on D."""
    from dataclasses import replace

    trainer = TadsrTrainer(teacher, replace(CONFIG, mixed_precision="bf16", gradient_accumulation_steps=2))
    pairs = [_pair(seed) for seed in range(4)]
    used = iter(pairs)
    ema_before = [p.detach().clone() for p in trainer.ema.shadow.parameters()]
    history = trainer.train(used, steps=2)
    assert trainer.step == 2 and next(used, None) is None
    assert all(np.isfinite(v) for terms in history for v in terms.values())
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in trainer.student.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(ema_before, trainer.ema.shadow.parameters()))
    assert all(p.grad is None for p in trainer.disc.parameters())


def test_cli_under_torchrun_two_processes(teacher: Path, tmp_path: Path) -> None:
    """The multi-GPU path on two CPU processes: the CLI as `accelerate launch -m ctsr_infer.cli`
    runs it; one process writes the checkpoint and the student, which the runtime loads."""
    import os

    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    for seed in range(2):
        Image.fromarray((np.random.default_rng(seed).random((80, 80, 3)) * 255).astype(np.uint8)).save(photos / f"{seed}.png")
    (tmp_path / "c.toml").write_text("disc_embed = 32\ndisc_c_dim = 8\ngradient_accumulation_steps = 2\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent.parent)}
    result = torchrun(["-m", "ctsr_infer.cli", "train", "tadsr", "--teacher", str(teacher), "--photos", str(photos),
                       "--out", str(tmp_path / "s.safetensors"), "--steps", "2", "--batch", "1", "--crop", "64",
                       "--config", str(tmp_path / "c.toml"), "--checkpoint", str(tmp_path / "ck.pt")],
                      env=env, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("wrote ") == 1
    state = torch.load(tmp_path / "ck.pt", weights_only=True)
    assert state["step"] == 2 and state["config"]["gradient_accumulation_steps"] == 2
    up = ctsr_infer.load(str(tmp_path / "s.safetensors"))
    [image] = up.upscale_tensor(torch.full((1, 3, 16, 16), 0.5), seed=7, color_fix="none")
    assert image.shape[-3:] == (3, 64, 64) and bool(torch.isfinite(image).all())
    assert up.meta.provenance["tadsr"]["trained_steps"] == 2
