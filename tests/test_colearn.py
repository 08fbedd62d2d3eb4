"""Co-learning on tiny models: frozen teacher, a downsampler that maps HR latents to the LR latent's
shape and learns, falling losses on a fixed batch, bit-identical resume, export round trip."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

import ctsr_infer
from ctsr_infer.train.colearn import ColearnConfig, ColearnTrainer
from tests.tiny import straight_and_resumed, tiny_pair, write_resshift_teacher

CONFIG = ColearnConfig(steps=4, lr=2e-4, downsampler="conv", checkpoint_every=2)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_resshift_teacher(tmp_path_factory.mktemp("teacher"), seed=31, steps=3, min_noise_level=0.2)


def _pair(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    return tiny_pair(seed)



@pytest.mark.parametrize("downsampler", ["conv", "swin"])
def test_downsampler_maps_to_the_lr_latent_and_losses_fall(teacher: Path, downsampler: str) -> None:
    trainer = ColearnTrainer(teacher, ColearnConfig(lr=5e-4, downsampler=downsampler))
    lr, hr = _pair()
    first = None
    for _ in range(5):
        trainer.rng.seed(4)  # one fixed batch: the same noise every step
        terms = trainer.train_step((lr, hr))
        first = first or terms
        assert all(p.grad is None for p in [*trainer.teacher.net.parameters(), *trainer.teacher.vq.parameters()])
    lq, z_y, _ = trainer.latents(lr, hr)
    with torch.no_grad():
        y_hat = trainer.down(z_y, torch.randn(z_y.shape))
    assert y_hat.shape == z_y.shape
    trainer.rng.seed(4)
    last = trainer.train_step((lr, hr))
    assert last["downsampler"] < first["downsampler"]
    assert last["denoise"] + last["distill"] < first["denoise"] + first["distill"]


def test_resume_and_export_round_trip(teacher: Path, tmp_path: Path) -> None:
    straight, resumed = straight_and_resumed(lambda: ColearnTrainer(teacher, CONFIG), itertools.repeat(_pair()), tmp_path / "ckpt.pt")
    for a, b in zip([*straight.student.parameters(), *straight.down.parameters()], [*resumed.student.parameters(), *resumed.down.parameters()]):
        assert torch.equal(a, b)
    up = ctsr_infer.load(str(resumed.export(tmp_path / "colearn.safetensors")))
    lr = torch.from_numpy(np.random.default_rng(5).random((1, 3, 16, 16), dtype=np.float32))
    [runtime] = up.upscale_tensor(lr, seed=11, color_fix="none")
    lq, z_y, _ = resumed.latents(lr, torch.zeros(1, 3, 64, 64))
    noise = torch.randn(z_y.shape, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        image = ((resumed.teacher.decode(resumed.one_step(resumed.ema.shadow, z_y, lq, noise)) + 1) / 2).clamp(0, 1)
    assert (runtime - image).abs().max() <= 1e-5


@pytest.mark.parametrize("recipe", ["tadsr", "colearn"])
def test_cli_recipes_train_and_export(teacher: Path, tmp_path: Path, recipe: str) -> None:
    from PIL import Image
    from typer.testing import CliRunner

    from ctsr_infer.cli import app
    from ctsr_infer.train.colearn import ColearnConfig
    from ctsr_infer.train.config import load_config
    from ctsr_infer.train.tadsr import TadsrConfig

    examples = Path(__file__).parent.parent / "examples" / "train"
    assert load_config(TadsrConfig, examples / "tadsr.toml") == TadsrConfig()
    assert load_config(ColearnConfig, examples / "colearn.toml") == ColearnConfig()
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray((np.random.default_rng(0).random((80, 80, 3)) * 255).astype(np.uint8)).save(photos / "a.png")
    args = ["train", recipe, "--teacher", str(teacher), "--photos", str(photos), "--out", str(tmp_path / "s.safetensors"),
            "--steps", "1", "--batch", "1", "--crop", "64"]
    if recipe == "colearn":
        (tmp_path / "c.toml").write_text('downsampler = "conv"\n')
        args += ["--config", str(tmp_path / "c.toml")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert ctsr_infer.load(str(tmp_path / "s.safetensors")).model.sampler == "onestep"
