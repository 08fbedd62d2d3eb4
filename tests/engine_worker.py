"""A toy recipe for the engine's tests, and a worker that trains it in every process of a
``torchrun`` / ``accelerate launch`` job (process k takes the k-th slice of each fixed batch)."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ctsr_infer.train.engine import Engine, EngineConfig
from ctsr_infer.train.trainer import Recipe


@dataclass(frozen=True)
class ToyConfig(EngineConfig):
    steps: int = 3
    seed: int = 0
    checkpoint_every: int = 1000


class Toy(Recipe):
    """Least squares through a small MLP with AdamW: nonlinear enough that a wrong gradient shows."""

    def __init__(self, config: ToyConfig) -> None:
        self.config = config
        self.engine = Engine.from_config(config)
        torch.manual_seed(config.seed)
        self.net = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2))
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=0.05)
        self.step = 0
        self.seed_process()

    def train_step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, float]:
        x, y = batch
        loss = F.mse_loss(self.net(x), y)
        self.engine.backward(loss, self.net.parameters())
        self.engine.step(self.opt)
        return {"loss": float(loss.detach())}

    def full_modules(self) -> dict[str, nn.Module]:
        return {"net": self.net}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"adamw": self.opt}


def fixed_batches(steps: int, size: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(7)
    return [(torch.randn(size, 3, generator=g), torch.randn(size, 2, generator=g)) for _ in range(steps)]


def main(out: str) -> None:
    toy = Toy(ToyConfig())
    world, rank = toy.engine.num_processes, toy.engine.process_index
    batches = fixed_batches(toy.config.steps)
    share = batches[0][0].shape[0] // world
    mine = iter([(x[rank * share:(rank + 1) * share], y[rank * share:(rank + 1) * share]) for x, y in batches])
    toy.train(mine)
    if toy.engine.is_main:
        torch.save({"world": world, "state": toy.net.state_dict()}, out)
    toy.engine.wait()


if __name__ == "__main__":
    main(sys.argv[1])
