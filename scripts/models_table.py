"""Print the README's "Models" table from weights_manifest.json; --write replaces it in README.md.

    python scripts/models_table.py [--write]
"""

from __future__ import annotations

import sys
from pathlib import Path

from ctsr_infer.manifest import load_manifest

BEGIN, END = "<!-- models-table:begin -->", "<!-- models-table:end -->"


def table() -> str:
    manifest = load_manifest()
    lines = ["| id | family | knob (default t) | scale | size | licence | notes |", "|---|---|---|---|---|---|---|"]
    for model_id in sorted(manifest.models):
        spec = manifest.models[model_id]
        if spec.user:
            continue
        knob = spec.knob.kind + (f" ({spec.knob.default_t:g})" if spec.knob.default_t is not None else "")
        size = f"{spec.file.size / 1e6:.1f} MB" if spec.file.size else "downloaded on first use"
        licence = spec.licence + ("" if spec.commercial_use else " **(non-commercial)**")
        name = f"`{model_id}`" + (" (default)" if model_id == manifest.default else "")
        lines.append(f"| {name} | {spec.family} | {knob} | ×{spec.scale:g} | {size} | {licence} | {spec.notes} |")
    return "\n".join(lines)


def main() -> None:
    text = table()
    if "--write" in sys.argv:
        readme = Path(__file__).resolve().parent.parent / "README.md"
        content = readme.read_text()
        start, end = content.index(BEGIN) + len(BEGIN), content.index(END)
        readme.write_text(content[:start] + "\n" + text + "\n" + content[end:])
    print(text)


if __name__ == "__main__":
    main()
