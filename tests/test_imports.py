"""`import ctsr_infer` stays lean: no training code, no network, a small public API."""

from __future__ import annotations

import subprocess
import sys


def test_import_does_not_pull_in_training_or_heavy_optional_modules() -> None:
    code = (
        "import sys, ctsr_infer; "
        "bad = [m for m in sys.modules if m.startswith('ctsr_infer.train') or m in ('transformers', 'peft', 'accelerate')]; "
        "print(bad); assert not bad, bad"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_public_api_is_what_all_lists() -> None:
    import ctsr_infer

    assert {"Upscaler", "load", "list_models", "CtsrError"} <= set(ctsr_infer.__all__)
    for name in ctsr_infer.__all__:
        assert hasattr(ctsr_infer, name), name
    assert issubclass(ctsr_infer.InvalidInputError, ValueError)
    assert issubclass(ctsr_infer.WeightsNotFoundError, FileNotFoundError)
