"""Ray runs (``ctsr_infer.distributed``, ``ctsr upscale --ray``): on a local 2-CPU Ray cluster with two
CPU actors and the embedded model, the same files and statuses as the folder runner, resuming, and a
worker that dies mid-batch. One cluster per module; tiny images."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import ctsr_infer
from ctsr_infer.batch import BatchReport, plan_jobs, run_batch
from ctsr_infer.cli import app
from ctsr_infer.errors import InvalidInputError

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

from ctsr_infer.distributed import TEST_EXIT_FILE, upscale_dataset  # after the skip

WORKERS = 2
"""Two CPU actors of one CPU each: each runs torch on one thread."""


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    """A local Ray cluster on loopback, started once for this module (its files in a short folder:
    Ray's sockets live there)."""
    temp = tempfile.mkdtemp(prefix="ctsr-ray-", dir="/tmp")
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", _temp_dir=temp,
             logging_level="ERROR", configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # its DEBUG metrics would all be captured
    yield
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Mixed images: sizes, RGB, RGBA, grayscale, a JPEG, a 16-bit PNG, and a corrupt file."""
    src = tmp_path_factory.mktemp("mixed") / "in"
    src.mkdir()
    rng = np.random.default_rng(0)

    def noise(*shape: int) -> np.ndarray:
        return (rng.random(shape) * 255).astype(np.uint8)

    for index, (height, width) in enumerate([(20, 24), (16, 16), (12, 30), (16, 16), (18, 14)]):
        Image.fromarray(noise(height, width, 3)).save(src / f"rgb{index}.png")
    Image.fromarray(noise(14, 14, 4)).save(src / "alpha.png")
    Image.fromarray(noise(15, 17)).save(src / "gray.jpg")
    Image.fromarray((rng.random((16, 20)) * 65535).astype(np.uint16)).save(src / "deep16.png")
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return src


@pytest.fixture(scope="module")
def reference(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[BatchReport, dict[str, bytes]]:
    """The folder runner's report and files, on one thread as each actor runs (CPU float sums
    depend on how many threads split them: a 16-bit output shows it)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("reference")
        report = run_batch(ctsr_infer.load("ctsr-lite"), plan_jobs([folder], out))
    finally:
        torch.set_num_threads(threads)
    return report, {p.name: p.read_bytes() for p in out.iterdir()}


def _rows(report: BatchReport) -> list[tuple[Path, list[str], str, str | None]]:
    return [(item.source, [path.name for path in item.outputs], item.status, item.error) for item in report.items]


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_a_ray_run_writes_the_folder_runners_files_and_the_cli_resumes_it(cluster: None, folder: Path, reference,
                                                                          tmp_path: Path) -> None:
    local, expected = reference
    out = tmp_path / "out"
    seen: list[str] = []
    report = upscale_dataset(folder, out, model="ctsr-lite", num_workers=WORKERS, report=tmp_path / "report.json",
                             on_item=lambda item: seen.append(item.source.name))
    assert sorted(seen) == sorted(item.source.name for item in local.items)  # each once, as it finished
    assert _rows(report) == _rows(local)
    assert report.count("failed") == 1 and "broken.png" in str(report.failed[0].source) and report.model == "ctsr-lite"
    assert _files(out) == expected  # byte for byte, settings record included; nothing else (no temporary files)
    written = json.loads((tmp_path / "report.json").read_text())
    assert (written["ok"], written["skipped"], written["failed"]) == (8, 0, 1)
    assert [row["status"] for row in written["items"]] == [i.status for i in local.items]

    # `ctsr upscale --ray` after losing half the outputs: redoes those, skips the rest untouched, the same summary
    names = sorted(expected)
    for name in names[::2]:
        (out / name).unlink()
    kept = {name: (out / name).stat().st_mtime_ns for name in names[1::2]}
    result = CliRunner().invoke(app, ["upscale", str(folder), "-o", str(out), "--ray", "--workers", str(WORKERS),
                                      "--report", str(tmp_path / "report.parquet")], catch_exceptions=False)
    assert result.exit_code == 1, result.output  # the broken file
    lines = [line.split("\t") for line in result.stdout.splitlines() if "\t" in line]
    assert [line[1] for line in lines] == [str(i.source) for i in local.items]  # in plan order, paths whole
    status = {Path(line[2]).name: line[0] for line in lines}
    assert {name: status[name] for name in names} == {name: "ok" if name in names[::2] else "skipped" for name in names}
    assert "4 ok, 4 skipped, 1 failed" in result.stdout
    assert {name: (out / name).stat().st_mtime_ns for name in kept} == kept
    assert _files(out) == expected
    import pyarrow.parquet as pq

    assert pq.read_table(tmp_path / "report.parquet").column("status").to_pylist() == [line[0] for line in lines]


def test_a_worker_that_dies_mid_batch_is_retried_without_duplicates(cluster: None, folder: Path, reference, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """An actor exits (os._exit) right after writing the first file of a batch of three; Ray restarts
    it and retries the batch: the written file is skipped, the rest written, no file is partial.
    The source is a file:// URI, so the actors read the files' bytes through pyarrow."""
    local, expected = reference
    flag = tmp_path / "exit-once"
    flag.touch()
    monkeypatch.setenv(TEST_EXIT_FILE, str(flag))
    out = tmp_path / "out"
    report = upscale_dataset(f"file://{folder}", out, model="ctsr-lite", num_workers=WORKERS, batch_size=3)
    assert not flag.exists()  # an actor did exit
    assert [(i.source, i.error) for i in report.failed] == [(i.source, i.error) for i in local.failed]
    assert [i.source for i in report.items] == [i.source for i in local.items]
    assert report.count("skipped") >= 1  # the file the dead attempt wrote: not written again
    assert report.count("ok") + report.count("skipped") == len(expected)
    assert _files(out) == expected  # every output whole and present; no temporary file left


def test_a_batch_whose_worker_keeps_dying_ends_the_run_with_a_report(cluster: None, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The test hook kills the worker after each file it writes while the flag file exists; a thread
    keeps re-creating it, so the one batch of 6 files needs 6 attempts and gets 1 + 3 retries: the run
    stops (no endless restarts) with every file in the report, the written ones ok and whole."""
    import threading

    source = tmp_path / "in"
    source.mkdir()
    rng = np.random.default_rng(1)
    for index in range(6):
        Image.fromarray((rng.random((12, 12, 3)) * 255).astype(np.uint8)).save(source / f"f{index}.png")
    flag = tmp_path / "always"
    monkeypatch.setenv(TEST_EXIT_FILE, str(flag))
    stop = threading.Event()

    def keep() -> None:
        while not stop.is_set():
            flag.touch()
            stop.wait(0.05)

    thread = threading.Thread(target=keep, daemon=True)
    thread.start()
    try:
        report = upscale_dataset(source, tmp_path / "out", model="ctsr-lite", num_workers=1, batch_size=6)
    finally:
        stop.set()
        thread.join()
    # 1 + 3 attempts write one file each; Ray may start one more attempt as it gives up ("may or may
    # not have been executed"), so 4 or 5 files are done, the rest failed, and the run ended
    done = sum(item.status == "ok" for item in report.items)
    assert 4 <= done <= 5 and [item.status for item in report.items] == ["ok"] * done + ["failed"] * (6 - done)
    assert all("run the failed files alone" in str(item.error) for item in report.failed)
    # every file reported ok is there, and every visible file is whole (an attempt still running as the
    # run stops may publish one more; a worker killed then may leave a hidden partial file, which folder
    # runs ignore)
    visible = sorted(p.name for p in (tmp_path / "out").iterdir() if not p.name.startswith("."))
    assert visible[:done] == [f"f{i}.png" for i in range(done)]
    for name in visible:
        assert Image.open(tmp_path / "out" / name).size == (48, 48)


def test_relative_paths_mean_the_drivers_folder(cluster: None, folder: Path, reference, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers do not share the driver's working directory (it moved after the cluster started, as
    it differs on a remote one): relative paths are resolved on the driver."""
    _, expected = reference
    shutil.copytree(folder, tmp_path / "in")
    monkeypatch.chdir(tmp_path)
    report = upscale_dataset("in", "out", model="ctsr-lite", num_workers=WORKERS)
    assert report.count("failed") == 1 and _files(tmp_path / "out") == expected


def test_a_dataset_of_encoded_files_as_the_source(cluster: None, folder: Path, reference, tmp_path: Path) -> None:
    """A Dataset's bytes are decoded inside the actors: the same files, errors named by the source path."""
    _, expected = reference
    picked = [folder / "deep16.png", folder / "alpha.png", folder / "gray.jpg", folder / "broken.png"]
    dataset = ray.data.read_binary_files([str(p) for p in picked], include_paths=True)
    report = upscale_dataset(dataset, tmp_path / "out", model="ctsr-lite", num_workers=WORKERS)  # one CPU left to the reads
    assert {i.source.name: i.status for i in report.items} == {"alpha.png": "ok", "broken.png": "failed", "deep16.png": "ok", "gray.jpg": "ok"}
    assert f"`{folder / 'broken.png'}`" in str(report.failed[0].error)  # not a temporary copy's name
    assert _files(tmp_path / "out") == {name: expected[name] for name in ("alpha.png", "deep16.png", "gray.png")}


def test_options_are_checked_where_the_model_loads_before_any_file(cluster: None, folder: Path, tmp_path: Path) -> None:
    """An option the model's family does not take: refused by the actors before they touch a file,
    and raised on the driver as the usage error it is (exit 2, one line), not a failure per file."""
    result = CliRunner().invoke(app, ["upscale", str(folder), "-o", str(tmp_path / "out"), "--ray", "--workers", "1",
                                      "--encode", "sample"])
    assert result.exit_code == 2, result.output
    assert "encode" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("kwargs", "argument"), [
    ({"num_workers": 0}, "num_workers"),
    ({"num_workers": 2, "concurrency": 2}, "concurrency"),
    ({"concurrency": (3, 1)}, "concurrency"),
    ({"batch_size": 0}, "batch_size"),
    ({"num_gpus_per_worker": -1}, "num_gpus_per_worker"),
])
def test_bad_arguments_are_refused_before_ray_starts(folder: Path, tmp_path: Path, kwargs: dict, argument: str) -> None:
    with pytest.raises(InvalidInputError, match=f"`{argument}`"):
        upscale_dataset(folder, tmp_path / "out", **kwargs)
    with pytest.raises(InvalidInputError, match="`output`"):
        upscale_dataset(folder, "s3://bucket/out")


def test_cli_ray_flags_need_ray_and_files(folder: Path, tmp_path: Path) -> None:
    for args, message in ((["--workers", "2"], "--ray"), (["--ray", "--workers", "0"], "--workers"),
                          (["--gpus-per-worker", "1"], "--ray"), (["--ray", "--report", "r.csv"], "--report")):
        result = CliRunner().invoke(app, ["upscale", str(folder), "-o", str(tmp_path / "out"), *args])
        assert result.exit_code == 2 and message in result.output, (args, result.output)
    result = CliRunner().invoke(app, ["upscale", "-", "-o", "-", "--ray"])
    assert result.exit_code == 2 and "stdin" in result.output
    result = CliRunner().invoke(app, ["upscale", str(folder), "-o", "s3://bucket/out", "--ray"])  # Path folds it to s3:/
    assert result.exit_code == 2 and "`output`" in result.output, result.output


def test_a_report_never_replaces_another_file(folder: Path, tmp_path: Path) -> None:
    mine = tmp_path / "notes.json"
    mine.write_text('{"mine": true}')
    args = ["upscale", str(folder / "rgb1.png"), "-o", str(tmp_path / "out")]
    result = CliRunner().invoke(app, [*args, "--report", str(mine)])
    assert result.exit_code == 2 and "--overwrite" in result.output and mine.read_text() == '{"mine": true}'
    assert not (tmp_path / "out").exists()  # refused before the run
    first = CliRunner().invoke(app, [*args, "--report", str(tmp_path / "r.json")])
    again = CliRunner().invoke(app, [*args, "--report", str(tmp_path / "r.json")])  # a rerun replaces its own report
    assert first.exit_code == again.exit_code == 0, again.output
    assert json.loads((tmp_path / "r.json").read_text())["skipped"] == 1


_WITHOUT_RAY = """
import sys
from pathlib import Path
import ctsr_infer, ctsr_infer.batch, ctsr_infer.distributed, ctsr_infer.cli
loaded = [m for m in sys.modules if m == "ray" or m.startswith("ray.") or m == "pyarrow"]
assert not loaded, loaded
sys.modules["ray"] = None  # `import ray` fails as if it were not installed
from typer.testing import CliRunner
from ctsr_infer.errors import MissingDependencyError
folder, out = Path(sys.argv[1]), Path(sys.argv[2])
try:
    ctsr_infer.distributed.upscale_dataset(folder, out)
    raise SystemExit("no error")
except MissingDependencyError as exc:
    assert "ctsr-infer[ray]" in str(exc), exc
result = CliRunner().invoke(ctsr_infer.cli.app, ["upscale", str(folder), "-o", str(out), "--ray"])
assert result.exit_code == 3 and "ctsr-infer[ray]" in result.output and "Traceback" not in result.output, result.output
assert not out.exists()
"""


def test_ray_is_imported_only_for_ray_runs_and_its_absence_names_the_extra(folder: Path, tmp_path: Path) -> None:
    """In a fresh process: importing the package and the CLI leaves ray out; without ray installed, a
    Ray run is a MissingDependencyError (exit 3 in the CLI) naming the `ray` extra."""
    result = subprocess.run([sys.executable, "-c", _WITHOUT_RAY, str(folder), str(tmp_path / "out")],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
