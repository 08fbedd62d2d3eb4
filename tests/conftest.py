from __future__ import annotations

import random
import socket
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from tiny import prompt_embeds, write_base, write_osediff_pkl, write_text_encoder


@pytest.fixture(scope="session", autouse=True)
def _isolated_session(tmp_path_factory: pytest.TempPathFactory):
    """Session fixtures (tiny models built once) see a private, offline CTSR_HOME from the start too."""
    patch = pytest.MonkeyPatch()
    home = tmp_path_factory.mktemp("session-home")
    patch.setenv("CTSR_HOME", str(home / "ctsr-home"))
    patch.setenv("CTSR_OFFLINE", "1")
    patch.setenv("HF_HUB_OFFLINE", "1")
    patch.setenv("HF_HOME", str(home / "hf-home"))
    patch.setenv("CTSR_CPU_FAST", "0")
    yield
    patch.undo()


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Offline, a private cache, seeded RNGs, and no sockets: tests never touch the network."""
    monkeypatch.setenv("CTSR_HOME", str(tmp_path / "ctsr-home"))
    monkeypatch.setenv("CTSR_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    # dtype="auto" stays fp32 so exactness tests compare like with like on any CPU;
    # tests/test_speed_paths.py turns the CPU fast path on and checks it against the accuracy guard
    monkeypatch.setenv("CTSR_CPU_FAST", "0")
    # temporary files (the library's and subprocesses') stay inside this test's tmp path
    scratch = tmp_path / "tmp"
    scratch.mkdir(exist_ok=True)
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)

    real_connect = socket.socket.connect

    def loopback_only(sock: socket.socket, address: object) -> None:
        host = address[0] if isinstance(address, tuple) else address
        if host not in ("127.0.0.1", "::1", "localhost"):
            raise RuntimeError(f"tests must not open network connections (to {address!r})")
        real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", loopback_only)


@pytest.fixture(scope="session")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_text_encoder(write_base(tmp_path_factory.mktemp("tiny-sd")))


@pytest.fixture(scope="session")
def osediff(tmp_path_factory: pytest.TempPathFactory):
    """(osediff.pkl path, the peft UNet and VAE it was saved from)."""
    return write_osediff_pkl(tmp_path_factory.mktemp("osediff") / "osediff.pkl")


@pytest.fixture(scope="session")
def osediff_pkl(osediff) -> Path:
    return osediff[0]


@pytest.fixture(scope="session")
def student_path(tmp_path_factory: pytest.TempPathFactory, osediff_pkl: Path, base_dir: Path) -> Path:
    from ctsr_infer.families.sd_onestep.convert import convert_osediff
    from ctsr_infer.student_file import save_student

    student = convert_osediff(osediff_pkl, prompt_embeds=prompt_embeds(), base={"path": str(base_dir)})
    return save_student(student, tmp_path_factory.mktemp("students") / "osediff.safetensors")


@pytest.fixture(scope="session")
def upscaler(student_path: Path):
    import ctsr_infer

    return ctsr_infer.load(student_path, device="cpu", dtype="fp32")


@pytest.fixture(scope="session")
def ctsr_student_path(tmp_path_factory: pytest.TempPathFactory, student_path: Path) -> Path:
    """The OSEDiff student plus a random rank-2 ctrl LoRA: a ctsr-flow student."""
    from tiny import add_ctrl_adapter

    return add_ctrl_adapter(student_path, tmp_path_factory.mktemp("ctsr") / "ctsr.safetensors")


@pytest.fixture(scope="session")
def ctsr_upscaler(ctsr_student_path: Path):
    import ctsr_infer

    return ctsr_infer.load(ctsr_student_path, device="cpu", dtype="fp32")
