"""Which of OpenCV's frontal-face Haar cascades `protect_faces` uses, measured.

Positives: the photographs with a face among the offline sources (scikit-image's `astronaut`, NASA,
public domain; matplotlib's `grace_hopper`, US Navy, public domain), each as is, at 1/2 and 1/4
size, darkened to half and rotated 10 degrees. Negatives: every other photograph of
`scripts/fetch_photos.sh` (no faces), at most 1024 px on the long side. These are the same photos
the choice was made on: a selection measurement, not a held-out one.

    python benchmarks/face_detector.py --photos data/photos/raw [--json out.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

POSITIVES = ("skimage-astronaut", "matplotlib-grace_hopper")
CASCADES = ("haarcascade_frontalface_default.xml", "haarcascade_frontalface_alt.xml", "haarcascade_frontalface_alt2.xml",
            "haarcascade_frontalface_alt_tree.xml")


def variants(image: Image.Image):
    width, height = image.size
    yield "full", image
    yield "half", image.resize((width // 2, height // 2), Image.Resampling.LANCZOS)
    yield "quarter", image.resize((width // 4, height // 4), Image.Resampling.LANCZOS)
    yield "dark", Image.eval(image, lambda v: int(v * 0.5))
    yield "rotated 10", image.rotate(10, resample=Image.Resampling.BICUBIC)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, required=True)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    from ctsr_infer import faces

    photos = sorted(p for p in args.photos.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    rows = []
    for cascade in CASCADES:
        for neighbours in (3, 4, 5):
            faces.CASCADE, faces.MIN_NEIGHBOURS = cascade, neighbours
            found, total, false, where = 0, 0, 0, []
            for path in photos:
                image = Image.open(path).convert("RGB")
                if path.stem in POSITIVES:
                    for _, variant in variants(image):
                        total += 1
                        found += len(faces.detect_faces(np.asarray(variant, dtype=np.float32) / 255)) >= 1
                else:
                    count = len(faces.detect_faces(np.asarray(image, dtype=np.float32) / 255))
                    false += count
                    where += [path.stem] * bool(count)
            rows.append({"cascade": cascade, "min_neighbours": neighbours, "faces_found": found, "faces": total,
                         "false_detections": false, "negative_photos": len(photos) - len(POSITIVES), "photos_with_false": where})
            print(f"{cascade:40s} minNeighbors {neighbours}: found {found}/{total}, false {false} in {len(where)} of "
                  f"{len(photos) - len(POSITIVES)} photos without faces {where}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
