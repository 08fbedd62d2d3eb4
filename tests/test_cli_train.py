"""`ctsr train`: bad arguments are usage errors (exit 2, one line, no traceback), a missing train extra
is an environment error (exit 3) naming the install command, and the runtime CLI never imports
ctsr_infer.train."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import Result
from PIL import Image
from typer.testing import CliRunner

from ctsr_infer.cli import EXIT_ENV, EXIT_USAGE, app


def _photos(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.random.default_rng(0).random((80, 80, 3)) * 255).astype(np.uint8)).save(folder / "a.png")
    return folder


def _error_line(result: Result) -> str:
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--batch", "0"], "`batch` must be >= 1, got 0"),
        (["--stage1-steps", "-1"], "`stage1_steps` must be >= 0"),
        (["--photos", "/nowhere/photos"], "is not a folder"),
        (["--photos", "EMPTY"], "holds no training photos"),
    ],
)
def test_train_lite_bad_argument_is_a_one_line_usage_error(tmp_path: Path, extra: list[str], message: str) -> None:
    (tmp_path / "empty").mkdir()
    extra = [str(tmp_path / "empty") if arg == "EMPTY" else arg for arg in extra]
    args = ["train", "lite", "--photos", str(_photos(tmp_path / "photos")), "--work", str(tmp_path / "work"), *extra]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == EXIT_USAGE, result.output
    assert message in _error_line(result)
    assert not (tmp_path / "work").exists()  # refused before any work


@pytest.mark.parametrize("recipe", ["tadsr", "colearn"])
def test_resshift_recipes_refuse_a_folder_without_images(tmp_path: Path, recipe: str) -> None:
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "notes.txt").write_text("not a photo")
    (tmp_path / "photos" / ".hidden.png").write_bytes(b"")
    result = CliRunner().invoke(app, ["train", recipe, "--teacher", str(tmp_path / "t.safetensors"), "--photos",
                                      str(tmp_path / "photos"), "--out", str(tmp_path / "s.safetensors")])
    assert result.exit_code == EXIT_USAGE, result.output
    assert "holds no images" in _error_line(result)


def test_missing_train_extra_is_an_environment_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "accelerate" else find_spec(name, *a))
    result = CliRunner().invoke(app, ["train", "tadsr", "--teacher", str(tmp_path / "t.safetensors"), "--photos",
                                      str(_photos(tmp_path / "photos")), "--out", str(tmp_path / "s.safetensors")])
    assert result.exit_code == EXIT_ENV, result.output
    assert "pip install 'ctsr-infer[train]'" in " ".join(result.output.split())


def test_the_cli_does_not_import_training_code() -> None:
    code = "import sys, ctsr_infer.cli; bad = [m for m in sys.modules if m.startswith('ctsr_infer.train')]; assert not bad, bad"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
