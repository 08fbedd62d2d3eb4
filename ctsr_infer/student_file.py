"""The student file: safetensors tensors plus one JSON metadata record, read with limits.

A student file holds, as tensors:

* ``lora.<adapter>.<component>.<module>.A`` / ``.B``: LoRA down/up weights in peft shapes;
* ``base.<component>.<parameter>``: base-model tensors the student overrides (OSEDiff's
  fine-tuned UNet ``conv_in``);
* ``prompt_embeds``: the fixed text-encoder output (1, 77, cross-attention dim), so no text
  encoder is needed at run time;
* ``net.<parameter>``: networks stored in full (``net.*`` of ``lite``, ``net.unet.*`` and
  ``net.vq.*`` of ``resshift-onestep``).

and, in the safetensors header, ``ctsr.meta``: a JSON object (see :class:`StudentMeta`) with one
schema: every field has a type and bounds, enums are checked, and the JSON is parsed with limits on
its size and nesting, so a malformed file is an :class:`IncompatibleWeightsError` naming the field.
The family's own ``config`` is bounded by the family (``Family.check_config``), and every layer size
is read from the tensors' shapes when the family builds its network (:mod:`.families.state`).

This module is the format only: it depends on the knob, the errors and atomic writing; converters
from public checkpoints live in their family's folder.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .atomic import atomic_write
from .errors import IncompatibleWeightsError, KnobError, WeightsNotFoundError
from .knob import Knob

META_KEY = "ctsr.meta"
"""The safetensors header key holding a student file's metadata."""

__all__ = [
    "FORMAT_VERSION",
    "META_KEY",
    "Adapter",
    "FieldBounds",
    "StudentFile",
    "StudentMeta",
    "check_fields",
    "load_student",
    "save_student",
]

FORMAT_VERSION = 1
Component = Literal["unet", "vae"]
Phase = Literal["sr", "ctrl"]
_COMPONENTS = ("unet", "vae")
_PHASES = ("sr", "ctrl")
MAX_META_BYTES = 1 << 20
"""Largest ``ctsr.meta`` record (1 MiB; real ones are under 4 kB)."""
MAX_META_DEPTH = 16
"""Deepest nesting of the ``ctsr.meta`` JSON (real ones nest 4 levels)."""
MAX_ADAPTERS = 64
_FAMILY_NAME = re.compile(r"[a-z0-9][a-z0-9\-]{0,63}")
_BASE_KEYS = ("repo_id", "revision", "path", "subfolder")


_NumberType = type[int] | type[float]
FieldBounds = tuple[_NumberType | tuple[_NumberType, ...], float, float]
"""A numeric field's allowed type(s) (``bool`` only where named), lowest and highest value."""


def check_fields(values: Mapping[str, Any], bounds: Mapping[str, FieldBounds], *, where: str,
                 lists: bool = True) -> None:
    """Check each present field of ``values`` against ``bounds``: name -> (type(s), low, high), both
    inclusive (for sequences: each element, when ``lists``), and refuse unknown names. ``bool`` is
    never a number."""
    unknown = sorted(set(values) - set(bounds))
    if unknown:
        raise IncompatibleWeightsError(f"{where} has unknown fields {unknown}; known: {sorted(bounds)}.")
    for name, value in values.items():
        kinds, low, high = bounds[name]
        allowed = kinds if isinstance(kinds, tuple) else (kinds,)
        if isinstance(value, (list, tuple)) and not lists:
            raise IncompatibleWeightsError(f"{where} `{name}` must be one number, got {value!r}.")
        items = value if isinstance(value, (list, tuple)) else [value]
        if isinstance(value, (list, tuple)) and not 1 <= len(value) <= 16:
            raise IncompatibleWeightsError(f"{where} `{name}` must list 1 to 16 values, got {len(value)}.")
        for item in items:
            if (isinstance(item, bool) and bool not in allowed) or not isinstance(item, allowed) \
                    or (isinstance(item, float) and not math.isfinite(item)) or not low <= item <= high:
                raise IncompatibleWeightsError(f"{where} `{name}` must be in [{low:g}, {high:g}], got {value!r}.")


def _parse_json(text: str, source: str) -> Any:
    """``json.loads`` with limits: size, then nesting depth (walked iteratively)."""
    if len(text) > MAX_META_BYTES:
        raise IncompatibleWeightsError(f"{source}: the `ctsr.meta` header is {len(text)} bytes, over the limit of {MAX_META_BYTES}.")
    try:
        data = json.loads(text)
    except RecursionError:
        raise IncompatibleWeightsError(f"{source}: the `ctsr.meta` header nests deeper than {MAX_META_DEPTH} levels.") from None
    except ValueError as exc:
        raise IncompatibleWeightsError(f"{source}: the `ctsr.meta` header is not JSON ({exc}).") from None
    stack = [(data, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_META_DEPTH:
            raise IncompatibleWeightsError(f"{source}: the `ctsr.meta` header nests deeper than {MAX_META_DEPTH} levels.")
        if isinstance(item, dict):
            stack.extend((value, depth + 1) for value in item.values())
        elif isinstance(item, list):
            stack.extend((value, depth + 1) for value in item)
    return data


def _need(data: Mapping[str, Any], name: str, kinds: type | tuple[type, ...], default: Any, source: str) -> Any:
    value = data.get(name, default)
    if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)) or not isinstance(value, kinds):
        raise IncompatibleWeightsError(f"{source}: `ctsr.meta` field `{name}` must be {getattr(kinds, '__name__', kinds)}, got {value!r}.")
    return value


def _choice(data: Mapping[str, Any], name: str, choices: tuple[str, ...], default: str, source: str) -> Any:
    value = data.get(name, default)
    if value not in choices:
        raise IncompatibleWeightsError(f"{source}: `ctsr.meta` field `{name}` must be one of {list(choices)}, got {value!r}.")
    return value


@dataclass(frozen=True)
class Adapter:
    """One LoRA adapter of a student."""

    name: str
    component: Component
    rank: int
    alpha: float
    phase: Phase = "sr"
    """``sr`` adapters are fused at load; a ``ctrl`` adapter drives the ctsr-flow knob."""

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_\-]+", self.name):
            raise IncompatibleWeightsError(f"adapter name {self.name!r} must be letters, digits, '_' or '-'.")
        if self.component not in _COMPONENTS:
            raise IncompatibleWeightsError(
                f"adapter `{self.name}`: `component` must be one of {_COMPONENTS}, got {self.component!r}."
            )
        if self.phase not in _PHASES:
            raise IncompatibleWeightsError(
                f"adapter `{self.name}`: `phase` must be one of {_PHASES}, got {self.phase!r}."
            )
        if self.rank < 1 or self.alpha <= 0:
            raise IncompatibleWeightsError(
                f"adapter `{self.name}`: rank must be >= 1 and alpha > 0, got rank {self.rank}, alpha {self.alpha}."
            )


@dataclass(frozen=True)
class StudentMeta:
    """What a student file says about itself (the JSON in the safetensors header)."""

    family: str
    """``sd-onestep``, ``resshift-onestep`` or ``lite``."""
    base: Mapping[str, str] = field(default_factory=dict)
    """Base model reference: {"repo_id", "revision"} or {"path"}; empty when self-contained."""
    adapters: tuple[Adapter, ...] = ()
    knob: Knob = field(default_factory=Knob)
    scale: float = 4.0
    """Default upscaling factor."""
    color_fix: str = "adain"
    """Default colour fix: ``adain``, ``wavelet`` or ``none``."""
    encode: Literal["mean", "sample"] = "mean"
    """VAE posterior: its mean (deterministic) or a seeded sample (OSEDiff samples)."""
    timestep: int = 999
    """The one UNet timestep of the SR step."""
    licence: str = "unknown"
    provenance: Mapping[str, Any] = field(default_factory=dict)
    config: Mapping[str, Any] = field(default_factory=dict)
    """Family-specific architecture settings (the ``lite`` network's widths)."""

    def to_json(self) -> str:
        return json.dumps(
            {
                "format_version": FORMAT_VERSION,
                "family": self.family,
                "base": dict(self.base),
                "adapters": [a.__dict__ for a in self.adapters],
                "knob": self.knob.to_json(),
                "scale": self.scale,
                "color_fix": self.color_fix,
                "encode": self.encode,
                "timestep": self.timestep,
                "licence": self.licence,
                "provenance": dict(self.provenance),
                "config": dict(self.config),
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str, *, source: str = "student file") -> StudentMeta:
        """Parse and check the metadata record: every field typed and bounded, enums checked."""
        data = _parse_json(text, source)
        if not isinstance(data, dict):
            raise IncompatibleWeightsError(f"{source}: the `ctsr.meta` header must be a JSON object, got {type(data).__name__}.")
        known = {"format_version", "family", "base", "adapters", "knob", "scale", "color_fix", "encode", "timestep", "licence",
                 "provenance", "config"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise IncompatibleWeightsError(f"{source}: `ctsr.meta` has unknown fields {unknown}; known: {sorted(known)}.")
        version = _need(data, "format_version", int, 0, source)
        if version > FORMAT_VERSION:
            raise IncompatibleWeightsError(
                f"{source} has format version {version}; this ctsr-infer reads up to "
                f"{FORMAT_VERSION}. Upgrade: `pip install -U ctsr-infer`."
            )
        if "family" not in data:
            raise IncompatibleWeightsError(f"{source}: `ctsr.meta` has no `family` field.")
        family = _need(data, "family", str, "", source)
        if not _FAMILY_NAME.fullmatch(family):
            raise IncompatibleWeightsError(f"{source}: `ctsr.meta` field `family` must be a short kebab-case name, got {family[:80]!r}.")
        base = _need(data, "base", dict, {}, source)
        if set(base) - set(_BASE_KEYS) or not all(isinstance(v, str) and len(v) <= 4096 for v in base.values()):
            raise IncompatibleWeightsError(f"{source}: `ctsr.meta` field `base` must map {list(_BASE_KEYS)} to strings, got {base!r}.")
        adapters = _need(data, "adapters", list, [], source)
        if len(adapters) > MAX_ADAPTERS:
            raise IncompatibleWeightsError(f"{source}: `ctsr.meta` lists {len(adapters)} adapters, more than {MAX_ADAPTERS}.")
        parsed: list[Adapter] = []
        for index, entry in enumerate(adapters):
            where = f"{source}: `ctsr.meta` adapter {index}"
            if not isinstance(entry, dict) or not {"name", "component", "rank", "alpha"} <= set(entry):
                raise IncompatibleWeightsError(f"{where} must be an object with name, component, rank and alpha, got {entry!r}.")
            check_fields({k: v for k, v in entry.items() if k in ("rank", "alpha")}, {"rank": (int, 1, 4096), "alpha": ((int, float), 1e-6, 1e6)},
                         where=where, lists=False)
            extra = sorted(set(entry) - {"name", "component", "rank", "alpha", "phase"})
            if extra or not isinstance(entry["name"], str) or not isinstance(entry.get("phase", "sr"), str):
                raise IncompatibleWeightsError(f"{where}: unexpected fields {extra} or a name/phase that is not a string.")
            parsed.append(Adapter(name=entry["name"], component=entry["component"], rank=entry["rank"], alpha=float(entry["alpha"]),
                                  phase=entry.get("phase", "sr")))
        knob_data = _need(data, "knob", dict, {}, source)
        try:
            knob = Knob.from_json(knob_data)
        except KnobError as exc:
            raise IncompatibleWeightsError(f"{source}: `ctsr.meta` field `knob`: {exc}") from None
        check_fields({k: data[k] for k in ("scale", "timestep") if k in data},
                     {"scale": ((int, float), 1, 16), "timestep": (int, 0, 999)}, where=f"{source}: `ctsr.meta`", lists=False)
        licence = _need(data, "licence", str, "unknown", source)
        return cls(
            family=family,
            base=dict(base),
            adapters=tuple(parsed),
            knob=knob,
            scale=float(data.get("scale", 4.0)),
            color_fix=_choice(data, "color_fix", ("adain", "wavelet", "none"), "adain", source),
            encode=_choice(data, "encode", ("mean", "sample"), "mean", source),
            timestep=int(data.get("timestep", 999)),
            licence=licence[:1000],
            provenance=dict(_need(data, "provenance", dict, {}, source)),
            config=dict(_need(data, "config", dict, {}, source)),
        )


@dataclass
class StudentFile:
    """A student file in memory: metadata and tensors."""

    meta: StudentMeta
    tensors: dict[str, torch.Tensor]

    def adapter(self, name: str) -> Adapter:
        for adapter in self.meta.adapters:
            if adapter.name == name:
                return adapter
        raise KeyError(name)

    def lora_pairs(self, adapter: Adapter) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Module name (within the adapter's component) -> (A, B)."""
        prefix = f"lora.{adapter.name}.{adapter.component}."
        pairs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for key in sorted(self.tensors):
            if key.startswith(prefix) and key.endswith(".A"):
                module = key[len(prefix) : -2]
                pairs[module] = (self.tensors[key], self.tensors[f"{prefix}{module}.B"])
        return pairs

    def base_overrides(self, component: Component) -> dict[str, torch.Tensor]:
        prefix = f"base.{component}."
        return {k[len(prefix) :]: v for k, v in self.tensors.items() if k.startswith(prefix)}

    @property
    def prompt_embeds(self) -> torch.Tensor | None:
        return self.tensors.get("prompt_embeds")

    def validate(self, *, source: str = "student file") -> None:
        """Check that tensor keys and the adapters in the metadata agree."""
        names = {a.name: a for a in self.meta.adapters}
        if len(names) != len(self.meta.adapters):
            raise IncompatibleWeightsError(f"{source}: adapter names are not unique.")
        for key, tensor in self.tensors.items():
            if key.startswith("lora."):
                parts = key.split(".")
                if len(parts) < 5 or parts[-1] not in ("A", "B"):
                    raise IncompatibleWeightsError(
                        f"{source}: tensor `{key}` is not of the form lora.<adapter>.<component>.<module>.A|B."
                    )
                adapter = names.get(parts[1])
                if adapter is None or adapter.component != parts[2]:
                    raise IncompatibleWeightsError(
                        f"{source}: tensor `{key}` belongs to adapter `{parts[1]}` of component "
                        f"`{parts[2]}`, which the metadata does not declare (declared: "
                        f"{[(a.name, a.component) for a in self.meta.adapters]})."
                    )
                partner = key[:-1] + ("B" if parts[-1] == "A" else "A")
                if partner not in self.tensors:
                    raise IncompatibleWeightsError(f"{source}: `{key}` has no partner `{partner}`.")
                if tensor.dim() not in (2, 4):
                    raise IncompatibleWeightsError(f"{source}: LoRA tensor `{key}` has {tensor.dim()} dimensions; LoRA factors have 2 or 4.")
                if parts[-1] == "A" and tensor.shape[0] != adapter.rank:
                    raise IncompatibleWeightsError(
                        f"{source}: `{key}` has rank {tensor.shape[0]}, adapter `{adapter.name}` declares rank {adapter.rank}."
                    )
            elif not (key.startswith(("base.", "net.", "fidelity.")) or key == "prompt_embeds"):
                raise IncompatibleWeightsError(f"{source}: unexpected tensor `{key}`.")
            if not tensor.is_floating_point():
                raise IncompatibleWeightsError(
                    f"{source}: tensor `{key}` has dtype {tensor.dtype}; student tensors are floating point."
                )


def save_student(student: StudentFile, path: str | os.PathLike[str]) -> Path:
    """Write a student file atomically (temporary file, then rename)."""
    student.validate()
    tensors = {k: v.detach().contiguous().cpu() for k, v in student.tensors.items()}
    metadata = {"format": "pt", META_KEY: student.meta.to_json()}
    return atomic_write(path, writer=lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def load_student(path: str | os.PathLike[str]) -> StudentFile:
    """Read and validate a student file.

    Raises:
        WeightsNotFoundError: the file does not exist.
        IncompatibleWeightsError: not a safetensors file, truncated, or no ``ctsr.meta`` header.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"student file `{path}` does not exist.")
    source = f"student file `{path}`"
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            header = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise IncompatibleWeightsError(
            f"{source} is not a readable safetensors file ({exc}). If it is a pickled checkpoint "
            "(.pkl/.pth), convert it first: `ctsr models convert IN OUT`."
        ) from exc
    if "ctsr.meta" not in header:
        raise IncompatibleWeightsError(
            f"{source} has no `ctsr.meta` header, so it is not a ctsr student file. Convert public "
            "checkpoints with `ctsr models convert IN OUT`."
        )
    student = StudentFile(meta=StudentMeta.from_json(header["ctsr.meta"], source=source), tensors=tensors)
    student.validate(source=source)
    return student
