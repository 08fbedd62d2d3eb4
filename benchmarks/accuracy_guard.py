"""The accuracy guard of the fast paths on the full-size random-weight models: output PSNR of each
path against fp32 on the same input (the example photo), with the colour fix off (a colour fix copies the input's low
frequencies into both outputs and would flatter the comparison). The tiny-model guard is
``tests/test_speed_paths.py``.

    python benchmarks/accuracy_guard.py [--size 256] [--json benchmarks/results/accuracy_guard.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


from ctsr_infer.benchmark import run_compared

PHOTO = Path(__file__).resolve().parent.parent / "examples" / "coffee_lowres.png"
PATHS = {  # family: [(dtype, channels_last)], the first is the reference
    "lite": [("fp32", False), ("auto", None), ("bf16", True)],
    "resshift-onestep": [("fp32", False), ("auto", None)],
    "sd-onestep": [("fp32", False), ("auto", None), ("bf16", True)],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="output side in pixels")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/accuracy_guard.json"))
    args = parser.parse_args()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    print(f"{'family':<18} {'path':<34} PSNR vs fp32 (colour fix off, {args.size}² output)")
    for family, paths in PATHS.items():
        configs = [dict(dtype=dtype, channels_last=layout) for dtype, layout in paths]
        for result in run_compared(family, size=args.size, configs=configs, runs=1, warmup=0, options={"color_fix": "none"},
                                   image=str(PHOTO)):
            rows.append({"family": family, "dtype": result.dtype, "placement": result.placement, "psnr_vs_fp32": result.psnr_vs_fp32})
            shown = "reference" if result.psnr_vs_fp32 is None else f"{result.psnr_vs_fp32:.1f} dB"
            print(f"{family:<18} {result.dtype + ': ' + result.placement:<34} {shown}", flush=True)
    args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
