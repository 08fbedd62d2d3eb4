"""``ctsr serve`` in a real browser: Debian's Chromium driven headless by Playwright against a
server this module starts on a free loopback port with the embedded lite model.

Upload an image, move the t slider, read the page's images back and compare them with the
library's output for that t; paint a region and check only that region changes. A screenshot is
saved to ``test-artifacts/serve.png``. Skipped where Gradio, Playwright or Chromium is absent
(``.ci/run`` installs all three)."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

pytest.importorskip("gradio")
playwright = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip("Chromium is not installed (apt-get install chromium)", allow_module_level=True)

import ctsr_infer  # noqa: E402
from ctsr_infer.demo import build_app  # noqa: E402
from tiny import free_port, same_8bit  # noqa: E402

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
TIMEOUT = 60_000  # ms: the first run on a busy 2-core machine


def _photo(height: int = 96, width: int = 128) -> np.ndarray:
    rng = np.random.default_rng(7)
    base = rng.random((height // 4 + 1, width // 4 + 1, 3))
    smooth = np.kron(base, np.ones((4, 4, 1)))[:height, :width]
    return (np.clip(smooth * 0.8 + rng.random((height, width, 3)) * 0.2, 0, 1) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def lite() -> ctsr_infer.Upscaler:
    return ctsr_infer.load(device="cpu", dtype="fp32")


@pytest.fixture(scope="module")
def server(lite: ctsr_infer.Upscaler, tmp_path_factory: pytest.TempPathFactory):
    # Gradio accepts uploads in its upload folder, read from the environment at each request; the
    # per-test TMPDIR of conftest would move it, so it is pinned for the module
    patch = pytest.MonkeyPatch()
    folder = tmp_path_factory.mktemp("gradio")
    patch.setenv("GRADIO_TEMP_DIR", str(folder))
    patch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    app = build_app(lite, models=[lite.name], outputs=folder / "downloads")
    _, url, _ = app.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    yield url
    app.close()
    patch.undo()


@pytest.fixture(scope="module")
def page(server: str):
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 1800})
        page.goto(server)
        page.wait_for_selector("#inp input[type=file]", state="attached", timeout=TIMEOUT)
        yield page
        browser.close()


def _fetch(page, locator) -> np.ndarray:  # noqa: ANN001 - Playwright objects
    body = page.request.get(locator.get_attribute("src")).body()
    return np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))


def _sides(page) -> tuple:  # noqa: ANN001
    images = page.locator("#cmp img[data-testid=imageslider-image]")
    images.nth(1).wait_for(timeout=TIMEOUT)
    return images.nth(0), images.nth(1)


def _set_slider(page, elem_id: str, value: float) -> None:  # noqa: ANN001
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def test_upload_slider_and_paint_in_a_browser(page, lite: ctsr_infer.Upscaler, tmp_path: Path) -> None:  # noqa: ANN001
    expect = playwright.expect
    image = _photo()
    path = tmp_path / "photo.png"
    Image.fromarray(image).save(path)

    # upload: the page shows bicubic | output at the model's default t
    page.set_input_files("#inp input[type=file]", str(path))
    before, after = _sides(page)
    shown = _fetch(page, after)
    assert same_8bit(shown, np.asarray(lite.upscale(path)))
    assert shown.shape == (384, 512, 3)

    # move t: the output changes and equals the library's output at that t
    for t in (0.0, 1.0):
        old = after.get_attribute("src")
        _set_slider(page, "t", t)
        expect(after).not_to_have_attribute("src", old, timeout=TIMEOUT)
        now = _fetch(page, after)
        assert not np.array_equal(now, shown)
        assert same_8bit(now, np.asarray(lite.upscale(path, t=t))), t
        shown = now
    expect(page.locator("#timing")).to_contain_text("render t = 1", timeout=TIMEOUT)
    at_one = shown

    # paint a stroke through the middle with t = 0 there (the slider stays at 1)
    _set_slider(page, "t_paint", 0.0)
    page.locator("#ed button[aria-label='Brush']").click()
    canvas = page.locator("#ed canvas").first
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    assert box is not None
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    old = after.get_attribute("src")
    page.mouse.move(x - 30, y)
    page.mouse.down()
    for step in range(1, 13):
        page.mouse.move(x - 30 + 5 * step, y + step)
    page.mouse.up()
    page.locator("#tmap img").wait_for(timeout=TIMEOUT)
    expect(after).not_to_have_attribute("src", old, timeout=TIMEOUT)
    t_map = _fetch(page, page.locator("#tmap img"))[..., 0]
    painted = t_map < 128
    assert t_map.shape == (96, 128) and 0 < painted.sum() < painted.size / 2
    now = _fetch(page, after)
    expected = np.asarray(lite.upscale(path, t=np.where(painted, 0.0, 1.0).astype(np.float32)))
    assert same_8bit(now, expected)
    # only the painted region (resized to the output, plus the 1-input-pixel reach of the blend) changed
    changed = np.abs(now.astype(int) - at_one.astype(int)).max(axis=2) > 1
    near = np.asarray(Image.fromarray(painted).resize((512, 384), Image.Resampling.NEAREST))
    reach = np.asarray(Image.fromarray(near.astype(np.uint8) * 255).filter(ImageFilter.MaxFilter(9))) > 0
    assert changed.any() and not (changed & ~reach).any()

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "serve.png"), full_page=True)


def test_download_writes_the_full_resolution_output(page, lite: ctsr_infer.Upscaler) -> None:  # noqa: ANN001
    page.locator("#save").click()
    link = page.locator("#dl a[href]").first
    link.wait_for(timeout=TIMEOUT)
    body = page.request.get(link.get_attribute("href")).body()
    saved = np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))
    _, after = _sides(page)
    assert saved.shape == (384, 512, 3)
    assert np.array_equal(saved, _fetch(page, after))  # what the page shows (not reduced at this size), lossless


def test_serve_binds_to_loopback_and_answers(lite: ctsr_infer.Upscaler, tmp_path: Path) -> None:
    import urllib.request

    from ctsr_infer.demo import serve

    port = free_port()
    app = serve(lite, models=[lite.name], port=port, outputs=tmp_path, block=False)
    try:
        assert app.server_name == "127.0.0.1"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as response:
            assert response.status == 200 and b"ctsr-infer" in response.read()
    finally:
        app.close()
