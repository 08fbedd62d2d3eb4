"""CTSR stage 2's τ mapping (seeds-digest §4.4): how far z(t) = z0 + t·ε(z0, τ(t)) moves a clean latent,
for candidate mappings τ(t) = round(start + (end − start)·t), without SD 2.1 weights.

The real measurement is ``ctsr_infer.train.ctsr_stage2.tau_report`` on a stage-1 student with the
real weights (not available on this machine). This script computes the same ratio
‖t·ε̂(z0, τ)‖ / ‖z0‖ for the *ideal* ε-predictor when latents are Gaussian with variance σ² (SD's
scaled latents are close to unit variance by design): given z_τ = √ᾱ x0 + √(1−ᾱ) ε,
E[ε | z_τ] = √(1−ᾱ) z_τ / (ᾱσ² + 1 − ᾱ); evaluated at the clean latent z_τ = z0 the ratio is
t·√(1−ᾱ_τ) / (ᾱ_τ σ² + 1 − ᾱ_τ). It shows the hazard the digest names, not what SD 2.1 does.

    python benchmarks/tau_oracle.py [--sigma 1.0] [--json benchmarks/results/tau_oracle.json]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from ctsr_infer.families.sd_onestep.base_model import alphas_cumprod_scaled_linear

MAPPINGS = {"0-999": (0, 999), "0-500": (0, 500), "0-250": (0, 250), "0-100": (0, 100), "999-0": (999, 0)}
TS = (0.1, 0.25, 0.5, 0.75, 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sigma", type=float, default=1.0, help="standard deviation of the (scaled) latents")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    alphas = alphas_cumprod_scaled_linear().double()
    table: dict[str, dict[str, float]] = {}
    for name, (start, end) in MAPPINGS.items():
        row = {}
        for t in TS:
            a = float(alphas[int(round(start + (end - start) * t))])
            row[str(t)] = t * math.sqrt(1 - a) / (a * args.sigma**2 + 1 - a)
        table[name] = row
    print(f"‖t·ε̂(z0, τ(t))‖ / ‖z0‖, ideal ε-predictor, Gaussian latents σ = {args.sigma}")
    print(f"{'τ(t)':>8} " + " ".join(f"t={t:<5}" for t in TS))
    for name, row in table.items():
        print(f"{name:>8} " + " ".join(f"{v:7.3f}" for v in row.values()))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"sigma": args.sigma, "ratio": table}, indent=2))


if __name__ == "__main__":
    main()
