"""Look for tile seams in an upscaled image: the mean absolute difference between neighbouring
columns (and rows), at the planner's tile edges and overlap midpoints against everywhere else.
A seam is a step at a tile edge, so its column difference stands out of the distribution.

    python benchmarks/seam_profile.py OUT.npy|OUT.png --vae-tile 448 --latent-tile 96 [--crops DIR]

Prints the ratio (difference at tile edges) / (median difference) for the VAE and latent tile
edges, and optionally writes crops across a tile edge (2x nearest) for looking at.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from ctsr_infer.tiling import plan_axis


def profile(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = image.astype(np.float64)
    cols = np.abs(np.diff(x, axis=1)).mean(axis=(0, 2))
    rows = np.abs(np.diff(x, axis=0)).mean(axis=(1, 2))
    return cols, rows


def edges(length: int, tile: int, overlap: int, align: int) -> list[int]:
    """Pixel positions where a tile starts or ends or where owned parts meet (overlap midpoints)."""
    spans = plan_axis(length, tile, overlap, align=align)
    marks = set()
    for (s0, e0), (s1, _) in zip(spans, spans[1:]):
        marks.update({s1, e0, (s1 + e0) // 2})
    return sorted(m for m in marks if 0 < m < length - 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image", type=Path)
    parser.add_argument("--vae-tile", type=int, required=True)
    parser.add_argument("--vae-overlap", type=int, default=64)
    parser.add_argument("--latent-tile", type=int, default=96)
    parser.add_argument("--latent-overlap", type=int, default=32)
    parser.add_argument("--crops", type=Path)
    args = parser.parse_args()
    image = np.load(args.image) if args.image.suffix == ".npy" else np.asarray(Image.open(args.image).convert("RGB"))
    height, width = image.shape[:2]
    cols, rows = profile(image)
    median = float(np.median(np.concatenate([cols, rows])))
    report = {"size": [height, width], "median_neighbour_difference": median}
    for name, tile, overlap, align in (("vae", args.vae_tile, args.vae_overlap, 8), ("latent", args.latent_tile * 8, args.latent_overlap * 8, 8)):
        at_cols = [cols[c - 1 : c + 1].max() for c in edges(width, tile, overlap, align)]
        at_rows = [rows[r - 1 : r + 1].max() for r in edges(height, tile, overlap, align)]
        values = np.array(at_cols + at_rows)
        report[name] = {"edges": len(values), "mean_ratio": float(values.mean() / median), "max_ratio": float(values.max() / median)}
    others = np.concatenate([cols, rows])
    report["all_positions_p99_ratio"] = float(np.percentile(others, 99) / median)
    print(json.dumps(report, indent=2))
    if args.crops:
        args.crops.mkdir(parents=True, exist_ok=True)
        edge = edges(width, args.vae_tile, args.vae_overlap, 8)[0]
        top = height // 2
        crop = image[top - 128 : top + 128, max(0, edge - 128) : edge + 128]
        Image.fromarray(crop).resize((crop.shape[1] * 2, crop.shape[0] * 2), Image.Resampling.NEAREST).save(args.crops / f"vae_edge_x{edge}.png")


if __name__ == "__main__":
    main()
