"""The registry against fakes: a local HTTP server on 127.0.0.1 and a hand-made Hugging Face cache."""

from __future__ import annotations

import hashlib
import threading
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ctsr_infer import hub
from ctsr_infer.errors import IncompatibleWeightsError, WeightsNotFoundError
from ctsr_infer.manifest import FileSpec, ModelSpec, Source

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


class _Server:
    """Serves ``files`` (path -> bytes) with Range support and counts requests."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files, self.requests, self.ranges = files, [], []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                outer.requests.append(self.path)
                body = outer.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                if "Range" in self.headers:
                    start = int(self.headers["Range"].split("=")[1].split("-")[0])
                    outer.ranges.append(start)
                    if start >= len(body):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                self.wfile.write(body[start:])

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def server():
    srv = _Server({"/good/model.bin": PAYLOAD, "/mirror/model.bin": PAYLOAD, "/bad/model.bin": PAYLOAD[:-1] + b"x"})
    yield srv
    srv.httpd.shutdown()


def _spec(*urls: str, sha256: str | None = hashlib.sha256(PAYLOAD).hexdigest()) -> ModelSpec:
    return ModelSpec(id="toy", family="lite", file=FileSpec("model.bin", "ctsr-student", tuple(Source(url=u) for u in urls), sha256=sha256))


def test_download_checks_the_hash(server) -> None:
    path = hub.fetch_file(_spec(f"{server.url}/good/model.bin"), offline=False)
    assert path.read_bytes() == PAYLOAD
    again = hub.fetch_file(_spec(f"{server.url}/good/model.bin"), offline=False)
    assert again == path and len(server.requests) == 1  # cached: no second request


def test_checksum_mismatch_names_both_hashes_and_deletes_nothing(server) -> None:
    spec = _spec(f"{server.url}/bad/model.bin")
    with pytest.raises(IncompatibleWeightsError, match=hashlib.sha256(PAYLOAD).hexdigest()) as info:
        hub.fetch_file(spec, offline=False)
    assert hashlib.sha256(PAYLOAD[:-1] + b"x").hexdigest() in str(info.value)
    assert (hub._download_dir("toy") / "model.bin").is_file()


def test_mirrors_are_tried_in_order(server) -> None:
    path = hub.fetch_file(_spec(f"{server.url}/missing/model.bin", f"{server.url}/mirror/model.bin"), offline=False)
    assert path.read_bytes() == PAYLOAD
    assert server.requests == ["/missing/model.bin", "/mirror/model.bin"]


def test_offline_without_and_with_the_file(server) -> None:
    spec = _spec(f"{server.url}/good/model.bin")
    with pytest.raises(WeightsNotFoundError, match=r"offline.*ctsr models download toy"):
        hub.fetch_file(spec, offline=True)
    assert server.requests == []
    hub.fetch_file(spec, offline=False)
    assert hub.fetch_file(spec, offline=True).read_bytes() == PAYLOAD
    assert len(server.requests) == 1


def test_an_interrupted_download_resumes(server) -> None:
    spec = _spec(f"{server.url}/good/model.bin")
    part = hub._download_dir("toy") / "model.bin.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(PAYLOAD[:300_000])
    assert hub.fetch_file(spec, offline=False).read_bytes() == PAYLOAD
    assert server.ranges == [300_000] and not part.exists()


def test_trust_on_first_use_records_then_verifies(server) -> None:
    spec = _spec(f"{server.url}/good/model.bin", sha256=None)
    path = hub.fetch_file(spec, offline=False)
    assert hub.recorded_hash("toy", "model.bin") == hashlib.sha256(PAYLOAD).hexdigest()
    path.write_bytes(b"tampered")
    with pytest.raises(IncompatibleWeightsError, match="recorded at first download"):
        hub.fetch_file(spec, offline=True)


def _fake_hf_cache(root: Path, repo_id: str, files: dict[str, bytes], commit: str = "a" * 40) -> None:
    repo = root / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    for name, body in files.items():
        target = repo / "snapshots" / commit / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(body)


def test_hub_sources_and_base_mirrors_come_from_the_hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "hf"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    _fake_hf_cache(cache, "org/student", {"weights/model.bin": PAYLOAD})
    _fake_hf_cache(cache, "mirror/sd21", {"unet/config.json": b"{}", "vae/config.json": b"{}"})
    spec = replace(_spec(), file=FileSpec("model.bin", "ctsr-student", (Source(repo_id="org/student", path="weights/model.bin"),),
                                          sha256=hashlib.sha256(PAYLOAD).hexdigest()))
    assert hub.fetch_file(spec, offline=True).read_bytes() == PAYLOAD
    from ctsr_infer.manifest import BaseSpec

    base = BaseSpec("sd21", sources=({"repo_id": "gone/sd21", "revision": "main"}, {"repo_id": "mirror/sd21", "revision": "main"}))
    folder = hub.resolve_base(base, offline=True)
    assert (folder / "unet" / "config.json").is_file() and "mirror--sd21" in str(folder)
    with pytest.raises(WeightsNotFoundError, match="gone/sd21.*mirror/sd21|gone/sd21"):
        hub.resolve_base(BaseSpec("x", sources=({"repo_id": "gone/sd21"},)), offline=True)


def test_a_missing_hub_file_names_the_real_cause_and_the_command(tmp_path: Path) -> None:
    from ctsr_infer.manifest import BaseSpec, FileSpec, ModelSpec, Source

    spec = ModelSpec(id="my-model", family="lite", file=FileSpec(filename="w.safetensors", format="ctsr-student",
                                                                 sources=(Source(repo_id="nobody/nothing", path="w.safetensors"),)))
    with pytest.raises(WeightsNotFoundError) as info:
        hub.fetch_file(spec, offline=True)
    message = str(info.value)
    assert "offline mode is on" in message and "ctsr models download my-model" in message
    with pytest.raises(WeightsNotFoundError) as info:
        hub.resolve_base(BaseSpec("sd21", sources=({"repo_id": "nobody/base"},)), offline=True, for_model="my-model")
    message = str(info.value)
    assert "offline mode is on" in message and "ctsr models download my-model" in message and "--base DIR" in message
    assert "<id>" not in message
