"""CTSR stage 2 on tiny models: only the ctrl LoRA learns, the loss falls on a fixed batch, resume is
bit-identical, and the exported student reproduces the training-time model in the runtime."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

import ctsr_infer
from ctsr_infer.train.ctsr_stage2 import Stage2Config, Stage2Trainer
from tests.tiny import straight_and_resumed

CONFIG = Stage2Config(steps=6, lr=1e-3, rank=2, alpha=2.0, seed=0, checkpoint_every=2)


def _batch() -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(0).random((1, 3, 8, 8), dtype=np.float32))


def _fixed_loss(trainer: Stage2Trainer, z0: torch.Tensor) -> float:
    """The loss of one fixed (t, t') pair: the pair the seeded generator draws first."""
    trainer.rng.seed(123)
    with torch.no_grad():
        return float(trainer.loss(z0))


def test_only_the_ctrl_lora_learns_and_the_loss_falls(student_path: Path, base_dir: Path) -> None:
    trainer = Stage2Trainer(student_path, base_dir, CONFIG)
    z0 = trainer.stage1_latent(_batch())
    before = _fixed_loss(trainer, z0)
    trainable = {n for n, p in trainer.unet.named_parameters() if p.requires_grad}
    assert trainable and all(".ctrl." in n for n in trainable)
    assert not any(p.requires_grad for p in trainer.model.vae.parameters())
    frozen = {n: p.detach().clone() for n, p in trainer.unet.named_parameters() if not p.requires_grad}
    trainer.loss(z0).backward()
    assert all(p.grad is None for n, p in trainer.unet.named_parameters() if n not in trainable)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in trainer.unet.named_parameters() if n in trainable)
    trainer.optimizer.zero_grad(set_to_none=True)
    for _ in range(8):  # one fixed batch: the same latent and the same (t, t') pair every step
        trainer.rng.seed(123)
        trainer.loss(z0).backward()
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)
    assert _fixed_loss(trainer, z0) < 0.5 * before
    assert all(torch.equal(p, frozen[n]) for n, p in trainer.unet.named_parameters() if n in frozen)


def test_resume_is_bit_identical(student_path: Path, base_dir: Path, tmp_path: Path) -> None:
    straight, resumed = straight_and_resumed(lambda: Stage2Trainer(student_path, base_dir, CONFIG), itertools.repeat(_batch()),
                                             tmp_path / "ckpt.pt", steps=2)  # the checkpoint says step 2
    a = {n: p for n, p in straight.unet.named_parameters() if p.requires_grad}
    b = {n: p for n, p in resumed.unet.named_parameters() if p.requires_grad}
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)


def test_exported_student_reproduces_the_training_model(student_path: Path, base_dir: Path, tmp_path: Path) -> None:
    trainer = Stage2Trainer(student_path, base_dir, CONFIG)
    trainer.train(itertools.repeat(_batch()), steps=3)
    exported = trainer.export(tmp_path / "ctsr.safetensors")
    up = ctsr_infer.load(str(exported), device="cpu")
    assert up.knob.kind == "ctsr-flow" and up.knob.tau(0.0) == 0
    lr = torch.from_numpy(np.random.default_rng(1).random((1, 3, 10, 12), dtype=np.float32))
    ts = [0.0, 0.3, 1.0]
    reference = trainer.reference(lr, ts)
    runtime = up.upscale_tensor(lr, t=ts, color_fix="none")
    assert not torch.equal(reference[0], reference[2])  # the adapter moved away from zero
    for ref, got in zip(reference, runtime):
        assert got.shape == ref.shape == (1, 3, 40, 48)
        assert (got - ref).abs().max() <= 1e-5
    with pytest.raises(ValueError, match="already has a ctrl adapter"):
        Stage2Trainer(exported, base_dir, CONFIG)


def test_cli_trains_resumes_and_exports(student_path: Path, base_dir: Path, tmp_path: Path) -> None:
    from PIL import Image
    from typer.testing import CliRunner

    from ctsr_infer.cli import app

    images = tmp_path / "lr"
    images.mkdir()
    for index in range(2):
        Image.fromarray((np.random.default_rng(index).random((12, 12, 3)) * 255).astype(np.uint8)).save(images / f"{index}.png")
    args = ["train", "ctsr-stage2", "--stage1", str(student_path), "--base", str(base_dir), "--images", str(images),
            "--out", str(tmp_path / "ctsr.safetensors"), "--rank", "2", "--crop", "8", "--checkpoint", str(tmp_path / "ckpt.pt")]
    result = CliRunner().invoke(app, [*args, "--steps", "2"])
    assert result.exit_code == 0, result.output
    assert ctsr_infer.load(str(tmp_path / "ctsr.safetensors")).knob.kind == "ctsr-flow"
    result = CliRunner().invoke(app, [*args, "--steps", "3"])  # resumes at step 2, runs one more
    assert result.exit_code == 0, result.output
    assert torch.load(tmp_path / "ckpt.pt", weights_only=True)["step"] == 3
