"""``weights_manifest.json`` -> frozen specs. Models are data: adding one is an entry, not code."""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import IncompatibleWeightsError, UnknownModelError
from .knob import Knob

__all__ = ["BaseSpec", "FileSpec", "ModelSpec", "Manifest", "load_manifest", "get_spec"]


@dataclass(frozen=True)
class BaseSpec:
    id: str
    sources: tuple[dict[str, str], ...]
    allow_patterns: tuple[str, ...] = ()
    licence: str = "unknown"
    description: str = ""


@dataclass(frozen=True)
class FileSpec:
    filename: str
    format: str
    package: str | None = None
    """A path inside the installed ``ctsr_infer`` package (embedded weights)."""
    url: str | None = None
    repo_id: str | None = None
    revision: str | None = None
    sha256: str | None = None
    size: int | None = None


@dataclass(frozen=True)
class ModelSpec:
    id: str
    family: str
    file: FileSpec
    base: BaseSpec | None = None
    knob: Knob = field(default_factory=Knob)
    scale: float = 4.0
    prompt: str = ""
    licence: str = "unknown"
    commercial_use: bool = True
    notes: str = ""


@dataclass(frozen=True)
class Manifest:
    default: str
    models: dict[str, ModelSpec]
    bases: dict[str, BaseSpec]

    def get(self, model_id: str) -> ModelSpec:
        if model_id in self.models:
            return self.models[model_id]
        close = difflib.get_close_matches(model_id, list(self.models), n=3, cutoff=0.4)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownModelError(
            f"unknown model {model_id!r}.{hint} Known models: {', '.join(sorted(self.models))} "
            "(`ctsr models list`); a student file path works too."
        )


def _field(entry: dict[str, Any], name: str, where: str) -> Any:
    if name not in entry:
        raise IncompatibleWeightsError(f"weights manifest: {where} has no `{name}` field.")
    return entry[name]


def parse_manifest(data: dict[str, Any]) -> Manifest:
    """Validate the manifest's JSON; errors name the entry and the field."""
    bases: dict[str, BaseSpec] = {}
    for base_id, entry in data.get("bases", {}).items():
        sources = tuple(dict(s) for s in _field(entry, "sources", f"base `{base_id}`"))
        if not sources or any("repo_id" not in s and "path" not in s for s in sources):
            raise IncompatibleWeightsError(f"weights manifest: base `{base_id}` `sources` must list repo_id or path entries.")
        bases[base_id] = BaseSpec(
            id=base_id, sources=sources, allow_patterns=tuple(entry.get("allow_patterns", ())),
            licence=entry.get("licence", "unknown"), description=entry.get("description", ""),
        )
    models: dict[str, ModelSpec] = {}
    for model_id, entry in data.get("models", {}).items():
        where = f"model `{model_id}`"
        file_entry = dict(_field(entry, "file", where))
        for name in ("filename", "format"):
            _field(file_entry, name, f"{where} `file`")
        if not any(file_entry.get(k) for k in ("url", "repo_id", "package")):
            raise IncompatibleWeightsError(f"weights manifest: {where} `file` needs `package`, `repo_id` or `url`.")
        base_id = entry.get("base")
        if base_id is not None and base_id not in bases:
            raise IncompatibleWeightsError(f"weights manifest: {where} names base `{base_id}`, which is not in `bases`.")
        models[model_id] = ModelSpec(
            id=model_id,
            family=_field(entry, "family", where),
            file=FileSpec(**{k: file_entry.get(k) for k in FileSpec.__dataclass_fields__}),
            base=bases[base_id] if base_id else None,
            knob=Knob.from_json(entry.get("knob", {})),
            scale=float(entry.get("scale", 4)),
            prompt=entry.get("prompt", ""),
            licence=entry.get("licence", "unknown"),
            commercial_use=bool(entry.get("commercial_use", True)),
            notes=entry.get("notes", ""),
        )
    default = _field(data, "default", "the top level")
    if default not in models:
        raise IncompatibleWeightsError(f"weights manifest: `default` names {default!r}, which is not in `models`.")
    return Manifest(default=default, models=models, bases=bases)


@lru_cache(maxsize=1)
def load_manifest() -> Manifest:
    """The manifest shipped in the package (or, in a source checkout, at the repository root)."""
    packaged = resources.files("ctsr_infer").joinpath("weights_manifest.json")
    if packaged.is_file():
        text = packaged.read_text(encoding="utf-8")
    else:
        text = (Path(__file__).resolve().parent.parent / "weights_manifest.json").read_text(encoding="utf-8")
    return parse_manifest(json.loads(text))


def get_spec(model_id: str) -> ModelSpec:
    return load_manifest().get(model_id)
