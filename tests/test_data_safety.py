"""Nothing lost: unique output names, settings-aware skipping, inputs never replaced, one atomic
writer, download locks and re-verified conversions."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import ctsr_infer
from ctsr_infer.atomic import TMP_MARK, atomic_write
from ctsr_infer.batch import Job, check_plan, plan_jobs, run_batch
from ctsr_infer.errors import InvalidInputError
from ctsr_infer.encoding import read_comment


def _noise(path: Path, seed: int, size: tuple[int, int] = (12, 16)) -> np.ndarray:
    array = (np.random.default_rng(seed).random((*size, 3)) * 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return array


@pytest.fixture(scope="module")
def lite():
    return ctsr_infer.load("ctsr-lite", device="cpu", dtype="fp32")


def test_two_folders_with_the_same_file_names_keep_both(tmp_path: Path, lite) -> None:
    a = _noise(tmp_path / "in" / "a" / "x.png", 1)
    b = _noise(tmp_path / "in" / "b" / "x.png", 2)
    jobs = plan_jobs([tmp_path / "in" / "a", tmp_path / "in" / "b"], tmp_path / "out")
    assert [job.outputs[0].relative_to(tmp_path / "out").as_posix() for job in jobs] == ["a/x.png", "b/x.png"]
    report = run_batch(lite, jobs)
    assert [item.status for item in report.items] == ["ok", "ok"]
    for source, expected in ((jobs[0], a), (jobs[1], b)):
        written = np.asarray(Image.open(source.outputs[0]).convert("RGB").resize(expected.shape[1::-1], Image.Resampling.BOX))
        other = b if expected is a else a
        # each output is the upscale of its own input, not of the other one
        assert np.abs(written.astype(float) - expected).mean() < np.abs(written.astype(float) - other).mean()


def test_folders_of_the_same_name_and_clashing_stems_are_disambiguated(tmp_path: Path) -> None:
    for folder in ("one/a", "two/a"):
        _noise(tmp_path / folder / "x.png", 0)
    _noise(tmp_path / "one" / "a" / "x.jpg", 0)
    _noise(tmp_path / "one" / "a" / "x_jpg.png", 0)  # would collide with x.jpg's disambiguated name
    _noise(tmp_path / "one" / "a" / "X.PNG", 0)  # differs only by case
    jobs = plan_jobs([tmp_path / "one" / "a", tmp_path / "two" / "a"], tmp_path / "out")
    names = [job.outputs[0].relative_to(tmp_path / "out").as_posix() for job in jobs]
    assert len({n.casefold() for n in names}) == len(names) == 5
    assert names[-1] == "a-2/x.png"
    assert plan_jobs([tmp_path / "one" / "a", tmp_path / "two" / "a"], tmp_path / "out") == jobs  # deterministic


def test_a_plan_with_duplicate_outputs_is_refused() -> None:
    jobs = [Job(Path("a.png"), (Path("out/x.png"),)), Job(Path("b.png"), (Path("out/X.png"),))]
    with pytest.raises(InvalidInputError, match="would both be written"):
        check_plan(jobs)


def test_an_input_is_never_an_output(tmp_path: Path) -> None:
    _noise(tmp_path / "a.png", 0)
    with pytest.raises(InvalidInputError, match="replace the input"):
        plan_jobs([tmp_path / "a.png"], tmp_path / "a.png")
    with pytest.raises(InvalidInputError, match="replace the input"):
        plan_jobs([tmp_path], tmp_path)  # a folder into itself: a.png -> a.png
    assert plan_jobs([tmp_path], tmp_path, suffix="_x4")[0].outputs[0].name == "a_x4.png"


def test_output_path_checks(tmp_path: Path) -> None:
    _noise(tmp_path / "in" / "a.png", 0)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(InvalidInputError, match="not an image format"):
        plan_jobs([tmp_path / "in" / "a.png"], tmp_path / "out.xyz")
    with pytest.raises(InvalidInputError, match="not an image format"):
        plan_jobs([tmp_path / "in"], tmp_path / "file.txt")
    (tmp_path / "existing").write_text("x")
    with pytest.raises(InvalidInputError, match="existing file"):
        plan_jobs([tmp_path / "in"], tmp_path / "existing")
    with pytest.raises(InvalidInputError, match="does not match"):
        plan_jobs([tmp_path / "in" / "a.png"], tmp_path / "out.png", fmt="jpg")
    assert plan_jobs([tmp_path / "in" / "a.png"], tmp_path / "out.png", fmt="png")[0].outputs == (tmp_path / "out.png",)
    with pytest.raises(InvalidInputError, match="separator"):
        plan_jobs([tmp_path / "in"], tmp_path / "o", suffix="../x")


def test_skip_only_when_the_settings_match(tmp_path: Path, lite) -> None:
    _noise(tmp_path / "in" / "a.png", 0)
    out = tmp_path / "out"
    first = run_batch(lite, plan_jobs([tmp_path / "in"], out), ts=[0.4])
    assert [i.status for i in first.items] == ["ok"]
    written = out / "a.png"
    stamp = json.loads(read_comment(written) or "{}")
    assert stamp["t"] == 0.4 and stamp["model"] == "ctsr-lite" and stamp["scale"] == 4.0 and stamp["ctsr"] == ctsr_infer.__version__
    mtime = written.stat().st_mtime_ns
    same = run_batch(lite, plan_jobs([tmp_path / "in"], out), ts=[0.4])
    assert [i.status for i in same.items] == ["skipped"]
    other = run_batch(lite, plan_jobs([tmp_path / "in"], out), ts=[0.7])
    assert [i.status for i in other.items] == ["failed"]
    assert "other settings" in other.items[0].error and "0.4" in other.items[0].error and "--overwrite" in other.items[0].error
    assert written.stat().st_mtime_ns == mtime  # untouched
    redo = run_batch(lite, plan_jobs([tmp_path / "in"], out), ts=[0.7], overwrite=True)
    assert [i.status for i in redo.items] == ["ok"] and json.loads(read_comment(written) or "{}")["t"] == 0.7
    # a file the user put there (no record) is never taken for a finished output
    Image.new("RGB", (4, 4)).save(out / "b.png")
    _noise(tmp_path / "in" / "b.png", 1)
    mixed = run_batch(lite, plan_jobs([tmp_path / "in"], out), ts=[0.7])
    assert [i.status for i in mixed.items] == ["skipped", "failed"]
    assert "without a record" in mixed.items[1].error


def test_an_output_that_appears_during_the_run_is_not_reported_ok(tmp_path: Path, lite) -> None:
    _noise(tmp_path / "in" / "a.png", 0)
    jobs = plan_jobs([tmp_path / "in"], tmp_path / "out")
    target = jobs[0].outputs[0]

    class Racing:
        """Creates the output (as another process would) while the network runs."""

        def __getattr__(self, name: str):
            return getattr(lite, name)

        def process(self, data, **kwargs):
            result = lite.process(data, **kwargs)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(b"someone else's file")
            return result

    report = run_batch(Racing(), jobs, pipelined=False)
    assert [i.status for i in report.items] == ["failed"] and "exists" in report.items[0].error
    assert target.read_bytes() == b"someone else's file"


def _writer(args: tuple[str, int]) -> None:
    path, seed = args
    payload = bytes([seed]) * 200_000
    for _ in range(20):
        atomic_write(path, payload)


def test_atomic_write_is_unique_per_writer_and_never_half_written(tmp_path: Path) -> None:
    target = tmp_path / "shared.bin"
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        pool.map(_writer, [(str(target), 1), (str(target), 2)])
    data = target.read_bytes()
    assert len(data) == 200_000 and len(set(data)) == 1  # one writer's whole file, never a mix
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(TMP_MARK)]
    with pytest.raises(FileExistsError):
        atomic_write(target, b"x", overwrite=False)
    assert target.read_bytes() == data


def test_no_fixed_temporary_names_left_in_the_code() -> None:
    """Every writer goes through ctsr_infer.atomic (the four hand-written copies are gone)."""
    root = Path(ctsr_infer.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        if path.name == "atomic.py":
            continue
        text = path.read_text()
        if "os.replace(" in text or '".tmp"' in text or ".tmp-" in text:
            offenders.append(path.name)
    assert offenders == []


def test_download_holds_a_lock(tmp_path: Path) -> None:
    from filelock import FileLock, Timeout

    from ctsr_infer import hub

    target = tmp_path / "models" / "x.bin"
    lock = hub._lock(target)
    assert isinstance(lock, FileLock) and lock.lock_file == str(target) + ".lock"
    with lock:
        with pytest.raises(Timeout):
            FileLock(lock.lock_file, timeout=0.1).acquire()


def test_a_converted_student_records_its_source_and_is_verified_before_reuse(tmp_path: Path) -> None:
    from dataclasses import replace

    from tiny import tiny_swin_config, tiny_vq_config, write_resshift_pair

    from ctsr_infer import hub
    from ctsr_infer.student_file import load_student
    from ctsr_infer.manifest import FileSpec, Source, load_manifest

    unet, vq = write_resshift_pair(tmp_path / "raw")
    spec = load_manifest().get("resshift-x4-s15")

    def local(path: Path, fmt: str) -> FileSpec:
        return FileSpec(filename=path.name, format=fmt, sources=(Source(url=path.resolve().as_uri()),), sha256=hub.sha256_of(path))

    spec = replace(spec, id="tiny-resshift", file=local(unet, "resshift-pth"), vq=local(vq, "ldm-vq-pth"),
                   convert={**spec.convert, "unet": tiny_swin_config().to_config(), "vq": tiny_vq_config().to_config()})
    path, _ = hub.ensure_student(spec)
    meta = load_student(path).meta
    assert meta.provenance["source_sha256"] == hub.sha256_of(unet)
    mtime = path.stat().st_mtime_ns
    assert hub.ensure_student(spec)[0].stat().st_mtime_ns == mtime  # reused as is
    path.write_bytes(path.read_bytes()[:-4] + b"abcd")  # a corrupted cache file is converted again
    again, _ = hub.ensure_student(spec)
    assert hub.sha256_of(again) == hub.recorded_hash(spec.id, hub.CONVERTED_KEY)
    assert load_student(again).meta.provenance["source_sha256"] == hub.sha256_of(unet)
    # other converter settings: converted again
    changed = replace(spec, convert={**spec.convert, "sampler": "posterior"})
    hub.ensure_student(changed)
    assert load_student(again).meta.provenance["conversion"]["convert"]["sampler"] == "posterior"
    # a converted file whose source is not the one the manifest names is not reused
    other = replace(spec, file=replace(spec.file, sha256="0" * 64))
    with pytest.raises(ctsr_infer.IncompatibleWeightsError):
        hub.ensure_student(other)  # it converts again from the raw file, whose hash then fails


def test_output_pixel_limit_is_checked_before_any_work(lite) -> None:
    image = np.zeros((40, 50, 3), np.uint8)
    with pytest.raises(InvalidInputError, match="max-pixels") as info:
        lite.upscale(image, max_pixels=100 * 100)
    assert "200x160" in str(info.value)
    assert lite.upscale(image, max_pixels=200 * 160).shape == (160, 200, 3)
    with pytest.raises(InvalidInputError, match="max_pixels"):
        lite.upscale(image, max_pixels=-1)


def test_decompression_bombs_empty_and_missing_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ctsr_infer.errors import ImageReadError
    from ctsr_infer.image import read_image

    big = tmp_path / "big.png"
    Image.new("RGB", (64, 64)).save(big)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 4,096 px: over the warning level, under the error level
    with pytest.raises(ImageReadError, match="decompression-bomb"):
        read_image(big)
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageReadError, match="0 bytes"):
        read_image(tmp_path / "empty.png")
    with pytest.raises(FileNotFoundError):
        read_image(tmp_path / "missing.png")


def test_a_multi_page_16_bit_tiff_reads_only_its_first_page(tmp_path: Path) -> None:
    import tifffile

    from ctsr_infer.image import read_image

    stack = (np.random.default_rng(0).random((5, 8, 9, 3)) * 65535).astype(np.uint16)
    tifffile.imwrite(tmp_path / "stack.tif", stack, photometric="rgb")
    data = read_image(tmp_path / "stack.tif")
    assert data.bit_depth == 16 and data.size == (8, 9)
    assert np.allclose(data.pixels, stack[0] / 65535.0, atol=1e-6)


def test_written_files_get_the_usual_mode(tmp_path: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    path = atomic_write(tmp_path / "f.bin", b"x")
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's owner-only 0600


def test_gif_and_bmp_outputs_are_skipped_on_a_rerun(tmp_path: Path, lite) -> None:
    _noise(tmp_path / "in" / "a.png", 0)
    for fmt in ("gif",):
        jobs = plan_jobs([tmp_path / "in"], tmp_path / fmt, fmt=fmt)
        assert [i.status for i in run_batch(lite, jobs).items] == ["ok"]
        assert [i.status for i in run_batch(lite, jobs).items] == ["skipped"]
    single = plan_jobs([tmp_path / "in" / "a.png"], tmp_path / "one.bmp")
    assert [i.status for i in run_batch(lite, single).items] == ["ok"]
    assert [i.status for i in run_batch(lite, single).items] == ["skipped"]  # BMP holds no record: skipped as before


def test_plans_and_runs_must_agree_on_t_values(tmp_path: Path, lite) -> None:
    _noise(tmp_path / "in" / "a.png", 0)
    jobs = plan_jobs([tmp_path / "in"], tmp_path / "out")
    with pytest.raises(InvalidInputError, match="same `ts`"):
        run_batch(lite, jobs, ts=[0.0, 1.0])


def test_a_recursive_run_into_a_folder_inside_its_input_does_not_take_outputs_as_inputs(tmp_path: Path) -> None:
    _noise(tmp_path / "in" / "a.png", 0)
    _noise(tmp_path / "in" / "out" / "a.png", 1)  # an output of an earlier run
    jobs = plan_jobs([tmp_path / "in"], tmp_path / "in" / "out", recursive=True, suffix="_x4")
    assert [job.source.name for job in jobs] == ["a.png"] and jobs[0].source.parent == tmp_path / "in"


def test_keep_metadata_survives_broken_exif(tmp_path: Path, lite, caplog: pytest.LogCaptureFixture) -> None:
    from ctsr_infer.encoding import encode_image
    from ctsr_infer.image import read_image

    data = read_image(np.zeros((6, 8, 3), np.uint8))
    data.exif = b"Exif\x00\x00this is not a TIFF header"
    payload = encode_image(data, "JPEG", comment="{}", keep_metadata=True)
    assert payload[:2] == b"\xff\xd8" and "EXIF" in caplog.text
    big = Image.Exif()
    big[0x010E] = "x" * 70_000  # ImageDescription: more than a JPEG's EXIF segment holds
    data.exif = big.tobytes()
    assert encode_image(data, "JPEG", comment="{}", keep_metadata=True)[:2] == b"\xff\xd8"
