"""The user's side of the model registry: imported models, removal, and the doctor's report."""

from __future__ import annotations

import json
import re
import os
import platform
import shutil
from pathlib import Path

from . import settings as settings_module
from .atomic import atomic_write
from .conversion import convert_checkpoint
from .device import native_bf16_cpu
from .errors import InvalidInputError, UnknownModelError, WeightsNotFoundError
from .families import STUDENT_FORMAT, get_family
from .student_file import save_student
from .hub import _download_dir, converted_path, file_status, sha256_of
from .manifest import ModelSpec, load_manifest, user_registry_path

__all__ = ["import_model", "remove_model", "diagnose"]


def _write_registry(data: dict) -> None:
    path = user_registry_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(data, indent=2, sort_keys=True))


def import_model(path: Path, *, model_id: str, base: Path | None = None, companion: Path | None = None, fidelity: Path | None = None,
                 prompt: str = "",
                 licence: str = "unknown", format: str | None = None, settings: dict | None = None) -> ModelSpec:
    """Convert (if needed) and copy a checkpoint into the cache and register it under ``model_id``.
    The file's format is detected from its contents (``format`` overrides); see
    :func:`ctsr_infer.conversion.convert_checkpoint` for ``base``, ``companion`` and ``settings``.

    Raises:
        InvalidInputError: the id is taken or malformed, or the format needs ``base``/``companion``.
        IncompatibleWeightsError / UnsafeCheckpointError: the file is not a usable checkpoint.
    """
    if not isinstance(model_id, str) or not re.fullmatch(r"[a-z0-9][a-z0-9._\-]*", model_id) or len(model_id) > 100:
        raise InvalidInputError(f"`--id` must be lowercase kebab-case (letters, digits, '-', '.', '_'; at most 100), got {model_id!r}.")
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"`{path}` does not exist or is not a file; give the checkpoint to import.")
    manifest = load_manifest()
    if model_id in manifest.models:
        raise InvalidInputError(f"`--id` {model_id!r} is taken; pick another or `ctsr models remove {model_id}` first.")
    path = Path(path)
    target = settings_module.current().models_dir / f"{model_id}.safetensors"
    fmt, student = convert_checkpoint(path, format=format, base=base, companion=companion, fidelity=fidelity, prompt=prompt, licence=licence,
                                      settings=settings, provenance={"source_sha256": sha256_of(path)})
    get_family(student.meta.family, model=str(path)).check_config(student.meta.config)
    if fmt == STUDENT_FORMAT:  # validated above; copied byte for byte
        atomic_write(target, writer=lambda tmp: shutil.copyfile(path, tmp))
    else:
        save_student(student, target)
    meta = student.meta
    architecture = meta.config.get("architecture")
    detail = f"; {architecture} x{meta.config.get('scale', meta.scale)} ({meta.config.get('purpose', 'SR')})" if architecture else ""
    entry = {
        "family": meta.family,
        "file": {"filename": target.name, "format": STUDENT_FORMAT, "sha256": sha256_of(target), "size": target.stat().st_size,
                 "sources": [{"url": target.resolve().as_uri()}]},
        "knob": meta.knob.to_json(), "scale": meta.scale, "licence": licence, "notes": f"imported from {path}{detail}",
    }
    registry_path = user_registry_path()
    registry = json.loads(registry_path.read_text()) if registry_path.is_file() else {}
    registry[model_id] = entry
    _write_registry(registry)
    return load_manifest().get(model_id)


def remove_model(model_id: str) -> list[Path]:
    """Delete what ctsr's cache holds of a model; unregister it if it was imported.

    The Hugging Face cache (base models) is left alone: `huggingface-cli delete-cache` manages it."""
    manifest = load_manifest()
    spec = manifest.get(model_id)
    removed: list[Path] = []
    for path in (converted_path(spec), settings_module.current().models_dir / f"{model_id}.safetensors", _download_dir(model_id)):
        if path.is_dir():
            shutil.rmtree(path)
            removed.append(path)
        elif path.is_file():
            path.unlink()
            removed.append(path)
    if spec.user:
        registry = json.loads(user_registry_path().read_text())
        registry.pop(model_id, None)
        _write_registry(registry)
    return removed


def _folder_size(path: Path) -> str:
    if not path.exists():
        return "empty"
    total = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return f"{total / 1e6:.1f} MB"


def diagnose() -> dict[str, list[tuple[str, str]]]:
    """The facts ``ctsr doctor`` prints, section by section (no network access)."""
    import huggingface_hub
    import torch
    from huggingface_hub import constants as hf_constants

    from . import __version__

    def version(name: str) -> str:
        try:
            from importlib.metadata import version as v

            return v(name)
        except Exception:  # not installed
            return "not installed"

    current = settings_module.current()
    cuda = torch.cuda.is_available()
    report: dict[str, list[tuple[str, str]]] = {
        "versions": [("ctsr-infer", __version__), ("python", platform.python_version()), ("torch", torch.__version__),
                     ("diffusers", version("diffusers")), ("peft", version("peft")), ("huggingface_hub", huggingface_hub.__version__),
                     ("safetensors", version("safetensors")), ("pillow", version("pillow"))],
        "devices": [("cpu", f"{platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"),
                    ("cpu bf16", "fast (AMX/AVX512-BF16)" if getattr(torch.backends, "mkldnn", None) and torch.backends.mkldnn.is_available()
                     and native_bf16_cpu() else "emulated (slow)"),
                    ("cuda", f"{torch.cuda.device_count()} device(s): {torch.cuda.get_device_name(0)}" if cuda else "not available"),
                    ("cuda bf16", str(torch.cuda.is_bf16_supported()) if cuda else "-"),
                    ("mps", str(bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()))],
        "cache": [("CTSR_HOME", f"{current.home} ({_folder_size(current.home)})"),
                  ("hugging face cache", str(hf_constants.HF_HUB_CACHE)),
                  ("offline", f"{current.offline} (CTSR_OFFLINE={os.environ.get('CTSR_OFFLINE', '')!r}, HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '')!r})")],
    }
    try:
        manifest = load_manifest()
        rows = []
        for model_id in sorted(manifest.models):
            status = file_status(manifest.models[model_id])
            rows.append((model_id, "ready" if status.ready else "missing: " + ", ".join(status.missing()) + f" (`ctsr models download {model_id}`)"))
        report["models"] = rows
    except (UnknownModelError, ValueError) as exc:
        report["models"] = [("manifest", f"broken: {exc}")]
    return report

