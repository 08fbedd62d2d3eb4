"""TAD-SR on tiny models: teachers stay frozen, the discriminator is time-aware and learns, HSD vanishes
when student and teacher agree, the loss falls on a fixed batch, resume and export round-trip."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
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
