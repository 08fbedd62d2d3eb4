"""Co-learning a one-step diffusion upsampler with a learnable downsampler and two discriminators
(colearning-up-down-sampler.txt, Eq. 2-8), on the ResShift backend.

Five networks: the frozen teacher (ResShift, 15-step deterministic sampler), the student (a copy of
the teacher's Swin-UNet, one step from z_T at t = T), a learnable downsampler G (training only), an HR
discriminator D_H and an LR discriminator D_L. With the digest's readings (seeds-digest §3.5):

    x0^ = student(z_T);  x0_tch = teacher 15 steps from the same z_T
    y^  = G(concat(x0^, kappa * eps'))                     (the LR latent z_y, same size as x0^)
    D_H sees pixels (VQ decoder on the continuous latent, a straight-through decode), D_L latents
    L_D   = softplus(-D(real)) + softplus(D(fake))           (Eq. 3 and 5 with logits)
    L^G   = 1 - sigmoid(D(fake))                             (Eq. 4 and 6, the paper's saturating form;
                                                              ``gan_loss = "non-saturating"`` switches)
    L_student     = ||x0^ - z0||^2 + w (L_distill + L_H^G + L_L^G)       (Eq. 7, w = 1)
    L_downsampler = ||y^ - z_y||^2 + w L_L^G                              (Eq. 8, cycle reconstruction)

L_L^G reaches the student through x0^ and G through its parameters; each group gets the gradient of
its own total (per-group ``autograd.grad``), as Eq. 7 and 8 say. The paper's cyclic order is kept:
discriminators, then student and downsampler, every step.

The paper names a StyleGAN-T-style D_H on a feature network (DINO) that cannot be fetched here; both
discriminators are small trainable conv nets (``hr_disc = "conv"``), stated as a deviation.
"""

from __future__ import annotations

import copy
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidInputError
from ..families.resshift.swin_unet import SwinUNet, SwinUNetConfig
from .engine import EngineConfig
from .gan import EMA
from .resshift_backend import ResShiftStudentMixin

__all__ = ["ColearnConfig", "ColearnTrainer", "ConvDiscriminator"]


@dataclass(frozen=True)
class ColearnConfig(EngineConfig):
    steps: int = 20_000
    lr: float = 5e-5
    weight: float = 1.0
    """w, the constant SNR factor of Eq. 7-8 for a one-step student."""
    gan_loss: str = "paper"
    """``paper`` (1 - sigmoid(D)) or ``non-saturating`` (softplus(-D))."""
    downsampler: str = "swin"
    """``swin`` (the student's structure, randomly initialised) or ``conv`` (the paper's cheaper ablation)."""
    hr_disc: str = "conv"
    ema: float = 0.999
    batch: int = 4
    """Not given by the paper."""
    crop: int = 256
    seed: int = 0
    checkpoint_every: int = 1000


class ConvDiscriminator(nn.Module):
    """A PatchGAN-style discriminator: strided convs with spectral norm, logits per patch."""

    def __init__(self, channels: int, width: int = 32, depth: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = channels
        for index in range(depth):
            layers += [nn.utils.spectral_norm(nn.Conv2d(c, width * 2**index, 4, stride=2 if index < depth - 1 else 1, padding=1)),
                       nn.LeakyReLU(0.2)]
            c = width * 2**index
        layers.append(nn.utils.spectral_norm(nn.Conv2d(c, 1, 3, padding=1)))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten(1)


class ConvDownsampler(nn.Module):
    """The cheap G: (x0^, noise) -> LR latent, same spatial size (ResShift's z_y is x4-upsampled LR)."""

    def __init__(self, channels: int = 3, width: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(2 * channels, width, 3, padding=1), nn.SiLU(), nn.Conv2d(width, width, 3, padding=1),
                                 nn.SiLU(), nn.Conv2d(width, channels, 3, padding=1))

    def forward(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, noise], dim=1))


class _SwinDownsampler(nn.Module):
    """G with the student's structure: the latent in, the noise where the student takes the LR image."""

    def __init__(self, config: SwinUNetConfig) -> None:
        super().__init__()
        self.net = SwinUNet(config)

    def forward(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.net(x, torch.zeros(x.shape[0], dtype=torch.long, device=x.device), noise)


class ColearnTrainer(ResShiftStudentMixin):
    def __init__(self, teacher: str | os.PathLike[str], config: ColearnConfig) -> None:
        if config.gan_loss not in ("paper", "non-saturating") or config.downsampler not in ("swin", "conv") or config.hr_disc != "conv":
            raise InvalidInputError(f"co-learning config has an unknown choice: {asdict(config)}.")
        self.config = config
        torch.manual_seed(config.seed)
        self._load_teacher(teacher)
        self.student = copy.deepcopy(self.teacher.net).train().requires_grad_(True)
        self.ema = EMA(self.student, config.ema)
        channels = self.teacher.unet_config.out_channels
        self.down: nn.Module = ConvDownsampler(channels) if config.downsampler == "conv" else _SwinDownsampler(self.teacher.unet_config)
        self.down = self.down.to(self.device)
        self.d_high = ConvDiscriminator(3).to(self.device)
        self.d_low = ConvDiscriminator(channels).to(self.device)
        self.opt_s = torch.optim.Adam(self.student.parameters(), lr=config.lr)
        self.opt_g = torch.optim.Adam(self.down.parameters(), lr=config.lr)
        self.opt_d = torch.optim.Adam([*self.d_high.parameters(), *self.d_low.parameters()], lr=config.lr)
        self.step = 0
        self.seed_process()

    def pixels(self, z: torch.Tensor) -> torch.Tensor:
        """A differentiable decode: the VQ decoder on the continuous latent (straight-through quantiser)."""
        vq = self.teacher.vq
        return vq.decoder(vq.post_quant_conv(z / self.schedule.scale_factor))

    def g_loss(self, logits: torch.Tensor) -> torch.Tensor:
        if self.config.gan_loss == "paper":
            return (1.0 - torch.sigmoid(logits)).mean()
        return F.softplus(-logits).mean()

    @staticmethod
    def d_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        return F.softplus(-real).mean() + F.softplus(fake).mean()

    def train_step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, float]:
        lr, hr = batch
        cfg = self.config
        lq, z_y, z_gt = self.latents(lr, hr)
        noise = self.noise(z_y)
        x0 = self.one_step(self.student, z_y, lq, noise)
        x0_tch = self.teacher_sample(z_y, lq, noise)
        y_hat = self.down(x0, self.schedule.kappa * self.noise(z_y))
        fake_pixels = self.pixels(x0)
        # discriminators (Eq. 3, 5)
        with torch.no_grad():
            real_pixels = hr.contiguous().to(self.device) * 2.0 - 1.0
        loss_d = self.d_loss(self.d_high(real_pixels), self.d_high(fake_pixels.detach())) + self.d_loss(self.d_low(z_y), self.d_low(y_hat.detach()))
        self.engine.backward(loss_d, [*self.d_high.parameters(), *self.d_low.parameters()])
        self.engine.step(self.opt_d)
        # student and downsampler (Eq. 7, 8), each with the gradient of its own total
        denoise = F.mse_loss(x0, z_gt)
        distill = F.mse_loss(x0, x0_tch)
        high = self.g_loss(self.d_high(fake_pixels))
        low = self.g_loss(self.d_low(y_hat))
        loss_student = denoise + cfg.weight * (distill + high + low)
        loss_down = F.mse_loss(y_hat, z_y) + cfg.weight * low
        self.engine.backward(loss_student, self.student.parameters(), retain_graph=True)
        self.engine.backward(loss_down, self.down.parameters())
        self.engine.step(self.opt_s, self.opt_g)
        if self.engine.sync:
            self.ema.update(self.student)
        return {"denoise": float(denoise.detach()), "distill": float(distill.detach()), "gan_high": float(high.detach()), "gan_low": float(low.detach()),
                "student": float(loss_student.detach()), "downsampler": float(loss_down.detach()), "disc": float(loss_d.detach())}

    def full_modules(self) -> dict[str, nn.Module]:
        return {"student": self.student, "ema": self.ema.shadow, "down": self.down, "d_high": self.d_high, "d_low": self.d_low}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"student": self.opt_s, "down": self.opt_g, "disc": self.opt_d}

    def export(self, path: str | os.PathLike[str], *, use_ema: bool = True, recipe: str = "colearn") -> Path:
        return super().export(path, use_ema=use_ema, recipe=recipe)
