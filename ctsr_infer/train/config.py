"""Typed training configs from a file (``.toml``, ``.json``, or ``.yaml`` when PyYAML is installed,
as it is with ``accelerate``) plus command-line overrides. Unknown keys are errors."""

from __future__ import annotations

import json
import sys
from dataclasses import fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from ..errors import InvalidInputError

__all__ = ["load_config", "training_device"]

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

C = TypeVar("C", bound="DataclassInstance")


def training_device(name: str) -> torch.device:
    """``auto``: the first CUDA GPU when there is one, else the CPU; otherwise as ``--device``."""
    from ..device import resolve

    return resolve(name, "fp32").device


def _toml_loads(text: str, path: Path) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # Python 3.10: the tomli backport (a dependency of the train extra there)
        try:
            import tomli as tomllib
        except ImportError as exc:
            raise InvalidInputError(f"`{path}` is TOML, which Python 3.10 reads with tomli; `pip install tomli`, or use .json.") from exc
    return tomllib.loads(text)


def load_config(cls: type[C], path: Path | None = None, **overrides: Any) -> C:
    """``cls()`` updated from ``path`` and then from the non-None ``overrides``."""
    data: dict[str, Any] = {}
    if path is not None:
        text = Path(path).read_text()
        suffix = Path(path).suffix.lower()
        if suffix == ".toml":
            data = _toml_loads(text, path)
        elif suffix == ".json":
            data = json.loads(text)
        elif suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError as exc:
                raise InvalidInputError(f"`{path}` is YAML but PyYAML is not installed; use .toml or .json, or `pip install pyyaml`.") from exc
            data = yaml.safe_load(text) or {}
        else:
            raise InvalidInputError(f"config `{path}` must end in .toml, .json or .yaml.")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise InvalidInputError(f"config `{path}` has unknown keys {unknown}; known: {sorted(known)}.")
    config = replace(cls(), **data)
    given = {k: v for k, v in overrides.items() if v is not None}
    return replace(config, **given)
