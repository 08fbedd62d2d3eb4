#!/usr/bin/env bash
# Reproduce the shipped ctsr-lite (recipe v5, ctsr_infer/train/lite_gan.py) on one GPU.
#   scripts/train_lite_gpu.sh PACK_DIR      # prepare a self-contained folder to copy to the GPU machine
# Then, on the GPU machine (16 CPU cores for the data workers), from the repository root:
#   PYTHONPATH=PACK_DIR/src python3 -m ctsr_infer.train.lite_gan --photos PACK_DIR/photos --work OUT1 \
#       --time-budget 440 --batch 32 --workers 14 --device cuda --variants a:1.0:0.01,c:0.3:0 \
#       --teacher-ncnn PACK_DIR/teacher
#   PYTHONPATH=PACK_DIR/src python3 -m ctsr_infer.train.lite_gan --photos PACK_DIR/photos --work OUT2 \
#       --time-budget 265 --batch 32 --workers 14 --device cuda --variants v5:1.0:0.01 \
#       --init OUT1/ctsr-lite-a.safetensors --lr 3e-4 --gan-start 0 --mix 0.45,0.4,0.06 --heavy-rec-weight 0.2 \
#       --teacher-ncnn PACK_DIR/teacher
# OUT2/ctsr-lite-v5.safetensors is the student (the shipped file adds the wavelet colour fix to its
# metadata). Runs are time-budgeted, so another GPU gives another number of steps (H200: 2,080 + 1,961).
set -euo pipefail
pack=${1:?usage: scripts/train_lite_gpu.sh PACK_DIR}
[ -d data/photos/raw ] || scripts/fetch_photos.sh data/photos
mkdir -p "$pack/photos" "$pack/teacher" "$pack/src"
python3 - "$pack/photos" <<'PY'
import sys
from pathlib import Path
from PIL import Image
from ctsr_infer.train.lite import shrink_photo
from ctsr_infer.train.lite_gan import LiteGanConfig, training_files
cfg = LiteGanConfig(photos=Path("data/photos/raw"), work=Path(sys.argv[1]))
for path in training_files(cfg):  # the training split only, shrunk to a 1024 px long side (13 MB)
    Image.fromarray(shrink_photo(path, 1024)).save(Path(sys.argv[1]) / f"{path.stem}.png")
PY
models=$(python3 -c "from ctsr_infer.train.teachers import realesrgan_files; print(realesrgan_files()[0].parent)")
cp "$models/realesrgan-x4plus.param" "$models/realesrgan-x4plus.bin" "$pack/teacher/"
cp -r ctsr_infer "$pack/src/"
du -sh "$pack"
