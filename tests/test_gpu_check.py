"""benchmarks/gpu_check.py runs on the CPU with --small (so CI tests the script the GPU will run)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_gpu_check_runs_on_the_cpu_with_tiny_models(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu_check
    finally:
        sys.path.pop(0)
    target = tmp_path / "check.json"
    code = gpu_check.main(["--device", "cpu", "--small", "--runs", "1", "--no-compile",
                           "--only", "correctness", "lora", "retry", "tiler", "guard", "--json", str(target)])
    results = json.loads(target.read_text())
    rows = {row["check"]: row for section in results["sections"].values() for row in section["rows"]}
    assert results["environment"]["device"] == "cpu"
    for family in ("lite", "resshift-onestep", "sd-onestep"):
        assert rows[f"{family} fp32 vs CPU fp32"]["ok"] and rows[f"{family} fp32 vs CPU fp32"]["max_abs"] <= 1e-4
        assert f"{family} bf16 vs CPU fp32" in rows
    for name in ("fused LoRA vs peft (linear)", "fused LoRA vs peft (conv 3x3)", "non-finite in bf16 reruns in fp32 once",
                 "forced out-of-memory halves the tile", "256² under a 0.2 GB budget", "accuracy guard: sd-onestep auto vs fp32"):
        assert rows[name]["ok"], rows[name]
    # the one known miss on tiny random weights: ResShift's bf16 forward (38.8 dB); the exit code reports it
    assert code == (0 if all(row["ok"] for row in rows.values()) else 1)
