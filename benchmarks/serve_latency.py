"""How fast the ``ctsr serve`` slider answers: the page's work (``Workbench.view``) for the first
run of an image, a move of t to a new value, a move back to a value shown before, and a painted
map; plus the PNG encoding of the four images the page sends (zlib level 1, as the page writes
them; and Pillow's default level 6, what Gradio would use for arrays).

    python benchmarks/serve_latency.py [--lite-size 256] [--sd-size 64] [--json benchmarks/results/serve_latency.json]

Cases: the embedded ``ctsr-lite`` (knob ``native``: a new t is one network run); the full-size SD
2.1-base architecture with random weights as a PiSA-SR-style ``dual-lora`` student (a new t is the
branch mix and one VAE decode; speed does not depend on weight values). CPU, fp32, one process.
The browser's own time (HTTP, decoding, drawing) is not included.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ctsr_infer  # noqa: E402
from ctsr_infer.demo.workbench import Workbench  # noqa: E402


def _photo(size: int, folder: Path) -> Path:
    rng = np.random.default_rng(0)
    base = rng.random((size // 8 + 1, size // 8 + 1, 3))
    image = np.clip(np.kron(base, np.ones((8, 8, 1)))[:size, :size] * 0.85 + rng.random((size, size, 3)) * 0.15, 0, 1)
    path = folder / f"photo{size}.png"
    Image.fromarray((image * 255).astype(np.uint8)).save(path)
    return path


def _png_seconds(arrays: list[np.ndarray], level: int) -> float:
    start = time.perf_counter()
    for array in arrays:
        Image.fromarray(array).save(io.BytesIO(), format="PNG", compress_level=level)
    return time.perf_counter() - start


def measure(up: ctsr_infer.Upscaler, path: Path, label: str) -> dict:
    bench = Workbench(up, models=[up.name], outputs=Path(tempfile.mkdtemp()))
    steps = {}

    def step(name: str, **kwargs) -> None:  # noqa: ANN003
        start = time.perf_counter()
        view = bench.view(path, up.name, **kwargs)
        work = time.perf_counter() - start
        images = [view.before, view.after, view.zoom_before, view.zoom_after]
        png, png_default = _png_seconds(images, 1), _png_seconds(images, 6)
        steps[name] = {"seconds": round(work, 3), "png_seconds": round(png, 3), "png_seconds_level6": round(png_default, 3),
                       "timing": view.timing}
        print(f"  {name:<22} {work:7.2f} s  (+ PNG {png:.2f} s; {png_default:.2f} s at Gradio's level 6)   {view.timing}", flush=True)

    height, width = np.asarray(Image.open(path)).shape[:2]
    mask = np.zeros((height, width), bool)
    mask[height // 4: height // 2, width // 4: width // 2] = True
    print(f"{label}: input {width}x{height}", flush=True)
    step("first run (t=0.5)", t=0.5)
    step("move to t=0.3", t=0.3)
    step("move to t=0.7", t=0.7)
    step("back to t=0.3", t=0.3)
    step("paint (t=1 in a box)", t=0.3, mask=mask, painted_t=1.0)
    return {"model": label, "input": [height, width], "steps": steps}


def _sd_dual_lora() -> ctsr_infer.Upscaler:
    from pisa_sweep import _student

    from ctsr_infer.device import resolve
    from ctsr_infer.families.sd_onestep.base_model import alphas_cumprod_scaled_linear
    from ctsr_infer.families.sd_onestep.model import SDOneStep
    from ctsr_infer.pipeline import Upscaler

    student, unet, vae = _student()
    model = SDOneStep(student, unet, vae, alphas_cumprod_scaled_linear(), resolve("cpu", "fp32"))
    return Upscaler(model, name="sd21-dual-lora (random weights)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lite-size", type=int, default=256, help="lite input side (output x4)")
    parser.add_argument("--sd-size", type=int, default=64, help="SD input side (output x4); 0 skips the SD case")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/serve_latency.json"))
    args = parser.parse_args()
    torch.manual_seed(0)
    folder = Path(tempfile.mkdtemp())
    rows = [measure(ctsr_infer.load(device="cpu", dtype="fp32"), _photo(args.lite_size, folder), "ctsr-lite")]
    if args.sd_size:
        rows.append(measure(_sd_dual_lora(), _photo(args.sd_size, folder), "sd21-dual-lora (random weights)"))
    result = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads", "torch": torch.__version__,
              "rows": rows}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
