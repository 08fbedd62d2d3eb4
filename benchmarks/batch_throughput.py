"""Images per minute of the batch runner on a folder of 32 mixed photos with the embedded default
model, plain loop against pipelined I/O (decode/encode on a worker thread). Prints a table, writes JSON.

    bash scripts/fetch_photos.sh data/photos
    python benchmarks/batch_throughput.py --photos data/photos/raw [--count 32] [--out benchmarks/results/batch_throughput.json]

The folder is made from the photos: crops of mixed sizes (short side 96 to 384 px) saved as PNG and
JPEG, so decoding, upscaling x4 and encoding all count.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

import ctsr_infer
from ctsr_infer.batch import plan_jobs, run_batch


def make_folder(photos: Path, target: Path, count: int, seed: int = 0) -> list[tuple[int, int]]:
    files = sorted(p for p in photos.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not files:
        raise SystemExit(f"no photos in {photos}; run scripts/fetch_photos.sh first")
    rng = np.random.default_rng(seed)
    sizes = []
    for index in range(count):
        with Image.open(files[index % len(files)]) as image:
            image = image.convert("RGB")
            short = int(rng.integers(96, 385))
            aspect = float(rng.uniform(0.75, 1.5))
            w, h = int(short * aspect), short
            scale = max(w / image.width, h / image.height) * float(rng.uniform(1.0, 3.0))
            small = image.resize((max(w, round(image.width * scale)), max(h, round(image.height * scale))), Image.Resampling.LANCZOS)
            left, top = int(rng.integers(0, small.width - w + 1)), int(rng.integers(0, small.height - h + 1))
            crop = small.crop((left, top, left + w, top + h))
            if index % 2:
                crop.save(target / f"photo{index:02d}.jpg", quality=90)
            else:
                crop.save(target / f"photo{index:02d}.png")
            sizes.append((w, h))
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, required=True)
    parser.add_argument("--count", type=int, default=32)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/batch_throughput.json"))
    args = parser.parse_args()
    up = ctsr_infer.load("ctsr-lite")
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "in"
        folder.mkdir()
        sizes = make_folder(args.photos, folder, args.count)
        megapixels = sum(16 * w * h for w, h in sizes) / 1e6
        run_batch(up, plan_jobs([folder], Path(scratch) / "warm")[:2])  # warm-up
        for pipelined in (False, True):
            out = Path(scratch) / f"out-{pipelined}"
            start = time.perf_counter()
            report = run_batch(up, plan_jobs([folder], out), pipelined=pipelined)
            seconds = time.perf_counter() - start
            ok = report.count("ok")
            rows.append({"pipelined": pipelined, "images": ok, "seconds": seconds, "images_per_minute": 60 * ok / seconds,
                         "output_megapixels": megapixels})
            print(f"{'pipelined' if pipelined else 'plain loop':>10}: {ok} images, {megapixels:.0f} output MP in {seconds:.1f} s "
                  f"= {60 * ok / seconds:.1f} images/min", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model": "ctsr-lite", "runs": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
