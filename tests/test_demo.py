"""The page's logic without a browser (:class:`ctsr_infer.demo.workbench.Workbench`): the views
equal the library's outputs, limits refuse with a clear message, downloads never replace a file,
painted masks become t maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import ctsr_infer
from ctsr_infer.cli import app
from ctsr_infer.demo.workbench import DISPLAY_SIDE, ZOOM_SIDE, Limits, Workbench, display, mask_from_layers, paint_map
from ctsr_infer.errors import InvalidInputError
from ctsr_infer.image import read_image
from tiny import same_8bit


def _photo(height: int, width: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.random((height // 8 + 1, width // 8 + 1, 3))
    return (np.kron(base, np.ones((8, 8, 1)))[:height, :width] * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def lite() -> ctsr_infer.Upscaler:
    return ctsr_infer.load(device="cpu", dtype="fp32")


@pytest.fixture
def bench(lite: ctsr_infer.Upscaler, tmp_path: Path) -> Workbench:
    return Workbench(lite, models=[lite.name], outputs=tmp_path / "downloads")


def _save(array: np.ndarray, path: Path) -> Path:
    Image.fromarray(array).save(path)
    return path


def test_the_view_is_the_library_output_and_t_reuses_the_prepared_image(bench: Workbench, lite: ctsr_infer.Upscaler,
                                                                         tmp_path: Path) -> None:
    path = _save(_photo(40, 56), tmp_path / "a.png")
    view = bench.view(path, lite.name, t=0.2)
    assert same_8bit(view.after, np.asarray(lite.upscale(path, t=0.2)))
    assert view.before.shape == view.after.shape == (160, 224, 3) and view.t_map is None
    assert "prepare" in view.timing and "render t = 0.2" in view.timing
    ready = bench.prepared(path, lite.name)
    again = bench.view(path, lite.name, t=0.7, compare="t", t_other=0.2)
    assert bench.prepared(path, lite.name) is ready and "prepare" not in again.timing
    assert np.array_equal(again.before, view.after)  # the left side at t_other, kept from before
    assert same_8bit(again.after, np.asarray(lite.upscale(path, t=0.7)))
    # the zoom: full-resolution pixels around the centre
    assert again.zoom_after.shape == (min(ZOOM_SIDE, 160), min(ZOOM_SIDE, 224), 3)
    corner = bench.view(path, lite.name, t=0.7, zoom=(1.0, 1.0))
    assert np.array_equal(corner.zoom_after, again.after[-ZOOM_SIDE:, -ZOOM_SIDE:] if again.after.shape[0] >= ZOOM_SIDE
                          else again.after[:, -ZOOM_SIDE:])


def test_a_painted_mask_is_a_t_map(bench: Workbench, lite: ctsr_infer.Upscaler, tmp_path: Path) -> None:
    path = _save(_photo(40, 56), tmp_path / "a.png")
    mask = np.zeros((40, 56), bool)
    mask[8:24, 10:30] = True
    view = bench.view(path, lite.name, t=1.0, mask=mask, painted_t=0.0)
    t_map = np.where(mask, 0.0, 1.0).astype(np.float32)
    assert view.t_map is not None and np.array_equal(view.t_map, np.round(t_map * 255).astype(np.uint8))
    assert same_8bit(view.after, np.asarray(lite.upscale(path, t=t_map)))
    assert paint_map(np.zeros((4, 4), bool), 0.3, 1.0) is None
    # editor layers come back RGBA at the editor's size: painted = alpha > 0; a half-size painting is a
    # map of the image's aspect ratio (resized where it acts); one of another aspect ratio is a stale
    # painting of the previous image, ignored
    layer = np.zeros((20, 28, 4), np.uint8)
    layer[4:12, 5:15, 3] = 255
    half = mask_from_layers([layer])
    assert half is not None and half.shape == (20, 28) and half.sum() == 8 * 10
    assert mask_from_layers([np.zeros((20, 28, 4), np.uint8)]) is None
    view = bench.view(path, lite.name, t=1.0, mask=half, painted_t=0.0)
    assert same_8bit(view.after, np.asarray(lite.upscale(path, t=np.where(half, 0.0, 1.0).astype(np.float32))))
    stale = bench.view(path, lite.name, t=1.0, mask=np.ones((56, 40), bool), painted_t=0.0)
    assert stale.t_map is None and np.array_equal(stale.after, bench.view(path, lite.name, t=1.0).after)


def test_limits_refuse_with_the_flag_to_raise_them(lite: ctsr_infer.Upscaler, tmp_path: Path) -> None:
    path = _save(_photo(40, 56), tmp_path / "a.png")
    small = Workbench(lite, models=[lite.name], outputs=tmp_path, limits=Limits(max_input_pixels=1000))
    with pytest.raises(InvalidInputError, match=r"56x40 = 0.0 MP.*--max-input-mp"):
        small.view(path, lite.name, t=0.5)
    tiny = Workbench(lite, models=[lite.name], outputs=tmp_path, limits=Limits(max_upload_bytes=100))
    with pytest.raises(InvalidInputError, match="--max-upload-mb"):
        tiny.read(path)
    bench = Workbench(lite, models=[lite.name], outputs=tmp_path)
    with pytest.raises(InvalidInputError, match="not offered"):
        bench.upscaler("osediff")


def test_downloads_are_full_resolution_and_never_replace_a_file(bench: Workbench, lite: ctsr_infer.Upscaler, tmp_path: Path) -> None:
    rgb16 = (_photo(24, 32).astype(np.uint16) * 257)
    path = tmp_path / "deep.png"
    from ctsr_infer.encoding import write_image

    write_image(read_image(rgb16), path)
    first = bench.save(path, lite.name, t=0.4, fmt="png")
    second = bench.save(path, lite.name, t=0.4, fmt="png")
    assert first != second and first.exists() and second.exists()
    assert first.name == f"deep_{lite.name}_t0.40.png" and second.name == f"deep_{lite.name}_t0.40_1.png"
    saved, expected = read_image(first), lite.process(read_image(path), t=0.4)[0]
    assert saved.bit_depth == 16 and saved.size == (96, 128)
    assert np.abs(saved.pixels - expected.pixels).max() <= 1 / 65535 + 1e-6
    jpg = bench.save(path, lite.name, t=0.4, fmt="jpg")
    assert Image.open(jpg).format == "JPEG"
    with pytest.raises(InvalidInputError, match="`format`"):
        bench.save(path, lite.name, t=0.4, fmt="bmp")


def test_display_reduces_only_large_outputs() -> None:
    data = read_image(_photo(40, 56))
    assert np.array_equal(display(data), _photo(40, 56))
    big = read_image(np.zeros((DISPLAY_SIDE + 100, 300, 3), np.uint8))
    assert display(big).shape == (DISPLAY_SIDE, round(300 * DISPLAY_SIDE / (DISPLAY_SIDE + 100)), 3)


def test_cli_serve_checks_its_options() -> None:
    result = CliRunner().invoke(app, ["serve", "--share", "maybe"])
    assert result.exit_code == 2 and "--share" in result.output
    result = CliRunner().invoke(app, ["serve", "--max-input-mp", "0"])
    assert result.exit_code == 2 and "--max-input-mp" in result.output


def test_a_painting_of_another_image_and_a_vanished_upload(bench: Workbench, lite: ctsr_infer.Upscaler, tmp_path: Path) -> None:
    path = _save(_photo(40, 56, seed=1), tmp_path / "a.png")
    other = _photo(40, 56, seed=2)  # same size and aspect: only the background tells them apart
    mask = np.zeros((40, 56), bool)
    mask[8:24, 10:30] = True
    stale = bench.view(path, lite.name, t=1.0, mask=mask, painted_on=np.dstack([other, np.full((40, 56), 255, np.uint8)]), painted_t=0.0)
    assert stale.t_map is None
    current = bench.view(path, lite.name, t=1.0, mask=mask, painted_on=_photo(40, 56, seed=1), painted_t=0.0)
    assert current.t_map is not None
    path.unlink()
    with pytest.raises(InvalidInputError, match="upload it again"):
        bench.view(path, lite.name, t=0.5)


def test_bad_calls_get_clear_errors(bench: Workbench, lite: ctsr_infer.Upscaler, tmp_path: Path) -> None:
    path = _save(_photo(24, 32), tmp_path / "a.png")
    ready = lite.prepare(path)
    with pytest.raises(InvalidInputError, match="`t` for `render`"):
        ready.render([0.2, 0.4])  # type: ignore[arg-type]
    saved = bench.save(path, lite.name, t=None)  # the model's default t
    assert saved.name == f"a_{lite.name}_t0.50.png"
    assert np.array_equal(np.asarray(Image.open(saved)), np.asarray(lite.upscale(path)))


def test_every_listener_shares_one_queue(lite: ctsr_infer.Upscaler, tmp_path: Path) -> None:
    pytest.importorskip("gradio")
    from ctsr_infer.demo import build_app
    from ctsr_infer.demo.page import QUEUE

    app = build_app(lite, models=[lite.name], outputs=tmp_path)
    ids = {fn.concurrency_id for fn in app.fns.values() if fn.name not in ("<lambda>",)}
    limits = {fn.concurrency_limit for fn in app.fns.values()}
    assert ids == {QUEUE} and limits <= {1, "default"}


def test_cli_serve_refuses_a_busy_port_before_loading() -> None:
    pytest.importorskip("gradio")
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = CliRunner().invoke(app, ["serve", "--port", str(port)])
    assert result.exit_code == 2 and "--port" in result.output and "Traceback" not in result.output


def test_cli_eval_refuses_to_replace_a_file_before_running(tmp_path: Path) -> None:
    existing = tmp_path / "grid.png"
    existing.write_bytes(b"mine")
    result = CliRunner().invoke(app, ["eval", "--model", "ctsr-lite", "--data", str(tmp_path / "nowhere"), "--grid", str(existing)])
    assert result.exit_code == 2 and "--overwrite" in result.output and existing.read_bytes() == b"mine"
