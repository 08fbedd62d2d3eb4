"""Per-stage time, peak RSS and tiled-vs-untiled PSNR of the sd-onestep family at full SD 2.1-base size
(random weights: speed and memory do not depend on weight values). Prints a table, writes JSON.

    python benchmarks/sd_tiling.py [--sizes 512 1024 2048 4096] [--psnr-sizes 1024] [--out results/sd_tiling.json]

Each size runs in its own process so that peak RSS is that size's alone.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from ctsr_infer.benchmark import peak_rss_gb

def build(dtype: str):
    from ctsr_infer.benchmark import random_model

    return random_model("sd-onestep", dtype=dtype)


def run_one(size: int, dtype: str, tiling: str, save: str | None) -> dict:
    up = build(dtype)
    lr = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(Path(__file__).parent.parent / "examples" / "coffee_lowres.png").convert("RGB")
                    .resize((size // 4, size // 4)))
    stamps: dict[str, list[float]] = {}

    def on_progress(event) -> None:
        stamps.setdefault(event.stage, []).append(time.perf_counter())

    start = time.perf_counter()
    out = up.upscale(lr, scale=4, tiling=None if tiling == "auto" else tiling, on_progress=on_progress)
    total = time.perf_counter() - start
    order = ["preprocess", "encode", "denoise", "knob", "decode", "colour fix"]
    stages = {}
    previous = start
    for stage in order:
        if stage in stamps:
            stages[stage] = max(stamps[stage]) - previous
            previous = max(stamps[stage])
    stages["image out"] = start + total - previous
    plan = up.model.plan(size, size, up.check_options(scale=4, tiling=None if tiling == "auto" else tiling)[1])
    if save:
        np.save(save, np.asarray(out))
    return {"size": size, "dtype": dtype, "tiling": tiling, "vae_mode": plan.vae_mode, "seconds": total, "stages": stages,
            "peak_rss_gb": peak_rss_gb()}


def encoder_check(size: int, tile: int = 512) -> dict:
    """Relative RMS difference of the encoder's latent, exact tiling against untiled (one process)."""
    import torch
    from PIL import Image

    from ctsr_infer.families.base import TilePlan

    model = build("fp32").model
    photo = Image.open(Path(__file__).parent.parent / "examples" / "coffee_lowres.png").convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
    x = torch.from_numpy(np.asarray(photo).copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
    result: dict = {"size": size, "tile": tile}
    with torch.inference_mode():
        start = time.perf_counter()
        whole = model.encode(x, plan=TilePlan.untiled())
        result["untiled_s"] = time.perf_counter() - start
        start = time.perf_counter()
        tiled = model.encode(x, plan=TilePlan("exact", tile, 64, model.vae_contexts[0], model.vae_contexts[1], 4, 96, 32, 1))
        result["exact_s"] = time.perf_counter() - start
    result["relative_rms"] = float((tiled - whole).pow(2).mean().sqrt() / whole.pow(2).mean().sqrt())
    result["max_abs"] = float((tiled - whole).abs().max())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    parser.add_argument("--psnr-sizes", type=int, nargs="*", default=[1024])
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/sd_tiling.json"))
    parser.add_argument("--encoder-check", type=int, metavar="SIZE",
                        help="only compare the VAE encoder, untiled against exact tiling (512-px tiles), at SIZE² and exit")
    parser.add_argument("--child", nargs=4, metavar=("SIZE", "DTYPE", "TILING", "SAVE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.encoder_check:
        print(json.dumps(encoder_check(args.encoder_check)))
        return
    if args.child:
        size, dtype, tiling, save = args.child
        print(json.dumps(run_one(int(size), dtype, tiling, None if save == "-" else save)))
        return
    from ctsr_infer.metrics import psnr

    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows, quality = [], {}

    def child(size: int, tiling: str, save: str = "-") -> dict:
        out = subprocess.run([sys.executable, __file__, "--child", str(size), args.dtype, tiling, save], capture_output=True, text=True, check=True)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{row['size']:>5} {row['tiling']:>5} ({row['vae_mode']:>5}) {row['seconds']:8.1f} s  peak {row['peak_rss_gb']:5.1f} GB  "
              + "  ".join(f"{k} {v:.1f}s" for k, v in row["stages"].items()), flush=True)
        return row

    for size in args.psnr_sizes:
        outputs = {}
        for tiling in ("off", "exact", "fast"):
            path = str(args.out.parent / f"sd_{size}_{tiling}.npy")
            rows.append(child(size, tiling, path))
            outputs[tiling] = np.load(path).astype(np.float64) / 255
        quality[str(size)] = {m: psnr(outputs[m], outputs["off"]) for m in ("exact", "fast")}
        print(f"{size}: PSNR vs untiled: exact {quality[str(size)]['exact']:.2f} dB, fast {quality[str(size)]['fast']:.2f} dB", flush=True)
        args.out.write_text(json.dumps({"runs": rows, "psnr": quality}, indent=2))
    for size in args.sizes:
        rows.append(child(size, "auto"))
        args.out.write_text(json.dumps({"runs": rows, "psnr": quality}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
