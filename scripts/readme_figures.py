"""The README's figures: the knob curve and crop grid of ``ctsr eval`` on the held-out photos, and a
screenshot of ``ctsr serve`` in Chromium.

    bash scripts/fetch_photos.sh && python scripts/readme_figures.py [--photos data/photos/raw]

1. ``data/eval_holdout/``: the held-out photos (``ctsr_infer.train.lite_gan.HOLDOUT``: never trained
   on, never used to choose anything), shrunk with Lanczos to a 512 px long side.
2. ``ctsr eval --model ctsr-lite --data data/eval_holdout --t 0,0.25,0.5,0.75,1 --degrade clean``:
   ``benchmarks/results/eval_holdout.json``, ``docs/eval_curve.png``, ``docs/eval_grid.png`` (first 2 images).
3. ``ctsr serve`` with ctsr-lite on a loopback port, driven by Playwright with Debian's chromium: a
   crop of a held-out photo uploaded, t moved to 0.2, a stroke painted at t = 1, ``docs/serve.png``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def eval_set(photos: Path, target: Path) -> Path:
    from ctsr_infer.train.lite import shrink_photo
    from ctsr_infer.train.lite_gan import HOLDOUT

    target.mkdir(parents=True, exist_ok=True)
    for name in HOLDOUT:
        found = [p for p in photos.iterdir() if p.stem == name]
        if not found:
            raise SystemExit(f"{name} is missing from {photos}; run scripts/fetch_photos.sh")
        Image.fromarray(shrink_photo(found[0], 512)).save(target / f"{name}.png")
    return target


def evaluation(data: Path) -> None:
    import ctsr_infer
    from ctsr_infer.evaluation import crop_grid, evaluate, plot_curve

    report = evaluate(ctsr_infer.load(device="cpu"), data, ts=[0.0, 0.25, 0.5, 0.75, 1.0], degrade="clean", samples=2)
    (ROOT / "benchmarks/results").mkdir(parents=True, exist_ok=True)
    (ROOT / "benchmarks/results/eval_holdout.json").write_text(report.to_json())
    plot_curve(report, ROOT / "docs/eval_curve.png")
    crop_grid(report.samples, ROOT / "docs/eval_grid.png", crop=64, zoom=2, column=160)
    for row in report.means():
        t = "-" if row["t"] is None else f"{row['t']:.2f}"
        print(f"{row['method']:<10} t={t:<5} PSNR-Y {row['psnr_y']:.2f}  SSIM-Y {row['ssim_y']:.4f}")


def screenshot(photo: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    import ctsr_infer
    from ctsr_infer.demo import serve

    sys.path.insert(0, str(ROOT / "tests"))
    from tiny import free_port

    image = Image.open(photo).convert("RGB")
    left, top = max(0, image.width // 2 - 96), max(0, image.height // 2 - 72)
    crop = image.crop((left, top, min(image.width, left + 192), min(image.height, top + 144)))
    upload = Path(os.environ.get("TMPDIR", "/tmp")) / "ctsr-serve-demo.png"
    crop.save(upload)
    port = free_port()
    lite = ctsr_infer.load(device="cpu")
    app = serve(lite, models=[lite.name], port=port, block=False)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium"), headless=True)
            page = browser.new_page(viewport={"width": 1280, "height": 1500})
            page.goto(f"http://127.0.0.1:{port}/")
            page.set_input_files("#inp input[type=file]", str(upload))
            after = page.locator("#cmp img[data-testid=imageslider-image]").nth(1)
            after.wait_for(timeout=120_000)
            old = after.get_attribute("src")
            page.locator("#t input[type=number]").fill("0.2")
            page.locator("#t input[type=number]").press("Enter")
            expect(after).not_to_have_attribute("src", old, timeout=120_000)
            page.locator("#ed button[aria-label='Brush']").click()
            canvas = page.locator("#ed canvas").first
            canvas.scroll_into_view_if_needed()
            box = canvas.bounding_box()
            assert box is not None
            x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
            page.mouse.move(x - 60, y - 10)
            page.mouse.down()
            for step in range(1, 25):
                page.mouse.move(x - 60 + 5 * step, y - 10 + step)
            page.mouse.up()
            page.locator("#tmap img").wait_for(timeout=120_000)
            page.wait_for_timeout(1500)
            page.screenshot(path=str(ROOT / "docs/serve.png"), full_page=True)
            with Image.open(ROOT / "docs/serve.png") as shot:  # a page of flat colours: 256 colours keep it readable at 1/3 the size
                shot.convert("RGB").quantize(256).save(ROOT / "docs/serve.png", optimize=True)
            browser.close()
    finally:
        app.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, default=ROOT / "data/photos/raw")
    parser.add_argument("--screenshot-only", action="store_true")
    args = parser.parse_args()
    (ROOT / "docs").mkdir(exist_ok=True)
    data = eval_set(args.photos, ROOT / "data/eval_holdout")
    if not args.screenshot_only:
        evaluation(data)
    screenshot(data / "mate-LadyBird.png")
    print("wrote docs/eval_curve.png, docs/eval_grid.png, docs/serve.png, benchmarks/results/eval_holdout.json")


if __name__ == "__main__":
    main()
