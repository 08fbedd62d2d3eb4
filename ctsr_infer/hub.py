"""Specs -> local files: base-model snapshots (huggingface_hub) and student files.

Nothing here runs at import time and nothing touches the network when offline (``CTSR_OFFLINE=1``
or ``HF_HUB_OFFLINE=1``): a missing file then fails naming the file and the command that fetches it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import urllib.request
from pathlib import Path

from . import settings
from .errors import IncompatibleWeightsError, WeightsNotFoundError
from .manifest import BaseSpec, ModelSpec

__all__ = ["resolve_base", "fetch_file", "ensure_student", "sha256_of"]

logger = logging.getLogger(__name__)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve_base(spec: BaseSpec, *, offline: bool | None = None) -> Path:
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
            folder = snapshot_download(
                repo_id, revision=revision, allow_patterns=list(spec.allow_patterns) or None, local_files_only=offline
            )
            return Path(folder)
        except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as exc:
            tried.append(f"{repo_id}@{revision} ({type(exc).__name__})")
            logger.info("base source %s@%s failed: %s", repo_id, revision, exc)
    mode = " in offline mode" if offline else ""
    raise WeightsNotFoundError(
        f"base model `{spec.id}` could not be found{mode}; tried: {'; '.join(tried)}. Download it on a "
        "machine with network (`ctsr models download <id>`), or pass `base=` a local diffusers folder."
    )


def fetch_file(spec: ModelSpec, *, offline: bool | None = None) -> Path:
    """Return the model's raw file, downloading it if needed; verify its sha256 when known."""
    current = settings.current()
    offline = current.offline if offline is None else offline
    file = spec.file
    if file.package:
        from importlib import resources

        path = Path(str(resources.files("ctsr_infer").joinpath(file.package)))
        if not path.is_file():
            raise WeightsNotFoundError(
                f"the embedded weights of `{spec.id}` are missing from the installed package (`{path}`); "
                "reinstall ctsr-infer."
            )
    elif file.repo_id:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

        try:
            path = Path(hf_hub_download(file.repo_id, file.filename, revision=file.revision, local_files_only=offline))
        except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as exc:
            raise WeightsNotFoundError(
                f"`{file.filename}` of model `{spec.id}` is not available from {file.repo_id} "
                f"({type(exc).__name__}). Fetch it with `ctsr models download {spec.id}`."
            ) from exc
    else:
        path = current.home / "downloads" / spec.id / file.filename
        if not path.is_file():
            if offline:
                raise WeightsNotFoundError(
                    f"`{file.filename}` of model `{spec.id}` is not at `{path}` and offline mode is on. "
                    f"Run `ctsr models download {spec.id}` with network, or copy the file there."
                )
            path.parent.mkdir(parents=True, exist_ok=True)
            part = path.with_name(path.name + ".part")
            logger.info("downloading %s", file.url)
            with urllib.request.urlopen(str(file.url), timeout=60) as response, part.open("wb") as out:  # noqa: S310
                shutil.copyfileobj(response, out)
            os.replace(part, path)
    if file.sha256:
        got = sha256_of(path)
        if got != file.sha256:
            raise IncompatibleWeightsError(
                f"`{path}` has sha256 {got}, the manifest expects {file.sha256} for model `{spec.id}`. "
                "The file is left in place; delete it and download again."
            )
    return path


def ensure_student(spec: ModelSpec, *, base_dir: Path | None = None, offline: bool | None = None) -> tuple[Path, Path | None]:
    """Return (student file, base folder) for a manifest model, converting on first use.

    ``base_dir`` overrides the manifest's base sources (a local diffusers folder).
    """
    from .checkpoints import convert_osediff, save_student

    if base_dir is None and spec.base is not None:
        base_dir = resolve_base(spec.base, offline=offline)
    if spec.file.format == "ctsr-student":
        return fetch_file(spec, offline=offline), base_dir
    target = settings.current().models_dir / f"{spec.id}.safetensors"
    if target.is_file():
        return target, base_dir
    raw = fetch_file(spec, offline=offline)
    if spec.file.format != "osediff-pkl" or base_dir is None:
        raise IncompatibleWeightsError(f"model `{spec.id}`: no converter for file format {spec.file.format!r}.")
    from .families.sd_onestep import encode_prompt

    source = spec.base.sources[0] if spec.base else {}
    student = convert_osediff(raw, prompt_embeds=encode_prompt(base_dir, spec.prompt), base=dict(source), prompt=spec.prompt)
    return save_student(student, target), base_dir
