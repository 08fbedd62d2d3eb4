"""What the ResShift-backend recipes (TAD-SR, co-learning) share: the frozen teacher and its VQ,
latents, the one-step student call, the teacher's deterministic multi-step sample, eps from x0, and
export of a trained student to a ``resshift-onestep`` student file."""

from __future__ import annotations

import os
import random
from dataclasses import asdict, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from ..student_file import StudentFile, load_student, save_student
from ..device import resolve
from ..errors import InvalidInputError
from ..families.resshift.model import FAMILY_NAME as RESSHIFT_FAMILY
from ..families.resshift.model import ResShiftModel
from .gan import EMA
from .engine import Engine
from .trainer import Recipe

__all__ = ["ResShiftStudentMixin"]


class ResShiftStudentMixin(Recipe):
    """What the ResShift-backend recipes share: the frozen teacher, latents, the one-step student
    call, checkpoints and export."""

    teacher: ResShiftModel
    student: torch.nn.Module
    ema: EMA
    teacher_file: StudentFile
    step: int
    rng: random.Random

    def _load_teacher(self, teacher: str | os.PathLike[str]) -> None:
        self.teacher_file = load_student(teacher)
        if self.teacher_file.meta.family != RESSHIFT_FAMILY:
            raise InvalidInputError(f"the teacher `{teacher}` must be a {RESSHIFT_FAMILY} file, not {self.teacher_file.meta.family!r}.")
        self.engine = Engine.from_config(self.config)
        self.device = self.engine.device
        self.teacher = ResShiftModel(self.teacher_file, resolve(str(self.device), "fp32"))
        self.teacher.net.requires_grad_(False)
        self.teacher.vq.requires_grad_(False)
        self.schedule = self.teacher.schedule

    def latents(self, lr: torch.Tensor, hr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(lq in [-1, 1], z_y, z_gt) for LR (N, 3, h, w) and HR (N, 3, 4h, 4w) in [0, 1]."""
        # contiguous NCHW: a channels-last batch (from HWC arrays) crashes some CPU conv backward kernels
        lr, hr = lr.contiguous(), hr.contiguous()
        lq = lr * 2.0 - 1.0
        with torch.no_grad():
            z_y = self.teacher.encode(F.interpolate(lq, scale_factor=4, mode="bicubic")).to(self.device)
            z_gt = self.teacher.encode(hr * 2.0 - 1.0).to(self.device)
        return lq.to(self.device), z_y, z_gt

    def noise(self, like: torch.Tensor) -> torch.Tensor:
        return torch.randn(like.shape, generator=torch.Generator().manual_seed(self.rng.randrange(2**31))).to(like.device)

    def one_step(self, net: torch.nn.Module, z_y: torch.Tensor, lq: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        last = self.schedule.steps - 1
        z_T = self.schedule.prior_sample(z_y, noise)
        return net(self.schedule.scale_input(z_T, last), torch.full((z_y.shape[0],), last, dtype=torch.long, device=z_y.device), lq)

    def teacher_eps(self, z_t: torch.Tensor, z_y: torch.Tensor, t: int, lq: torch.Tensor) -> torch.Tensor:
        x0 = self.teacher.net(self.schedule.scale_input(z_t, t), torch.full((z_t.shape[0],), t, dtype=torch.long, device=z_t.device), lq)
        return self.schedule.eps_from_x0(z_t, z_y, x0, t)

    def teacher_sample(self, z_y: torch.Tensor, lq: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The teacher's deterministic multi-step z0 from z_T = z_y + kappa sqrt(eta_T) noise (Eq. 3)."""
        def predict(z: torch.Tensor, t: int) -> torch.Tensor:
            return self.teacher.net(z, torch.full((z.shape[0],), t, dtype=torch.long, device=z.device), lq)

        with torch.no_grad():
            return self.schedule.sample(predict, z_y, sampler="ddim", noise=noise)

    def export(self, path: str | os.PathLike[str], *, use_ema: bool = True, recipe: str = "") -> Path:
        net = self.ema.shadow if use_ema else self.student
        tensors = {k: v for k, v in self.teacher_file.tensors.items() if k.startswith("net.vq.")}
        tensors.update({f"net.unet.{k}": v.detach().float().cpu().clone() for k, v in net.state_dict().items()})
        config = {**dict(self.teacher_file.meta.config), "sampler": "onestep"}
        meta = replace(self.teacher_file.meta, config=config, licence=f"trained by the user from {self.teacher_file.meta.licence}",
                       provenance={recipe: {**asdict(self.config), "trained_steps": self.step}})
        return save_student(StudentFile(meta, tensors), path)
