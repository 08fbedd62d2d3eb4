"""`ctsr models ...` and `ctsr doctor` against local files only."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

import ctsr_infer
from ctsr_infer.cli import app

runner = CliRunner()


def _run(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_import_list_info_verify_remove(tmp_path: Path, osediff_pkl: Path, base_dir: Path, student_path: Path) -> None:
    result = _run("models", "import", str(osediff_pkl), "--id", "my-osediff", "--base", str(base_dir))
    assert result.exit_code == 0, result.output
    up = ctsr_infer.load("my-osediff", base=base_dir, device="cpu", dtype="fp32")
    assert up.name == "my-osediff"
    listing = " ".join(_run("models", "list").output.split())
    assert "my-osediff" in listing and "(imported)" in listing
    info = _run("models", "info", "my-osediff").output
    assert "ctsr-student" in info and "sd-onestep" in info
    assert _run("models", "verify", "my-osediff").exit_code == 0
    # tamper with the cached copy: verify notices
    cached = Path(json.loads((Path(ctsr_infer.settings.current().home) / "user_models.json").read_text())["my-osediff"]["file"]["sources"][0]["url"][7:])
    cached.write_bytes(cached.read_bytes()[:-3] + b"abc")
    result = _run("models", "verify", "my-osediff")
    assert result.exit_code == 1 and "sha256" in result.output
    assert _run("models", "import", str(student_path), "--id", "my-osediff").exit_code == 2  # the id is taken
    assert _run("models", "remove", "my-osediff").exit_code == 0
    assert _run("models", "info", "my-osediff").exit_code == 2
    assert _run("models", "import", str(osediff_pkl), "--id", "x").exit_code == 2  # a pickle needs --base


def test_import_refuses_a_malicious_pickle(tmp_path: Path, base_dir: Path) -> None:
    import os

    import torch

    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    torch.save({"rank_unet": Evil()}, tmp_path / "evil.pkl")
    result = _run("models", "import", str(tmp_path / "evil.pkl"), "--id", "evil", "--base", str(base_dir))
    assert result.exit_code == 3 and "refused" in result.output


def test_doctor_reports_versions_cache_offline_and_missing_models() -> None:
    result = _run("doctor")
    text = " ".join(result.output.split())
    assert result.exit_code == 0
    for expected in ("torch", "diffusers", "huggingface_hub", "CTSR_HOME", "offline", "True (CTSR_OFFLINE", "osediff", "missing"):
        assert expected in text, expected


def test_models_download_offline_names_the_command() -> None:
    result = _run("models", "download", "osediff")
    assert result.exit_code == 3 and "offline" in result.output


@pytest.mark.slow
def test_the_wheel_ships_the_manifest(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parent.parent
    if shutil.which("git") is None:
        pytest.skip("git is needed to list the sources")
    result = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path), str(root)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    (wheel,) = tmp_path.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "ctsr_infer/weights_manifest.json" in names and "ctsr_infer/weights/ctsr-lite.safetensors" in names
    assert not any(n.startswith("tests/") for n in names)


def test_models_download_and_verify_against_a_local_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`ctsr models download` fetches from the first source that answers, verifies, and later runs offline."""
    import hashlib

    from ctsr_infer.families.lite import LiteNet
    from ctsr_infer.manifest import user_registry_path
    from ctsr_infer.train.lite import LiteConfig, export_lite
    from test_hub import _Server

    body = export_lite(LiteNet(channels=4, blocks=1), LiteConfig(photos=tmp_path, work=tmp_path)).read_bytes()
    server = _Server({"/mirror/tiny.safetensors": body})
    try:
        entry = {"family": "lite", "knob": {"kind": "native", "default_t": 0.5}, "licence": "test",
                 "file": {"filename": "tiny.safetensors", "format": "ctsr-student", "sha256": hashlib.sha256(body).hexdigest(),
                          "sources": [{"url": f"{server.url}/gone/tiny.safetensors"}, {"url": f"{server.url}/mirror/tiny.safetensors"}]}}
        user_registry_path().parent.mkdir(parents=True, exist_ok=True)
        user_registry_path().write_text(json.dumps({"tiny-remote": entry}))
        assert _run("models", "download", "tiny-remote").exit_code == 3  # offline (the test default): refused, no request
        assert server.requests == []
        monkeypatch.setenv("CTSR_OFFLINE", "0")
        monkeypatch.setenv("HF_HUB_OFFLINE", "0")
        result = _run("models", "download", "tiny-remote")
        assert result.exit_code == 0, result.output
        assert server.requests == ["/gone/tiny.safetensors", "/mirror/tiny.safetensors"]
        monkeypatch.setenv("CTSR_OFFLINE", "1")
        assert _run("models", "verify", "tiny-remote").exit_code == 0
        assert ctsr_infer.load("tiny-remote", device="cpu").upscale(__import__("numpy").zeros((3, 3, 3), "uint8")).shape == (12, 12, 3)
        assert len(server.requests) == 2
    finally:
        server.httpd.shutdown()
