"""One command that checks and times the accelerator path: correctness against the CPU, the fp32
retry, the tiler under a memory budget, out-of-memory recovery, and speed at full size. Writes one
JSON file and prints a table; one failing check is recorded and the others still run.

    python benchmarks/gpu_check.py [--device cuda] [--json benchmarks/results/gpu_check.json] [--quick]
    python benchmarks/gpu_check.py --device cpu --small      # the script itself, on tiny models (CI)

Sections (``--only`` picks some):
  correctness  every family (tiny models) in fp32, bf16 and fp16 on the device against CPU fp32
               (fp32: max |d| <= 1e-4; bf16/fp16: PSNR >= 40 dB, the accuracy guard's bound)
  lora         the fused SR LoRA (W + s BA) against peft's merged layer on the device
  retry        a non-finite output in a half dtype is rerun in fp32 once, on the device
  tiler        a large output under ``memory_budget`` completes and its peak device memory stays
               under the budget; a forced out-of-memory halves the tile and recovers
  speed        SD 2.1-base one-step (random weights) per stage at 512..4096 px in bf16 and fp16,
               with and without torch.compile at 512/1024; the 5-value t sweep against one image
               (the lite knob: one network call per t); ResShift one-step at 512 and 1024;
               ctsr-lite throughput in megapixels per second on batches of 512 px inputs
  guard        full-size random SD in bf16 ("auto") against fp32 on the example photo (>= 40 dB)
Times: after a warm-up, median of ``--runs`` (default 10) with the device synchronised at every stage.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ctsr_infer.benchmark import random_model
from ctsr_infer.metrics import psnr

PHOTO = Path(__file__).resolve().parent.parent / "examples" / "coffee_lowres.png"
FAMILIES = ("lite", "resshift-onestep", "sd-onestep")


def _photo(side: int) -> np.ndarray:
    from PIL import Image

    with Image.open(PHOTO) as image:
        return np.asarray(image.convert("RGB").resize((side, side), Image.Resampling.LANCZOS), dtype=np.float32) / 255.0


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(upscaler: Any, image: np.ndarray, device: str, runs: int, **options: Any) -> dict[str, Any]:
    """Median seconds end to end and per stage (the device synchronised at each progress event)."""
    totals: list[float] = []
    stages: dict[str, list[float]] = {}
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    for index in range(runs + 1):
        marks: list[tuple[str, float]] = []

        def on_progress(event: Any) -> None:
            _sync(device)
            marks.append((event.stage, time.perf_counter()))

        _sync(device)
        begin = time.perf_counter()
        upscaler.upscale(image, on_progress=on_progress, **options)
        _sync(device)
        end = time.perf_counter()
        if index == 0:
            continue  # warm-up
        totals.append(end - begin)
        previous = begin
        for stage in dict.fromkeys(s for s, _ in marks):
            last = max(t for s, t in marks if s == stage)
            stages.setdefault(stage, []).append(last - previous)
            previous = last
    peak = torch.cuda.max_memory_allocated() / 1024**3 if device.startswith("cuda") else None
    return {"seconds": statistics.median(totals), "stages": {k: statistics.median(v) for k, v in stages.items()}, "peak_device_gb": peak}


def correctness(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    image = _photo(16)
    dtypes = ("fp32", "bf16", "fp16") if args.device.startswith("cuda") else ("fp32", "bf16")
    for family in FAMILIES:
        (reference,) = random_model(family, small=True).upscale_tensor(torch.from_numpy(image).permute(2, 0, 1)[None], color_fix="none")
        for dtype in dtypes:
            model = random_model(family, device=args.device, dtype=dtype, small=True)
            (out,) = model.upscale_tensor(torch.from_numpy(image).permute(2, 0, 1)[None], color_fix="none")
            diff = float((out.cpu() - reference).abs().max())
            quality = psnr(out.cpu()[0].permute(1, 2, 0).double().numpy(), reference[0].permute(1, 2, 0).double().numpy())
            ok = bool(diff <= 1e-4 if dtype == "fp32" else quality >= 40.0)
            rows.append({"check": f"{family} {dtype} vs CPU fp32", "max_abs": diff, "psnr": quality, "ok": ok})
    return rows


def lora(args: argparse.Namespace) -> list[dict[str, Any]]:
    from peft import LoraConfig, get_peft_model

    from ctsr_infer.lora import fuse, lora_delta

    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(32, 48), torch.nn.Conv2d(8, 16, 3, padding=1))
    peft_model = get_peft_model(torch.nn.Sequential(*[m for m in base]), LoraConfig(r=4, lora_alpha=8, target_modules=["0", "1"],
                                                                                     init_lora_weights=False))
    rows = []
    for index, name in ((0, "linear"), (1, "conv 3x3")):
        layer = peft_model.base_model.model[index]
        a, b = layer.lora_A["default"].weight.detach(), layer.lora_B["default"].weight.detach()
        ours = fuse(layer.base_layer.weight.detach().to(args.device), lora_delta(a.to(args.device), b.to(args.device), scale=8 / 4, key=name),
                    key=name)
        layer.merge(safe_merge=True)
        merged = layer.base_layer.weight.detach().to(args.device)
        diff = float((ours - merged).abs().max())
        rows.append({"check": f"fused LoRA vs peft ({name})", "max_abs": diff, "ok": diff <= 1e-5})
    return rows


def retry(args: argparse.Namespace) -> list[dict[str, Any]]:
    from ctsr_infer.device import NonFinite

    half = "bf16" if not args.device.startswith("cuda") else "fp16"
    model = random_model("lite", device=args.device, dtype=half)
    real = model.model.forward
    calls: list[str] = []

    def once_non_finite(*a: Any, **k: Any) -> Any:
        calls.append(str(model.model.placement.dtype))
        if len(calls) == 1:
            raise NonFinite("the network output (forced by the check)")
        return real(*a, **k)

    model.model.forward = once_non_finite
    out = model.upscale(_photo(32))
    restored = str(model.model.placement.dtype)
    ok = len(calls) == 2 and "float32" in calls[1] and np.isfinite(out).all() and "float32" not in restored
    return [{"check": f"non-finite in {half} reruns in fp32 once", "calls": calls, "dtype_after": restored, "ok": bool(ok)}]


def tiler(args: argparse.Namespace) -> list[dict[str, Any]]:
    from ctsr_infer.tiling import with_oom_retry

    size, budget = (256, 2e8) if args.small else (4096, 10e9)
    model = random_model("sd-onestep", device=args.device, dtype="auto", small=args.small)
    side = size // 4
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    out = model.upscale(np.random.default_rng(0).random((side, side, 3)).astype(np.float32), memory_budget=budget, color_fix="none")
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() if args.device.startswith("cuda") else None
    rows = [{"check": f"{size}² under a {budget / 1e9:g} GB budget", "seconds": seconds, "peak_device_gb": None if peak is None else peak / 1e9,
             "shape": list(out.shape), "ok": bool(out.shape[:2] == (size, size) and (peak is None or peak <= budget))}]
    tiles: list[int] = []

    def run(tile: int) -> torch.Tensor:
        tiles.append(tile)
        if tile > 128:  # what an allocator says when a tile does not fit
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (forced by the check)")
        return torch.zeros(1, device=args.device)

    with_oom_retry(run, tile=1024, floor=64, what="the check", flag="--vae-tile")
    rows.append({"check": "forced out-of-memory halves the tile", "tiles": tiles, "ok": tiles == [1024, 512, 256, 128]})
    return rows


def speed(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    cuda = args.device.startswith("cuda")
    sizes = (64, 128) if args.small else ((512, 1024) if args.quick else (512, 1024, 2048, 4096))
    dtypes = ("bf16", "fp16") if cuda else ("fp32", "bf16")
    for dtype in dtypes:
        model = random_model("sd-onestep", device=args.device, dtype=dtype, channels_last=True, small=args.small)
        for size in sizes:
            side = size // 4
            runs = args.runs if size <= 1024 else max(1, args.runs // 5)
            timing = _timed(model, np.random.default_rng(0).random((side, side, 3)).astype(np.float32), args.device, runs)
            rows.append({"check": f"sd-onestep {size}² {dtype}", **timing, "ok": True})
        if dtype == dtypes[0] and not args.no_compile:
            from ctsr_infer.families.base import compile_denoiser

            compile_denoiser(model.model)
            for size in sizes[:2]:
                side = size // 4
                timing = _timed(model, np.random.default_rng(0).random((side, side, 3)).astype(np.float32), args.device, args.runs)
                rows.append({"check": f"sd-onestep {size}² {dtype} compiled", **timing, "ok": True})
    lite = random_model("lite", device=args.device, dtype="auto")
    image = _photo(128 if args.small else 512)
    one = _timed(lite, image, args.device, args.runs)
    sweep = []
    for _ in range(args.runs):
        _sync(args.device)
        begin = time.perf_counter()
        lite.sweep(image, [0.0, 0.25, 0.5, 0.75, 1.0])
        _sync(args.device)
        sweep.append(time.perf_counter() - begin)
    rows.append({"check": "lite 5-value sweep / one image", "ratio": statistics.median(sweep) / one["seconds"], "ok": True})
    for size in ((64,) if args.small else (512, 1024)):
        model = random_model("resshift-onestep", device=args.device, dtype="auto", small=args.small)
        side = size // 4
        rows.append({"check": f"resshift-onestep {size}² auto", **_timed(model, np.random.default_rng(0).random((side, side, 3)).astype(np.float32),
                                                                        args.device, max(1, args.runs // 2)), "ok": True})
    batch = [_photo(64 if args.small else 512) for _ in range(8)]
    from ctsr_infer.image import read_image

    items = [read_image((b * 255).astype(np.uint8)) for b in batch]
    lite.process_batch(items)
    _sync(args.device)
    begin = time.perf_counter()
    for _ in range(max(1, args.runs // 2)):
        lite.process_batch(items)
    _sync(args.device)
    seconds = (time.perf_counter() - begin) / max(1, args.runs // 2)
    megapixels = sum(i.size[0] * i.size[1] * 16 for i in items) / 1e6
    rows.append({"check": "lite throughput, batches of 8", "mp_per_s": megapixels / seconds, "ok": True})
    return rows


def guard(args: argparse.Namespace) -> list[dict[str, Any]]:
    image = _photo(64 if args.small else 256)
    outputs = {}
    for dtype in ("fp32", "auto"):
        model = random_model("sd-onestep", device=args.device, dtype=dtype, small=args.small)
        outputs[dtype] = model.upscale(image, color_fix="none").astype(np.float64)
        del model
    quality = psnr(outputs["auto"], outputs["fp32"])
    return [{"check": "accuracy guard: sd-onestep auto vs fp32", "psnr": quality, "ok": bool(quality >= 40.0)}]


SECTIONS: dict[str, Callable[[argparse.Namespace], list[dict[str, Any]]]] = {
    "correctness": correctness, "lora": lora, "retry": retry, "tiler": tiler, "speed": speed, "guard": guard,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--small", action="store_true", help="tiny models and sizes (runs on a CPU in seconds)")
    parser.add_argument("--quick", action="store_true", help="speed at 512 and 1024 only")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--only", nargs="*", choices=list(SECTIONS), default=None)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/gpu_check.json"))
    args = parser.parse_args(argv)
    environment = {"torch": torch.__version__, "cuda": torch.version.cuda, "device": args.device,
                   "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") and torch.cuda.is_available() else "cpu",
                   "small": args.small}
    results: dict[str, Any] = {"environment": environment, "sections": {}}
    failed = 0
    for name in args.only or list(SECTIONS):
        start = time.perf_counter()
        try:
            rows = SECTIONS[name](args)
        except Exception as exc:  # noqa: BLE001 - one broken section is recorded, the others run
            rows = [{"check": name, "ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-2000:]}]
        results["sections"][name] = {"seconds": time.perf_counter() - start, "rows": rows}
        for row in rows:
            failed += not row.get("ok", False)
            shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items() if k not in ("check", "ok", "traceback", "stages")}
            print(f"{'ok  ' if row.get('ok') else 'FAIL'} {name:<12} {row['check']:<44} {json.dumps(shown)}", flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2, default=str))
    print(f"{failed} failed; wrote {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
