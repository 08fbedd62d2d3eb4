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


@models_app.command("import")
def models_import(
    path: Annotated[Path, typer.Argument(help="A student file (.safetensors) or an OSEDiff checkpoint (.pkl).")],
    model_id: Annotated[str, typer.Option("--id", help="The id to register it under (kebab-case).")],
    base: BaseOption = None,
    prompt: Annotated[str, typer.Option("--prompt", help="Fixed prompt for a converted OSEDiff checkpoint.")] = "",
    licence: Annotated[str, typer.Option("--licence", help="Licence of the weights.")] = "unknown (user-supplied)",
) -> None:
    """Register a user-supplied checkpoint: converted and copied into the cache, then usable by id (a .pkl needs --base)."""
    from ..registry import import_model

    spec = import_model(path, model_id=model_id, base=base, prompt=prompt, licence=licence)
    out.print(f"imported `{spec.id}` ({spec.family}, knob {spec.knob.kind}); use it with --model {spec.id}")


@models_app.command("convert")
def models_convert(
    source: Annotated[Path, typer.Argument(help="Public checkpoint: osediff.pkl, or a ResShift/SinSR .pth (with --vq).")],
    target: Annotated[Path, typer.Argument(help="Student file to write (.safetensors).")],
    base: Annotated[Path | None, typer.Option("--base", help="OSEDiff: local diffusers folder of SD 2.1-base (for the prompt embedding).")] = None,
    prompt: Annotated[str, typer.Option("--prompt", help="OSEDiff: fixed prompt carried in the student.")] = "",
    vq: Annotated[Path | None, typer.Option("--vq", help="ResShift family: the autoencoder_vq_f4.pth file.")] = None,
    sampler: Annotated[str, typer.Option("--sampler", help="ResShift family: onestep (SinSR, TAD-SR, co-learning students), posterior or ddim (the ResShift teacher).")] = "onestep",
    steps: Annotated[int, typer.Option("--steps", help="ResShift family: diffusion steps of the schedule (15 for v1 and SinSR, 4 for v3).")] = 15,
    min_noise_level: Annotated[float, typer.Option("--min-noise-level", help="ResShift family: 0.04 for v1 and SinSR, 0.2 for v3.")] = 0.04,
    licence: Annotated[str, typer.Option("--licence", help="ResShift family: licence written into the student file.")] = "unknown",
    net_config: Annotated[Path | None, typer.Option("--net-config", help="ResShift family: JSON with `unet`, `vq` and/or `schedule` settings that differ from the x4 real-SR defaults.")] = None,
    overwrite: OverwriteOption = False,
) -> None:
    """Convert a public checkpoint into a student file (pickles go through the allow-listed unpickler)."""
    from ..checkpoints import convert_osediff, convert_resshift, save_student

    # 1. check the arguments
    if target.suffix != ".safetensors":
        raise typer.BadParameter(f"TARGET must end in .safetensors, got {target.name!r}")
    if target.exists() and not overwrite:
        raise InvalidInputError(f"`{target}` exists; pass --overwrite to replace it.")
    if vq is None and base is None:
        raise typer.BadParameter("pass --base DIR (OSEDiff checkpoints) or --vq autoencoder_vq_f4.pth (ResShift, SinSR, TAD-SR).")
    if sampler not in ("onestep", "posterior", "ddim"):
        raise typer.BadParameter(f"--sampler must be onestep, posterior or ddim, got {sampler!r}")
    # 2. convert: ResShift family with --vq, OSEDiff with --base
    if vq is not None:
        settings_json: dict[str, Any] = {}
        if net_config is not None:
            try:
                settings_json = json.loads(net_config.read_text())
            except (OSError, ValueError) as exc:
                raise typer.BadParameter(f"--net-config `{net_config}` is not a readable JSON file: {exc}") from None
        schedule = {"steps": steps, "min_noise_level": min_noise_level, **settings_json.get("schedule", {})}
        student = convert_resshift(source, vq, sampler=sampler, schedule=schedule, unet=settings_json.get("unet"),
                                   vq=settings_json.get("vq"), licence=licence)
    elif base is not None:  # the only other case (checked above)
        from ..families.sd_onestep import encode_prompt

        try:  # names the folder the text encoder was read from
            embeds = encode_prompt(base, prompt)
        except OSError as exc:
            err.print(f"[red]error:[/] cannot read the base model's text encoder in `{escape(str(base))}`: {escape(str(exc))}")
            raise typer.Exit(EXIT_ENV) from None
        student = convert_osediff(source, prompt_embeds=embeds, base={"path": str(base.resolve())}, prompt=prompt)
    save_student(student, target)
    adapters = ", ".join(a.name for a in student.meta.adapters) or "none"
    out.print(f"wrote {target} ({student.meta.family}, {len(student.tensors)} tensors, adapters: {adapters})")


@models_app.command("remove")
def models_remove(model_id: Annotated[str, typer.Argument(help="Model id.")]) -> None:
    """Delete a model's downloaded and converted files from ctsr's cache (and unregister an import)."""
    from ..registry import remove_model

    removed = remove_model(model_id)
    out.print("\n".join(f"removed {p}" for p in removed) or f"{model_id}: nothing of it in ctsr's cache")
