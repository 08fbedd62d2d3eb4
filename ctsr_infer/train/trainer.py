"""The step loop, checkpoints and resume that every recipe shares.

A recipe subclasses :class:`Recipe` and provides ``train_step(batch) -> {term: value}`` plus what its
checkpoint holds: modules saved in full (``full_modules``: discriminators, EMA copies, a fully
fine-tuned student) and modules of which only the trainable parameters are saved
(``trainable_modules``: a frozen base with LoRA adapters), and its optimisers. It builds its
:class:`~ctsr_infer.train.engine.Engine` first and, in ``train_step``, calls ``self.engine.backward``
and ``self.engine.step`` instead of ``loss.backward()`` / ``optimizer.step()``; the loop here runs
``gradient_accumulation_steps`` micro-batches under autocast per step.

A checkpoint holds the step, the Python and torch RNG states and the config, and is written
atomically by the main process; loading it (``weights_only``) and running on gives bit-identical
weights in a single process. With several processes each one's RNG is re-derived from the seed, the
step and its index on resume (the checkpoint holds process 0's only).
"""

from __future__ import annotations

import ast
import os
import random
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..atomic import atomic_write
from .engine import Engine

__all__ = ["Recipe"]


class Recipe:
    config: Any
    engine: Engine
    step: int = 0
    rng: random.Random

    # -- what a recipe provides ----------------------------------------------------------------

    def train_step(self, batch: Any) -> dict[str, float]:
        raise NotImplementedError

    def full_modules(self) -> dict[str, nn.Module]:
        return {}

    def trainable_modules(self) -> dict[str, nn.Module]:
        return {}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        raise NotImplementedError

    def export(self, path: str | os.PathLike[str]) -> Path:
        """Write the trained student file to ``path``; returns it."""
        raise NotImplementedError

    # -- shared ----------------------------------------------------------------------------------

    def train(self, batches: Iterator[Any], steps: int | None = None, *, checkpoint: Path | None = None,
              on_step: Callable[[int, dict[str, float]], None] | None = None) -> list[dict[str, float]]:
        """Run until step ``steps`` more than now (default: the config's total), checkpointing every
        ``config.checkpoint_every`` steps when a path is given."""
        history = []
        total = self.config.steps if steps is None else self.step + steps
        while self.step < total:
            micro = []
            for batch in self.engine.micro_batches(batches):
                with self.engine.autocast():
                    micro.append(self.train_step(batch))
                self.engine.end_micro_batch()
            self.step += 1
            terms = {k: sum(m[k] for m in micro) / len(micro) for k in micro[0]}
            history.append(terms)
            if on_step is not None and self.engine.is_main:
                on_step(self.step, terms)
            if checkpoint is not None and self.step % self.config.checkpoint_every == 0:
                self.save_checkpoint(checkpoint)
        return history

    def seed_process(self) -> None:
        """After the networks are built from the shared seed: process 0 keeps drawing from the
        config's seed, every other process from its own, and all start from process 0's weights."""
        self.engine.broadcast([*self.full_modules().values(), *self.trainable_modules().values()])
        seed = self.engine.process_seed(self.config.seed)
        self.rng = random.Random(seed)
        if self.engine.process_index:
            torch.manual_seed(seed)

    def save_checkpoint(self, path: Path) -> Path:
        path = Path(path)
        if not self.engine.is_main:
            self.engine.wait()
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        state: dict[str, Any] = {"step": self.step, "python_rng": repr(self.rng.getstate()), "torch_rng": torch.get_rng_state(),
                                 "config": asdict(self.config)}
        for name, module in self.full_modules().items():
            state[f"full.{name}"] = module.state_dict()
        for name, module in self.trainable_modules().items():
            state[f"trainable.{name}"] = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}
        for name, optimizer in self.optimizers().items():
            state[f"optimizer.{name}"] = optimizer.state_dict()
        atomic_write(path, writer=lambda tmp: torch.save(state, tmp))
        self.engine.wait()
        return path

    def load_checkpoint(self, path: Path) -> None:
        state = torch.load(path, map_location="cpu", weights_only=True)
        for name, module in self.full_modules().items():
            module.load_state_dict(state[f"full.{name}"])
        for name, module in self.trainable_modules().items():
            own = dict(module.named_parameters())
            with torch.no_grad():
                for key, value in state[f"trainable.{name}"].items():
                    own[key].copy_(value)
        for name, optimizer in self.optimizers().items():
            optimizer.load_state_dict(state[f"optimizer.{name}"])
        self.step = int(state["step"])
        rank = self.engine.process_index
        if rank == 0:
            self.rng.setstate(ast.literal_eval(state["python_rng"]))
            torch.set_rng_state(state["torch_rng"])
        else:
            self.rng = random.Random(f"{self.config.seed}/{self.step}/{rank}")
            torch.manual_seed(self.rng.randrange(2**63))
