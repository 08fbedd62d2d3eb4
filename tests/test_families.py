"""The family registry, format detection from file contents, and the student-file schema with limits."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

import ctsr_infer
from ctsr_infer.cli import app
from ctsr_infer.families import FAMILIES, STUDENT_FORMAT, detect_format, formats, read_checkpoint
from ctsr_infer.manifest import FAMILIES as MANIFEST_FAMILIES, FORMATS as MANIFEST_FORMATS
from ctsr_infer.student_file import load_student
from tiny import tiny_swin_config, tiny_vq_config, write_resshift_pair

PACKAGE = Path(ctsr_infer.__file__).parent


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


# -- the registry is the one place families are named -------------------------------------------

def test_the_manifest_takes_families_and_formats_from_the_registry() -> None:
    assert MANIFEST_FAMILIES == tuple(FAMILIES)
    assert set(MANIFEST_FORMATS) == {STUDENT_FORMAT, *formats()}
    for family in FAMILIES.values():
        assert family.options and family.tiling.modes and family.knob_kinds
        for fmt in family.formats:
            assert fmt.companion is None or fmt.companion in formats()


def _string_constants(tree: ast.AST) -> list[tuple[int, str]]:
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body
                  and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


def test_no_family_or_format_name_outside_the_families_and_the_manifest() -> None:
    """Code outside ``families/`` (and the training recipes and their CLI commands, which each produce
    one family's students) never spells a family or format name: it asks the registry."""
    names = {*FAMILIES, *formats()}
    offenders = []
    for module, path in _modules().items():
        if module.startswith(("ctsr_infer.families", "ctsr_infer.train")) or module in ("ctsr_infer.manifest", "ctsr_infer.cli.train"):
            continue
        for line, value in _string_constants(ast.parse(path.read_text())):
            if value in names:
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{line} {value!r}")
    assert not offenders, offenders


def _import_graph() -> dict[str, set[str]]:
    """Module-level imports between ctsr_infer's modules (imports inside functions and under
    ``TYPE_CHECKING`` run later or never, so they cannot form an import-time cycle)."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        tree = ast.parse(path.read_text())
        statements = list(tree.body)
        while statements:
            node = statements.pop(0)
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, (ast.If, ast.Try)):
                statements.extend(node.body)
                continue
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for alias in node.names:
                    full = f"{target}.{alias.name}"
                    edge = full if full in modules else target
                    if edge in modules and edge != name:
                        graph[name].add(edge)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in modules and alias.name != name:
                        graph[name].add(alias.name)
    return graph


def test_no_import_cycles() -> None:
    graph = _import_graph()
    # the graph is real: it sees the layers it should
    assert "ctsr_infer.knob" in graph["ctsr_infer.student_file"]
    assert "ctsr_infer.families" in graph["ctsr_infer.manifest"]
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    assert not cycles, cycles


def test_the_student_format_depends_only_on_the_knob_and_errors() -> None:
    assert _import_graph()["ctsr_infer.student_file"] <= {"ctsr_infer.knob", "ctsr_infer.errors", "ctsr_infer.atomic"}


# -- formats are detected from the contents, never the file name --------------------------------

def test_formats_are_detected_from_the_contents(tmp_path: Path, osediff_pkl: Path, student_path: Path) -> None:
    unet, vq = write_resshift_pair(tmp_path / "pair")
    renamed = tmp_path / "weights.bin"  # names say nothing
    renamed.write_bytes(unet.read_bytes())
    assert detect_format(read_checkpoint(renamed)) == "resshift-pth"
    assert detect_format(read_checkpoint(vq)) == "ldm-vq-pth"
    assert detect_format(read_checkpoint(osediff_pkl)) == "osediff-pkl"
    assert detect_format(read_checkpoint(student_path)) == STUDENT_FORMAT
    other = tmp_path / "other.safetensors"
    save_file({"body.0.weight": torch.zeros(4, 3, 3, 3)}, str(other))
    with pytest.raises(ctsr_infer.IncompatibleWeightsError, match="osediff-pkl.*resshift-pth"):
        detect_format(read_checkpoint(other))


def _cli(*args: str):
    return CliRunner().invoke(app, list(args))


def test_convert_and_import_need_no_family_flags(tmp_path: Path) -> None:
    unet, vq = write_resshift_pair(tmp_path / "pair")
    settings = tmp_path / "net.json"
    settings.write_text(json.dumps({"unet": tiny_swin_config().to_config(), "vq": tiny_vq_config().to_config()}))
    target = tmp_path / "s.safetensors"
    result = _cli("models", "convert", str(unet), str(target), "--vq", str(vq), "--settings", str(settings), "--set", "sampler=ddim")
    assert result.exit_code == 0, result.output
    assert "from resshift-pth" in result.output
    student = load_student(target)
    assert student.meta.config["sampler"] == "ddim"
    # the same checkpoint registered by id, converted on the way in
    result = _cli("models", "import", str(unet), "--id", "my-sinsr", "--vq", str(vq), "--settings", str(settings))
    assert result.exit_code == 0, result.output
    up = ctsr_infer.load("my-sinsr", device="cpu")
    image = np.random.default_rng(0).random((16, 16, 3)).astype(np.float32)
    direct = ctsr_infer.load(target, device="cpu").upscale(image, seed=1)
    assert up.upscale(image, seed=1).shape == direct.shape == (64, 64, 3)


def test_convert_says_what_a_format_needs(tmp_path: Path, osediff_pkl: Path) -> None:
    unet, vq = write_resshift_pair(tmp_path / "pair")
    missing_vq = _cli("models", "convert", str(unet), str(tmp_path / "a.safetensors"))
    assert missing_vq.exit_code == 2 and "--vq" in missing_vq.output and "Traceback" not in missing_vq.output
    missing_base = _cli("models", "convert", str(osediff_pkl), str(tmp_path / "b.safetensors"))
    assert missing_base.exit_code == 2 and "--base" in missing_base.output
    companion_alone = _cli("models", "convert", str(vq), str(tmp_path / "c.safetensors"))
    assert companion_alone.exit_code == 2 and "not a model on its own" in companion_alone.output and "--vq" in companion_alone.output
    wrong_vq = _cli("models", "convert", str(unet), str(tmp_path / "d.safetensors"), "--vq", str(unet))
    assert wrong_vq.exit_code == 2 and "VQ" in wrong_vq.output
    forced = _cli("models", "convert", str(unet), str(tmp_path / "e.safetensors"), "--format", "osediff-pkl", "--base", str(tmp_path))
    assert forced.exit_code != 0 and "rank_unet" in forced.output  # the override is obeyed: OSEDiff's converter refuses
    unknown = _cli("models", "convert", str(unet), str(tmp_path / "f.safetensors"), "--format", "banana")
    assert unknown.exit_code == 2 and "osediff-pkl" in unknown.output
    assert not any(tmp_path.glob("*.safetensors"))
    listing = _cli("models", "formats")
    assert listing.exit_code == 0 and all(name in listing.output for name in formats())


def test_loading_a_public_checkpoint_names_its_format(tmp_path: Path, osediff_pkl: Path) -> None:
    with pytest.raises(ctsr_infer.InvalidInputError, match="osediff-pkl checkpoint.*models convert"):
        ctsr_infer.load(osediff_pkl)


# -- the student-file schema: bounds, enums and parsing limits ----------------------------------

def _lite_file(path: Path, meta: dict | str, tensors: dict | None = None) -> Path:
    from ctsr_infer.families.lite import LiteNet

    tensors = tensors if tensors is not None else {f"net.{k}": v for k, v in LiteNet(channels=8, blocks=1).state_dict().items()}
    base = {"family": "lite", "knob": {"kind": "native", "default_t": 0.5}, "color_fix": "none",
            "config": {"channels": 8, "blocks": 1, "scale": 4, "embed": 16}}
    text = meta if isinstance(meta, str) else json.dumps({**base, **meta})
    save_file(tensors, str(path), metadata={"ctsr.meta": text})
    return path


BAD_META = [
    ("encode banana", {"encode": "banana"}, "`encode` must be one of"),
    ("color_fix enum", {"color_fix": "sepia"}, "`color_fix` must be one of"),
    ("scale as text", {"scale": "4"}, "`scale`"),
    ("scale 1000", {"scale": 1000}, "`scale`"),
    ("timestep 5000", {"timestep": 5000}, "`timestep`"),
    ("unknown field", {"colour": 1}, "unknown fields"),
    ("base not strings", {"base": {"repo_id": 3}}, "`base`"),
    ("many adapters", {"adapters": [{"name": f"a{i}", "component": "unet", "rank": 1, "alpha": 1} for i in range(65)]}, "adapters"),
    ("adapter rank", {"adapters": [{"name": "a", "component": "unet", "rank": 10**9, "alpha": 1}]}, "`rank`"),
    ("knob steps text", {"knob": {"kind": "native", "default_t": 0.5, "steps": "many"}}, "knob"),
    ("family not a name", {"family": "../../etc"}, "`family`"),
    ("channels 30000", {"config": {"channels": 30000, "blocks": 1, "scale": 4, "embed": 16}}, "config.channels"),
    ("blocks as text", {"config": {"channels": 8, "blocks": "1"}}, "config.blocks"),
]


@pytest.mark.parametrize(("label", "meta", "words"), BAD_META, ids=[c[0] for c in BAD_META])
def test_bad_metadata_names_the_field(tmp_path: Path, label: str, meta: dict, words: str) -> None:
    path = _lite_file(tmp_path / "s.safetensors", meta)
    with pytest.raises(ctsr_infer.IncompatibleWeightsError, match=words):
        ctsr_infer.load(path, device="cpu")


def test_deeply_nested_metadata_is_refused_not_a_recursion_error(tmp_path: Path) -> None:
    nested = '{"family": "lite", "provenance": {"x": ' + "[" * 100_000 + "]" * 100_000 + "}}"
    with pytest.raises(ctsr_infer.IncompatibleWeightsError, match="nests deeper"):
        load_student(_lite_file(tmp_path / "deep.safetensors", nested))
    shallow_but_deep = '{"family": "lite", "provenance": {"x": ' + "[" * 40 + "]" * 40 + "}}"
    with pytest.raises(ctsr_infer.IncompatibleWeightsError, match="nests deeper than 16"):
        load_student(_lite_file(tmp_path / "deep2.safetensors", shallow_but_deep))


def test_layer_sizes_come_from_the_tensors(tmp_path: Path) -> None:
    """Metadata claiming other sizes than the tensors have is refused, whichever way it errs."""
    path = _lite_file(tmp_path / "s.safetensors", {"config": {"channels": 16, "blocks": 1, "scale": 4, "embed": 16}})
    with pytest.raises(ctsr_infer.IncompatibleWeightsError, match="config.channels` is 16, but its tensors have channels = 8"):
        ctsr_infer.load(path, device="cpu")
    # no config at all: the sizes come from the tensors alone
    from ctsr_infer.families.lite import LiteNet

    net = LiteNet(channels=8, blocks=3, embed=4)
    tensors = {f"net.{k}": v for k, v in net.state_dict().items()}
    up = ctsr_infer.load(_lite_file(tmp_path / "free.safetensors", {"config": {}}, tensors), device="cpu")
    assert up.model.net.config() == {"channels": 8, "blocks": 3, "scale": 4, "embed": 4}


CLAIM = """
import json, sys
from pathlib import Path
import ctsr_infer
from ctsr_infer.student_file import StudentFile, StudentMeta, save_student, load_student
source = load_student(sys.argv[1])
meta = source.meta
config = {**meta.config, "unet": {**meta.config["unet"], "model_channels": 1024, "swin_embed_dim": 4096}}
student = StudentFile(StudentMeta(family=meta.family, knob=meta.knob, color_fix="none", timestep=14, config=config), source.tensors)
path = save_student(student, Path(sys.argv[2]))
def peak():
    return int([l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]) // 1024
before = peak()
try:
    ctsr_infer.load(path, device="cpu")
except ctsr_infer.IncompatibleWeightsError as exc:
    print(json.dumps({"error": str(exc), "grew_mb": peak() - before}))
"""


def test_a_file_claiming_a_huge_network_fails_before_allocating_it(tmp_path: Path) -> None:
    """A 1024-channel Swin-UNet (within the schema's bounds) would need tens of GB: the tensors are
    checked against the network built on the meta device first, so the error costs no memory."""
    from ctsr_infer.device import resolve
    from ctsr_infer.student_file import StudentFile, save_student

    small = FAMILIES["resshift-onestep"].random_model(resolve("cpu", "fp32"), True)
    tensors = {f"net.unet.{k}": v for k, v in small.net.state_dict().items()}
    from ctsr_infer.families.resshift.vq_autoencoder import diffusers_to_ldm

    tensors.update({f"net.vq.{k}": v for k, v in diffusers_to_ldm(small.vq.state_dict(), small.vq_config).items()})
    source = save_student(StudentFile(small.meta, tensors), tmp_path / "small.safetensors")
    done = subprocess.run([sys.executable, "-c", CLAIM, str(source), str(tmp_path / "claim.safetensors")], capture_output=True,
                          text=True, timeout=300, cwd=Path(__file__).parent)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert "expects" in result["error"] and "net.unet" in result["error"]
    assert result["grew_mb"] < 500, result


def test_every_emitted_progress_stage_is_documented() -> None:
    """``progress.STAGES`` lists exactly the stage names the library emits."""
    from ctsr_infer.progress import STAGES

    emitted = set()
    for path in _modules().values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "emit" and len(node.args) >= 2:
                stage = node.args[1]
                if isinstance(stage, ast.Constant):  # a computed name is typed `Stage`: mypy checks it
                    emitted.add(stage.value)
    assert emitted == set(STAGES)


def test_review_findings_end_in_clear_errors(tmp_path: Path) -> None:
    """Inputs a review found crashing: each is now the library's error, naming what is wrong."""
    odd = tmp_path / "odd.pth"
    torch.save({1: torch.zeros(1), "state_dict": {2: torch.zeros(1)}}, odd)
    with pytest.raises(ctsr_infer.IncompatibleWeightsError):
        detect_format(read_checkpoint(odd))
    result = _cli("models", "convert", str(odd), str(tmp_path / "o.safetensors"))
    assert result.exit_code == 3 and "not a format this version converts" in result.output
    bad_id = _cli("models", "import", str(odd), "--id", "../Bad")
    assert bad_id.exit_code == 2 and "kebab-case" in bad_id.output
    assert not (tmp_path / "ctsr-home" / "Bad.safetensors").exists()
    missing = _cli("models", "import", str(tmp_path / "absent.pth"), "--id", "absent")
    assert missing.exit_code in (2, 3) and "does not exist" in missing.output
    for meta in ({"scale": [2]}, {"timestep": [5]}, {"knob": {"kind": "native", "default_t": 0.5, "steps": 1e400}}):
        with pytest.raises(ctsr_infer.IncompatibleWeightsError):
            load_student(_lite_file(tmp_path / "m.safetensors", meta))


def test_a_student_file_takes_no_conversion_options(student_path: Path, tmp_path: Path) -> None:
    result = _cli("models", "convert", str(student_path), str(tmp_path / "s.safetensors"), "--set", "sampler=ddim")
    assert result.exit_code == 2 and "already a ctsr student file" in result.output
