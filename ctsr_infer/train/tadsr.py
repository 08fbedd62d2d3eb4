"""TAD-SR (arXiv 2408.07476): time-aware distillation of ResShift into a one-step student.

The student is a full copy of the teacher's Swin-UNet (all parameters train, EMA 0.999); the teacher
(frozen) gives the 15-step deterministic sample (Eq. 3) from the student's own z_T; per step, with the
digest's readings (seeds-digest §2.2-2.5):

    L_distill = || z0_tch - z0_stu ||^2                                              (Eq. 6)
    L_hsd     = mean( sg[eps_T(z_t'^stu) - eps_T(z_t'^tch)] * z0_stu ), t' in {0, 1, 2}  (Eq. 7-8, the
                stop-gradient surrogate: its gradient is the HSD gradient; zero when outputs coincide)
    L_adv     = -mean D(F(z_t^stu), t);  D: hinge on F(z_t^gt) vs F(z_t^stu)          (Eq. 9-12)
    L         = L_distill + 1 * L_hsd + 0.02 * L_adv                                    (Eq. 13, real-world SR)

F are the frozen teacher's encoder features (input blocks at each downsampling, the last, the middle
block), D the time-aware heads of :mod:`.gan`; z_t^stu and z_t^gt share t and the noise, which is
Gaussian (TAD-SR's code draws it uniformly, which its forward process does not assume). One t per
step for the whole batch. AdamW 5e-5 with weight decay 0 for both, linear warm-up over 5,000 steps.
The exported student (EMA weights) is a ``resshift-onestep`` student file with the teacher's VQ.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .engine import EngineConfig
from .gan import EMA, TimeAwareDiscriminator, hinge_d_loss, hinge_g_loss
from .resshift_backend import ResShiftStudentMixin

__all__ = ["TadsrConfig", "TadsrTrainer"]


@dataclass(frozen=True)
class TadsrConfig(EngineConfig):
    steps: int = 30_000
    lr: float = 5e-5
    warmup: int = 5_000
    lambda_hsd: float = 1.0
    lambda_gan: float = 0.02
    ema: float = 0.999
    hsd_indices: int = 3
    """t' is drawn from the first ``hsd_indices`` 0-based indices (t' in {1, 2, 3} of 15)."""
    disc_embed: int = 160
    disc_c_dim: int = 64
    batch: int = 8
    crop: int = 256
    """HR crop side (LR = crop / 4)."""
    seed: int = 0
    checkpoint_every: int = 1000


class TadsrTrainer(ResShiftStudentMixin):
    def __init__(self, teacher: str | os.PathLike[str], config: TadsrConfig) -> None:
        self.config = config
        torch.manual_seed(config.seed)
        self._load_teacher(teacher)
        self.student = copy.deepcopy(self.teacher.net).train().requires_grad_(True)
        self.ema = EMA(self.student, config.ema)
        probe = self.teacher.unet_config.multiple
        zeros = torch.zeros(1, self.teacher.unet_config.in_channels, probe, probe, device=self.device)
        with torch.no_grad():
            channels = [f.shape[1] for f in self.teacher.net.encoder_features(zeros, torch.zeros(1, dtype=torch.long, device=self.device), zeros[:, :3])]
        self.disc = TimeAwareDiscriminator(channels, embed_dim=config.disc_embed, c_dim=config.disc_c_dim).to(self.device)
        self.opt_g = torch.optim.AdamW(self.student.parameters(), lr=config.lr, weight_decay=0.0)
        self.opt_d = torch.optim.AdamW(self.disc.parameters(), lr=config.lr, weight_decay=0.0)
        self.step = 0
        self.seed_process()

    def features(self, z_t: torch.Tensor, t: int, lq: torch.Tensor) -> list[torch.Tensor]:
        return self.teacher.net.encoder_features(self.schedule.scale_input(z_t, t), torch.full((z_t.shape[0],), t, dtype=torch.long, device=z_t.device), lq)

    def hsd(self, z0_stu: torch.Tensor, z0_tch: torch.Tensor, z_y: torch.Tensor, lq: torch.Tensor, t: int,
            noise: torch.Tensor) -> torch.Tensor:
        """The stop-gradient surrogate of Eq. 7-8 (shared noise; zero when the outputs coincide)."""
        with torch.no_grad():
            z_s = self.schedule.q_sample(z0_stu.detach(), z_y, t, noise)
            z_c = self.schedule.q_sample(z0_tch, z_y, t, noise)
            g = self.teacher_eps(z_s, z_y, t, lq) - self.teacher_eps(z_c, z_y, t, lq)
        return (g * z0_stu).mean()

    def _lr(self) -> float:
        return self.config.lr * min(1.0, (self.step + 1) / max(1, self.config.warmup))

    def train_step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, float]:
        lr, hr = batch
        cfg = self.config
        for opt in (self.opt_g, self.opt_d):
            for group in opt.param_groups:
                group["lr"] = self._lr()
        lq, z_y, z_gt = self.latents(lr, hr)
        noise = self.noise(z_y)
        z0_stu = self.one_step(self.student, z_y, lq, noise)
        z0_tch = self.teacher_sample(z_y, lq, noise)
        # discriminator (Eq. 12)
        t_d = self.rng.randrange(self.schedule.steps - 1)
        n_d = self.noise(z_y)
        with torch.no_grad():
            real = self.features(self.schedule.q_sample(z_gt, z_y, t_d, n_d), t_d, lq)
        fake = self.features(self.schedule.q_sample(z0_stu, z_y, t_d, n_d), t_d, lq)
        steps = torch.full((z_y.shape[0],), t_d, dtype=torch.long, device=z_y.device)
        loss_d = hinge_d_loss(self.disc(real, steps), self.disc([f.detach() for f in fake], steps))
        self.engine.backward(loss_d, self.disc.parameters())
        self.engine.step(self.opt_d)
        # student (Eq. 13)
        distill = F.mse_loss(z0_stu, z0_tch)
        hsd = self.hsd(z0_stu, z0_tch, z_y, lq, self.rng.randrange(cfg.hsd_indices), self.noise(z_y))
        adv = hinge_g_loss(self.disc(fake, steps))
        loss_g = distill + cfg.lambda_hsd * hsd + cfg.lambda_gan * adv
        self.engine.backward(loss_g, self.student.parameters())
        self.engine.step(self.opt_g)
        if self.engine.sync:
            self.ema.update(self.student)
        return {"distill": float(distill.detach()), "hsd": float(hsd.detach()), "adv": float(adv.detach()), "total": float(loss_g.detach()), "disc": float(loss_d.detach())}

    def full_modules(self) -> dict[str, torch.nn.Module]:
        return {"student": self.student, "ema": self.ema.shadow, "disc": self.disc}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"g": self.opt_g, "d": self.opt_d}

    def export(self, path: str | os.PathLike[str], *, use_ema: bool = True, recipe: str = "tadsr") -> Path:
        return super().export(path, use_ema=use_ema, recipe=recipe)
