"""The training engine: gradient accumulation, several processes, mixed precision, and the
gradient routing the GAN recipes rely on."""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from tiny import torchrun
from torch import nn

from ctsr_infer.errors import DeviceError, InvalidInputError
from ctsr_infer.train.engine import Engine

sys.path.insert(0, str(Path(__file__).parent))
from engine_worker import Toy, ToyConfig, fixed_batches  # noqa: E402


def _halves(batches):
    for x, y in batches:
        n = x.shape[0] // 2
        yield x[:n], y[:n]
        yield x[n:], y[n:]


def test_accumulating_two_half_batches_equals_one_full_batch() -> None:
    batches = fixed_batches(3)
    full = Toy(ToyConfig())
    full.train(iter(batches))
    accumulated = Toy(ToyConfig(gradient_accumulation_steps=2))
    history = accumulated.train(_halves(batches))
    assert accumulated.step == full.step == 3 and len(history) == 3
    for a, b in zip(full.net.parameters(), accumulated.net.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    start = Toy(ToyConfig())
    moved = max(float((a - b).detach().abs().max()) for a, b in zip(full.net.parameters(), start.net.parameters()))
    assert moved > 1e-2  # the comparison above is not between untrained networks


def test_two_processes_average_their_gradients(tmp_path: Path) -> None:
    """torchrun with two CPU processes (what `accelerate launch --multi_gpu` runs on GPUs): each takes
    half of every batch; the result equals one process on the whole batch."""
    out = tmp_path / "ddp.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent.parent)}
    result = torchrun([str(Path(__file__).parent / "engine_worker.py"), str(out)], env=env, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    saved = torch.load(out, weights_only=True)
    assert saved["world"] == 2
    single = Toy(ToyConfig())
    single.train(iter(fixed_batches(single.config.steps)))
    for name, value in single.net.state_dict().items():
        torch.testing.assert_close(saved["state"][name], value, atol=1e-6, rtol=0)


def test_bf16_mixed_precision_runs_the_forward_in_bf16_and_keeps_fp32_weights() -> None:
    seen = []
    toy = Toy(ToyConfig(mixed_precision="bf16"))
    toy.net[0].register_forward_hook(lambda module, args, output: seen.append(output.dtype))
    history = toy.train(iter(fixed_batches(3)))
    assert seen == [torch.bfloat16] * 3
    assert all(p.dtype == torch.float32 for p in toy.net.parameters())
    exact = Toy(ToyConfig())
    exact_history = exact.train(iter(fixed_batches(3)))
    gap = max(abs(a["loss"] - b["loss"]) for a, b in zip(history, exact_history))
    assert 0 < gap < 0.05


def test_backward_fills_only_the_given_parameters() -> None:
    engine = Engine(device="cpu")
    a, b = nn.Linear(2, 2), nn.Linear(2, 2)
    loss = b(a(torch.ones(1, 2))).sum()
    engine.backward(loss, a.parameters())
    assert all(p.grad is not None for p in a.parameters())
    assert all(p.grad is None for p in b.parameters())


def test_optimisers_step_only_on_the_last_micro_batch() -> None:
    toy = Toy(ToyConfig(gradient_accumulation_steps=3))
    before = [p.detach().clone() for p in toy.net.parameters()]
    batches = iter(fixed_batches(3))
    toy.train_step(next(batches))
    toy.engine.end_micro_batch()
    assert all(torch.equal(p, q) for p, q in zip(toy.net.parameters(), before))
    assert all(p.grad is not None for p in toy.net.parameters())


@pytest.mark.parametrize(("kwargs", "error", "names"), [
    (dict(mixed_precision="fp8"), InvalidInputError, "mixed_precision"),
    (dict(gradient_accumulation_steps=0), InvalidInputError, "gradient_accumulation_steps"),
    (dict(device="cuda:3"), InvalidInputError, "CUDA_VISIBLE_DEVICES"),
    (dict(device="cpu", mixed_precision="fp16"), DeviceError, "fp16"),
])
def test_bad_engine_settings_name_the_field(kwargs: dict, error: type, names: str) -> None:
    with pytest.raises(error, match=names):
        Engine(**kwargs)


def test_recipe_configs_carry_the_engine_fields() -> None:
    from ctsr_infer.train.colearn import ColearnConfig
    from ctsr_infer.train.ctsr_stage1 import Stage1Config
    from ctsr_infer.train.ctsr_stage2 import Stage2Config
    from ctsr_infer.train.tadsr import TadsrConfig

    for cls in (Stage1Config, Stage2Config, TadsrConfig, ColearnConfig):
        config = replace(cls(), mixed_precision="bf16", gradient_accumulation_steps=4)
        assert (config.device, config.mixed_precision, config.gradient_accumulation_steps) == ("auto", "bf16", 4)
