"""Per-family, per-size speed and memory table (issue: speed and memory), from ``ctsr bench`` runs.

Runs every configuration of the matrix in its own process (``ctsr_infer.benchmark.run_isolated``),
writes all results as JSON and prints a Markdown table with the per-stage medians. ``--render``
re-prints the table from JSON files written by this script or by ``ctsr bench --json``.

    python benchmarks/family_speed.py                       # the README matrix (about 45 min here)
    python benchmarks/family_speed.py --families lite --sizes 512 1024 --dtypes fp32 auto
    python benchmarks/family_speed.py --render benchmarks/results/*.json
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from ctsr_infer.benchmark import run_compared

STAGES = ("preprocess", "encode", "denoise", "network", "decode", "colour fix", "image out")
MATRIX = {  # family: (sizes, runs, warmup); every size runs each dtype
    "lite": ((512, 1024, 2048), 3, 1),
    "resshift-onestep": ((512, 1024, 2048), 1, 0),
    "sd-onestep": ((512, 1024, 2048), 1, 0),
}


def table(rows: list[dict]) -> str:
    lines = ["| family | output | path (network/encoder/decoder) | total s | " + " | ".join(STAGES) + " | load s | peak RSS GiB | PSNR vs fp32 |",
             "|---|---|---|---|" + "---|" * len(STAGES) + "---|---|---|"]
    for row in rows:
        stages = " | ".join(f"{row['stages'][s]:.2f}" if s in row["stages"] else "" for s in STAGES)
        quality = "" if row.get("psnr_vs_fp32") is None else f"{row['psnr_vs_fp32']:.1f} dB"
        lines.append(f"| {row['model']} | {row['size']}² | {row['dtype']}: {row.get('placement') or ''} | {row['seconds']:.2f} | {stages} | "
                     f"{row['load_seconds']:.1f} | {row['peak_rss_gb']:.2f} | {quality} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=list(MATRIX))
    parser.add_argument("--sizes", nargs="+", type=int, default=None)
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "auto"])
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/family_speed.json"))
    parser.add_argument("--render", nargs="+", type=Path, default=None, help="only print the table of these JSON files")
    args = parser.parse_args()
    if args.render:
        rows = [row for path in args.render for row in json.loads(path.read_text())]
        print(table(rows))
        return
    rows: list[dict] = []
    args.json.parent.mkdir(parents=True, exist_ok=True)

    def keep(result) -> None:  # print and save each row as it comes (a 2048² run takes 20 minutes)
        rows.append(asdict(result))
        print(table(rows[-1:]).splitlines()[-1], flush=True)
        args.json.write_text(json.dumps(rows, indent=2))

    for family in args.families:
        sizes, runs, warmup = MATRIX[family]
        configs = [dict(dtype=dtype, channels_last=None if dtype == "auto" else False) for dtype in args.dtypes]
        for size in args.sizes or sizes:
            run_compared(family, size=size, configs=configs, on_result=keep, runs=runs, warmup=warmup)
    print(table(rows))


if __name__ == "__main__":
    main()
