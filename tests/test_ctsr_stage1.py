"""CTSR stage 1 on tiny models: the loss terms vanish where they should, only the student's LoRA and
conv_in learn, the loss falls on a fixed batch, resume is bit-identical, the export round-trips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ctsr_infer
from ctsr_infer.errors import InvalidInputError
from ctsr_infer.train.ctsr_stage1 import Stage1Config, Stage1Trainer
from tests.tiny import straight_and_resumed, write_resshift_teacher

CONFIG = Stage1Config(steps=4, lr=1e-3, perceptual="untrained-features", checkpoint_every=2)


@pytest.fixture(scope="module")
def fidelity(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_resshift_teacher(tmp_path_factory.mktemp("fidelity"))


def _pair(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    hr = torch.from_numpy(np.random.default_rng(seed).random((1, 3, 64, 64), dtype=np.float32))
    return F.interpolate(hr, scale_factor=0.25, mode="area"), hr


def test_lpips_without_the_package_refuses_clearly(student_path: Path, base_dir: Path, fidelity: Path) -> None:
    try:
        import lpips  # type: ignore[import-not-found]  # noqa: F401

        pytest.skip("lpips is installed here")
    except ImportError:
        pass
    with pytest.raises(InvalidInputError, match="untrained-features"):
        Stage1Trainer(student_path, base_dir, fidelity, Stage1Config())


def test_terms_vanish_where_student_and_teacher_agree(student_path: Path, base_dir: Path, fidelity: Path) -> None:
    trainer = Stage1Trainer(student_path, base_dir, fidelity, CONFIG)
    lr, hr = _pair()
    terms = trainer.losses(lr, hr, u=0.5)
    assert all(torch.isfinite(v) and v >= 0 for v in terms.values())
    # the student starts as the realness teacher: same network, same input
    assert terms["rn_student"] < 1e-8
    assert terms["rn_time"] > 0 and terms["fl_time"] > 0 and terms["rec_l2"] > 0
    with torch.no_grad():
        up = F.interpolate(lr * 2 - 1, size=(64, 64), mode="bicubic", align_corners=False)
        z0s, x0 = trainer.student(up)
        same = trainer.losses(lr, (x0 + 1) / 2, u=0.5)  # ground truth := the student's own output
        assert same["rec_l2"] < 1e-12 and same["rec_lp"] < 1e-10  # (x0 + 1) / 2 * 2 - 1 rounds
        rn_student, rn_time = trainer.realness_terms(z0s, z0s, 500, torch.randn(z0s.shape))
        assert rn_time == 0 and rn_student < 1e-8
        _, fl_time = trainer.fidelity_terms(x0, x0, up, lr * 2 - 1, 7, seed=3)
        assert fl_time == 0
        # an oracle fidelity teacher (predicting the true x0) makes the first L_fl term vanish
        trainer.fidelity.net.forward = lambda z, steps, lq: trainer.vq_encode(x0)  # type: ignore[method-assign]
        fl_student, _ = trainer.fidelity_terms(x0, hr * 2 - 1, up, lr * 2 - 1, 7, seed=3)
        assert fl_student < 1e-8


def test_only_lora_and_conv_in_learn_and_the_loss_falls(student_path: Path, base_dir: Path, fidelity: Path) -> None:
    trainer = Stage1Trainer(student_path, base_dir, fidelity, CONFIG)
    lr, hr = _pair()
    trainable = {n for n, p in trainer.student.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("unet.conv_in.") for n in trainable)
    assert any(n.startswith("unet.conv_in.") for n in trainable) and any(n.startswith("vae.") for n in trainable)
    teachers = [*trainer.realness.unet.parameters(), *trainer.realness.vae.parameters(), *trainer.fidelity.net.parameters(),
                *trainer.fidelity.vq.parameters()]
    before = float(trainer.losses(lr, hr, u=0.5)["total"])
    for _ in range(6):
        trainer.rng.seed(5)
        trainer.losses(lr, hr, u=0.5)["total"].backward()
        assert all(p.grad is None for p in teachers)
        assert all(p.grad is None for n, p in trainer.student.named_parameters() if n not in trainable)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)
    trainer.rng.seed(5)
    assert float(trainer.losses(lr, hr, u=0.5)["total"]) < before


def test_resume_and_export_round_trip(student_path: Path, base_dir: Path, fidelity: Path, tmp_path: Path) -> None:
    import itertools

    straight, resumed = straight_and_resumed(lambda: Stage1Trainer(student_path, base_dir, fidelity, CONFIG), itertools.repeat(_pair()),
                                             tmp_path / "ckpt.pt")
    a, b = dict(straight.student.named_parameters()), dict(resumed.student.named_parameters())
    assert all(torch.equal(a[n], b[n]) for n in a if a[n].requires_grad)
    exported = resumed.export(tmp_path / "stage1.safetensors")
    lr = torch.from_numpy(np.random.default_rng(2).random((1, 3, 10, 12), dtype=np.float32))
    [runtime] = ctsr_infer.load(str(exported)).upscale_tensor(lr, color_fix="none")
    from ctsr_infer.families.framing import pad_to_multiple
    from ctsr_infer.image import resize_bicubic

    up = torch.from_numpy(resize_bicubic(lr[0].permute(1, 2, 0).numpy(), (40, 48), bit_depth=32)).permute(2, 0, 1)[None]
    with torch.no_grad():
        _, image = resumed.student(pad_to_multiple(up, 8) * 2 - 1)
    training = ((image[..., :40, :48] + 1) / 2).clamp(0, 1)
    assert (runtime - training).abs().max() <= 1e-5
    [before] = ctsr_infer.load(str(student_path)).upscale_tensor(lr, color_fix="none")
    assert (runtime - before).abs().max() > 1e-4  # training changed the student


def test_cli_trains_from_a_config_file(student_path: Path, base_dir: Path, fidelity: Path, tmp_path: Path) -> None:
    from PIL import Image
    from typer.testing import CliRunner

    from ctsr_infer.cli import app

    photos = tmp_path / "photos"
    photos.mkdir()
    for index in range(2):
        Image.fromarray((np.random.default_rng(index).random((80, 96, 3)) * 255).astype(np.uint8)).save(photos / f"{index}.png")
    (tmp_path / "cfg.toml").write_text('perceptual = "untrained-features"\nlr = 1e-4\nsteps = 50\n')
    (tmp_path / "bad.toml").write_text("learning_rate = 1e-4\n")
    args = ["train", "ctsr-stage1", "--student", str(student_path), "--base", str(base_dir), "--fidelity", str(fidelity),
            "--photos", str(photos), "--out", str(tmp_path / "s1.safetensors"), "--crop", "64"]
    bad = CliRunner().invoke(app, [*args, "--config", str(tmp_path / "bad.toml")])
    assert bad.exit_code == 2 and "learning_rate" in bad.output
    result = CliRunner().invoke(app, [*args, "--config", str(tmp_path / "cfg.toml"), "--steps", "1"])
    assert result.exit_code == 0, result.output
    meta = ctsr_infer.load(str(tmp_path / "s1.safetensors")).meta
    assert meta.provenance["stage1"]["trained_steps"] == 1 and meta.provenance["stage1"]["lr"] == 1e-4


def test_example_configs_are_the_paper_defaults() -> None:
    from ctsr_infer.train.config import load_config
    from ctsr_infer.train.ctsr_stage2 import Stage2Config

    root = Path(__file__).parent.parent / "examples" / "train"
    assert load_config(Stage1Config, root / "ctsr_stage1.toml") == Stage1Config()
    assert load_config(Stage2Config, root / "ctsr_stage2.toml") == Stage2Config()
