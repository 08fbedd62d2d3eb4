"""Per-stage speed and memory of one configuration: the harness behind ``ctsr bench`` and ``benchmarks/``.

Speed and memory do not depend on weight values, so the families can be measured at full size with
random weights anywhere (:func:`random_model`: each family's ``random_model``, e.g. SD 2.1-base's UNet
(865 M) and VAE (84 M), ResShift's Swin-UNet (118.6 M) and VQ-f4 (55.3 M); the lite family gives its
shipped model). Each configuration runs in a fresh process (:func:`run_isolated`) so its peak RSS is
its own. Stage times come from the progress events: a stage lasts from the end of the previous
stage to its own last event.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from . import progress
from .families import FAMILIES

if TYPE_CHECKING:
    from .pipeline import Upscaler

__all__ = ["BenchResult", "random_model", "measure", "run_isolated", "peak_rss_gb", "load_output", "run_compared", "FAMILY_NAMES"]

FAMILY_NAMES = tuple(FAMILIES)
"""Names ``measure`` takes for a random full-size model of a family (from the family registry)."""
STAGES = tuple(stage for stage in progress.STAGES if stage not in ("download", "file"))
"""The stages of one image, in the order they run."""


def peak_rss_gb() -> float:
    """This process's peak resident memory in GiB (VmHWM; ru_maxrss as the fallback)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2




def random_model(family: str, *, device: str = "cpu", dtype: str = "fp32", channels_last: bool | None = False, seed: int = 0,
                 small: bool = False) -> Upscaler:
    """A full-size model of ``family`` with random weights (the family's ``random_model``; ``lite``: the
    shipped model) as an Upscaler; ``dtype="auto"`` picks what :func:`ctsr_infer.load` would pick for
    that family. ``small``: the same architectures at toy width (checks of the harness itself, and
    correctness checks on a device)."""
    from .device import resolve
    from .families import FAMILIES, get_family
    from .pipeline import Upscaler

    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {list(FAMILIES)}")
    descriptor = get_family(family)
    placement = resolve(device, dtype, channels_last=channels_last, fast_path=descriptor.cpu_fast_path)
    torch.manual_seed(seed)
    return Upscaler(descriptor.random_model(placement, small), name=f"{family}-random", family=descriptor)


@dataclass
class BenchResult:
    model: str
    size: int
    dtype: str
    channels_last: bool | None
    runs: int
    load_seconds: float
    seconds: float
    """Median end-to-end seconds of one image (after warm-up)."""
    stages: dict[str, float]
    """Median seconds per stage."""
    peak_rss_gb: float
    peak_device_gb: float | None = None
    options: dict[str, Any] = field(default_factory=dict)
    psnr_vs_fp32: float | None = None
    placement: str = ""
    """What ran: network dtype / VAE dtype / layout (resolved from ``auto``)."""
    compiled: bool = False
    threads: int = 0
    """torch's intra-op threads during the run."""


def measure(model: str, *, size: int, dtype: str = "fp32", channels_last: bool | None = False, runs: int = 3, warmup: int = 1,
            device: str = "cpu", options: Mapping[str, Any] | None = None, save: str | None = None, compile: bool = False,
            threads: int | None = None, image: str | None = None) -> BenchResult:
    """Load ``model`` (a family name for random full-size weights, or a model id / student path),
    upscale one image of ``size``/scale pixels ``warmup`` + ``runs`` times, return medians. The image
    is uniform noise, or the photo at path ``image`` resized to fit (accuracy checks need real
    structure: a denoising network turns noise into a flat image). With ``compile`` the warm-up runs
    include the compilation."""
    from .families.base import compile_denoiser
    from .pipeline import load

    if threads:
        torch.set_num_threads(threads)
    options = dict(options or {})
    start = time.perf_counter()
    if model in FAMILY_NAMES:
        upscaler = random_model(model, device=device, dtype=dtype, channels_last=channels_last)
    else:
        upscaler = load(model, device=device, dtype=dtype, channels_last=channels_last)
    if compile:
        compile_denoiser(upscaler.model)
    load_seconds = time.perf_counter() - start
    scale = options.get("scale") or upscaler.default_scale
    side = max(1, round(size / scale))
    if image is None:
        pixels = np.random.default_rng(0).random((side, side, 3)).astype(np.float32)
    else:
        from PIL import Image

        with Image.open(image) as photo:
            pixels = np.asarray(photo.convert("RGB").resize((side, side), Image.Resampling.LANCZOS), dtype=np.float32) / 255.0
    totals: list[float] = []
    per_stage: dict[str, list[float]] = {}
    out = None
    for index in range(warmup + runs):
        stamps: list[tuple[str, float]] = []
        begin = time.perf_counter()
        out = upscaler.upscale(pixels, on_progress=lambda e: stamps.append((e.stage, time.perf_counter())), **options)
        end = time.perf_counter()
        if index < warmup:
            continue
        totals.append(end - begin)
        previous = begin
        for stage in STAGES:
            times = [t for s, t in stamps if s == stage]
            if times:
                per_stage.setdefault(stage, []).append(max(times) - previous)
                previous = max(times)
        per_stage.setdefault("image out", []).append(end - previous)
    if save and out is not None:
        np.save(save, np.asarray(out))
    device_peak = torch.cuda.max_memory_allocated() / 1024**3 if torch.cuda.is_available() and device.startswith("cuda") else None
    return BenchResult(model=model, size=size, dtype=dtype, channels_last=channels_last, runs=runs, load_seconds=load_seconds,
                       seconds=statistics.median(totals), stages={k: statistics.median(v) for k, v in per_stage.items()},
                       peak_rss_gb=peak_rss_gb(), peak_device_gb=device_peak, options=options, placement=upscaler.model.placement.describe(),
                       compiled=compile, threads=torch.get_num_threads())


def load_output(path: str | Path) -> np.ndarray:
    """A saved benchmark output as float64 in [0, 1] (outputs of float inputs are floats in [0, 1]
    already; integer outputs are scaled by their type's maximum)."""
    array = np.load(path)
    if np.issubdtype(array.dtype, np.integer):
        return array.astype(np.float64) / np.iinfo(array.dtype).max
    return array.astype(np.float64)


def run_isolated(model: str, *, size: int, dtype: str, channels_last: bool | None = False, runs: int = 3, warmup: int = 1,
                 device: str = "cpu", options: Mapping[str, Any] | None = None, save: str | None = None, compile: bool = False,
                 threads: int | None = None, image: str | None = None) -> BenchResult:
    """:func:`measure` in a fresh Python process (so peak RSS is this configuration's alone)."""
    spec = json.dumps({"model": model, "size": size, "dtype": dtype, "channels_last": channels_last, "runs": runs,
                       "warmup": warmup, "device": device, "options": dict(options or {}), "save": save, "compile": compile,
                       "threads": threads, "image": image})
    done = subprocess.run([sys.executable, "-m", "ctsr_infer.benchmark", spec], capture_output=True, text=True,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if done.returncode != 0:
        raise RuntimeError(f"benchmark of {model} at {size} px ({dtype}) failed:\n{done.stderr[-2000:]}")
    return BenchResult(**json.loads(done.stdout.strip().splitlines()[-1]))



def run_compared(model: str, *, size: int, configs: Sequence[Mapping[str, Any]],
                 on_result: Callable[[BenchResult], None] | None = None, **common: Any) -> list[BenchResult]:
    """:func:`run_isolated` once per configuration (its keyword arguments: ``dtype``, ``channels_last``,
    ``compile`` ...; ``common`` holds the shared ones) on the same input; every result after the
    first gets ``psnr_vs_fp32`` against the first one's output."""
    from .metrics import psnr

    results: list[BenchResult] = []
    reference = None
    with tempfile.TemporaryDirectory() as scratch:
        for index, config in enumerate(configs):
            save = str(Path(scratch) / f"{index}.npy")
            result = run_isolated(model, size=size, save=save, **{**common, **config})
            output = load_output(save)
            if reference is None:
                reference = output
            elif output.shape == reference.shape:
                result.psnr_vs_fp32 = psnr(output, reference)
            results.append(result)
            if on_result is not None:
                on_result(result)
    return results


if __name__ == "__main__":
    arguments = json.loads(sys.argv[1])
    print(json.dumps(asdict(measure(**arguments))))
