"""Images per minute of the folder runner against Ray (``ctsr_infer.distributed.upscale_dataset``) with
1 and 2 CPU workers on one folder, with the embedded default model on its default path
(``ctsr_infer.load()``, ``dtype=auto``), and what Ray costs per run and per image.

The folder: ``--count`` (64) crops of ``--size`` (128) px from the photos (half PNG, half JPEG),
upscaled x4 to PNG. One local Ray cluster (``--cpus``, default all cores) serves every Ray run; each
run starts its own actor pool, as ``ctsr upscale --ray`` does. Per run:

* ``seconds``: wall time of the call, planning to report (a Ray run includes its actors' start and
  model load: Ray's fixed cost);
* ``first_item_s``: when the first file was done (for Ray: the fixed cost plus one image);
* ``steady_images_per_minute``: the files after the first (or after the first batch) over the time
  from the first to the last file: the rate once a worker runs (for 2 workers this also counts the
  second actor's start);

and the median of ``--repeat`` runs per configuration, with the runs interleaved. Ray's overhead per
image is the 1-worker steady time per image minus the folder runner's time per image (both use all
cores: the one actor gets them all). Prints a table, writes JSON and Markdown.

    python benchmarks/ray_throughput.py --photos data/photos/raw [--count 64] [--repeat 3]
        [--out benchmarks/results/ray_throughput.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


import ctsr_infer
from ctsr_infer.batch import BatchReport, plan_jobs, run_batch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from batch_throughput import make_folder  # noqa: E402 - the same seeded crops of the photos


def timed(run: Any) -> dict[str, Any]:
    """Run ``run(on_item)`` and time it: total, first file, steady rate."""
    marks: list[float] = []
    start = time.perf_counter()
    report: BatchReport = run(lambda item: marks.append(time.perf_counter()))
    seconds = time.perf_counter() - start
    ok = report.count("ok")
    burst = sum(1 for mark in marks if mark - marks[0] < 0.005)  # files done with the first (one batch)
    steady = (len(marks) - burst) / (marks[-1] - marks[0]) * 60 if marks[-1] - marks[0] > 0.005 else float("nan")
    return {"images": ok, "failed": report.count("failed"), "seconds": seconds, "first_item_s": marks[0] - start,
            "images_per_minute": 60 * ok / seconds, "steady_images_per_minute": steady}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, default=Path("data/photos/raw"))
    parser.add_argument("--count", type=int, default=64)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 1, help="CPUs of the local Ray cluster")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/ray_throughput.json"))
    args = parser.parse_args()

    import ray

    from ctsr_infer.distributed import upscale_dataset

    load_before = os.getloadavg()  # another process busy on the cores shows here
    up = ctsr_infer.load()
    print(f"{up.name} on {up.placement.describe()}, torch threads {__import__('torch').get_num_threads()}", flush=True)
    configs: list[tuple[str, dict[str, Any] | None]] = [
        ("folder runner", None),
        ("ray, 1 worker", {"num_workers": 1}),
        ("ray, 2 workers", {"num_workers": 2}),
        ("ray, 2 workers, batch 8", {"num_workers": 2, "batch_size": 8}),
    ]
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in configs}
    with tempfile.TemporaryDirectory(prefix="ctsr-ray-bench-") as scratch:
        folder = Path(scratch) / "in"
        folder.mkdir(parents=True)
        make_folder(args.photos, folder, args.count, equal=args.size)  # size x size crops, batch_throughput's folder
        run_batch(up, plan_jobs([folder], Path(scratch) / "warm")[:2])  # warm-up of the local model
        start = time.perf_counter()
        ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level=logging.ERROR)
        init_s = time.perf_counter() - start
        ray.data.DataContext.get_current().enable_progress_bars = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        try:
            for repeat in range(args.repeat):
                for label, ray_options in configs:
                    out = Path(scratch) / f"out-{len(runs[label])}-{label.replace(' ', '').replace(',', '-')}"

                    def run(on_item: Any, out: Path = out, ray_options: dict[str, Any] | None = ray_options) -> BatchReport:
                        if ray_options is None:
                            return run_batch(up, plan_jobs([folder], out), on_item=on_item)
                        return upscale_dataset(folder, out, on_item=on_item, **ray_options)

                    result = timed(run)
                    runs[label].append(result)
                    print(f"run {repeat + 1} {label:>24}: {result['images']} images in {result['seconds']:.1f} s "
                          f"= {result['images_per_minute']:.0f}/min (first file at {result['first_item_s']:.1f} s, "
                          f"steady {result['steady_images_per_minute']:.0f}/min)", flush=True)
        finally:
            ray.shutdown()

    def median(label: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[label])

    rows = [{"run": label, **{key: median(label, key) for key in ("seconds", "first_item_s", "images_per_minute",
                                                                  "steady_images_per_minute")}}
            for label, _ in configs]
    local_per_image = median("folder runner", "seconds") / args.count
    ray_per_image = 60 / median("ray, 1 worker", "steady_images_per_minute")
    summary = {
        "model": up.name, "placement": up.placement.describe(), "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(), "ray": ray.__version__, "images": args.count, "size": args.size, "repeat": args.repeat,
        "load_average_before": load_before, "load_average_after": os.getloadavg(), "ray_init_s": init_s, "local_s_per_image": local_per_image, "ray_1_worker_steady_s_per_image": ray_per_image,
        "ray_overhead_s_per_image": ray_per_image - local_per_image,
        "ray_fixed_cost_s": median("ray, 1 worker", "first_item_s") - local_per_image,
        "medians": rows, "runs": runs,
    }
    lines = ["| run | seconds | images/min | first file at (s) | steady images/min |", "|---|---|---|---|---|"]
    lines += [f"| {r['run']} | {r['seconds']:.1f} | {r['images_per_minute']:.0f} | {r['first_item_s']:.1f} | "
              f"{r['steady_images_per_minute']:.0f} |" for r in rows]
    lines += ["", (f"{args.count} crops of {args.size} px, x4 to PNG, {up.name} ({up.placement.describe()}), "
                   f"{os.cpu_count()} cores, Ray {ray.__version__}; median of {args.repeat} runs. "
                   f"Ray init {init_s:.1f} s (once); Ray's fixed cost per run (first file minus one image) "
                   f"{summary['ray_fixed_cost_s']:.1f} s; overhead per image (1 worker steady vs folder runner) "
                   f"{1000 * summary['ray_overhead_s_per_image']:.0f} ms. Load average before/after: "
                   f"{load_before[0]:.2f} / {os.getloadavg()[0]:.2f}.")]
    table = "\n".join(lines)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2))
    args.out.with_suffix(".md").write_text(table + "\n")
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
