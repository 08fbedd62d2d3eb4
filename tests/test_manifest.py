"""The manifest: validation errors name entry and field; unknown ids get suggestions."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from ctsr_infer.errors import IncompatibleWeightsError, UnknownModelError
from ctsr_infer.manifest import load_manifest, parse_manifest

SHIPPED = json.loads((Path(__file__).resolve().parent.parent / "weights_manifest.json").read_text())


def test_the_shipped_manifest_is_valid() -> None:
    manifest = load_manifest()
    assert manifest.default in manifest.models
    for spec in manifest.models.values():
        assert spec.file.sources and spec.licence != "unknown"


def _broken(path: list[str], value: object) -> dict:
    data = copy.deepcopy(SHIPPED)
    target = data
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return data


@pytest.mark.parametrize(
    "path,value,message",
    [
        (["models", "osediff", "family"], "gan", r"model `osediff` `family`"),
        (["models", "osediff", "file"], KeyError, r"model `osediff` has no `file`"),
        (["models", "osediff", "file", "sha256"], "abc", r"`sha256` must be 64"),
        (["models", "osediff", "file", "sources"], [{"mirror": "x"}], r"sources\[0\]` needs"),
        (["models", "osediff", "file", "format"], "ckpt", r"`format` must be one of"),
        (["models", "osediff", "base"], "sd15", r"names base `sd15`"),
        (["models", "osediff", "knob"], {"kind": "dial"}, r"model `osediff` `knob`"),
        (["default"], "nope", r"`default` names 'nope'"),
        (["format_version"], 2, r"`format_version` must be 1"),
    ],
)
def test_malformed_entries_name_the_entry_and_field(path: list[str], value: object, message: str) -> None:
    with pytest.raises(IncompatibleWeightsError, match=message):
        parse_manifest(_broken(path, value))


def test_unknown_ids_get_close_matches() -> None:
    with pytest.raises(UnknownModelError, match="Did you mean 'osediff'"):
        load_manifest().get("osedif")
    with pytest.raises(KeyError):
        load_manifest().get("zzz")


def test_the_readme_models_table_is_generated_from_the_manifest() -> None:
    import importlib.util

    root = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location("models_table", root / "scripts" / "models_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    readme = (root / "README.md").read_text()
    between = readme[readme.index(module.BEGIN) + len(module.BEGIN) : readme.index(module.END)].strip()
    assert between == module.table(), "run `python scripts/models_table.py --write`"
