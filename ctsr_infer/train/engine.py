"""Devices, processes, mixed precision and gradient accumulation for every recipe, on top of
`accelerate <https://huggingface.co/docs/accelerate>`_.

``accelerate launch --multi_gpu --num_processes 8 -m ctsr_infer.cli train ...`` (or ``torchrun``)
starts one process per GPU; :class:`Engine` joins them through accelerate's ``PartialState`` (the
process group, this process's device and index) and the recipes use it for four things only:

* ``autocast()`` around a micro-batch: ``mixed_precision`` ``bf16`` or ``fp16`` (fp16 with a
  gradient scaler, CUDA only); ``no`` is full fp32. Unset, it is what ``accelerate launch
  --mixed_precision`` says.
* ``backward(loss, params)``: the loss divided by ``gradient_accumulation_steps``, gradients only
  into ``params`` (so a generator loss never leaks into its discriminator's gradients).
* ``step(*optimizers)``: on the last micro-batch of a step, the gradients of each optimiser's
  parameters are averaged over the processes (one flat all-reduce per optimiser and dtype),
  unscaled when fp16, and the optimiser steps and clears them; on the other micro-batches it does
  nothing.
* the process index, so each process draws its own data and noise, and main-process-only
  checkpointing and logging.

Two choices, and why:

* Not ``accelerate.Accelerator``: its state is one per process and fixes the precision at the first
  construction, while a process here may build several recipes (tests, stage 1 then stage 2);
  autocast and the gradient scaler come from ``torch.amp`` directly, which is what the Accelerator
  wraps.
* Not ``DistributedDataParallel``: the recipes call parts of their networks directly (the teacher's
  encoder features, the VAE's halves, peft-wrapped UNets), and DDP synchronises gradients only for
  calls through its wrapper's ``forward``. Averaging the gradients of exactly what each optimiser
  updates is correct for any call pattern and cheap for LoRA; it gives up DDP's overlap of
  communication with the backward pass.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

from ..errors import DeviceError, InvalidInputError

__all__ = ["Engine", "EngineConfig"]

_PRECISIONS = ("no", "bf16", "fp16")


@dataclass(frozen=True)
class EngineConfig:
    """The engine's fields, shared by every recipe's config."""

    device: str = "auto"  # auto: this process's GPU under accelerate launch, else the CPU; or cpu / cuda
    mixed_precision: str | None = None
    """no | bf16 | fp16 (fp16: CUDA only, with a gradient scaler); unset: what ``accelerate launch
    --mixed_precision`` (or ``accelerate config``) says, else no."""
    gradient_accumulation_steps: int = 1


class Engine:
    """One per recipe; see the module docstring."""

    def __init__(self, *, device: str = "auto", mixed_precision: str | None = None, gradient_accumulation_steps: int = 1) -> None:
        if mixed_precision is not None and mixed_precision not in _PRECISIONS:
            raise InvalidInputError(f"`mixed_precision` must be one of {list(_PRECISIONS)}, got {mixed_precision!r}.")
        if not isinstance(gradient_accumulation_steps, int) or gradient_accumulation_steps < 1:
            raise InvalidInputError(f"`gradient_accumulation_steps` must be an integer >= 1, got {gradient_accumulation_steps!r}.")
        if device not in ("auto", "cpu", "cuda"):
            raise InvalidInputError(f"training `device` must be auto, cpu or cuda, got {device!r}; "
                                    "choose GPUs with CUDA_VISIBLE_DEVICES and `accelerate launch`.")
        if device == "cuda" and not torch.cuda.is_available():
            raise DeviceError("training `device` is 'cuda' but torch sees no CUDA device; use `device = \"cpu\"`.")
        cpu = device == "cpu" or not torch.cuda.is_available()
        precision = mixed_precision or os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
        if precision not in _PRECISIONS:
            raise InvalidInputError(f"ACCELERATE_MIXED_PRECISION must be one of {list(_PRECISIONS)}, got {precision!r}.")
        if cpu and precision == "fp16":
            raise DeviceError("`mixed_precision` fp16 needs a CUDA GPU; on the CPU use bf16 or no.")
        try:
            from accelerate import PartialState
        except ImportError as exc:  # the train extra brings it
            raise InvalidInputError("training needs `accelerate`: pip install 'ctsr-infer[train]'.") from exc
        self.state = PartialState(cpu=cpu)
        self.device = torch.device("cpu") if cpu else self.state.device
        self.precision = precision
        self.scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
        self.accumulation = gradient_accumulation_steps
        self.micro = 0  # micro-batch index within the current step

    @classmethod
    def from_config(cls, config: object) -> Engine:
        return cls(device=getattr(config, "device", "auto"), mixed_precision=getattr(config, "mixed_precision", None),
                   gradient_accumulation_steps=getattr(config, "gradient_accumulation_steps", 1))

    # -- facts ---------------------------------------------------------------------------------

    @property
    def process_index(self) -> int:
        return self.state.process_index

    @property
    def num_processes(self) -> int:
        return self.state.num_processes

    @property
    def is_main(self) -> bool:
        return self.state.is_main_process

    def process_seed(self, seed: int) -> int:
        """``seed`` for process 0, a seed of its own for every other process."""
        return seed + 1_000_003 * self.process_index

    @property
    def sync(self) -> bool:
        """True on the last micro-batch of a step: the optimisers step after it."""
        return self.micro == self.accumulation - 1

    # -- the four uses -------------------------------------------------------------------------

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        if self.precision == "no":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def backward(self, loss: torch.Tensor, params: Iterable[torch.nn.Parameter], *, retain_graph: bool = False) -> None:
        loss = loss / self.accumulation
        if self.scaler is not None:
            loss = self.scaler.scale(loss)
        loss.backward(inputs=[p for p in params if p.requires_grad], retain_graph=retain_graph)

    def step(self, *optimizers: torch.optim.Optimizer) -> None:
        if not self.sync:
            return
        scaler = self.scaler
        for optimizer in optimizers:
            params = [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]
            if self.num_processes > 1:
                _average_gradients(params, self.num_processes)
            if scaler is not None:
                scaler.step(optimizer)
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    def end_micro_batch(self) -> None:
        """Called by the train loop after each micro-batch."""
        if self.sync and self.scaler is not None:
            self.scaler.update()
        self.micro = (self.micro + 1) % self.accumulation

    def micro_batches(self, batches: Iterator[object]) -> Iterator[object]:
        """The micro-batches of one step."""
        for _ in range(self.accumulation):
            yield next(batches)

    def broadcast(self, modules: Iterable[torch.nn.Module]) -> None:
        """Make every process start from process 0's trainable weights."""
        if self.num_processes == 1:
            return
        import torch.distributed as dist

        with torch.no_grad():
            for module in modules:
                for p in module.parameters():
                    if p.requires_grad:
                        dist.broadcast(p.data, src=0)

    def wait(self) -> None:
        self.state.wait_for_everyone()


def _average_gradients(params: list[torch.nn.Parameter], world: int) -> None:
    import torch.distributed as dist

    grads = []
    for p in params:
        if p.grad is None:  # every process must contribute the same sizes
            p.grad = torch.zeros_like(p)
        grads.append(p.grad)
    for dtype in dict.fromkeys(g.dtype for g in grads):  # same order in every process
        same = [g for g in grads if g.dtype == dtype]
        flat = torch.cat([g.reshape(-1) for g in same])
        dist.all_reduce(flat)
        flat /= world
        offset = 0
        for g in same:
            n = g.numel()
            g.copy_(flat[offset:offset + n].view_as(g))
            offset += n
