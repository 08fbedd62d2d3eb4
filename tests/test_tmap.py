"""t as a map (per position) and faces pinned to their own t."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import ctsr_infer
from ctsr_infer import faces
from ctsr_infer.tmap import TMap, as_tmap


@pytest.fixture(scope="module")
def lite() -> ctsr_infer.Upscaler:
    return ctsr_infer.load("ctsr-lite", device="cpu", dtype="fp32")


def _image(height: int = 40, width: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 1, width, dtype=np.float32)[None, :, None] * np.linspace(0.2, 1, height, dtype=np.float32)[:, None, None]
    return np.clip(base + 0.15 * rng.random((height, width, 3), dtype=np.float32), 0, 1).astype(np.float32)


def test_maps_from_arrays_images_and_files(tmp_path: Path) -> None:
    ramp = np.tile(np.arange(256, dtype=np.uint8), (4, 1))
    assert as_tmap(ramp).values[0, 255] == 1.0 and as_tmap(ramp).values[0, 0] == 0.0
    path = tmp_path / "mask.png"
    Image.fromarray(ramp).save(path)
    from_file = as_tmap(path)
    assert from_file.name == "mask.png" and np.array_equal(from_file.values, as_tmap(ramp).values)
    sixteen = (ramp.astype(np.uint16) * 257)
    assert np.allclose(as_tmap(sixteen).values, as_tmap(ramp).values)
    with pytest.raises(ctsr_infer.InvalidInputError, match=r"\[0, 1\]"):
        as_tmap(np.full((4, 4), 1.5, np.float32))
    with pytest.raises(ctsr_infer.InvalidInputError, match="grayscale"):
        as_tmap(np.random.default_rng(0).random((4, 4, 3)))
    with pytest.raises(ctsr_infer.InvalidInputError, match="does not exist"):
        as_tmap(tmp_path / "absent.png")
    # resizing averages (anti-aliasing): a fine 0/1 checkerboard becomes its mean when shrunk 8x
    checker = (np.indices((64, 64)).sum(axis=0) % 2).astype(np.float32)
    small = TMap(checker).resized(8, 8)
    assert small.shape == (1, 1, 8, 8) and abs(float(small.mean()) - 0.5) < 0.02 and float(small.std()) < 0.05


def test_a_constant_map_is_the_scalar_t(lite: ctsr_infer.Upscaler) -> None:
    image = _image()
    for t in (0.0, 0.3, 1.0):
        assert np.array_equal(lite.upscale(image, t=np.full((10, 16), t, np.float32)), lite.upscale(image, t=t))


def test_a_half_and_half_map_is_each_scalar_output_on_its_half(lite: ctsr_infer.Upscaler) -> None:
    """lite (native knob): an output-space blend, exact where the map is 0 or 1."""
    image = _image()
    mask = np.zeros((40, 64), np.float32)
    mask[:, 32:] = 1.0
    mixed = lite.upscale(image, t=mask)
    zero, one = lite.upscale(image, t=0.0), lite.upscale(image, t=1.0)
    assert np.abs(zero - one).max() > 0.05  # the two ends differ: the test can fail
    assert np.abs(mixed[:, :120] - zero[:, :120]).max() < 1e-6
    assert np.abs(mixed[:, 136:] - one[:, 136:]).max() < 1e-6


def test_tiled_and_untiled_runs_apply_a_map_alike(lite: ctsr_infer.Upscaler) -> None:
    image = _image(72, 96)
    mask = np.tile(np.linspace(0, 1, 96, dtype=np.float32), (72, 1))
    untiled = lite.upscale(image, t=mask, tiling="off")
    tiled = lite.upscale(image, t=mask, tile=32, tile_overlap=8)
    assert np.abs(untiled - tiled).max() < 1e-5


def test_a_map_must_have_the_image_aspect(lite: ctsr_infer.Upscaler) -> None:
    with pytest.raises(ctsr_infer.InvalidInputError, match="aspect ratio"):
        lite.upscale(_image(), t=np.zeros((40, 40), np.float32))
    lite.upscale(_image(), t=np.zeros((5, 8), np.float32))  # any size with the same aspect


def test_the_settings_record_names_the_map(lite: ctsr_infer.Upscaler) -> None:
    a, b = np.zeros((4, 4), np.float32), np.ones((4, 4), np.float32)
    assert lite.settings(t=as_tmap(a))["t"] != lite.settings(t=as_tmap(b))["t"]
    assert lite.settings(t=as_tmap(a))["t"] == lite.settings(t=as_tmap(a.copy()))["t"]
    assert lite.settings(t=0.4, protect_faces=1.0)["protect_faces"] == 1.0


def test_protect_faces_pins_the_face_region(lite: ctsr_infer.Upscaler, monkeypatch: pytest.MonkeyPatch) -> None:
    """The mask plumbing, with a stub detector: the face region gets t = T, the background keeps t."""
    monkeypatch.setattr(faces, "detect_faces", lambda pixels: [faces.Face(x=8, y=8, width=16, height=16)])
    image = _image()
    out = lite.upscale(image, t=0.0, protect_faces=1.0)
    zero, one = lite.upscale(image, t=0.0), lite.upscale(image, t=1.0)
    centre, far = (slice(56, 72), slice(56, 72)), (slice(120, 160), slice(160, 256))
    assert np.abs(out[centre] - one[centre]).max() < 1e-6
    assert np.abs(out[far] - zero[far]).max() < 1e-6
    mask = faces.face_mask(40, 64, [faces.Face(8, 8, 16, 16)])
    assert mask[16, 16] == 1.0 and mask[39, 63] == 0.0 and 0.0 < mask[16, 27] < 1.0  # feathered edge


def test_protect_faces_needs_a_knob_that_takes_maps(student_path: Path) -> None:
    osediff = ctsr_infer.load(student_path, device="cpu")
    with pytest.raises(ctsr_infer.InvalidInputError, match="protect_faces"):
        osediff.upscale(_image(16, 16), protect_faces=1.0)
    with pytest.raises(ctsr_infer.KnobError):
        osediff.upscale(_image(16, 16), t=np.zeros((16, 16), np.float32))


def test_the_real_detector_finds_the_astronaut_and_spares_the_background() -> None:
    pytest.importorskip("cv2")
    data = pytest.importorskip("skimage.data")
    photo = data.astronaut().astype(np.float32) / 255.0
    found = faces.detect_faces(photo)
    assert len(found) == 1
    face = found[0]
    # Eileen Collins' face in the public-domain NASA portrait: around x 170-250, y 60-160
    assert 150 < face.x + face.width / 2 < 260 and 50 < face.y + face.height / 2 < 170, face
    coffee = data.coffee().astype(np.float32) / 255.0
    assert faces.detect_faces(coffee) == []


def test_protect_faces_without_opencv_says_which_extra(lite: ctsr_infer.Upscaler, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "cv2", None)
    with pytest.raises(ctsr_infer.MissingDependencyError, match=r"ctsr-infer\[faces\]"):
        lite.upscale(_image(), t=0.2, protect_faces=1.0)


def test_cli_t_map_writes_what_the_library_gives(lite: ctsr_infer.Upscaler, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from ctsr_infer.cli import app

    source = tmp_path / "a.png"
    Image.fromarray((_image() * 255 + 0.5).astype(np.uint8)).save(source)
    ramp = np.tile(np.linspace(0, 255, 64).astype(np.uint8), (40, 1))
    Image.fromarray(ramp).save(tmp_path / "mask.png")
    result = CliRunner().invoke(app, ["upscale", str(source), "-o", str(tmp_path / "out.png"), "--t-map", str(tmp_path / "mask.png")])
    assert result.exit_code == 0, result.output
    expected = np.asarray(lite.upscale(str(source), t=as_tmap(tmp_path / "mask.png")))
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out.png")), expected)
    both = CliRunner().invoke(app, ["upscale", str(source), "-o", str(tmp_path / "b.png"), "--t", "0.2", "--t-map", str(tmp_path / "mask.png")])
    assert both.exit_code == 2 and "not both" in both.output


def test_maps_built_directly_are_checked_too(lite: ctsr_infer.Upscaler) -> None:
    import torch

    with pytest.raises(ctsr_infer.InvalidInputError, match=r"\[0, 1\]"):
        TMap(np.full((4, 4), -3.0, np.float32))
    with pytest.raises(ctsr_infer.InvalidInputError, match="2-D"):
        TMap(np.zeros((2, 4, 4), np.float32))
    frames = torch.rand(2, 3, 16, 32)
    with pytest.raises(ctsr_infer.InvalidInputError, match="aspect ratio"):
        lite.upscale_tensor(frames, t=np.zeros((10, 10), np.float32))  # the batched path checks it as well
