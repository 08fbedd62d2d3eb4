"""Specs -> local files: base-model snapshots (huggingface_hub) and model files, verified.

* Hub files go through ``huggingface_hub`` (pinned revision, resumable, its own cache layout);
  other files through plain HTTPS into ``$CTSR_HOME/downloads/<id>/``, resuming a ``.part`` file
  with a Range request. Sources (and base-model mirrors) are tried in order.
* Every file is checked against the manifest's sha256; where the manifest cannot know it, the
  first download records the hash it saw in ``$CTSR_HOME/hashes.json`` (trust on first use) and
  later loads verify against that. A mismatch deletes nothing and names expected and found hashes.
* Offline (``CTSR_OFFLINE=1``, ``HF_HUB_OFFLINE=1`` or ``offline=True``) nothing touches the
  network: a missing file fails naming the file, where it was expected and the command to fetch it.
  Nothing here runs at import time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

from . import settings
from .atomic import atomic_write, publish
from .errors import IncompatibleWeightsError, WeightsNotFoundError
from .families import STUDENT_FORMAT
from .manifest import BaseSpec, ModelSpec, Source
from .progress import ProgressCallback, emit

__all__ = ["resolve_base", "fetch_file", "ensure_student", "sha256_of", "local_file", "recorded_hash", "FileStatus", "file_status"]

logger = logging.getLogger(__name__)
_CHUNK = 1 << 20


class _Unavailable(Exception):
    """Internal: this source cannot give the file (missing, offline, HTTP error)."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _hashes_path() -> Path:
    return settings.current().home / "hashes.json"


def recorded_hash(model_id: str, filename: str) -> str | None:
    """The trust-on-first-use hash recorded for a file, if any."""
    path = _hashes_path()
    if not path.is_file():
        return None
    return json.loads(path.read_text()).get(f"{model_id}/{filename}")


def _record_hash(model_id: str, filename: str, digest: str) -> None:
    path = _hashes_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with _lock(path):  # read-modify-write: two processes recording two models keep both
        data = json.loads(path.read_text()) if path.is_file() else {}
        data[f"{model_id}/{filename}"] = digest
        atomic_write(path, json.dumps(data, indent=2, sort_keys=True))
    logger.warning("recorded sha256 %s for %s/%s (trust on first use; later loads verify it)", digest, model_id, filename)


def resolve_base(spec: BaseSpec, *, offline: bool | None = None, for_model: str | None = None) -> Path:
    """Return a local folder (diffusers layout) for the base model, trying each source in order."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    offline = settings.current().offline if offline is None else offline
    tried: list[str] = []
    for source in spec.sources:
        if "path" in source:
            path = Path(source["path"]).expanduser()
            if path.is_dir():
                return path
            tried.append(f"{path} (no such folder)")
            continue
        repo_id, revision = source["repo_id"], source.get("revision", "main")
        try:
            folder = snapshot_download(repo_id, revision=revision, allow_patterns=list(spec.allow_patterns) or None, local_files_only=offline)
            return Path(folder)
        except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as exc:
            tried.append(f"{repo_id}@{revision} ({_cause(exc, offline=offline)})")
            logger.info("base source %s@%s failed: %s", repo_id, revision, exc)
    mode = " in offline mode" if offline else ""
    command = f"`ctsr models download {for_model}`" if for_model else "`ctsr models download MODEL`"
    raise WeightsNotFoundError(
        f"base model `{spec.id}` could not be found{mode}; tried: {'; '.join(tried)}. Download it on a "
        f"machine with network ({command}), or give a local diffusers folder with --base DIR (Python: `base=`)."
    )


def _cause(exc: BaseException, *, offline: bool) -> str:
    """The real reason a hub source failed, in a few words (offline, DNS/connection, HTTP status)."""
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    if isinstance(exc, LocalEntryNotFoundError):
        if offline:
            return "not in the local cache, and offline mode is on (CTSR_OFFLINE / HF_HUB_OFFLINE)"
        cause = exc.__cause__ or exc.__context__
        return f"not in the local cache, and the hub is unreachable ({type(cause).__name__ if cause else 'no connection'}: DNS or network)"
    if isinstance(exc, HfHubHTTPError):
        status = getattr(getattr(exc, "response", None), "status_code", None)
        return f"HTTP {status}" + (" (not found)" if status == 404 else "")
    first = str(exc).splitlines()[0][:160] if str(exc) else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _download_dir(model_id: str) -> Path:
    return settings.current().home / "downloads" / model_id


def _http_download(url: str, target: Path, *, on_progress: ProgressCallback | None) -> None:
    """Download ``url`` to ``target`` through ``target.part``, resuming a partial file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    have = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 - URLs come from the manifest
            resumed = response.status == 206
            total = int(response.headers.get("Content-Length", 0)) + (have if resumed else 0)
            done = have if resumed else 0
            with part.open("ab" if resumed else "wb") as out:
                for block in iter(lambda: response.read(_CHUNK), b""):
                    out.write(block)
                    done += len(block)
                    emit(on_progress, "download", done, total)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # the partial file is already complete
            publish(part, target)
            return
        raise _Unavailable(f"HTTP {exc.code}") from exc
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        raise _Unavailable(f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}") from exc
    publish(part, target)


def _from_source(spec: ModelSpec, source: Source, *, offline: bool, on_progress: ProgressCallback | None) -> Path:
    name = spec.file.filename
    if source.package:
        path = Path(str(resources.files("ctsr_infer").joinpath(source.package)))
        if not path.is_file():
            raise _Unavailable(f"not in the installed package ({path}); reinstall ctsr-infer")
        return path
    if source.repo_id:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

        try:
            return Path(hf_hub_download(source.repo_id, source.path or name, revision=source.revision, local_files_only=offline))
        except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as exc:
            raise _Unavailable(_cause(exc, offline=offline)) from exc
    if source.wheel:  # a file inside an installed distribution
        from importlib import metadata

        try:
            located = Path(str(metadata.distribution(source.wheel).locate_file(str(source.path))))
        except metadata.PackageNotFoundError:
            raise _Unavailable(f"the `{source.wheel}` package is not installed (`pip install {source.wheel}`)") from None
        if not located.is_file():
            raise _Unavailable(f"`{source.wheel}` is installed but has no `{source.path}`")
        return located
    if source.manual:  # no direct link: a person downloads it and puts it where we look
        target = _download_dir(spec.id) / name
        if target.is_file():
            return target
        raise _Unavailable(f"download `{name}` by hand from {source.manual} and put it at `{target}`")
    url = str(source.url)
    if url.startswith("file://"):  # a file on this machine (imported models)
        local = Path(urllib.request.url2pathname(urllib.parse.urlparse(url).path))
        if not local.is_file():
            raise _Unavailable(f"no file at {local}")
        return local
    target = _download_dir(spec.id) / name
    if target.is_file():
        return target
    if offline:
        raise _Unavailable(f"not at {target} and offline")
    with _lock(target):  # one process writes `<target>.part`; the others wait, then find the file
        if target.is_file():
            return target
        logger.info("downloading %s", source.url)
        _http_download(str(source.url), target, on_progress=on_progress)
    return target


def _lock(target: Path):  # noqa: ANN202 - a filelock.FileLock
    """A per-file inter-process lock ``<target>.lock`` (as huggingface_hub does for its blobs)."""
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(target.with_name(target.name + ".lock")))


def local_file(spec: ModelSpec) -> Path | None:
    """The model's raw file if it is already on this machine (never touches the network)."""
    for source in spec.file.sources:
        try:
            return _from_source(spec, source, offline=True, on_progress=None)
        except _Unavailable:
            continue
    return None


def fetch_file(spec: ModelSpec, *, offline: bool | None = None, on_progress: ProgressCallback | None = None) -> Path:
    """Return the model's raw file, downloading it if needed, verified by sha256.

    Raises:
        WeightsNotFoundError: no source could give the file (offline, missing, network errors).
        IncompatibleWeightsError: the file's sha256 is not the expected one (nothing is deleted).
    """
    offline = settings.current().offline if offline is None else offline
    tried: list[str] = []
    path: Path | None = None
    for source in spec.file.sources:
        try:
            path = _from_source(spec, source, offline=offline, on_progress=on_progress)
            break
        except _Unavailable as exc:
            tried.append(f"{source.describe()} ({exc})")
    if path is None:
        where = _download_dir(spec.id) / spec.file.filename
        raise WeightsNotFoundError(
            f"`{spec.file.filename}` of model `{spec.id}` is not available{' offline' if offline else ''}; tried: "
            f"{'; '.join(tried)}. Run `ctsr models download {spec.id}` on a machine with network, or put the file at `{where}`."
        )
    verify_file(spec, path)
    return path


def verify_file(spec: ModelSpec, path: Path) -> str:
    """Check ``path`` against the manifest's or the recorded sha256; record it when neither exists."""
    got = sha256_of(path)
    expected = spec.file.sha256 or recorded_hash(spec.id, spec.file.filename)
    if expected is None:
        _record_hash(spec.id, spec.file.filename, got)
    elif got != expected:
        origin = "the manifest" if spec.file.sha256 else f"the hash recorded at first download ({_hashes_path()})"
        raise IncompatibleWeightsError(
            f"`{path}` of model `{spec.id}` has sha256 {got}, but {origin} says {expected}. The file is left "
            f"in place; delete it and run `ctsr models download {spec.id}` again."
        )
    return got


def converted_path(spec: ModelSpec) -> Path:
    return settings.current().models_dir / f"{spec.id}.safetensors"


def ensure_student(spec: ModelSpec, *, base_dir: Path | None = None, offline: bool | None = None,
                   on_progress: ProgressCallback | None = None) -> tuple[Path, Path | None]:
    """Return (student file, base folder) for a manifest model, converting on first use.

    ``base_dir`` overrides the manifest's base sources (a local diffusers folder).
    """
    if base_dir is None and spec.base is not None:
        base_dir = resolve_base(spec.base, offline=offline, for_model=spec.id)
    if spec.file.format == STUDENT_FORMAT:
        return fetch_file(spec, offline=offline, on_progress=on_progress), base_dir
    target = converted_path(spec)
    with _lock(target):
        if target.is_file() and _converted_is_current(spec, target, base_dir):
            return target, base_dir
        raw = fetch_file(spec, offline=offline, on_progress=on_progress)
        path = _convert(spec, raw, target, base_dir, offline=offline, on_progress=on_progress)
        _record_hash(spec.id, CONVERTED_KEY, sha256_of(path))
        return path, base_dir


CONVERTED_KEY = "converted.safetensors"
"""The hash-record name of a model's converted student file."""


def _conversion_key(spec: ModelSpec, base_dir: Path | None) -> dict[str, object]:
    """Everything besides the source file that a conversion depends on: the VQ file's hash, the
    converter settings, the prompt and the base model the prompt embedding came from."""
    vq = (spec.vq.sha256 or recorded_hash(spec.id, spec.vq.filename)) if spec.vq is not None else None
    base = str(Path(base_dir).resolve()) if base_dir is not None else None
    return json.loads(json.dumps({"vq_sha256": vq, "convert": dict(spec.convert), "prompt": spec.prompt, "base": base}, default=str))


def _converted_is_current(spec: ModelSpec, target: Path, base_dir: Path | None = None) -> bool:
    """A converted student is reused only if it was converted from the file the manifest (or the first
    download) names, with the same VQ file, converter settings, prompt and base model, and is
    byte-for-byte what the conversion wrote."""
    from safetensors import safe_open

    from .student_file import META_KEY

    try:
        with safe_open(str(target), framework="pt") as handle:
            meta = json.loads((handle.metadata() or {}).get(META_KEY, "{}"))
    except Exception as exc:  # noqa: BLE001 - an unreadable cache file is converted again
        logger.warning("converted file %s is unreadable (%s); converting again", target, exc)
        return False
    source = (meta.get("provenance") or {}).get("source_sha256")
    expected_source = spec.file.sha256 or recorded_hash(spec.id, spec.file.filename)
    if source is None or source != expected_source:
        logger.warning("%s was converted from a file with sha256 %s, expected %s; converting again", target, source, expected_source)
        return False
    if (meta.get("provenance") or {}).get("conversion") != _conversion_key(spec, base_dir):
        logger.warning("%s was converted with other settings (VQ file, converter settings, prompt or base); converting again", target)
        return False
    recorded = recorded_hash(spec.id, CONVERTED_KEY)
    if recorded is None or sha256_of(target) != recorded:
        logger.warning("%s does not match the hash recorded when it was converted; converting again", target)
        return False
    return True


def _convert(spec: ModelSpec, raw: Path, target: Path, base_dir: Path | None, *, offline: bool | None,
             on_progress: ProgressCallback | None) -> Path:
    """Convert a downloaded public checkpoint with its format's converter (from the family registry)."""
    from .families import ConvertInputs, get_format, read_checkpoint
    from .student_file import save_student

    # fetch_file has just checked the file against this hash (or recorded it on first use)
    source_sha = spec.file.sha256 or recorded_hash(spec.id, spec.file.filename) or verify_file(spec, raw)
    fmt = get_format(spec.file.format)
    if fmt.convert is None:
        raise IncompatibleWeightsError(f"model `{spec.id}`: a {fmt.name} file ({fmt.description}) is not a model on its own.")
    companion = None
    if fmt.companion is not None:
        if spec.vq is None:  # the manifest parser refuses this; a hand-built spec may not
            raise IncompatibleWeightsError(f"model `{spec.id}` is a {fmt.name} checkpoint; it needs a `vq` file of format {fmt.companion}.")
        companion = read_checkpoint(fetch_file(replace(spec, file=spec.vq), offline=offline, on_progress=on_progress),
                                    raw_ok=get_format(fmt.companion).raw_companion)
    if fmt.needs_base and base_dir is None:
        raise IncompatibleWeightsError(f"model `{spec.id}` needs a base model to convert `{raw.name}`; give a local "
                                       "diffusers folder with --base DIR (Python: `base=`).")
    base_ref = dict(spec.base.sources[0]) if spec.base else ({"path": str(base_dir)} if base_dir is not None else {})
    inputs = ConvertInputs(source=read_checkpoint(raw), base_dir=base_dir, base_ref=base_ref, companion=companion, prompt=spec.prompt,
                           licence=spec.licence, settings=spec.convert,
                           provenance={"model": spec.id, "source_sha256": source_sha, "conversion": _conversion_key(spec, base_dir)})
    return save_student(fmt.convert(inputs), target)


@dataclass(frozen=True)
class FileStatus:
    """What of a model is on this machine."""

    model_id: str
    file: Path | None
    """The raw file, if present."""
    converted: Path | None
    """The converted student file, for models that need a conversion."""
    base: Path | None
    """The base-model folder, for models that need one."""
    needs_base: bool
    needs_conversion: bool

    def missing(self) -> list[str]:
        gaps = []
        if self.needs_conversion and self.converted is None and self.file is None:
            gaps.append("model file")
        elif not self.needs_conversion and self.file is None:
            gaps.append("model file")
        if self.needs_conversion and self.converted is None:
            gaps.append("conversion (runs on first use)")
        if self.needs_base and self.base is None:
            gaps.append("base model")
        return gaps

    @property
    def ready(self) -> bool:
        return not self.missing()


def file_status(spec: ModelSpec) -> FileStatus:
    """What of a model is on this machine, looked up without any network access."""
    base = None
    if spec.base is not None:
        try:
            base = resolve_base(spec.base, offline=True)
        except WeightsNotFoundError:
            base = None
    needs_conversion = spec.file.format != STUDENT_FORMAT
    converted = converted_path(spec) if needs_conversion and converted_path(spec).is_file() else None
    return FileStatus(spec.id, local_file(spec), converted, base, needs_base=spec.base is not None, needs_conversion=needs_conversion)
