"""Images per minute of the batch runner with the embedded default model (its default path:
``dtype=auto``): plain loop, pipelined I/O (decode/encode on a worker thread), and pipelined with
equal-size batching (``batch_size``), on two folders of 32 images made from the photos:

* ``mixed``: crops of mixed sizes (short side 96 to 384 px), so nothing shares a network call;
* ``equal``: crops of one size (``--equal-size``, default 128 px), the case batching is for.

Half the files are PNG, half JPEG, so decoding, upscaling x4 and encoding all count. Median of
``--repeat`` runs per configuration after a warm-up. Prints a table, writes JSON.

    bash scripts/fetch_photos.sh data/photos
    python benchmarks/batch_throughput.py --photos data/photos/raw [--count 32] [--out benchmarks/results/batch_throughput.json]
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


def make_folder(photos: Path, target: Path, count: int, seed: int = 0, equal: int | None = None) -> list[tuple[int, int]]:
    files = sorted(p for p in photos.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not files:
        raise SystemExit(f"no photos in {photos}; run scripts/fetch_photos.sh first")
    rng = np.random.default_rng(seed)
    sizes = []
    for index in range(count):
        with Image.open(files[index % len(files)]) as image:
            image = image.convert("RGB")
            short = equal or int(rng.integers(96, 385))
            aspect = 1.0 if equal else float(rng.uniform(0.75, 1.5))
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


RUNS = (("plain loop", False, 1), ("pipelined", True, 1), ("pipelined, batch 8", True, 8))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, required=True)
    parser.add_argument("--count", type=int, default=32)
    parser.add_argument("--equal-size", type=int, default=128, help="side of the images of the `equal` folder")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each configuration (the median is reported)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/batch_throughput.json"))
    args = parser.parse_args()
    up = ctsr_infer.load("ctsr-lite")
    print(f"ctsr-lite on {up.placement.describe()}")
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for kind, equal in (("mixed", None), ("equal", args.equal_size)):
            folder = Path(scratch) / kind
            folder.mkdir()
            sizes = make_folder(args.photos, folder, args.count, equal=equal)
            megapixels = sum(16 * w * h for w, h in sizes) / 1e6
            run_batch(up, plan_jobs([folder], Path(scratch) / "warm")[:2], overwrite=True)  # warm-up
            for label, pipelined, batch_size in RUNS:
                times = []
                for repeat in range(args.repeat):
                    out = Path(scratch) / f"out-{kind}-{pipelined}-{batch_size}-{repeat}"
                    start = time.perf_counter()
                    report = run_batch(up, plan_jobs([folder], out), pipelined=pipelined, batch_size=batch_size)
                    times.append(time.perf_counter() - start)
                seconds = float(np.median(times))
                ok = report.count("ok")
                rows.append({"folder": kind, "run": label, "pipelined": pipelined, "batch_size": batch_size, "images": ok,
                             "seconds": seconds, "runs": times, "images_per_minute": 60 * ok / seconds, "output_megapixels": megapixels})
                print(f"{kind:>5} {label:>18}: {ok} images, {megapixels:.0f} output MP in {seconds:.1f} s "
                      f"= {60 * ok / seconds:.1f} images/min", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model": "ctsr-lite", "placement": up.placement.describe(), "runs": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
