"""``Upscaler.prepare``: one image ready for many t values. Each render equals ``upscale`` with the
same arguments, and the network work every t shares runs once (counted with forward hooks)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ctsr_infer
from ctsr_infer.errors import InvalidInputError, KnobError
from ctsr_infer.prepared import PreparedImage
from ctsr_infer.tmap import TMap
from test_resshift import resshift_student  # noqa: F401 - the converted tiny student, a fixture
from tiny import same_8bit


def _photo(height: int = 20, width: int = 28, seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.random((height // 4 + 1, width // 4 + 1, 3))
    smooth = np.kron(base, np.ones((4, 4, 1)))[:height, :width]
    return (np.clip(smooth * 0.8 + rng.random((height, width, 3)) * 0.2, 0, 1) * 255).astype(np.uint8)


def _half_map(height: int, width: int) -> np.ndarray:
    t = np.zeros((height, width), np.float32)
    t[:, width // 2:] = 1.0
    return t


class Calls:
    """Counts forward calls of a module."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.count = 0
        self.handle = module.register_forward_pre_hook(lambda *_: self.bump())

    def bump(self) -> None:
        self.count += 1


@pytest.fixture(scope="module")
def lite() -> ctsr_infer.Upscaler:
    return ctsr_infer.load(device="cpu", dtype="fp32")


def test_lite_renders_equal_upscale_and_repeat_ts_cost_nothing(lite: ctsr_infer.Upscaler) -> None:
    image = _photo()
    ready = lite.prepare(image)
    assert isinstance(ready, PreparedImage) and ready.size == (80, 112)
    calls = Calls(lite.model.net)
    try:
        outs = {}
        for t in (0.0, 0.3, 1.0):
            out = outs[t] = ready.render(t)
            assert out.dtype == np.uint8 and out.shape == (80, 112, 3)
            assert same_8bit(out, lite.upscale(image, t=t)), t
        runs = calls.count
        assert runs == 6  # 3 renders + 3 references: one network run per new t
        again = ready.render(0.3)
        assert calls.count == runs and ready.last is not None and ready.last.cached
        assert np.array_equal(again, outs[0.3])
        # a map: the output-space blend of its two ends, both already computed (its 0.3 is a float32)
        t_map = np.where(_half_map(20, 28) > 0, 1.0, 0.3).astype(np.float32)
        before = calls.count
        mapped = ready.render(t_map)
        assert calls.count == before
        assert same_8bit(mapped, lite.upscale(image, t=t_map))
    finally:
        calls.handle.remove()


def test_lite_default_t_options_and_alpha(lite: ctsr_infer.Upscaler) -> None:
    rgba = np.dstack([_photo(), np.full((20, 28), 200, np.uint8)])
    ready = lite.prepare(rgba, scale=2, color_fix="none")
    assert same_8bit(ready.render(), lite.upscale(rgba, scale=2, color_fix="none"))
    assert same_8bit(ready.render(0.25), lite.upscale(rgba, t=0.25, scale=2, color_fix="none"))
    with pytest.raises(InvalidInputError, match="`t`"):
        ready.render(1.5)
    with pytest.raises(InvalidInputError, match="scale"):
        lite.prepare(rgba, scale=0.5)


def test_ctsr_flow_runs_the_unet_twice_for_any_number_of_ts(ctsr_upscaler: ctsr_infer.Upscaler,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    up = ctsr_upscaler
    image = _photo(16, 24)
    options = {"scale": 1.0, "color_fix": "none"}
    decodes: list[int] = []
    original = up.model.decode
    monkeypatch.setattr(up.model, "decode", lambda z, **kw: decodes.append(1) or original(z, **kw))
    calls = Calls(up.model.unet)
    try:
        ready = up.prepare(image, **options)
        outs = {t: ready.render(t) for t in (0.0, 0.4, 1.0, 0.7)}
        assert calls.count == 2 and len(decodes) == 4  # z0 once, the velocity once, one decode per t
        ready.render(0.4)
        assert calls.count == 2 and len(decodes) == 4  # rendered before: nothing runs
        mapped = ready.render(_half_map(16, 24))
        assert calls.count == 2 and len(decodes) == 5
    finally:
        calls.handle.remove()
    for t, out in outs.items():
        assert same_8bit(out, up.upscale(image, t=t, **options)), t
    assert same_8bit(mapped, up.upscale(image, t=_half_map(16, 24), **options))


def test_dual_lora_keeps_both_branches(pisa_upscaler: ctsr_infer.Upscaler) -> None:
    up = pisa_upscaler
    image = _photo(16, 24, seed=5)
    calls = Calls(up.model.unet)
    try:
        ready = up.prepare(image, scale=1.0)
        outs = {t: ready.render(t) for t in (1.0, 0.3, 0.0, 0.8)}
        assert calls.count == 2  # the pixel branch (t = 1), then the semantic one (t = 0.3); no more
    finally:
        calls.handle.remove()
    for t, out in outs.items():
        assert same_8bit(out, up.upscale(image, t=t, scale=1.0)), t


def test_a_t_list_and_the_tensor_layout(lite: ctsr_infer.Upscaler) -> None:
    image = _photo()
    data = lite.prepare(image).render_data([0.0, TMap(_half_map(20, 28)), 1.0])
    expected = lite.sweep(image, [0.0, _half_map(20, 28), 1.0])
    assert len(data) == 3
    for got, want in zip(data, expected, strict=True):
        assert same_8bit(np.round(got.pixels * 255).astype(np.uint8), want)


def test_a_model_without_knob_renders_its_one_output(resshift_upscaler: ctsr_infer.Upscaler) -> None:
    image = _photo(16, 16)
    ready = resshift_upscaler.prepare(image)
    assert same_8bit(ready.render(), resshift_upscaler.upscale(image))
    with pytest.raises(KnobError):
        ready.render(0.5)


def test_the_cache_is_bounded(lite: ctsr_infer.Upscaler, monkeypatch: pytest.MonkeyPatch) -> None:
    ready = lite.prepare(_photo())
    one = 80 * 112 * 3 * 4  # float32 pixels of one output
    monkeypatch.setattr(ready, "cache_bytes", 2 * one)
    for t in (0.0, 0.2, 0.4, 0.6):
        ready.render(t)
    assert len(ready._rendered) == 2 and list(ready._rendered) == [(0.4,), (0.6,)]


@pytest.fixture(scope="module")
def pisa_upscaler(tmp_path_factory: pytest.TempPathFactory, base_dir: Path) -> ctsr_infer.Upscaler:
    from ctsr_infer.families.sd_onestep.pisa import convert_pisa
    from ctsr_infer.student_file import save_student
    from tiny import prompt_embeds, write_pisa_pkl

    folder = tmp_path_factory.mktemp("pisa-prepared")
    pkl, _ = write_pisa_pkl(folder / "pisa_sr.pkl", 4, 2)
    student = convert_pisa(pkl, prompt_embeds=prompt_embeds(), base={"path": str(base_dir)})
    return ctsr_infer.load(save_student(student, folder / "pisa.safetensors"), device="cpu", dtype="fp32")


@pytest.fixture(scope="module")
def resshift_upscaler(resshift_student: Path) -> ctsr_infer.Upscaler:
    return ctsr_infer.load(resshift_student, device="cpu")


def test_faces_are_found_once_per_prepared_image(lite: ctsr_infer.Upscaler, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("cv2")
    data = pytest.importorskip("skimage.data")
    from ctsr_infer import faces

    photo = np.asarray(Image.fromarray(data.astronaut()).resize((128, 128), Image.Resampling.LANCZOS))
    calls: list[int] = []
    real = faces.detect_faces
    monkeypatch.setattr(faces, "detect_faces", lambda pixels: calls.append(1) or real(pixels))
    ready = lite.prepare(photo, protect_faces=1.0)
    outs = [ready.render(t) for t in (0.0, 0.5)]
    assert len(calls) == 1 and len(real(photo.astype(np.float32) / 255)) == 1  # one face, found once
    for t, out in zip((0.0, 0.5), outs, strict=True):
        assert same_8bit(out, lite.upscale(photo, t=t, protect_faces=1.0)), t
    assert not np.array_equal(outs[0], lite.upscale(photo, t=0.0))  # the face is pinned to t = 1
