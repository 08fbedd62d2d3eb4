"""CTSR stage 1 (arXiv 2503.14272 Sec. 3.2, Eq. 1-4): dual-teacher fidelity-realness distillation.

The student S starts as the realness teacher T_r (OSEDiff, converted to a student file) and trains
its LoRA adapters and ``conv_in``; T_r is a frozen copy (the runtime's fused model), the fidelity
teacher T_f a frozen ResShift (``resshift-onestep`` student file run as an x0 predictor).

    z0^s = S(x_LR) (one step), x0 = D(z0^s), z0 = E_frozen(x_GT)
    L_rec = l2 * MSE(x0, x_GT) + lp * LPIPS(x0, x_GT)
    L_rn  = ||eps_Tr(z_t^s) - eps_S(z_t^s)||^2 + gamma ||eps_Tr(z_t^s) - eps_Tr(z_t)||^2,  z_t^s, z_t: DDPM noise at t
    L_fl  = ||eps_Tf(u_t^s) - m||^2 + gamma ||eps_Tf(u_t^s) - eps_Tf(u_t)||^2            (ResShift space)
    L     = L_rec + rn * L_rn + fl * L_fl     (defaults: l2 1, lp 2, rn 1, fl 2, gamma 5.5)

Readings where the paper is silent (seeds-digest §4.6): one fraction u ~ U(0.02, 0.98) per step
gives the SD timestep int(999 u) and the ResShift index ceil(15 u) - 1; the same noise noises the
student's and the ground truth's latents; T_f lives in the VQ-f4 space, so the student's image and the
ground truth are re-encoded by the frozen VQ encoder and noised by ResShift's forward process with
the low-resolution latent, and eps comes from T_f's x0 prediction (TAD-SR Eq. 14). The student has no
eps in that space, so the first L_fl term compares T_f's eps with the injected noise m (an SDS-style
pull, option (a) of the digest). Teacher-side differences (the gamma terms) carry gradients into the
student's output through the frozen teachers.

LPIPS is the ``lpips`` package with its pretrained VGG; without it training refuses to start unless
``perceptual="untrained-features"`` is chosen explicitly (a fixed random feature net: for tests
and smoke runs, never a default).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..device import resolve
from ..errors import InvalidInputError
from ..student_file import load_student
from ..families.sd_onestep.model import SDOneStep
from ..families.sd_onestep.base_model import load_base
from .sd_student import TrainableStudent
from .engine import Engine, EngineConfig
from .trainer import Recipe

__all__ = ["Stage1Config", "Stage1Trainer", "perceptual_loss", "paired_batches", "stacked"]


@dataclass(frozen=True)
class Stage1Config(EngineConfig):
    """Defaults are the paper's (Sec. 4.1): AdamW (0.9, 0.999), lr 5e-5, batch 1, 20,000 steps."""

    steps: int = 20_000
    lr: float = 5e-5
    l2: float = 1.0
    lp: float = 2.0
    rn: float = 1.0
    fl: float = 2.0
    gamma_time: float = 5.5
    t_min: float = 0.02
    t_max: float = 0.98
    perceptual: str = "lpips-vgg"
    """``lpips-vgg`` (the lpips package, pretrained) or ``untrained-features`` (explicit opt-in)."""
    seed: int = 0
    checkpoint_every: int = 1000


class _RandomFeatures(nn.Module):
    """A fixed, seeded, untrained conv feature stack with LPIPS-style normalised distances."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        convs = [nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.Conv2d(32, 32, 3, stride=2, padding=1)]
        self.layers = nn.ModuleList(convs)
        with torch.no_grad():
            for layer in convs:
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * (2.0 / layer.weight[0].numel()) ** 0.5)
                if layer.bias is not None:
                    layer.bias.zero_()
        self.requires_grad_(False)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        total = a.new_zeros(())
        for layer in self.layers:
            a, b = F.relu(layer(a)), F.relu(layer(b))
            na = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            nb = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + (na - nb).pow(2).sum(1).mean()
        return total


def perceptual_loss(kind: str, *, device: torch.device | None = None) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The perceptual term on images in [-1, 1]."""
    if kind == "lpips-vgg":
        try:
            import lpips

            net = lpips.LPIPS(net="vgg", verbose=False).eval().requires_grad_(False).to(device or "cpu")
        except Exception as exc:  # ImportError, or the VGG weights cannot be fetched
            raise InvalidInputError(
                "stage 1 needs LPIPS with its pretrained VGG (`pip install lpips`, which also needs torchvision and "
                f"downloads the VGG weights once); it is not usable here ({type(exc).__name__}: {exc}). Install it, or pass "
                "perceptual='untrained-features' to train with an untrained feature net (not the paper's loss)."
            ) from exc
        return lambda a, b: net(a, b).mean()
    if kind == "untrained-features":
        features = _RandomFeatures().to(device or "cpu")
        return lambda a, b: features(a, b)
    raise InvalidInputError(f"`perceptual` must be 'lpips-vgg' or 'untrained-features', got {kind!r}.")


class Stage1Trainer(Recipe):
    def __init__(self, student: str | os.PathLike[str], base: str | os.PathLike[str], fidelity: str | os.PathLike[str],
                 config: Stage1Config) -> None:
        from ..families.resshift.model import ResShiftModel

        self.config = config
        self.engine = Engine.from_config(config)
        self.device = self.engine.device
        self.perceptual = perceptual_loss(config.perceptual, device=self.device)
        torch.manual_seed(config.seed)
        placement = resolve(str(self.device), "fp32")
        self.student = TrainableStudent.from_file(student, base).to(self.device)
        file = load_student(student)
        unet, vae, alphas = load_base(base)
        self.realness = SDOneStep(file, unet, vae, alphas, placement)
        self.realness.unet.requires_grad_(False)
        self.realness.vae.requires_grad_(False)
        self.fidelity = ResShiftModel(load_student(fidelity), placement)
        self.fidelity.net.requires_grad_(False)
        self.fidelity.vq.requires_grad_(False)
        self.parameters = [p for p in self.student.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.parameters, lr=config.lr, betas=(0.9, 0.999))
        self.step = 0
        self.alphas = self.student.alphas_cumprod
        self.seed_process()

    # -- the teachers ------------------------------------------------------------------------------

    def eps_realness(self, z: torch.Tensor, t: int) -> torch.Tensor:
        return self.realness._unet(z, t)

    def eps_fidelity(self, u_t: torch.Tensor, u_y: torch.Tensor, k: int, lq: torch.Tensor) -> torch.Tensor:
        schedule = self.fidelity.schedule
        steps = torch.full((u_t.shape[0],), k, dtype=torch.long, device=u_t.device)
        x0 = self.fidelity.net(schedule.scale_input(u_t, k), steps, lq)
        return schedule.eps_from_x0(u_t, u_y, x0, k)

    def vq_encode(self, image: torch.Tensor) -> torch.Tensor:
        vq = self.fidelity.vq
        return vq.quant_conv(vq.encoder(image)) * self.fidelity.schedule.scale_factor

    def add_noise(self, z: torch.Tensor, t: int, noise: torch.Tensor) -> torch.Tensor:
        a = self.alphas[t]
        return a.sqrt() * z + (1 - a).sqrt() * noise

    # -- the loss ----------------------------------------------------------------------------------

    def losses(self, lr: torch.Tensor, hr: torch.Tensor, *, u: float | None = None) -> dict[str, torch.Tensor]:
        """lr (N, 3, h, w), hr (N, 3, 4h, 4w) in [0, 1]; every term and the total."""
        cfg = self.config
        u = self.rng.uniform(cfg.t_min, cfg.t_max) if u is None else u
        t, k = int(u * 999), max(0, math.ceil(u * self.fidelity.schedule.steps) - 1)
        x_gt = hr.contiguous().to(self.device) * 2.0 - 1.0
        lq = lr.contiguous().to(self.device) * 2.0 - 1.0
        up = F.interpolate(lq, size=hr.shape[-2:], mode="bicubic", align_corners=False)
        z0s, x0 = self.student(up)
        terms = {"rec_l2": F.mse_loss(x0, x_gt), "rec_lp": self.perceptual(x0, x_gt)}
        with torch.no_grad():
            z0 = self.student.encode(x_gt, lora=False)
        noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(self.rng.randrange(2**31))).to(self.device)
        terms["rn_student"], terms["rn_time"] = self.realness_terms(z0s, z0, t, noise)
        m_seed = self.rng.randrange(2**31)
        terms["fl_student"], terms["fl_time"] = self.fidelity_terms(x0, x_gt, up, lq, k, m_seed)
        terms["total"] = (cfg.l2 * terms["rec_l2"] + cfg.lp * terms["rec_lp"]
                          + cfg.rn * (terms["rn_student"] + cfg.gamma_time * terms["rn_time"])
                          + cfg.fl * (terms["fl_student"] + cfg.gamma_time * terms["fl_time"]))
        return terms

    def realness_terms(self, z0s: torch.Tensor, z0: torch.Tensor, t: int, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(||eps_Tr(z_t^s) - eps_S(z_t^s)||^2, ||eps_Tr(z_t^s) - eps_Tr(z_t)||^2) with the same noise."""
        zts, zt = self.add_noise(z0s, t, noise), self.add_noise(z0, t, noise)
        e_r_s = self.eps_realness(zts, t)
        with torch.no_grad():
            e_r_gt = self.eps_realness(zt, t)
        return F.mse_loss(self.student.eps(zts, t), e_r_s), F.mse_loss(e_r_s, e_r_gt)

    def fidelity_terms(self, x0: torch.Tensor, x_gt: torch.Tensor, up: torch.Tensor, lq: torch.Tensor, k: int,
                       seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(||eps_Tf(u_t^s) - m||^2, ||eps_Tf(u_t^s) - eps_Tf(u_t)||^2) in ResShift's VQ space."""
        u0s = self.vq_encode(x0)
        with torch.no_grad():
            u0, uy = self.vq_encode(x_gt), self.vq_encode(up)
        m = torch.randn(u0.shape, generator=torch.Generator().manual_seed(seed)).to(u0.device)
        schedule = self.fidelity.schedule
        uts, ut = schedule.q_sample(u0s, uy, k, m), schedule.q_sample(u0, uy, k, m)
        e_f_s = self.eps_fidelity(uts, uy, k, lq)
        with torch.no_grad():
            e_f_gt = self.eps_fidelity(ut, uy, k, lq)
        return F.mse_loss(e_f_s, m), F.mse_loss(e_f_s, e_f_gt)

    def train_step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, float]:
        terms = self.losses(*batch)
        self.engine.backward(terms["total"], self.parameters)
        self.engine.step(self.optimizer)
        return {k: float(v.detach()) for k, v in terms.items()}

    def trainable_modules(self) -> dict[str, nn.Module]:
        return {"student": self.student}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"adamw": self.optimizer}

    def export(self, path: str | os.PathLike[str]) -> Path:
        return self.student.export(path, provenance={"stage1": {**asdict(self.config), "trained_steps": self.step}})


def paired_batches(files: list[Path], *, crop: int, seed: int, long_side: int = 2048) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless seeded (LR, HR) pairs: random HR crops of ``crop`` px from the photos, LR by
    Real-ESRGAN's second-order degradation (:mod:`ctsr_infer.degradations`, x4)."""
    import numpy as np

    from ..degradations import degrade
    from .lite import load_hr

    if crop % 4:
        raise InvalidInputError(f"`crop` must be a multiple of 4, got {crop}.")
    images = [load_hr(f, long_side) for f in files]
    images = [im for im in images if min(im.shape[-2:]) >= crop]
    if not images:
        raise InvalidInputError(f"no photo is at least {crop} px on its short side.")
    rng = np.random.default_rng(seed)
    while True:
        hr_full = images[int(rng.integers(len(images)))]
        top = int(rng.integers(0, hr_full.shape[-2] - crop + 1))
        left = int(rng.integers(0, hr_full.shape[-1] - crop + 1))
        hr = hr_full[..., top : top + crop, left : left + crop]
        yield degrade(hr, rng).contiguous(), hr.contiguous()


def stacked(pairs: Iterator[tuple[torch.Tensor, torch.Tensor]], batch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Group single (LR, HR) pairs into batches of ``batch``."""
    while True:
        group = [next(pairs) for _ in range(batch)]
        yield torch.cat([g[0] for g in group]), torch.cat([g[1] for g in group])
