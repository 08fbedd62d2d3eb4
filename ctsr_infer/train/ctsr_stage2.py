"""CTSR stage 2 (arXiv 2503.14272 Sec. 3.3): controllability distillation into a "ctrl" LoRA.

The teacher T_S is the stage-1 student, frozen; the student is the same UNet with a new rank-r LoRA
``ctrl`` (B initialised to zero, so training starts from T_S). On stage-1 latents z0 (the SR output
of a low-resolution image), with t < t' drawn uniformly and ordered (Algorithm 2's "t' > t"):

    z_t = z0 + t * eps_TS(z0, tau(t), c)                                   (Eq. 5)
    L   = || (t' - t) * eps_S(z_t, tau(t), c) - (t' * eps_TS(z0, tau(t'), c) - t * eps_TS(z0, tau(t), c)) ||^2
                                                                           (Eq. 8, teacher at z0)

tau maps t in [0, 1] to the UNet's integer timestep, tau(t) = round(tau_start + (tau_end - tau_start) t);
the paper leaves it open, so it is a setting and goes into the exported file. The runtime's knob
(``ctsr-flow``) then moves z0 by t * eps_S(z0, tau(0), c), or K Euler steps of the same field.

The teacher side is the runtime's own :class:`~ctsr_infer.families.sd_onestep.SDOneStep` (the
stage-1 LoRA fused into the weights exactly as at inference); the ctrl adapter is a peft LoRA on
that UNet, switched off for teacher calls. Export writes the adapter in the student format
(``lora.ctrl.unet.<module>.A/B``), so the runtime loads what was trained.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..student_file import Adapter, StudentFile, load_student, save_student
from ..device import resolve
from ..errors import InvalidInputError
from ..families.base import RunOptions
from ..families.sd_onestep.model import SDOneStep
from ..families.sd_onestep.base_model import load_base
from ..families.framing import pad_to_multiple
from ..image import resize_bicubic
from ..knob import Knob
from .engine import Engine, EngineConfig
from .sd_student import lora_weight
from .trainer import Recipe

__all__ = ["Stage2Config", "Stage2Trainer", "CTRL_TARGETS", "tau_report", "lr_batches"]

logger = logging.getLogger(__name__)

CTRL_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2")
"""UNet layers that get the ctrl LoRA (OSEDiff's UNet targets without conv_in/conv_out and the
samplers: attention, feed-forward and ResNet convolutions)."""


@dataclass(frozen=True)
class Stage2Config(EngineConfig):
    """Defaults are the paper's (Sec. 4.1): AdamW (0.9, 0.999), lr 5e-5, batch 1, rank 4, 50,000 steps."""

    steps: int = 50_000
    lr: float = 5e-5
    batch: int = 1
    rank: int = 4
    alpha: float = 4.0
    tau_start: int = 0
    tau_end: int = 999
    ordered: bool = True
    """t < t' (Algorithm 2); False draws them independently (Eq. 8 as printed)."""
    seed: int = 0
    checkpoint_every: int = 1000
    default_t: float = 0.5
    """The knob value the exported student uses when the caller gives none."""

    def knob(self) -> Knob:
        return Knob(kind="ctsr-flow", default_t=self.default_t, tau_start=self.tau_start, tau_end=self.tau_end, steps=1)


def _targets(unet: torch.nn.Module) -> list[str]:
    names = []
    for name, module in unet.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)) and any(name == t or name.endswith("." + t) for t in CTRL_TARGETS):
            names.append(name)
    return names


class Stage2Trainer(Recipe):
    """Holds the stage-1 model (teacher), the ctrl adapter (student) and the optimiser."""

    def __init__(self, stage1: str | os.PathLike[str], base: str | os.PathLike[str], config: Stage2Config) -> None:
        from peft import LoraConfig

        self.config = config
        self.stage1 = load_student(stage1)
        if any(a.phase == "ctrl" for a in self.stage1.meta.adapters):
            raise InvalidInputError(f"`{stage1}` already has a ctrl adapter; stage 2 starts from a stage-1 student.")
        self.engine = Engine.from_config(config)
        torch.manual_seed(config.seed)
        unet, vae, alphas = load_base(base)
        self.model = SDOneStep(self.stage1, unet, vae, alphas, resolve(str(self.engine.device), "fp32"))
        self.unet = self.model.unet
        self.unet.requires_grad_(False)
        self.modules = _targets(self.unet)
        # peft annotates lora_alpha as int; it takes a float (the scale is alpha / r)
        lora = LoraConfig(r=config.rank, lora_alpha=config.alpha,  # type: ignore[arg-type]
                          target_modules=self.modules, init_lora_weights=True)
        self.unet.add_adapter(lora, adapter_name="ctrl")
        self.parameters = [p for n, p in self.unet.named_parameters() if ".ctrl." in n]
        for p in self.parameters:
            p.requires_grad_(True)
        self.optimizer = torch.optim.AdamW(self.parameters, lr=config.lr, betas=(0.9, 0.999))
        self.step = 0
        self.seed_process()
        self.options = RunOptions(scale=self.stage1.meta.scale, color_fix="none", knob_steps=1, seed=None, encode="mean", tiling="off")

    # -- the model pieces --------------------------------------------------------------------------

    def eps(self, z: torch.Tensor, tau: int, *, ctrl: bool) -> torch.Tensor:
        """The UNet's epsilon at integer timestep ``tau``, with or without the ctrl adapter."""
        if ctrl:
            self.unet.enable_adapters()
        else:
            self.unet.disable_adapters()
        try:
            return self.model._unet(z, tau)
        finally:
            self.unet.enable_adapters()

    @torch.no_grad()
    def stage1_latent(self, lr: torch.Tensor) -> torch.Tensor:
        """(N, 3, h, w) in [0, 1] -> the stage-1 latent z0 of the x``scale`` upsampled image."""
        latents = []
        scale = self.stage1.meta.scale
        for frame in lr:
            size = (round(frame.shape[-2] * scale), round(frame.shape[-1] * scale))
            up = torch.from_numpy(resize_bicubic(frame.permute(1, 2, 0).numpy(), size, bit_depth=32)).permute(2, 0, 1)[None]
            self.unet.disable_adapters()
            try:
                latents.append(self.model.denoise(self.model.encode(pad_to_multiple(up, 8) * 2.0 - 1.0)))
            finally:
                self.unet.enable_adapters()
        return torch.cat(latents)

    def loss(self, z0: torch.Tensor) -> torch.Tensor:
        """Eq. 8 for one (t, t') pair per call; teacher terms without gradients."""
        knob = self.config.knob()
        a, b = self.rng.random(), self.rng.random()
        t, t2 = (min(a, b), max(a, b)) if self.config.ordered else (a, b)
        with torch.no_grad():
            e_t = self.eps(z0, knob.tau(t), ctrl=False)
            e_t2 = self.eps(z0, knob.tau(t2), ctrl=False)
            z_t = z0 + t * e_t
            target = t2 * e_t2 - t * e_t
        velocity = self.eps(z_t, knob.tau(t), ctrl=True)
        return F.mse_loss((t2 - t) * velocity, target)

    def train_step(self, batch: torch.Tensor) -> dict[str, float]:
        loss = self.loss(self.stage1_latent(batch))
        self.engine.backward(loss, self.parameters)
        self.engine.step(self.optimizer)
        return {"ctrl": float(loss.detach())}

    def trainable_modules(self) -> dict[str, torch.nn.Module]:
        return {"unet": self.unet}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"adamw": self.optimizer}

    def export(self, path: str | os.PathLike[str]) -> Path:
        """The stage-1 student plus the trained ctrl adapter, as a ``ctsr-flow`` student file."""
        tensors = dict(self.stage1.tensors)
        for module in self.modules:
            tensors[f"lora.ctrl.unet.{module}.A"] = lora_weight(self.unet, module, "A", "ctrl").detach().float().cpu().clone()
            tensors[f"lora.ctrl.unet.{module}.B"] = lora_weight(self.unet, module, "B", "ctrl").detach().float().cpu().clone()
        adapter = Adapter(name="ctrl", component="unet", rank=self.config.rank, alpha=self.config.alpha, phase="ctrl")
        provenance = {**dict(self.stage1.meta.provenance), "stage2": {**asdict(self.config), "trained_steps": self.step}}
        meta = replace(self.stage1.meta, adapters=(*self.stage1.meta.adapters, adapter), knob=self.config.knob(), provenance=provenance)
        return save_student(StudentFile(meta, tensors), path)

    @torch.no_grad()
    def reference(self, lr: torch.Tensor, ts: Sequence[float]) -> list[torch.Tensor]:
        """The training-time model's images at ``ts`` for one LR image (1, 3, h, w) in [0, 1], computed
        the way the knob is defined (t = 0: stage 1; t > 0: z0 + t * eps_S(z0, tau(0), c)), without
        the runtime's fused ctrl weights: what an exported file must reproduce."""
        z0 = self.stage1_latent(lr)
        velocity = self.eps(z0, self.config.knob().tau(0.0), ctrl=True)
        scale = self.stage1.meta.scale
        height, width = round(lr.shape[-2] * scale), round(lr.shape[-1] * scale)
        self.unet.eval()
        images = []
        for t in ts:
            image = self.model.decode(z0 if t == 0 else z0 + t * velocity).cpu()
            images.append(((image[..., :height, :width] + 1.0) / 2.0).clamp(0.0, 1.0))
        return images


def tau_report(trainer: Stage2Trainer, lr: torch.Tensor, mappings: dict[str, tuple[int, int]],
               ts: Sequence[float] = (0.25, 0.5, 1.0)) -> dict[str, dict[float, float]]:
    """||t * eps_TS(z0, tau(t), c)|| / ||z0|| for candidate tau mappings (seeds-digest §4.4: a tau near
    999 on a clean latent blows z(t) up). Meaningful with the real stage-1 weights only."""
    z0 = trainer.stage1_latent(lr)
    report: dict[str, dict[float, float]] = {}
    for name, (start, end) in mappings.items():
        knob = Knob(kind="ctsr-flow", default_t=0.5, tau_start=start, tau_end=end)
        with torch.no_grad():
            report[name] = {t: float((t * trainer.eps(z0, knob.tau(t), ctrl=False)).norm() / z0.norm()) for t in ts}
    return report


def lr_batches(images: Sequence[np.ndarray], *, batch: int, crop: int, seed: int) -> Iterator[torch.Tensor]:
    """Endless seeded random crops (N, 3, crop, crop) in [0, 1] from LR images (H, W, 3) float."""
    rng = np.random.default_rng(seed)
    while True:
        crops = []
        for _ in range(batch):
            image = images[int(rng.integers(len(images)))]
            top = int(rng.integers(0, max(1, image.shape[0] - crop + 1)))
            left = int(rng.integers(0, max(1, image.shape[1] - crop + 1)))
            crops.append(torch.from_numpy(np.ascontiguousarray(image[top : top + crop, left : left + crop])).permute(2, 0, 1).float())
        yield torch.stack(crops)

