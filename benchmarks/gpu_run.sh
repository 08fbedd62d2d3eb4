#!/usr/bin/env bash
# Run benchmarks/gpu_check.py on a bare GPU machine without network access.
#
#   benchmarks/gpu_run.sh prepare          # here, with network: wheels the GPU machine lacks -> .whl/
#   benchmarks/gpu_run.sh run [ARGS...]    # there, from the repository root: install them, run the check
#
# The GPU image is assumed to have python3 with a CUDA build of torch, numpy, Pillow, safetensors,
# huggingface_hub, peft and typer (as the project's GPU machines do); the wheels add what it lacks
# (diffusers, pypng, tifffile, filelock, rich). The check's JSON and log go to $OUT (or
# benchmarks/results/ when OUT is unset).
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-run}" in
  prepare)
    mkdir -p .whl
    for spec in "diffusers==0.42.1" "pypng==0.20220715.0" "tifffile" "filelock" "rich" "typer" "einops"; do
      python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform any -d .whl "$spec"
    done
    ls -la .whl
    ;;
  run)
    shift || true
    out=${OUT:-benchmarks/results}
    mkdir -p "$out"
    if compgen -G ".whl/*.whl" >/dev/null; then
      python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/ctsr-site .whl/*.whl
      export PYTHONPATH=/tmp/ctsr-site:$PWD${PYTHONPATH:+:$PYTHONPATH}
    else
      export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
    fi
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | tee "$out/gpu.txt" || true
    export PYTHONUNBUFFERED=1
    python3 benchmarks/gpu_check.py --json "$out/gpu_check.json" "$@" 2>&1 | tee "$out/gpu_check.log"
    ;;
  *)
    echo "usage: benchmarks/gpu_run.sh prepare | run [gpu_check.py arguments]" >&2
    exit 2
    ;;
esac
