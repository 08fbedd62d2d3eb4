"""``ctsr models``: list, inspect, download, verify, import, convert and remove models."""

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from ..errors import CtsrError, InvalidInputError
from .app import EXIT_ENV, EXIT_FAILED, EXIT_OK, err, out
from .options import BaseOption, OverwriteOption

if TYPE_CHECKING:
    from ..manifest import ModelSpec

__all__ = ["models_app"]

models_app = typer.Typer(no_args_is_help=True, help="List and convert models.")


def _size(spec: "ModelSpec") -> str:
    return f"{spec.file.size / 1e6:.1f} MB" if spec.file.size else "?"


@models_app.command("list")
def models_list() -> None:
    """List the models: family, knob, size, licence and whether they are on this machine."""
    from ..hub import file_status
    from ..manifest import load_manifest

    manifest = load_manifest()
    table = Table()
    for column in ("id", "family", "knob", "size", "licence", "on this machine"):
        table.add_column(column)
    for model_id in sorted(manifest.models):
        spec = manifest.models[model_id]
        status = file_status(spec)
        present = status.file or status.converted or (status.base if status.needs_base else None)
        here = "yes" if status.ready else ("partly: missing " + ", ".join(status.missing()) if present else "no")
        licence = spec.licence + ("" if spec.commercial_use else " [non-commercial]")
        name = model_id + (" (default)" if model_id == manifest.default else "") + (" (imported)" if spec.user else "")
        table.add_row(name, spec.family, spec.knob.kind, _size(spec), licence, here)
    out.print(table)


@models_app.command("info")
def models_info(model_id: Annotated[str, typer.Argument(help="Model id.")]) -> None:
    """Everything the manifest says about a model, and what of it is on this machine."""
    from ..hub import file_status, recorded_hash
    from ..manifest import get_spec

    spec = get_spec(model_id)
    status = file_status(spec)
    rows = [
        ("id", spec.id), ("family", spec.family), ("knob", f"{spec.knob.kind}" + (f" (default t {spec.knob.default_t})" if spec.knob.default_t is not None else "")),
        ("scale", f"{spec.scale:g}"), ("licence", spec.licence + ("" if spec.commercial_use else " - NON-COMMERCIAL")),
        ("file", f"{spec.file.filename} ({spec.file.format}, {_size(spec)})"),
        ("sources", "; ".join(s.describe() for s in spec.file.sources)),
        ("sha256", spec.file.sha256 or f"unknown in advance; recorded: {recorded_hash(spec.id, spec.file.filename) or 'not yet'}"),
        ("base", ("; ".join(s.get("repo_id", s.get("path", "?")) for s in spec.base.sources) + f" ({spec.base.licence})") if spec.base else "none"),
        ("local file", str(status.file or "not downloaded")), ("converted", str(status.converted or "-")),
        ("local base", str(status.base or ("-" if not spec.base else "not downloaded"))),
        ("missing", ", ".join(status.missing()) or "nothing"), ("notes", spec.notes),
    ]
    table = Table(show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    for key, value in rows:
        table.add_row(key, value)
    out.print(table)


@models_app.command("download")
def models_download(model_id: Annotated[str, typer.Argument(help="Model id.")], base: BaseOption = None) -> None:
    """Fetch (and verify, and convert) everything a model needs, so it later runs offline."""
    from ..hub import ensure_student
    from ..manifest import get_spec

    student, base_dir = ensure_student(get_spec(model_id), base_dir=base)
    out.print(f"{model_id}: student {student}" + (f", base {base_dir}" if base_dir else ""))


@models_app.command("verify")
def models_verify(model_id: Annotated[str | None, typer.Argument(help="Model id (default: every model on this machine).")] = None) -> None:
    """Check the sha256 of every downloaded model file against the manifest or the recorded hash."""
    from ..hub import local_file, verify_file
    from ..manifest import load_manifest

    manifest = load_manifest()
    specs = [manifest.get(model_id)] if model_id else [manifest.models[k] for k in sorted(manifest.models)]
    bad = 0
    for spec in specs:
        path = local_file(spec)
        if path is None:
            out.print(f"{spec.id}: not downloaded")
            bad += model_id is not None
            continue
        try:  # one line per model, and the others are still checked
            digest = verify_file(spec, path)
            out.print(f"{spec.id}: ok ({digest[:16]}...) {path}")
        except CtsrError as exc:
            bad += 1
            out.print(f"[red]{spec.id}: {escape(str(exc))}[/]", highlight=False)
    raise typer.Exit(EXIT_FAILED if bad else EXIT_OK)


FormatOption = Annotated[str | None, typer.Option("--format", help="The checkpoint's format, overriding detection from its contents (`ctsr models formats`).")]
CompanionOption = Annotated[Path | None, typer.Option("--vq", help="The companion file of formats that have one (ResShift-family UNets: autoencoder_vq_f4.pth).")]
PromptOption = Annotated[str, typer.Option("--prompt", help="Formats that need a base model: the fixed prompt carried in the student (default: empty).")]
FidelityOption = Annotated[Path | None, typer.Option("--fidelity", help="Classic networks: a faithful network (t = 1) to pair with IN (t = 0) into a t knob (weights interpolated when both have one layout).")]
SetOption = Annotated[list[str] | None, typer.Option("--set", help="A converter setting KEY=VALUE (VALUE as JSON, else text; dotted keys nest: schedule.steps=4). Repeatable.")]
SettingsOption = Annotated[Path | None, typer.Option("--settings", help="Converter settings as a JSON file (--set overrides it).")]


def _settings(pairs: list[str] | None, path: Path | None, *, sampler: str | None = None) -> dict[str, Any]:
    """--settings FILE, then each --set KEY=VALUE (dotted keys nest); --sampler is the old spelling of --set sampler=..."""
    settings: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise typer.BadParameter(f"--settings `{path}` is not a readable JSON file: {exc}") from None
        if not isinstance(loaded, dict):
            raise typer.BadParameter(f"--settings `{path}` must hold a JSON object, got {type(loaded).__name__}.")
        settings.update(loaded)
    for pair in [*(pairs or []), *([f"sampler={sampler}"] if sampler else [])]:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"--set expects KEY=VALUE, got {pair!r}.")
        try:
            value: Any = json.loads(text)
        except ValueError:
            value = text
        *parents, leaf = key.strip().split(".")
        node = settings
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise typer.BadParameter(f"--set {pair!r}: `{part}` is not a group of settings.")
            node = child
        node[leaf] = value
    return settings


@models_app.command("families")
def models_families() -> None:
    """List the model families this version runs: knob kinds, options, and the formats each converts from."""
    from ..families import FAMILIES

    table = Table()
    for column in ("family", "what it is", "knob kinds", "options", "converts from"):
        table.add_column(column)
    for family in FAMILIES.values():
        table.add_row(family.name, family.description, ", ".join(family.knob_kinds), ", ".join(family.options),
                      ", ".join(fmt.name for fmt in family.formats if fmt.convert) or "-")
    out.print(table)


@models_app.command("formats")
def models_formats() -> None:
    """List the checkpoint formats this version converts, with the family each converts to."""
    from ..families import FAMILIES, STUDENT_FORMAT

    table = Table()
    for column in ("format", "family", "what it is", "needs"):
        table.add_column(column)
    table.add_row(STUDENT_FORMAT, "(any)", "a ctsr student file (safetensors with a ctsr.meta record)", "")
    for family in FAMILIES.values():
        for fmt in family.formats:
            needs = ", ".join(x for x in ("--base" if fmt.needs_base else "", f"{fmt.companion_option} ({fmt.companion})" if fmt.companion else "",
                                          "" if fmt.convert else "a companion of another format") if x)
            table.add_row(fmt.name, family.name, fmt.description, needs)
    out.print(table)


@models_app.command("import")
def models_import(
    path: Annotated[Path, typer.Argument(help="A student file or a public checkpoint (`ctsr models formats`); the format is detected from its contents.")],
    model_id: Annotated[str, typer.Option("--id", help="The id to register it under (kebab-case).")],
    base: BaseOption = None,
    prompt: PromptOption = "",
    vq: CompanionOption = None,
    fidelity: FidelityOption = None,
    fmt: FormatOption = None,
    setting: SetOption = None,
    settings_file: SettingsOption = None,
    licence: Annotated[str, typer.Option("--licence", help="Licence of the weights.")] = "unknown (user-supplied)",
) -> None:
    """Register a user-supplied checkpoint: converted and copied into the cache, then usable by id."""
    from ..registry import import_model

    spec = import_model(path, model_id=model_id, base=base, companion=vq, fidelity=fidelity, prompt=prompt, licence=licence, format=fmt,
                        settings=_settings(setting, settings_file))
    out.print(f"imported `{spec.id}` ({spec.family}, knob {spec.knob.kind}{'; ' + spec.notes.split('; ', 1)[1] if '; ' in spec.notes else ''}); "
              f"use it with --model {spec.id}")


@models_app.command("convert")
def models_convert(
    source: Annotated[Path, typer.Argument(help="A public checkpoint (`ctsr models formats`); the format is detected from its contents.")],
    target: Annotated[Path, typer.Argument(help="Student file to write (.safetensors).")],
    base: BaseOption = None,
    prompt: PromptOption = "",
    vq: CompanionOption = None,
    fidelity: FidelityOption = None,
    fmt: FormatOption = None,
    setting: SetOption = None,
    settings_file: SettingsOption = None,
    licence: Annotated[str, typer.Option("--licence", help="Licence written into the student file.")] = "unknown",
    sampler: Annotated[str | None, typer.Option("--sampler", hidden=True, help="Old spelling of --set sampler=VALUE.")] = None,
    net_config: Annotated[Path | None, typer.Option("--net-config", hidden=True, help="Old spelling of --settings FILE.")] = None,
    overwrite: OverwriteOption = False,
) -> None:
    """Convert a public checkpoint into a student file (pickles go through the restricted unpickler)."""
    from ..conversion import convert_checkpoint
    from ..student_file import save_student

    # 1. check the arguments
    if target.suffix != ".safetensors":
        raise typer.BadParameter(f"TARGET must end in .safetensors, got {target.name!r}")
    if target.exists() and not overwrite:
        raise InvalidInputError(f"`{target}` exists; pass --overwrite to replace it.")
    if settings_file is not None and net_config is not None:
        raise typer.BadParameter("give --settings or --net-config (its old spelling), not both.")
    settings = _settings(setting, settings_file or net_config, sampler=sampler)
    # 2. detect the format, convert with its family's converter
    try:
        name, student = convert_checkpoint(source, format=fmt, base=base, companion=vq, fidelity=fidelity, prompt=prompt, licence=licence,
                                           settings=settings)
    except OSError as exc:  # reading the base model's text encoder: name the folder
        if isinstance(exc, CtsrError) or base is None:
            raise
        err.print(f"[red]error:[/] cannot read the base model's text encoder in `{escape(str(base))}`: {escape(str(exc))}")
        raise typer.Exit(EXIT_ENV) from None
    save_student(student, target)
    adapters = ", ".join(a.name for a in student.meta.adapters) or "none"
    out.print(f"wrote {target} (from {name}: {student.meta.family}, {len(student.tensors)} tensors, adapters: {adapters})")


@models_app.command("remove")
def models_remove(model_id: Annotated[str, typer.Argument(help="Model id.")]) -> None:
    """Delete a model's downloaded and converted files from ctsr's cache (and unregister an import)."""
    from ..registry import remove_model

    removed = remove_model(model_id)
    out.print("\n".join(f"removed {p}" for p in removed) or f"{model_id}: nothing of it in ctsr's cache")
