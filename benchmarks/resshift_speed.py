"""Wall time per stage and peak RSS of the resshift-onestep family at full ResShift size (Swin-UNet
118.6 M + VQ-f4 55.3 M parameters, random weights: speed and memory do not depend on the values):
the one-step student and the 15-step ResShift sampler. Prints a table, writes JSON.

    python benchmarks/resshift_speed.py [--sizes 256 1024] [--samplers onestep posterior] [--out benchmarks/results/resshift_speed.json]

Each run is its own process, so peak RSS is that run's alone.
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


def build(sampler: str, dtype: str):
    from ctsr_infer.benchmark import random_model

    upscaler = random_model("resshift-onestep", dtype=dtype)
    upscaler.model.sampler = sampler
    return upscaler


def run_one(size: int, sampler: str, dtype: str) -> dict:
    up = build(sampler, dtype)
    lr = np.random.default_rng(0).random((size // 4, size // 4, 3)).astype(np.float32)
    stamps: list[tuple[str, float]] = []
    start = time.perf_counter()
    up.upscale(lr, on_progress=lambda e: stamps.append((e.stage, time.perf_counter())))
    total = time.perf_counter() - start
    stages: dict[str, float] = {}
    previous = start
    for stage in ("preprocess", "encode", "denoise", "decode", "colour fix"):
        times = [t for s, t in stamps if s == stage]
        if times:
            stages[stage] = max(times) - previous
            previous = max(times)
    stages["image out"] = start + total - previous
    return {"size": size, "sampler": sampler, "dtype": dtype, "network_calls": 1 if sampler == "onestep" else 15,
            "seconds": total, "stages": stages, "peak_rss_gb": peak_rss_gb()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--samplers", nargs="+", default=["onestep", "posterior"])
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/resshift_speed.json"))
    parser.add_argument("--child", nargs=3, metavar=("SIZE", "SAMPLER", "DTYPE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_one(int(args.child[0]), args.child[1], args.child[2])))
        return
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    print(f"{'output':>7} {'sampler':>9} {'calls':>5} {'total s':>8} {'peak GB':>8}  stages")
    for size in args.sizes:
        for sampler in args.samplers:
            done = subprocess.run([sys.executable, __file__, "--child", str(size), sampler, args.dtype], capture_output=True, text=True, check=True)
            row = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"{size:>6}² {sampler:>9} {row['network_calls']:>5} {row['seconds']:8.1f} {row['peak_rss_gb']:8.2f}  "
                  + "  ".join(f"{k} {v:.1f}s" for k, v in row["stages"].items()), flush=True)
            args.out.write_text(json.dumps({"runs": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
