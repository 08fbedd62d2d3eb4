"""What a dual-lora sweep costs: one t against five t values on the full-size SD 2.1-base architecture.

Random weights (speed and memory do not depend on their values): SD 2.1-base's UNet (865 M) and VAE
(84 M) with a rank-4 semantic LoRA on every layer PiSA-SR adapts (its pattern list: attention
projections, convolutions, feed-forward), as a ``dual-lora`` student. Each configuration runs in a
fresh process (its own peak RSS), one warm-up and ``--runs`` measured runs, median reported.

    python benchmarks/pisa_sweep.py [--size 256] [--runs 1] [--json out.json]

PiSA-SR's own adjustable mode runs both branches for every (lambda_pix, lambda_sem) setting: a
five-value sweep is five times its two-pass image. Here a sweep is two UNet calls and one decode
per t; one t at an end of the default mapping is one UNet call.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

PATTERNS = ("to_k", "to_q", "to_v", "to_out.0", "conv", "conv1", "conv2", "conv_in", "conv_shortcut", "conv_out", "proj_out",
            "proj_in", "ff.net.2", "ff.net.0.proj")


def _student(rank: int = 4):
    import torch
    from diffusers.models import AutoencoderKL, UNet2DConditionModel

    from ctsr_infer.families.sd_onestep.base_model import SD21_UNET, SD21_VAE
    from ctsr_infer.knob import Knob
    from ctsr_infer.student_file import Adapter, StudentFile, StudentMeta

    unet, vae = UNet2DConditionModel(**SD21_UNET).eval(), AutoencoderKL(**SD21_VAE).eval()
    tensors = {"prompt_embeds": torch.randn(1, 77, 1024) * 0.1}
    generator = torch.Generator().manual_seed(0)
    for name, param in unet.named_parameters():
        if "bias" in name or "norm" in name or not any(p in name for p in PATTERNS) or param.dim() not in (2, 4):
            continue
        module = name.removesuffix(".weight")
        shape_a = (rank, param.shape[1], *param.shape[2:]) if param.dim() == 4 else (rank, param.shape[1])
        shape_b = (param.shape[0], rank, 1, 1) if param.dim() == 4 else (param.shape[0], rank)
        tensors[f"lora.sem.unet.{module}.A"] = torch.randn(shape_a, generator=generator) * 0.01
        tensors[f"lora.sem.unet.{module}.B"] = torch.randn(shape_b, generator=generator) * 0.01
    meta = StudentMeta(family="sd-onestep", adapters=(Adapter(name="sem", component="unet", rank=rank, alpha=8.0, phase="ctrl"),),
                       knob=Knob(kind="dual-lora", default_t=0.0), color_fix="adain", timestep=1, config={"prediction": "residual"})
    return StudentFile(meta, tensors), unet, vae


def measure(size: int, ts: list[float], runs: int) -> dict:
    import torch

    from ctsr_infer.benchmark import peak_rss_gb
    from ctsr_infer.device import resolve
    from ctsr_infer.families.sd_onestep.base_model import alphas_cumprod_scaled_linear
    from ctsr_infer.families.sd_onestep.model import SDOneStep
    from ctsr_infer.pipeline import Upscaler

    start = time.perf_counter()
    student, unet, vae = _student()
    up = Upscaler(SDOneStep(student, unet, vae, alphas_cumprod_scaled_linear(), resolve("cpu", "fp32")), name="pisa-random")
    load = time.perf_counter() - start
    calls: list[int] = []
    up.model.unet.register_forward_pre_hook(lambda module, args: calls.append(1))
    image = torch.rand(1, 3, size // 4, size // 4, generator=torch.Generator().manual_seed(0))
    times = []
    for index in range(runs + 1):
        calls.clear()
        begin = time.perf_counter()
        up.upscale_tensor(image, t=ts, scale=4)
        if index:
            times.append(time.perf_counter() - begin)
    return {"size": size, "ts": ts, "seconds": statistics.median(times), "unet_calls": len(calls), "load_seconds": load,
            "peak_rss_gb": peak_rss_gb(), "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256, help="output side in pixels (input = size / 4)")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(measure(spec["size"], spec["ts"], spec["runs"])))
        return
    rows = []
    for ts in ([0.0], [0.5], [0.0, 0.25, 0.5, 0.75, 1.0]):
        done = subprocess.run([sys.executable, __file__, "--child", json.dumps({"size": args.size, "ts": ts, "runs": args.runs})],
                              capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        row = rows[-1]
        print(f"{args.size}² output, t = {ts}: {row['seconds']:.1f} s, {row['unet_calls']} UNet call(s), "
              f"peak RSS {row['peak_rss_gb']:.2f} GiB", flush=True)
    one = rows[0]["seconds"]
    print(f"five t values cost {rows[2]['seconds'] / one:.2f}x one image at t = 0 ({rows[2]['seconds'] / rows[1]['seconds']:.2f}x one image "
          "at an inner t); PiSA-SR's adjustable mode: 5x its two-pass image")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
